// Session: the per-session state over a shared Model. It owns its backend instances, the LLM
// context (KV cache, decoder runner), the vision encoder (created at the first image), the
// generator, the RNG and the timings; the public methods guard against use from two threads.
#include "model_impl.h"

#include "core/hash.h"
#include "runtime/busy.h"
#include "runtime/generator.h"
#include "runtime/llm_context.h"
#include "runtime/prompt.h"
#include "runtime/sampler.h"
#include "minicpm/speech.h"
#include "preprocess/audio_mel.h"
#include "preprocess/tokenizer.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <deque>
#include <random>

namespace minicpm {

namespace {

double now_ms() {
    using namespace std::chrono;
    return duration<double, std::milli>(steady_clock::now().time_since_epoch()).count();
}


const VisionModel & need_vision(const Model & model) {
    const VisionModel * v = model.impl().vision();
    if (!v) {
        fail(ErrorKind::Unsupported, "model " + model.info().path + " has no vision encoder: convert the MiniCPM-V "
                                     "checkpoint with its vision tower, or load a separate mmproj file");
    }
    return *v;
}

const AudioModel & need_audio(const Model & model) {
    const AudioModel * a = model.impl().audio();
    if (!a) {
        fail(ErrorKind::Unsupported, "model " + model.info().path + " has no audio encoder: convert a MiniCPM-o "
                                     "checkpoint with its audio encoder, or load a separate audio file");
    }
    return *a;
}

// The media a session encoded last, so that a conversation passed again each turn does not
// encode its images and audio again. Keyed by content and options.
class ImageChunkCache {
public:
    std::shared_ptr<const ImageChunk> find(uint64_t key) const {
        for (const auto & e : entries_) {
            if (e.first == key) return e.second;
        }
        return nullptr;
    }
    void put(uint64_t key, std::shared_ptr<const ImageChunk> c) {
        entries_.emplace_back(key, std::move(c));
        if (entries_.size() > kMax) entries_.pop_front();
    }
    void clear() { entries_.clear(); }

private:
    static constexpr size_t kMax = 16;
    std::deque<std::pair<uint64_t, std::shared_ptr<const ImageChunk>>> entries_;
};

} // namespace

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

struct Session::Impl {
    std::shared_ptr<Model> model;
    SessionParams          params;
    ComputeBackends        backends;
    LlmContext             ctx;
    std::unique_ptr<VisionEncoder> vision;   // created at the first image
    std::unique_ptr<AudioEncoder>  audio;    // created at the first audio clip
    ImageChunkCache        image_cache;
    ImageChunkCache        audio_cache;
    // The last videos with temporal ids encoded (key: frames, sizes and ids), so that passing a
    // conversation again each turn does not encode its video again.
    std::deque<std::pair<uint64_t, std::vector<std::shared_ptr<const ImageChunk>>>> video_cache;
    Generator              gen;
    std::mt19937_64        rng;
    Timings                timings;
    std::atomic<bool>      busy{false};

    // Streaming audio input (see Session::begin_audio_stream).
    struct AudioStreamState {
        bool                          active = false;
        std::unique_ptr<StreamingMel> mel;
        std::vector<float>            pending;            // samples not yet cut into a chunk
        int64_t                       chunks = 0;         // chunks encoded in this turn
        bool                          any_chunk = false;  // a chunk was encoded in this session
        bool                          answered = false;   // a streamed answer was generated
    } stream;

    // Simplex streaming (streaming_prefill / StreamingTurn): the reference model's session state.
    struct SimplexState {
        bool                          started = false;        // the reference's session_id is set
        bool                          new_user_msg = true;    // the next user message opens a turn
        bool                          llm_generated = false;  // an answer was streamed in this session
        bool                          llm_generate_completed = false;   // never set by streaming_generate
        int64_t                       audio_chunk_idx = 0;    // audio chunks since the processor began
        std::unique_ptr<StreamingMel> mel;
    } simplex;

    Impl(std::shared_ptr<Model> m, const SessionParams & p)
        : model(std::move(m)), params(p), backends(*model->impl().devices, p.n_threads),
          ctx(model->impl().llm(), backends, p, p.batch ? &model->impl().llm_batcher() : nullptr) {
        if (p.seed) rng.seed(*p.seed);
        else rng.seed(std::random_device{}());
    }

