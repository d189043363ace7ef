#include "model_impl.h"

#include "core/log.h"
#include "model/names.h"

#include <algorithm>

namespace minicpm {

namespace {

bool file_has_vision(const GgufFile & f) {
    if (f.find_tensor(tensor_name(TensorName::V_PATCH_EMBD))) return true;
    return f.opt_bool(key_name(KeyName::CLIP_HAS_VISION)).value_or(false) &&
           f.opt_bool(key_name(KeyName::CLIP_HAS_MINICPMV_PROJ)).value_or(false);
}

void load_vision(Model::Impl & m, const ModelParams & params) {
    const GgufFile * src = nullptr;
    if (!params.mmproj.empty()) {
        m.mmproj_file = std::make_unique<GgufFile>(params.mmproj);
        if (!file_has_vision(*m.mmproj_file)) {
            fail(ErrorKind::Format, params.mmproj + " has no MiniCPM-V vision encoder (expected clip metadata with " +
                                        key_name(KeyName::CLIP_HAS_MINICPMV_PROJ) + " and tensor " +
                                        tensor_name(TensorName::V_PATCH_EMBD) + ")");
        }
        src = m.mmproj_file.get();
    } else if (file_has_vision(*m.file)) {
        src = m.file.get();
    }
    if (!src) return;
    m.vhp = VisionHparams::from_gguf(*src);
    if (m.vhp.rs_dim != m.hp.n_embd) {
        fail(ErrorKind::Format, "vision resampler of " + src->path() + " outputs width " + std::to_string(m.vhp.rs_dim) +
                                    ", the LLM of " + m.file->path() + " expects " + std::to_string(m.hp.n_embd));
    }
    m.vision_store = std::make_unique<WeightStore>(*src, *m.backends, (size_t) (m.vhp.n_layer * 20 + 64));
    m.vw = VisionWeights::declare(*m.vision_store, m.vhp);
    if (params.fuse_qkv != 0) m.vw.fuse_qkv(*m.vision_store, params.fuse_qkv > 0);
    m.vision_store->load();
    m.vision = std::make_unique<VisionEncoder>(m.vhp, m.vw, *m.backends);
}

uint64_t fnv1a(const void * data, size_t n, uint64_t h = 1469598103934665603ull) {
    const auto * p = (const uint8_t *) data;
    for (size_t i = 0; i < n; ++i) {
        h ^= p[i];
        h *= 1099511628211ull;
    }
    return h;
}

} // namespace

Model::Model(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Model::~Model() = default;

std::shared_ptr<Model> Model::load(const std::string & path, const ModelParams & params) {
    auto m = std::make_unique<Impl>();
    m->file = std::make_unique<GgufFile>(path);
    const GgufFile & f = *m->file;

    // Validate everything that comes from the file before any device memory is touched.
    m->hp = LlmHparams::from_gguf(f);
    m->tokenizer = std::make_unique<Tokenizer>(Tokenizer::from_gguf(f.ctx(), path));
    if (m->tokenizer->n_tokens() > m->hp.n_vocab) {
        fail(ErrorKind::Format, "tokenizer of " + path + " has " + std::to_string(m->tokenizer->n_tokens()) +
                                    " tokens but token_embd has only " + std::to_string(m->hp.n_vocab) + " rows");
    }

    m->backends = std::make_unique<Backends>(params.device, params.n_threads);
    m->store    = std::make_unique<WeightStore>(f, *m->backends, (size_t) (m->hp.n_layer * 20 + 8));
    m->weights  = LlmWeights::declare(*m->store, m->hp);
    m->store->set_cpu_repack(params.cpu_repack);
    if (params.fuse_qkv != 0) m->weights.fuse_qkv(*m->store, params.fuse_qkv > 0);
    m->store->load();

    m->all_f32 = true;
    for (const auto & t : f.tensors()) {
        if (t.n_dims >= 2 && t.type != GGML_TYPE_F32) m->all_f32 = false;
    }

    load_vision(*m, params);

    m->chat = ChatTemplate::from_source(f.opt_str(key_name(KeyName::TOKENIZER_CHAT_TEMPLATE)).value_or(""));

    // End-of-turn tokens: eos, plus the ChatML terminators and minicpm.stop_tokens, by string.
    auto add_eot = [&](int32_t id) {
        if (id >= 0 && id < m->tokenizer->n_tokens() &&
            std::find(m->end_of_turn.begin(), m->end_of_turn.end(), id) == m->end_of_turn.end()) {
            m->end_of_turn.push_back(id);
        }
    };
    if (auto eos = f.opt_u32(key_name(KeyName::TOKENIZER_EOS_ID))) add_eot((int32_t) *eos);
    if (auto eot = f.opt_u32(key_name(KeyName::TOKENIZER_EOT_ID))) add_eot((int32_t) *eot);
    std::vector<std::string> stop_strs = {"<|im_end|>", "<|endoftext|>"};
    if (f.has_key(key_name(KeyName::MINICPM_STOP_TOKENS))) {
        for (auto & s : f.get_str_array(key_name(KeyName::MINICPM_STOP_TOKENS))) stop_strs.push_back(s);
    }
    for (const auto & s : stop_strs) add_eot(m->tokenizer->find_token(s));

    ModelInfo & info = m->info;
    info.path        = path;
    info.arch        = m->hp.arch;
    info.model_type  = f.opt_str(key_name(KeyName::MINICPM_MODEL_TYPE)).value_or(m->hp.arch);
    info.name        = f.opt_str(key_name(KeyName::GENERAL_NAME)).value_or("");
    info.device      = m->backends->main_name();
    info.n_vocab     = m->hp.n_vocab;
    info.n_embd      = m->hp.n_embd;
    info.n_layer     = m->hp.n_layer;
    info.n_head      = m->hp.n_head;
    info.n_head_kv   = m->hp.n_head_kv;
    info.head_dim    = m->hp.head_dim;
    info.n_ff        = m->hp.n_ff;
    info.n_ctx_train = m->hp.n_ctx_train;
    info.rope_base   = m->hp.rope_base;
    info.rms_eps     = m->hp.rms_eps;
    info.weight_bytes = m->store->bytes_on_main() + m->store->bytes_on_host() + m->store->bytes_repacked();
    info.repacked_bytes = m->store->bytes_repacked();
    info.weight_type = ggml_type_name(m->weights.layers.at(0).wq->type);
    info.chat_template = f.opt_str(key_name(KeyName::TOKENIZER_CHAT_TEMPLATE)).value_or("");
    MINICPM_LOG_INFO("loaded %s: %s, %lld layers, n_embd %lld, vocab %lld, %.1f MiB of weights on %s (%.1f MiB repacked)",
                     path.c_str(), info.arch.c_str(), (long long) info.n_layer, (long long) info.n_embd,
                     (long long) info.n_vocab, info.weight_bytes / 1048576.0, info.device.c_str(),
                     m->store->bytes_repacked() / 1048576.0);
    return std::shared_ptr<Model>(new Model(std::move(m)));
}

const ModelInfo &    Model::info() const { return impl_->info; }
const Tokenizer &    Model::tokenizer() const { return *impl_->tokenizer; }
const ChatTemplate & Model::chat_template() const { return impl_->chat; }

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

bool Model::has_vision() const { return impl_->vision != nullptr; }

std::shared_ptr<const ImageChunk> Model::encode_image(const uint8_t * rgb, int width, int height,
                                                      const ImageOptions & opts) const {
    const Impl & m = *impl_;
    if (!m.vision) {
        fail(ErrorKind::Unsupported, "model " + m.info.path + " has no vision encoder: convert the MiniCPM-V checkpoint "
                                     "with its vision tower, or load a separate mmproj file");
    }
    if (!rgb || width <= 0 || height <= 0) {
        fail(ErrorKind::InvalidArgument, "image must have a positive width and height, got " + std::to_string(width) +
                                             "x" + std::to_string(height));
    }
    if (opts.max_slice_nums < 0) {
        fail(ErrorKind::InvalidArgument, "max_slice_nums must be >= 1 (0 = model default), got " +
                                             std::to_string(opts.max_slice_nums));
    }
    if (opts.image_id < 0) fail(ErrorKind::InvalidArgument, "image_id must be >= 0");
    SliceConfig cfg = m.vhp.slice_config();
    if (opts.max_slice_nums > 0) cfg.max_slice_nums = opts.max_slice_nums;
    PreprocessedImage pre = preprocess_image(rgb, width, height, cfg);

    std::vector<const ImageSlice *> pieces = {&pre.overview};
    for (const auto & sl : pre.slices) pieces.push_back(&sl);

    auto chunk = std::make_shared<ImageChunk>();
    const bool use_id = opts.use_image_id.value_or(m.vhp.use_image_id);
    chunk->tokens = image_placeholder_tokens(*m.tokenizer, pre.grid, (int) m.vhp.n_query,
                                             use_id ? std::optional<int>(opts.image_id) : std::nullopt,
                                             &chunk->embed_pos);
    if (chunk->embed_pos.size() != pieces.size() * (size_t) m.vhp.n_query) {
        fail(ErrorKind::Internal, "image placeholder has " + std::to_string(chunk->embed_pos.size()) +
                                      " embedding positions, expected " +
                                      std::to_string(pieces.size() * (size_t) m.vhp.n_query));
    }
    {
        std::lock_guard<std::mutex> lock(m.vision_mutex);
        chunk->embeddings = m.vision->encode(pieces);
    }
    chunk->n_embd   = m.vhp.rs_dim;
    chunk->cols     = pre.grid.cols;
    chunk->rows     = pre.grid.rows;
    chunk->n_slices = (int) pieces.size();
    uint64_t h = fnv1a(rgb, (size_t) width * (size_t) height * 3);
    const int meta[5] = {width, height, cfg.max_slice_nums, use_id ? 1 : 0, opts.image_id};
    chunk->hash = fnv1a(meta, sizeof(meta), h);
    return chunk;
}

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
