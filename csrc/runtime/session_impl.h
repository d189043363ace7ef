// Session::Impl, the per-session state behind the public Session, shared by the files that
// implement it: runtime/session.cpp (prompts, evaluation, chat and generation, the public
// methods) and runtime/session_streaming.cpp (streaming audio input and simplex streaming).
// Internal: included by those files only.
#pragma once

#include "runtime/model_impl.h"

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

// ---- shared helpers ---------------------------------------------------------------------------

inline double now_ms() {
    using namespace std::chrono;
    return duration<double, std::milli>(steady_clock::now().time_since_epoch()).count();
}

inline const VisionModel & need_vision(const Model & model) {
    const VisionModel * v = model.impl().vision();
    if (!v) {
        fail(ErrorKind::Unsupported, "model " + model.info().path + " has no vision encoder: convert the MiniCPM-V "
                                     "checkpoint with its vision tower, or load a separate mmproj file");
    }
    return *v;
}

inline const AudioModel & need_audio(const Model & model) {
    const AudioModel * a = model.impl().audio();
    if (!a) {
        fail(ErrorKind::Unsupported, "model " + model.info().path + " has no audio encoder: convert a MiniCPM-o "
                                     "checkpoint with its audio encoder, or load a separate audio file");
    }
    return *a;
}

// The media a session encoded last, so that a conversation passed again each turn does not
// encode its images and audio again. Keyed by content and options.
// The last encoded media chunks of a session, by content key. Least recently used go first,
// except that everything a prompt uses stays until the next prompt begins, however many pieces
// it has (a video of 64 frames without temporal ids is 64 images): a conversation passed again
// each turn then encodes none of them again, while the cache never holds more than the last
// prompt's pieces plus kMax others.
class ImageChunkCache {
public:
    // Prompt building: chunks found or added until end_prompt() are pinned until the next begin.
    void begin_prompt() {
        ++epoch_;
        in_prompt_ = true;
    }
    void end_prompt() { in_prompt_ = false; }

    std::shared_ptr<const ImageChunk> find(uint64_t key) {
        for (auto it = entries_.begin(); it != entries_.end(); ++it) {
            if (it->key != key) continue;
            Entry e = *it;
            entries_.erase(it);
            e.epoch = in_prompt_ ? epoch_ : 0;
            entries_.push_back(e);
            return e.chunk;
        }
        return nullptr;
    }
    void put(uint64_t key, std::shared_ptr<const ImageChunk> c) {
        entries_.push_back(Entry{key, std::move(c), in_prompt_ ? epoch_ : 0});
        // drop the least recently used unpinned entries beyond the capacity
        size_t unpinned = 0;
        for (const Entry & e : entries_) unpinned += !pinned(e);
        for (auto it = entries_.begin(); it != entries_.end() && unpinned > kMax;) {
            if (pinned(*it)) {
                ++it;
            } else {
                it = entries_.erase(it);
                --unpinned;
            }
        }
    }
    void clear() { entries_.clear(); }
    size_t size() const { return entries_.size(); }

private:
    struct Entry {
        uint64_t                          key;
        std::shared_ptr<const ImageChunk> chunk;
        uint64_t                          epoch;   // the prompt that last used it; 0: none
    };
    bool pinned(const Entry & e) const { return e.epoch != 0 && e.epoch == epoch_; }

    static constexpr size_t kMax = 16;
    std::deque<Entry>       entries_;
    uint64_t                epoch_ = 0;
    bool                    in_prompt_ = false;
};

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
        const uint64_t key = content_hash(meta, sizeof(meta), content_hash(rgb, (size_t) w * (size_t) h * 3));
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
        const std::vector<uint64_t> frame_hashes = video_frame_hashes(video);
        uint64_t key = content_hash(frame_hashes.data(), frame_hashes.size() * sizeof(uint64_t), content_hash("video", 5));
        for (const auto & g : video.temporal_ids) {
            const int n = (int) g.size();
            key = content_hash(g.data(), g.size() * sizeof(int), content_hash(&n, sizeof(n), key));
        }
        for (const auto & e : video_cache) {
            if (e.first == key) return e.second;
        }
        const double t0 = now_ms();
        if (!vision) vision = std::make_unique<VisionEncoder>(need_vision(*model), backends, params.debug);
        auto chunks = encode_video_chunks(*vision, model->tokenizer(), video, model->impl().params.max_image_patches,
                                          &frame_hashes);
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
        const uint64_t key = content_hash(meta, sizeof(meta), content_hash(pcm, n * sizeof(float)));
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

    // ---- streaming audio input and simplex streaming (runtime/session_streaming.cpp) ----
    void begin_audio_stream();

    // A generated terminator (<|tts_eos|>, <|im_end|>) is pending, not evaluated: the reference
    // never feeds it back either, so the next prompt continues without it.
    void drop_pending_terminator();

    int encode_stream_chunk(const float * pcm, size_t n, bool is_last);

    int push_audio(const float * pcm, size_t n);

    int end_audio_stream();

    // What streaming_generate's decoder (ChunkPrefillChunkGenerate) never samples: its forbidden
    // punctuation, looked up as convert_tokens_to_ids does (a string the vocabulary does not
    // spell so, as byte-level BPE spells no non-ASCII character, gives the <unk> id), and the
    // tokenizer's bad_token_ids.
    std::vector<int32_t> stream_forbidden_tokens() const;

    void begin_stream_response(GenerationParams p);

    // ---- simplex streaming (streaming_prefill, streaming_generate) ----

    void check_image(const RgbImage & img, const std::string & what) const;

    // Text of a streamed prompt, tokenised as the processor does (<|listen|> deleted).
    std::vector<int32_t> stream_text_tokens(const std::string & text) const;

    // The reference voice of a system message (get_sys_prompt): streaming_prefill encodes it
    // with get_audio_embedding's default chunk_length -1, i.e. full attention, one group.
    std::shared_ptr<const AudioChunk> encode_system_audio(const float * pcm, size_t n);

    // One user audio chunk through the streaming processor and the encoder's cache.
    std::shared_ptr<const AudioChunk> encode_user_chunk(const AudioPcm & in, bool is_last, bool is_first);

    int streaming_prefill(const Message & msg, const StreamingPrefillParams & p);

    void begin_streaming_generate(const StreamingGenerateParams & p);

    ChatPrompt chat_prompt(const std::vector<Message> & messages, const ChatParams & params) {
        // What this prompt uses stays cached until the next one (however many pieces it has).
        struct PromptScope {
            ImageChunkCache & a, & b;
            PromptScope(ImageChunkCache & x, ImageChunkCache & y) : a(x), b(y) {
                a.begin_prompt();
                b.begin_prompt();
            }
            ~PromptScope() {
                a.end_prompt();
                b.end_prompt();
            }
        } scope(image_cache, audio_cache);
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

} // namespace minicpm