    // Evaluates what is pending, accounting the time as prefill (or decode for a single
    // generated token).
    void eval() {
        const double t0 = now_ms();
        const size_t n = ctx.eval_pending();
        const double dt = now_ms() - t0;
        if (n == 0) return;
        timings.prefill_ms += dt;
        timings.n_prefill += (int64_t) n;
    }

    int prefill(const std::vector<PromptSegment> & segs) {
        PendingRun run = flatten_segments(segs, ctx.model().hp);
        if (run.tokens.empty()) return 0;
        ctx.check_fits(run.tokens.size(), "prompt");
        gen.end();
        const size_t before = ctx.size();
        const int n = (int) run.tokens.size();
        ctx.append(std::move(run));
        try {
            eval();
        } catch (...) {
            ctx.truncate(before);   // leave the session as it was before the call
            throw;
        }
        return n;
    }

    int sync(const std::vector<PromptSegment> & segs) {
        PendingRun run = flatten_segments(segs, ctx.model().hp);
        if (run.tokens.size() > (size_t) ctx.n_ctx()) {
            fail(ErrorKind::ContextFull, "prompt of " + std::to_string(run.tokens.size()) +
                                             " tokens does not fit a context of " + std::to_string(ctx.n_ctx()) +
                                             " (raise n_ctx)");
        }
        size_t common = 0;
        const auto & toks = ctx.tokens();
        const auto & tags = ctx.tags();
        while (common < run.tokens.size() && common < ctx.n_eval() && toks[common] == run.tokens[common] &&
               tags[common] == run.tags[common]) {
            ++common;
        }
        // The last position must be evaluated again to get its logits.
        if (common == run.tokens.size() && common > 0) --common;
        ctx.truncate(common);
        gen.end();
        if (common == run.tokens.size()) return 0;
        const int n = (int) (run.tokens.size() - common);
        ctx.append(std::move(run), common);
        try {
            eval();
        } catch (...) {
            ctx.truncate(common);
            throw;
        }
        return n;
    }

    std::shared_ptr<const ImageChunk> encode_image(const uint8_t * rgb, int w, int h, const ImageOptions & opts) {
        if (!rgb || w <= 0 || h <= 0) {
            fail(ErrorKind::InvalidArgument, "image must have a positive width and height, got " + std::to_string(w) +
                                                 "x" + std::to_string(h));
        }
        const int meta[6] = {w, h, opts.max_slice_nums, opts.use_image_id ? 1 + (int) *opts.use_image_id : 0,
                             opts.image_id, 0};
        const uint64_t key = fnv1a(meta, sizeof(meta), fnv1a(rgb, (size_t) w * (size_t) h * 3));
        if (auto hit = image_cache.find(key)) return hit;
        const double t0 = now_ms();
        if (!vision) vision = std::make_unique<VisionEncoder>(need_vision(*model), backends, params.debug);
        auto chunk = encode_image_chunk(*vision, model->tokenizer(), rgb, w, h, opts, model->impl().params.max_image_patches);
        timings.encode_ms += now_ms() - t0;
        timings.n_images += 1;
        image_cache.put(key, chunk);
        return chunk;
    }

    std::vector<std::shared_ptr<const ImageChunk>> encode_video(const VideoFrames & video) {
        check_video_frames(video);
        uint64_t key = fnv1a("video", 5);
        for (const auto & f : video.frames) {
            const int size[2] = {f->width, f->height};
            key = fnv1a(size, sizeof(size), fnv1a(f->pixels.data(), f->pixels.size(), key));
        }
        for (const auto & g : video.temporal_ids) {
            const int n = (int) g.size();
            key = fnv1a(g.data(), g.size() * sizeof(int), fnv1a(&n, sizeof(n), key));
        }
        for (const auto & e : video_cache) {
            if (e.first == key) return e.second;
        }
        const double t0 = now_ms();
        if (!vision) vision = std::make_unique<VisionEncoder>(need_vision(*model), backends, params.debug);
        auto chunks = encode_video_chunks(*vision, model->tokenizer(), video, model->impl().params.max_image_patches);
        timings.encode_ms += now_ms() - t0;
        timings.n_images += (int64_t) chunks.size();
        video_cache.emplace_back(key, chunks);
        if (video_cache.size() > 2) video_cache.pop_front();
        return chunks;
    }

    AudioEncoder & audio_encoder() {
        if (!audio) audio = std::make_unique<AudioEncoder>(need_audio(*model), backends, params.debug);
        return *audio;
    }

