#include "model_impl.h"

#include "core/log.h"
#include "model/names.h"

#include <algorithm>

namespace minicpm {

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
    m->store->load();

    m->all_f32 = true;
    for (const auto & t : f.tensors()) {
        if (t.n_dims >= 2 && t.type != GGML_TYPE_F32) m->all_f32 = false;
    }

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
    info.weight_bytes = m->store->bytes_on_main() + m->store->bytes_on_host();
    info.weight_type = ggml_type_name(m->weights.layers.at(0).wq->type);
    info.chat_template = f.opt_str(key_name(KeyName::TOKENIZER_CHAT_TEMPLATE)).value_or("");
    MINICPM_LOG_INFO("loaded %s: %s, %lld layers, n_embd %lld, vocab %lld, %.1f MiB of weights on %s", path.c_str(),
                     info.arch.c_str(), (long long) info.n_layer, (long long) info.n_embd, (long long) info.n_vocab,
                     info.weight_bytes / 1048576.0, info.device.c_str());
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

bool Model::has_vision() const { return false; }

std::shared_ptr<const ImageChunk> Model::encode_image(const uint8_t *, int, int, const ImageOptions &) const {
    fail(ErrorKind::Unsupported, "model " + impl_->info.path + " has no vision encoder");
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
