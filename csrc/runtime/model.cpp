#include "model_impl.h"

#include "core/log.h"
#include "model/names.h"
#include "models/flow.h"
#include "models/tts.h"
#include "runtime/defaults.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>

namespace minicpm {

namespace {

bool is_omni_companion(const GgufFile & f) {
    return is_omni_flow_part(f) || is_omni_projector_file(f) || f.find_tensor("prompt_cache.spk_cb") != nullptr;
}

// Loads every component `file` holds into `m` (only `only` when given); two files may not bring
// the same component.
void load_components(Model::Impl & m, const GgufFile & file, bool first, const char * only = nullptr) {
    bool any = false;
    for (const ComponentType & type : component_types()) {
        if (only && std::string(type.kind) != only) continue;
        if (!type.present(file)) continue;
        auto it = m.components.find(type.kind);
        if (it != m.components.end()) {
            fail(ErrorKind::InvalidArgument, std::string("both ") + it->second->source() + " and " + file.path() +
                                                 " hold a " + type.kind + " component; give each component once");
        }
        ComponentLoad in{file, *m.devices, m.params};
        std::unique_ptr<Component> c = type.load(in);
        c->set_source(file.path());
        m.components.emplace(type.kind, std::move(c));
        any = true;
    }
    if (!any && only && std::string(only) == "audio") {
        fail(ErrorKind::Format, file.path() + " has no MiniCPM-o audio encoder (expected " +
                                    key_name(KeyName::CLIP_HAS_AUDIO) + " and tensor " + tensor_name(TensorName::A_CONV1) +
                                    ", or a llama.cpp-omni audio file: architecture whisper, encoder.conv1.weight)");
    }
    if (!any && only && std::string(only) == "vision") {
        fail(ErrorKind::Format, file.path() + " has no MiniCPM-V vision encoder (expected clip metadata with " +
                                    key_name(KeyName::CLIP_HAS_MINICPMV_PROJ) + " and tensor " +
                                    tensor_name(TensorName::V_PATCH_EMBD) + ")");
    }
    if (!any && !first && !only && is_omni_companion(file)) {
        // llama.cpp-omni's files that other files read: encoder.gguf / flow_extra.gguf (read by
        // flow_matching.gguf), the TTS projector (read by the TTS file), prompt_cache.gguf (a voice)
        MINICPM_LOG_INFO("%s: llama.cpp-omni companion file, read through its main file", file.path().c_str());
        return;
    }
    if (!any) {
        fail(ErrorKind::Format, file.path() + " holds no component this library runs (" +
                                    (first ? "expected an LLM: general.architecture qwen3 or qwen2" : "LLM, vision, audio") + ")");
    }
}

void set_end_of_turn(Model::Impl & m, const GgufFile & f) {
    // eos, plus the ChatML terminators and minicpm.stop_tokens, by string.
    auto add = [&](int32_t id) {
        if (id >= 0 && id < m.tokenizer->n_tokens() &&
            std::find(m.end_of_turn.begin(), m.end_of_turn.end(), id) == m.end_of_turn.end()) {
            m.end_of_turn.push_back(id);
        }
    };
    if (auto eos = f.opt_u32(key_name(KeyName::TOKENIZER_EOS_ID))) add((int32_t) *eos);
    if (auto eot = f.opt_u32(key_name(KeyName::TOKENIZER_EOT_ID))) add((int32_t) *eot);
    std::vector<std::string> stop_strs = {"<|im_end|>", "<|endoftext|>"};
    if (f.has_key(key_name(KeyName::MINICPM_STOP_TOKENS))) {
        for (auto & s : f.get_str_array(key_name(KeyName::MINICPM_STOP_TOKENS))) stop_strs.push_back(s);
    }
    for (const auto & s : stop_strs) add(m.tokenizer->find_token(s));
}

// An optional array of token ids (empty when absent), each checked against the vocabulary.
std::vector<int32_t> token_id_array(const Model::Impl & m, const GgufFile & f, KeyName k) {
    const std::string key = key_name(k);
    if (!f.has_key(key)) return {};
    std::vector<int32_t> ids = f.get_i32_array(key);
    for (int32_t id : ids) {
        if (id < 0 || id >= m.tokenizer->n_tokens()) {
            fail(ErrorKind::Format, "metadata key " + key + " in " + f.path() + ": token id " + std::to_string(id) +
                                        " is outside the vocabulary of " + std::to_string(m.tokenizer->n_tokens()));
        }
    }
    return ids;
}

void set_bad_token_ids(Model::Impl & m, const GgufFile & f) {
    m.bad_token_ids = token_id_array(m, f, KeyName::MINICPM_BAD_TOKEN_IDS);
    m.all_special_ids = token_id_array(m, f, KeyName::MINICPM_ALL_SPECIAL_IDS);
}

void fill_info(Model::Impl & m, const std::string & path) {
    const GgufFile & f = *m.files.front();
    const LlmModel & llm = m.llm();
    ModelInfo & info = m.info;
    info.path        = path;
    info.arch        = llm.hp.arch;
    info.model_type  = f.opt_str(key_name(KeyName::MINICPM_MODEL_TYPE)).value_or(llm.hp.arch);
    info.name        = f.opt_str(key_name(KeyName::GENERAL_NAME)).value_or("");
    info.device      = m.devices->main_name();
    info.n_vocab     = llm.hp.n_vocab;
    info.n_embd      = llm.hp.n_embd;
    info.n_layer     = llm.hp.n_layer;
    info.n_head      = llm.hp.n_head;
    info.n_head_kv   = llm.hp.n_head_kv;
    info.head_dim    = llm.hp.head_dim;
    info.n_ff        = llm.hp.n_ff;
    info.n_ctx_train = llm.hp.n_ctx_train;
    info.rope_base   = llm.hp.rope_base;
    info.rms_eps     = llm.hp.rms_eps;
    // weight_bytes: the LLM's (the figure llama.cpp reports for the same file); components lists all.
    info.weight_bytes   = llm.weight_bytes();
    info.repacked_bytes = llm.repacked_bytes();
    info.weight_type = ggml_type_name(llm.w.layers.at(0).wq->type);
    info.chat_template = f.opt_str(key_name(KeyName::TOKENIZER_CHAT_TEMPLATE)).value_or("");
    for (const auto & kv : m.components) info.components.push_back(kv.first);
}

} // namespace

Model::Model(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Model::~Model() = default;

std::shared_ptr<Model> Model::load(const std::string & path, const ModelParams & params) {
    auto m = std::make_unique<Impl>();
    m->params = params;
    if (!m->params.flow_lean) {   // A/B runs of the flow graph without code changes (benchmarks/README.md)
        if (const char * env = std::getenv("MINICPM_FLOW_LEAN")) {
            if (std::strcmp(env, "0") == 0) m->params.flow_lean = false;
            if (std::strcmp(env, "1") == 0) m->params.flow_lean = true;
        }
    }
    if (params.n_threads < 0) fail(ErrorKind::InvalidArgument, "n_threads must be >= 0, got " + std::to_string(params.n_threads));
    if (params.max_image_patches < 0) {
        fail(ErrorKind::InvalidArgument, "max_image_patches must be >= 0 (0 = no limit), got " +
                                             std::to_string(params.max_image_patches));
    }
    if (params.batch_cache_cells < 0 || params.batch_cache_cells > KvPool::kMaxCells) {
        fail(ErrorKind::InvalidArgument, "batch_cache_cells must be in [0, " + std::to_string(KvPool::kMaxCells) +
                                             "] (0 = none), got " + std::to_string(params.batch_cache_cells));
    }
    std::vector<std::string> paths = {path};
    if (!params.mmproj.empty()) paths.push_back(params.mmproj);
    if (!params.audio.empty()) paths.push_back(params.audio);
    paths.insert(paths.end(), params.extra_files.begin(), params.extra_files.end());
    // Open and validate every file before any device memory is touched.
    for (const auto & p : paths) m->files.push_back(std::make_unique<GgufFile>(p));
    const GgufFile & f = *m->files.front();

    // The main file must be an LLM; its metadata gives the tokenizer, template and defaults.
    const LlmHparams hp = LlmHparams::from_gguf(f);
    m->tokenizer = std::make_unique<Tokenizer>(Tokenizer::from_gguf(f.ctx(), path));
    if (m->tokenizer->n_tokens() > hp.n_vocab) {
        fail(ErrorKind::Format, "tokenizer of " + path + " has " + std::to_string(m->tokenizer->n_tokens()) +
                                    " tokens but token_embd has only " + std::to_string(hp.n_vocab) + " rows");
    }
    m->defaults = read_generation_defaults(f);
    m->chat = ChatTemplate::from_source(f.opt_str(key_name(KeyName::TOKENIZER_CHAT_TEMPLATE)).value_or(""));

    m->devices = std::make_unique<Devices>(params.device, params.n_threads);
    // The mmproj file (llama.cpp's vision file) gives the vision component only, the audio file
    // the audio component only.
    const size_t i_mmproj = params.mmproj.empty() ? 0 : 1;
    const size_t i_audio = params.audio.empty() ? 0 : 1 + (params.mmproj.empty() ? 0 : 1);
    for (size_t i = 0; i < m->files.size(); ++i) {
        const char * only = i == 0 ? nullptr : i == i_mmproj ? "vision" : i == i_audio ? "audio" : nullptr;
        load_components(*m, *m->files[i], i == 0, only);
    }
    if (!m->components.count("llm")) fail(ErrorKind::Format, path + " has no LLM");
    const VisionModel * vision = m->vision();
    if (vision && vision->hp.rs_dim != hp.n_embd) {
        fail(ErrorKind::Format, "vision resampler of " + vision->source() + " outputs width " +
                                    std::to_string(vision->hp.rs_dim) + ", the LLM of " + path + " expects " +
                                    std::to_string(hp.n_embd));
    }
    const AudioModel * audio = m->audio();
    if (audio && audio->hp.proj_dim != hp.n_embd) {
        fail(ErrorKind::Format, "audio projector of " + audio->source() + " outputs width " +
                                    std::to_string(audio->hp.proj_dim) + ", the LLM of " + path + " expects " +
                                    std::to_string(hp.n_embd));
    }
    set_end_of_turn(*m, f);
    set_bad_token_ids(*m, f);
    fill_info(*m, path);

    if (vision && params.warmup) {
        // Touches the vision weights once (page faults of the mapped file, kernel start-up) with a
        // throwaway compute state: sessions then start warm.
        ComputeBackends backends(*m->devices, 0);
        VisionEncoder(*vision, backends).warm_up();
    }
    if (audio && params.warmup) {
        ComputeBackends backends(*m->devices, 0);
        AudioEncoder(*audio, backends).warm_up();
    }
    const ModelInfo & info = m->info;
    MINICPM_LOG_INFO("loaded %s: %s, %lld layers, n_embd %lld, vocab %lld, %.1f MiB of weights on %s (%.1f MiB repacked); "
                     "defaults from %s",
                     path.c_str(), info.arch.c_str(), (long long) info.n_layer, (long long) info.n_embd,
                     (long long) info.n_vocab, info.weight_bytes / 1048576.0, info.device.c_str(),
                     info.repacked_bytes / 1048576.0, m->defaults.source.c_str());
    return std::shared_ptr<Model>(new Model(std::move(m)));
}

const ModelInfo &          Model::info() const { return impl_->info; }
const Tokenizer &          Model::tokenizer() const { return *impl_->tokenizer; }
const ChatTemplate &       Model::chat_template() const { return impl_->chat; }
const GenerationDefaults & Model::defaults() const { return impl_->defaults; }
const ModelParams &        Model::params() const { return impl_->params; }

std::vector<int32_t> Model::tokenize(const std::string & text, bool parse_special) const {
    return impl_->tokenizer->encode(text, parse_special);
}

std::string Model::detokenize(const std::vector<int32_t> & ids, bool skip_special) const {
    return impl_->tokenizer->decode(ids, skip_special);
}

const std::vector<int32_t> & Model::end_of_turn_ids() const { return impl_->end_of_turn; }

bool Model::is_end_of_turn(int32_t id) const {
    const auto & e = impl_->end_of_turn;
    return std::find(e.begin(), e.end(), id) != e.end();
}

bool Model::has_component(const std::string & kind) const { return impl_->components.count(kind) > 0; }

Model::BatchStats Model::batch_stats() const {
    BatchStats out;
    const LlmBatchStats s = impl_->llm_batcher().stats();
    out.batches = s.batches;
    out.parts = s.parts;
    out.rows = s.rows;
    out.max_parts = s.max_parts;
    out.rebuilds = s.rebuilds;
    out.shared_parts = s.shared_parts;
    out.shared_cache_bytes = (int64_t) impl_->llm_batcher().shared_cache_bytes();
    out.build_ms = s.build_ms;
    out.compute_ms = s.compute_ms;
    return out;
}

void Model::set_batch_gather(int min_parts, double wait_ms) { impl_->llm_batcher().set_gather(min_parts, wait_ms); }

const char * stop_reason_name(StopReason r) {
    switch (r) {
        case StopReason::EndOfTurn: return "end_of_turn";
        case StopReason::StopString: return "stop_string";
        case StopReason::MaxTokens: return "max_tokens";
        case StopReason::ContextFull: return "context_full";
        default: return "none";
    }
}

} // namespace minicpm