    // An audio chunk: its embeddings [n_tok][proj_dim] and placeholder tokens (groups of `group`
    // tokens, 0 = one group).
    std::shared_ptr<MediaChunk> audio_chunk(std::vector<float> emb, size_t n_samples, uint64_t hash, int64_t group) {
        auto chunk = std::make_shared<MediaChunk>();
        chunk->kind = MediaChunk::Kind::Audio;
        chunk->n_embd = audio->hparams().proj_dim;
        chunk->embeddings = std::move(emb);
        const int64_t n_tok = (int64_t) (chunk->embeddings.size() / (size_t) chunk->n_embd);
        chunk->tokens = audio_placeholder_tokens(model->tokenizer(), n_tok, &chunk->embed_pos, group);
        chunk->n_pieces = 1;
        chunk->n_samples = (int64_t) n_samples;
        chunk->hash = hash;
        return chunk;
    }

    // One audio piece (<= 30 s) of a chat whose longest piece has batch_frames mel frames.
    std::shared_ptr<const AudioChunk> encode_audio_piece(const float * pcm, size_t n, int64_t batch_frames) {
        const int64_t meta[2] = {(int64_t) n, batch_frames};
        const uint64_t key = fnv1a(meta, sizeof(meta), fnv1a(pcm, n * sizeof(float)));
        if (auto hit = audio_cache.find(key)) return hit;
        const double t0 = now_ms();
        AudioEncoder & enc = audio_encoder();
        const AudioHparams & hp = enc.hparams();
        const MelFeatures mel = log_mel_clip(pcm, n, backends.n_threads());
        const int64_t group = audio_groups_per_second(*model) ? hp.pooled(AudioHparams::encoder_frames(100)) : 0;
        auto chunk = audio_chunk(enc.encode(mel.data.data(), mel.n_frames, batch_frames, hp.chunk_frames > 0), n, key, group);
        timings.audio_ms += now_ms() - t0;
        timings.n_audio += 1;
        audio_cache.put(key, chunk);
        return chunk;
    }

    std::vector<std::shared_ptr<const AudioChunk>> encode_audio(const AudioPcm & pcm) {
        check_audio(pcm, "audio");
        need_audio(*model);
        const size_t n = pcm.samples.size();
        int64_t batch = 0;
        for (size_t b = 0; b < n; b += kAudioPieceSamples) batch = std::max(batch, audio_mel_frames(std::min(kAudioPieceSamples, n - b)));
        std::vector<std::shared_ptr<const AudioChunk>> out;
        for (size_t b = 0; b < n; b += kAudioPieceSamples) {
            out.push_back(encode_audio_piece(pcm.samples.data() + b, std::min(kAudioPieceSamples, n - b), batch));
        }
        return out;
    }

    // The reference's chunk sizes: 1035 ms first (aligned to the hop), then 1000 ms.
    static constexpr size_t kFirstChunk = 16560, kChunk = 16000;
    // ChunkPrefillChunkGenerate: tokens per LLM chunk and the repetition penalty's window.
    static constexpr int kStreamChunk = 10, kStreamPenaltyWindow = 128;

    void begin_audio_stream() {
        if (audio_groups_per_second(*model)) {
            fail(ErrorKind::Unsupported, "streaming audio input follows MiniCPM-o 4.5's streaming_prefill; MiniCPM-o 2.6 "
                                         "takes audio through chat()");
        }
        if (stream.active) fail(ErrorKind::InvalidArgument, "an audio stream is already open: end_audio_stream() first");
        AudioEncoder & enc = audio_encoder();
        drop_pending_terminator();
        // The turn's opening: streaming_prefill's prompt for the first piece of a user turn. After
        // a streamed answer it is "<|tts_eos|><|im_end|>\n<|im_start|>user\n" whatever ended the
        // answer: streaming_generate never sets llm_generate_completed, and never feeds the
        // terminator it stopped at.
        std::string open = "<|im_start|>user\n";
        if (stream.answered) open = "<|tts_eos|><|im_end|>\n" + open;
        prefill({PromptSegment{model->tokenize(open, true), nullptr}});
        // Every turn starts a new streaming processor and an empty encoder cache.
        stream.mel = std::make_unique<StreamingMel>(StreamingMelConfig{});
        enc.reset_stream();
        stream.pending.clear();
        stream.chunks = 0;
        stream.active = true;
    }

    // A generated terminator (<|tts_eos|>, <|im_end|>) is pending, not evaluated: the reference
    // never feeds it back either, so the next prompt continues without it.
    void drop_pending_terminator() {
        gen.end();
        const size_t n = ctx.size();
        if (n > ctx.n_eval() && n > 0) ctx.truncate(n - 1);
    }

