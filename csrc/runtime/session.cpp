// Session: the per-session state over a shared Model. It owns its backend instances, the LLM
// context (KV cache, decoder runner), the vision encoder (created at the first image), the
// generator, the RNG and the timings; the public methods guard against use from two threads.
#include "session_impl.h"

namespace minicpm {

// ---- ImageEncoder ---------------------------------------------------------------------------

struct ImageEncoder::Impl {
    std::shared_ptr<Model>         model;
    ComputeBackends                backends;
    DebugOptions                   debug;
    std::unique_ptr<VisionEncoder> encoder;   // created at the first image
    std::atomic<bool>              busy{false};

    Impl(std::shared_ptr<Model> m, int n_threads, DebugOptions d)
        : model(std::move(m)), backends(*model->impl().devices, n_threads), debug(std::move(d)) {}

    std::shared_ptr<const ImageChunk> encode(const uint8_t * rgb, int w, int h, const ImageOptions & opts) {
        const VisionModel & vm = need_vision(*model);
        if (!encoder) encoder = std::make_unique<VisionEncoder>(vm, backends, debug);
        return encode_image_chunk(*encoder, model->tokenizer(), rgb, w, h, opts, model->impl().params.max_image_patches);
    }

    std::vector<std::shared_ptr<const ImageChunk>> encode_video(const VideoFrames & video) {
        const VisionModel & vm = need_vision(*model);
        if (!encoder) encoder = std::make_unique<VisionEncoder>(vm, backends, debug);
        return encode_video_chunks(*encoder, model->tokenizer(), video, model->impl().params.max_image_patches);
    }
};

ImageEncoder::ImageEncoder(std::shared_ptr<Model> model, int n_threads, DebugOptions debug) {
    if (!model) fail(ErrorKind::InvalidArgument, "ImageEncoder needs a loaded model");
    if (n_threads < 0) fail(ErrorKind::InvalidArgument, "n_threads must be >= 0, got " + std::to_string(n_threads));
    impl_ = std::make_unique<Impl>(std::move(model), n_threads, std::move(debug));
}

ImageEncoder::~ImageEncoder() = default;

std::shared_ptr<const ImageChunk> ImageEncoder::encode(const uint8_t * rgb, int width, int height,
                                                       const ImageOptions & opts) {
    BusyGuard g(impl_->busy, "ImageEncoder");
    return impl_->encode(rgb, width, height, opts);
}

std::vector<std::shared_ptr<const ImageChunk>> ImageEncoder::encode_video(const VideoFrames & video) {
    BusyGuard g(impl_->busy, "ImageEncoder");
    return impl_->encode_video(video);
}

// ---- Session --------------------------------------------------------------------------------


Session::Session(std::shared_ptr<Model> model, const SessionParams & params) {
    if (!model) fail(ErrorKind::InvalidArgument, "Session needs a loaded model");
    if (params.n_threads < 0) fail(ErrorKind::InvalidArgument, "n_threads must be >= 0, got " + std::to_string(params.n_threads));
    impl_ = std::make_unique<Impl>(std::move(model), params);
}

Session::~Session() = default;

#define MINICPM_SESSION_GUARD BusyGuard busy_guard_(impl_->busy, "Session")

int Session::prefill(const std::vector<int32_t> & toks) {
    MINICPM_SESSION_GUARD;
    return impl_->prefill({PromptSegment{toks, nullptr}});
}

int Session::prefill(const std::vector<PromptSegment> & segs) {
    MINICPM_SESSION_GUARD;
    return impl_->prefill(segs);
}

int Session::sync(const std::vector<int32_t> & toks) {
    MINICPM_SESSION_GUARD;
    return impl_->sync({PromptSegment{toks, nullptr}});
}

int Session::sync(const std::vector<PromptSegment> & segs) {
    MINICPM_SESSION_GUARD;
    return impl_->sync(segs);
}

std::shared_ptr<const ImageChunk> Session::encode_image(const uint8_t * rgb, int width, int height,
                                                        const ImageOptions & opts) {
    MINICPM_SESSION_GUARD;
    return impl_->encode_image(rgb, width, height, opts);
}

std::vector<std::shared_ptr<const AudioChunk>> Session::encode_audio(const AudioPcm & pcm) {
    MINICPM_SESSION_GUARD;
    return impl_->encode_audio(pcm);
}

void Session::begin_audio_stream() {
    MINICPM_SESSION_GUARD;
    impl_->begin_audio_stream();
}

int Session::push_audio(const float * pcm, size_t n) {
    MINICPM_SESSION_GUARD;
    return impl_->push_audio(pcm, n);
}

int Session::end_audio_stream() {
    MINICPM_SESSION_GUARD;
    return impl_->end_audio_stream();
}

void Session::begin_stream_response(const GenerationParams & params) {
    MINICPM_SESSION_GUARD;
    impl_->begin_stream_response(params);
}

bool Session::audio_stream_active() const { return impl_->stream.active; }

int Session::streaming_prefill(const Message & msg, const StreamingPrefillParams & params) {
    MINICPM_SESSION_GUARD;
    return impl_->streaming_prefill(msg, params);
}

bool Session::streaming_started() const { return impl_->simplex.started; }

void Session::begin_streaming_generate(const StreamingGenerateParams & params) {
    MINICPM_SESSION_GUARD;
    impl_->begin_streaming_generate(params);
}

ChatPrompt Session::chat_prompt(const std::vector<Message> & messages, const ChatParams & params) {
    MINICPM_SESSION_GUARD;
    return impl_->chat_prompt(messages, params);
}

ChatPrompt Session::begin_chat(const std::vector<Message> & messages, const ChatParams & params) {
    MINICPM_SESSION_GUARD;
    return impl_->begin_chat(messages, params);
}

std::string Session::chat(const std::vector<Message> & messages, const ChatParams & params,
                          const std::function<void(const std::string &)> & on_text) {
    MINICPM_SESSION_GUARD;
    ChatPrompt prompt = impl_->begin_chat(messages, params);
    std::string answer = prompt.answer_prefix;
    if (on_text && !answer.empty()) on_text(answer);
    for (;;) {
        GenerationStep step = impl_->next();
        if (!step.text.empty()) {
            answer += step.text;
            if (on_text) on_text(step.text);
        }
        if (step.done) break;
    }
    return answer;
}

const std::vector<float> & Session::logits() {
    MINICPM_SESSION_GUARD;
    auto & s = *impl_;
    if (s.ctx.size() == 0) fail(ErrorKind::InvalidArgument, "no logits: the context is empty (prefill a prompt first)");
    s.eval();
    if (!s.ctx.logits_valid()) fail(ErrorKind::InvalidArgument, "no logits available for the last position");
    return s.ctx.logits();
}

void Session::set_capture(bool hidden, bool logits) {
    MINICPM_SESSION_GUARD;
    impl_->ctx.set_capture(hidden, logits);
}

std::vector<float> Session::hidden_states(int first, int n) const {
    BusyGuard busy_guard_(impl_->busy, "Session");
    if (first < 0 || n < 0) fail(ErrorKind::InvalidArgument, "hidden_states: first and n must be >= 0");
    return impl_->ctx.captured_hidden((size_t) first, (size_t) n);
}

std::vector<float> Session::position_logits(int first, int n) const {
    BusyGuard busy_guard_(impl_->busy, "Session");
    if (first < 0 || n < 0) fail(ErrorKind::InvalidArgument, "position_logits: first and n must be >= 0");
    return impl_->ctx.captured_logits((size_t) first, (size_t) n);
}

void Session::remove(int first, int last) {
    MINICPM_SESSION_GUARD;
    if (first < 0 || last < 0) fail(ErrorKind::InvalidArgument, "remove: positions must be >= 0");
    impl_->ctx.remove((size_t) first, (size_t) last);
    impl_->gen.end();
}

void Session::remove(int first, int last, bool realign) {
    if (!realign) return remove(first, last);
    replace(first, last, {});
}

int Session::replace(int first, int last, const std::vector<int32_t> & tokens) {
    MINICPM_SESSION_GUARD;
    auto & s = *impl_;
    if (first < 0 || last < 0) fail(ErrorKind::InvalidArgument, "replace: positions must be >= 0");
    if (first > last || (size_t) last > s.ctx.size()) {
        fail(ErrorKind::InvalidArgument, "range [" + std::to_string(first) + ", " + std::to_string(last) +
                                             ") is outside the context of " + std::to_string(s.ctx.size()) + " entries");
    }
    s.gen.end();
    s.eval();
    const double t0 = now_ms();
    const size_t n = s.ctx.replace((size_t) first, (size_t) last, tokens);
    s.timings.prefill_ms += now_ms() - t0;
    s.timings.n_prefill += (int64_t) n;
    return (int) n;
}

int32_t Session::sample(const SamplingParams & p) {
    MINICPM_SESSION_GUARD;
    auto & s = *impl_;
    const SamplerConfig cfg = p.resolve(s.model->defaults().sampling);
    validate_sampling(cfg);
    if (s.ctx.size() == 0) fail(ErrorKind::InvalidArgument, "no logits: the context is empty (prefill a prompt first)");
    s.eval();
    if (!s.ctx.logits_valid()) fail(ErrorKind::InvalidArgument, "no logits available for the last position");
    const double t0 = now_ms();
    const int32_t id = sample_token(s.ctx.logits().data(), (int64_t) s.ctx.logits().size(), cfg, s.ctx.tokens(), s.rng);
    s.timings.sample_ms += now_ms() - t0;
    return id;
}

void Session::begin_generation(const GenerationParams & params) {
    MINICPM_SESSION_GUARD;
    impl_->begin_generation(params);
}

GenerationStep Session::next() {
    MINICPM_SESSION_GUARD;
    return impl_->next();
}

void Session::reset() {
    MINICPM_SESSION_GUARD;
    impl_->ctx.clear();
    impl_->gen.end();
    if (impl_->audio) impl_->audio->reset_stream();
    impl_->stream = Impl::AudioStreamState{};
    impl_->simplex = Impl::SimplexState{};
}

int  Session::n_past() const { return (int) impl_->ctx.size(); }
int  Session::n_ctx() const { return impl_->ctx.n_ctx(); }
const std::vector<int32_t> & Session::tokens() const { return impl_->ctx.tokens(); }
std::vector<int32_t> Session::positions() const { return impl_->ctx.positions(); }
const Timings & Session::timings() const { return impl_->timings; }
void Session::reset_timings() { impl_->timings = Timings{}; }
const std::shared_ptr<Model> & Session::model() const { return impl_->model; }

// The session's seed, for the default seed of a spoken turn (runtime/speech.cpp).
std::optional<uint64_t> SpeechTurn::session_seed(const Session & session) { return session.impl_->params.seed; }

} // namespace minicpm