    int encode_stream_chunk(const float * pcm, size_t n, bool is_last) {
        AudioEncoder & enc = audio_encoder();
        const double t0 = now_ms();
        const MelFeatures mel = stream.mel->push(pcm, n, is_last);
        std::vector<float> emb;
        const int64_t c = mel.n_frames > 0 ? AudioHparams::encoder_frames(mel.n_frames) : 0;
        if (c >= enc.hparams().pool_step) emb = enc.encode_stream(mel.data.data(), mel.n_frames);
        // streaming_prefill drops the encoder cache after the first user piece of a session.
        if (!stream.any_chunk) enc.reset_stream();
        stream.any_chunk = true;
        stream.chunks += 1;
        timings.audio_ms += now_ms() - t0;
        if (emb.empty()) return 0;   // a tail too short for one audio token
        const int64_t meta[2] = {(int64_t) n, stream.chunks};
        const uint64_t hash = fnv1a(meta, sizeof(meta), fnv1a(emb.data(), emb.size() * sizeof(float)));
        auto chunk = audio_chunk(std::move(emb), n, hash, 0);
        timings.n_audio += 1;
        return prefill({PromptSegment{{}, chunk}});
    }

    int push_audio(const float * pcm, size_t n) {
        if (!stream.active) fail(ErrorKind::InvalidArgument, "no audio stream is open: call begin_audio_stream() first");
        if (n > 0 && !pcm) fail(ErrorKind::InvalidArgument, "push_audio: null samples");
        for (size_t i = 0; i < n; ++i) {
            if (!std::isfinite(pcm[i])) {
                fail(ErrorKind::InvalidArgument, "push_audio: sample " + std::to_string(i) + " is not finite (NaN or inf)");
            }
        }
        stream.pending.insert(stream.pending.end(), pcm, pcm + n);
        int added = 0;
        size_t at = 0;
        for (;;) {
            const size_t need = stream.chunks == 0 ? kFirstChunk : kChunk;
            if (stream.pending.size() - at < need) break;
            added += encode_stream_chunk(stream.pending.data() + at, need, false);
            at += need;
        }
        stream.pending.erase(stream.pending.begin(), stream.pending.begin() + (std::ptrdiff_t) at);
        return added;
    }

    int end_audio_stream() {
        if (!stream.active) fail(ErrorKind::InvalidArgument, "no audio stream is open");
        int added = 0;
        if (!stream.pending.empty() || stream.chunks == 0) {
            std::vector<float> last = std::move(stream.pending);
            // A first piece shorter than 1035 ms is left-padded with zeros (streaming_prefill).
            if (stream.chunks == 0 && last.size() < kFirstChunk) last.insert(last.begin(), kFirstChunk - last.size(), 0.0f);
            added = encode_stream_chunk(last.data(), last.size(), true);
        }
        stream.pending.clear();
        stream.active = false;
        return added;
    }

    // What streaming_generate's decoder (ChunkPrefillChunkGenerate) never samples: its forbidden
    // punctuation, looked up as convert_tokens_to_ids does (a string the vocabulary does not
    // spell so, as byte-level BPE spells no non-ASCII character, gives the <unk> id), and the
    // tokenizer's bad_token_ids.
    std::vector<int32_t> stream_forbidden_tokens() const {
        static const char * const kForbidden[] = {":", "\xef\xbc\x9a", "\xef\xbc\x9b", "#", "\xe2\x80\x9c",
                                                  "\xe2\x80\x9d", "\xe2\x80\x98", "\xe2\x80\x99", "@", "*",
                                                  "\xe3\x80\x90", "\xe3\x80\x91", "\xe3\x80\x8c", "\xe3\x80\x8d",
                                                  "(", ")", "\xef\xbc\x88", "\xef\xbc\x89", "[", "]", "&", "/", "$"};
        const Tokenizer & tok = model->tokenizer();
        const int32_t unk = tok.find_token("<unk>");
        std::vector<int32_t> out = model->impl().bad_token_ids;
        for (const char * s : kForbidden) {
            const int32_t id = tok.find_token(s);
            if (id >= 0) out.push_back(id);
            else if (unk >= 0) out.push_back(unk);
        }
        return out;
    }

    void begin_stream_response(GenerationParams p) {
        if (stream.active) end_audio_stream();
        // streaming_generate's bos_input.
        std::string bos = "<|im_end|>\n<|im_start|>assistant\n";
        const bool think = model->defaults().enable_thinking.value_or(false) || p.thinking;
        if (!think && model->info().arch == "qwen3") bos += "<think>\n\n</think>\n\n";
        bos += "<|tts_bos|>";
        prefill({PromptSegment{model->tokenize(bos, true), nullptr}});
        // streaming_generate's terminators: <|tts_eos|> and <|im_end|> ("</s>", the third, is not
        // in the vocabulary: <unk>, which is suppressed); <|endoftext|> is sampled as any token.
        const int32_t tts_eos = model->tokenizer().find_token("<|tts_eos|>");
        const int32_t im_end = model->tokenizer().find_token("<|im_end|>");
        if (tts_eos >= 0) p.stop_tokens.push_back(tts_eos);
        if (im_end >= 0) {
            p.stop_tokens.push_back(im_end);
            p.stop_at_end_of_turn = false;
        }
        const std::vector<int32_t> forbidden = stream_forbidden_tokens();
        p.suppress_tokens.insert(p.suppress_tokens.end(), forbidden.begin(), forbidden.end());
        begin_generation(p);
        stream.answered = true;
    }

    // ---- simplex streaming (streaming_prefill, streaming_generate) ----

    void check_image(const RgbImage & img, const std::string & what) const {
        if (img.width <= 0 || img.height <= 0 || img.pixels.size() != (size_t) img.width * (size_t) img.height * 3) {
            fail(ErrorKind::InvalidArgument, what + ": image of " + std::to_string(img.width) + "x" +
                                                 std::to_string(img.height) + " has " + std::to_string(img.pixels.size()) +
                                                 " bytes, expected width * height * 3");
        }
    }

    // Text of a streamed prompt, tokenised as the processor does (<|listen|> deleted).
    std::vector<int32_t> stream_text_tokens(const std::string & text) const {
        std::vector<int32_t> ids = model->tokenize(text, true);
        const int32_t listen = model->tokenizer().find_token("<|listen|>");
        if (listen >= 0) ids.erase(std::remove(ids.begin(), ids.end(), listen), ids.end());
        return ids;
    }

    // The reference voice of a system message (get_sys_prompt): streaming_prefill encodes it
    // with get_audio_embedding's default chunk_length -1, i.e. full attention, one group.
    std::shared_ptr<const AudioChunk> encode_system_audio(const float * pcm, size_t n) {
        const double t0 = now_ms();
        AudioEncoder & enc = audio_encoder();
        const MelFeatures mel = log_mel_clip(pcm, n, backends.n_threads());
        const int64_t meta[2] = {(int64_t) n, -1};
        auto chunk = audio_chunk(enc.encode(mel.data.data(), mel.n_frames, mel.n_frames, false), n,
                                 fnv1a(meta, sizeof(meta), fnv1a(pcm, n * sizeof(float))), 0);
        timings.audio_ms += now_ms() - t0;
        timings.n_audio += 1;
        return chunk;
    }

    // One user audio chunk through the streaming processor and the encoder's cache.
    std::shared_ptr<const AudioChunk> encode_user_chunk(const AudioPcm & in, bool is_last, bool is_first) {
        AudioEncoder & enc = audio_encoder();
        const AudioHparams & hp = enc.hparams();
        std::vector<float> pcm = in.samples;
        // streaming_prefill: the first audio chunk of a turn is left-padded to FIRST_CHUNK_MS.
        if (simplex.audio_chunk_idx == 0 && pcm.size() < kFirstChunk) pcm.insert(pcm.begin(), kFirstChunk - pcm.size(), 0.0f);
        const double t0 = now_ms();
        // get_audio_placeholder: the positions follow from the sample count; the rows from the
        // frames the streaming log-mel emits. The reference raises when they differ.
        const int64_t n_pos = hp.pooled(AudioHparams::encoder_frames(audio_mel_frames(pcm.size())));
        const StreamingMel before = *simplex.mel;
        const MelFeatures mel = simplex.mel->push(pcm.data(), pcm.size(), is_last);
        const int64_t n_enc = mel.n_frames > 0 ? AudioHparams::encoder_frames(mel.n_frames) : 0;
        const int64_t rows = hp.pooled(n_enc);
        if (rows < 1 || rows != n_pos) {
            *simplex.mel = before;
            fail(ErrorKind::InvalidArgument,
                 "streaming_prefill: the audio chunk of " + std::to_string(pcm.size()) + " samples has " + std::to_string(n_pos) +
                     " audio positions, but the " + std::to_string(mel.n_frames) + " mel frames the stream emits for it give " +
                     std::to_string(rows) + " embeddings (the reference raises here): send 1 s chunks (16000 samples; "
                     "the first of a turn up to 16560), a shorter last one with is_last_chunk");
        }
        std::vector<float> emb = enc.encode_stream(mel.data.data(), mel.n_frames);
        // streaming_prefill drops the encoder cache after the first call of a session.
        if (is_first) enc.reset_stream();
        simplex.audio_chunk_idx += 1;
        timings.audio_ms += now_ms() - t0;
        timings.n_audio += 1;
        const int64_t meta[2] = {(int64_t) pcm.size(), simplex.audio_chunk_idx};
        const uint64_t hash = fnv1a(meta, sizeof(meta), fnv1a(emb.data(), emb.size() * sizeof(float)));
        return audio_chunk(std::move(emb), pcm.size(), hash, 0);
    }

    int streaming_prefill(const Message & msg, const StreamingPrefillParams & p) {
        const std::string & role = msg.role;
        if (role != "system" && role != "user" && role != "assistant") {
            fail(ErrorKind::InvalidArgument, "streaming_prefill: the role must be \"system\", \"user\" or \"assistant\", got \"" + role + "\"");
        }
        if (stream.active) fail(ErrorKind::InvalidArgument, "streaming_prefill: an audio stream is open (end_audio_stream() first)");
        if (p.max_slice_nums < 1) {
            fail(ErrorKind::InvalidArgument, "streaming_prefill: max_slice_nums must be >= 1, got " + std::to_string(p.max_slice_nums));
        }
        const bool streamed = role != "system";   // the reference's is_not_system_prefill
        size_t n_audio = 0;
        for (size_t i = 0; i < msg.content.size(); ++i) {
            const ContentPart & part = msg.content[i];
            const std::string what = "streaming_prefill part " + std::to_string(i);
            switch (part.type) {
            case ContentPart::Type::Text: break;
            case ContentPart::Type::Image:
                if (!part.image) fail(ErrorKind::InvalidArgument, what + ": image part without an image");
                check_image(*part.image, what);
                need_vision(*model);
                break;
            case ContentPart::Type::Audio:
                if (!part.audio) fail(ErrorKind::InvalidArgument, what + ": audio part without audio");
                check_audio(*part.audio, what);
                need_audio(*model);
                if (audio_groups_per_second(*model)) {
                    fail(ErrorKind::Unsupported, "streaming_prefill follows MiniCPM-o 4.5; MiniCPM-o 2.6 takes audio through chat()");
                }
                if (role == "assistant") fail(ErrorKind::InvalidArgument, what + ": audio in an assistant message is not supported");
                if (!streamed && part.audio->samples.size() > kAudioPieceSamples) {
                    fail(ErrorKind::InvalidArgument, what + ": the system prompt's audio must be at most 30 s, got " +
                                                         std::to_string(part.audio->samples.size() / kAudioRate) + " s");
                }
                ++n_audio;
                break;
            case ContentPart::Type::Video:
                fail(ErrorKind::InvalidArgument, what + ": streaming_prefill takes text, image and audio parts "
                                                        "(send a video as its frames and 1 s audio chunks)");
            }
        }
        if (streamed && n_audio > 1) {
            fail(ErrorKind::InvalidArgument, "streaming_prefill: one audio chunk per call (the reference's streaming mode takes "
                                             "a single audio), got " + std::to_string(n_audio));
        }
        drop_pending_terminator();
        const bool is_first = !simplex.started;
        if (is_first || !simplex.mel) {
            // reset_session + init_streaming_processor
            simplex.mel = std::make_unique<StreamingMel>(StreamingMelConfig{});
            simplex.audio_chunk_idx = 0;
        }
        if ((is_first || role != "user") && audio) audio->reset_stream();
        ImageOptions io;
        io.max_slice_nums = p.max_slice_nums;
        io.use_image_id = false;
        std::vector<PromptSegment> segs;
        if (is_first && role != "user") {
            // a first system / assistant message: the chat template without generation prompt
            ChatParams cp;
            cp.omni_mode = p.omni_mode;
            cp.add_generation_prompt = false;
            cp.use_tts_template = p.use_tts_template;
            cp.enable_thinking = p.enable_thinking;
            cp.max_slice_nums = p.max_slice_nums;
            cp.use_image_id = false;
            ChatPrompt cpr = build_chat_prompt(
                *model, {msg}, cp,
                [&](const RgbImage & img, const ImageOptions &) { return encode_image(img.pixels.data(), img.width, img.height, io); },
                [&](const float * pcm, size_t n, int64_t) { return encode_system_audio(pcm, n); });
            segs = std::move(cpr.segments);
        } else {
            std::string text;
            if (is_first) {
                text = "<|im_start|>user\n";
            } else if (simplex.new_user_msg && role == "user") {
                text = !simplex.llm_generated           ? "<|im_start|>user\n"
                       : simplex.llm_generate_completed ? "<|im_end|>\n<|im_start|>user\n"
                                                        : "<|tts_eos|><|im_end|>\n<|im_start|>user\n";
            }
            auto flush_text = [&]() {
                if (!text.empty()) segs.push_back(PromptSegment{stream_text_tokens(text), nullptr});
                text.clear();
            };
            const std::string sep = p.omni_mode ? "" : "\n";
            for (size_t i = 0; i < msg.content.size(); ++i) {
                const ContentPart & part = msg.content[i];
                if (i > 0) text += sep;
                if (part.type == ContentPart::Type::Text) {
                    text += part.text;
                    continue;
                }
                flush_text();
                if (part.type == ContentPart::Type::Image) {
                    segs.push_back(PromptSegment{{}, encode_image(part.image->pixels.data(), part.image->width, part.image->height, io)});
                } else if (streamed) {
                    segs.push_back(PromptSegment{{}, encode_user_chunk(*part.audio, p.is_last_chunk, is_first)});
                } else {
                    segs.push_back(PromptSegment{{}, encode_system_audio(part.audio->samples.data(), part.audio->samples.size())});
                }
            }
            flush_text();
        }
        if (is_first) {
            // reset_session: a new streaming session starts from an empty context
            ctx.clear();
            gen.end();
            simplex.llm_generated = false;
            simplex.llm_generate_completed = false;
            simplex.new_user_msg = true;
        }
        const int n = prefill(segs);
        simplex.started = true;
        if (role != "user") simplex.new_user_msg = true;
        else simplex.new_user_msg = false;
        return n;
    }

    void begin_streaming_generate(const StreamingGenerateParams & p) {
        if (!simplex.started) {
            fail(ErrorKind::InvalidArgument, "streaming_generate: nothing was prefilled: call streaming_prefill first "
                                             "(a system prompt, the user's chunks)");
        }
        if (stream.active) fail(ErrorKind::InvalidArgument, "streaming_generate: an audio stream is open (end_audio_stream() first)");
        if (p.max_new_tokens < 1) {
            fail(ErrorKind::InvalidArgument, "streaming_generate: max_new_tokens must be >= 1, got " + std::to_string(p.max_new_tokens));
        }
        GenerationParams g;
        g.sampling.temperature = p.do_sample ? p.temperature : 0.0f;
        g.sampling.top_p = p.do_sample ? p.top_p : 1.0f;
        g.sampling.top_k = p.do_sample ? p.top_k : 0;
        g.sampling.min_p = 0.0f;
        g.sampling.presence_penalty = 0.0f;
        g.sampling.repeat_penalty = p.repetition_penalty;
        g.sampling.repeat_last_n = kStreamPenaltyWindow;
        validate_sampling(g.sampling.resolve(SamplerConfig{}));
        // ChunkPrefillChunkGenerate: ceil(max_new_tokens / 10) chunks, the first draws 11 tokens
        // and each later one 10; the last draw of the last chunk is never fed nor yielded.
        const int64_t chunks = ((int64_t) p.max_new_tokens + kStreamChunk - 1) / kStreamChunk;
        g.max_tokens = (int) std::min<int64_t>(1 + chunks * kStreamChunk, 1 << 30);
        g.answer_penalty_chunk = kStreamChunk;
        g.stop_at_end_of_turn = false;
        g.skip_special = false;
        // streaming_generate's terminators ("</s>" is not in the vocabulary: convert_tokens_to_ids
        // gives <unk>, which the decoder also suppresses).
        const Tokenizer & tok = model->tokenizer();
        for (const char * t : {"<|tts_eos|>", "<|im_end|>", "</s>"}) {
            int32_t id = tok.find_token(t);
            if (id < 0) id = tok.find_token("<unk>");
            if (id >= 0) g.stop_tokens.push_back(id);
        }
        g.suppress_tokens = stream_forbidden_tokens();
        std::string bos;
        if (p.bos_input) {
            bos = *p.bos_input;
        } else {
            bos = "<|im_end|>\n<|im_start|>assistant\n";
            if (!p.enable_thinking && model->info().arch == "qwen3") bos += "<think>\n\n</think>\n\n";
            if (p.use_tts_template) bos += "<|tts_bos|>";
        }
        const std::vector<int32_t> bos_ids = model->tokenize(bos, true);
        if (bos_ids.empty()) fail(ErrorKind::InvalidArgument, "streaming_generate: bos_input is empty");
        drop_pending_terminator();
        ctx.check_fits(bos_ids.size(), "streaming_generate's assistant prompt");
        // the reference's turn bookkeeping, then init_streaming_processor
        simplex.new_user_msg = true;
        simplex.llm_generated = true;
        simplex.llm_generate_completed = false;
        if (audio) audio->reset_stream();
        simplex.mel = std::make_unique<StreamingMel>(StreamingMelConfig{});
        simplex.audio_chunk_idx = 0;
        if (p.generate_audio) ctx.set_capture(true, ctx.capture_logits());
        prefill({PromptSegment{bos_ids, nullptr}});
        begin_generation(g);
    }

    ChatPrompt chat_prompt(const std::vector<Message> & messages, const ChatParams & params) {
        return build_chat_prompt(
            *model, messages, params,
            [&](const RgbImage & img, const ImageOptions & o) {
                if (img.width <= 0 || img.height <= 0 ||
                    img.pixels.size() != (size_t) img.width * (size_t) img.height * 3) {
                    fail(ErrorKind::InvalidArgument, "image of " + std::to_string(img.width) + "x" +
                                                         std::to_string(img.height) + " has " +
                                                         std::to_string(img.pixels.size()) +
                                                         " bytes, expected width * height * 3");
                }
                return encode_image(img.pixels.data(), img.width, img.height, o);
            },
            [&](const float * pcm, size_t n, int64_t batch_frames) { return encode_audio_piece(pcm, n, batch_frames); },
            [&](const VideoFrames & v) { return encode_video(v); });
    }

    void begin_generation(GenerationParams p) {
        if (ctx.size() == 0) fail(ErrorKind::InvalidArgument, "cannot generate on an empty context: prefill a prompt first");
        const GenerationDefaults & d = model->defaults();
        const SamplerConfig sampler = p.sampling.resolve(p.thinking ? d.sampling_think : d.sampling);
        gen.begin(p, sampler, p.max_tokens.value_or(d.max_tokens), model->tokenizer());
    }

    ChatPrompt begin_chat(const std::vector<Message> & messages, const ChatParams & params_in) {
        ChatParams params = params_in;
        if (params.speech) params.use_tts_template = true;
        ChatPrompt prompt = chat_prompt(messages, params);
        if (params.speech) ctx.set_capture(true, ctx.capture_logits());
        sync(prompt.segments);
        GenerationParams g = params.generation;
        g.thinking = prompt.thinking;
        g.stop_tokens.insert(g.stop_tokens.end(), prompt.stop_tokens.begin(), prompt.stop_tokens.end());
        if (params.speech) {
            // streaming_generate's terminators and suppressed tokens (see begin_stream_response).
            const int32_t im_end = model->tokenizer().find_token("<|im_end|>");
            if (im_end >= 0) {
                g.stop_tokens.push_back(im_end);
                g.stop_at_end_of_turn = false;
            }
            const std::vector<int32_t> forbidden = stream_forbidden_tokens();
            g.suppress_tokens.insert(g.suppress_tokens.end(), forbidden.begin(), forbidden.end());
        }
        begin_generation(g);
        return prompt;
    }

    GenerationStep next() {
        double eval_ms = 0, sample_ms = 0;
        const size_t n_eval_before = ctx.n_eval();
        GenerationStep step = gen.next(ctx, *model, rng, eval_ms, sample_ms);
        timings.sample_ms += sample_ms;
        const size_t evaluated = ctx.n_eval() - std::min(ctx.n_eval(), n_eval_before);
        if (evaluated == 1) {
            timings.decode_ms += eval_ms;
            timings.n_decode += 1;
        } else if (evaluated > 1) {
            timings.prefill_ms += eval_ms;
            timings.n_prefill += (int64_t) evaluated;
        }
        return step;
    }
};

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
