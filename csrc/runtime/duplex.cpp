// Full-duplex sessions (MiniCPM-o 4.5): MiniCPMODuplex (modeling_minicpmo.py: prepare,
// streaming_prefill, streaming_generate, _generate_waveform_from_tokens) and the decoder's
// sampling (utils.py: StreamDecoder.decode) over a Session, the audio encoder's streaming path
// and the speech stages. See minicpm/duplex.h.
#include "minicpm/duplex.h"

#include "core/error.h"
#include "models/audio.h"
#include "preprocess/audio_mel.h"
#include "preprocess/tokenizer.h"
#include "runtime/busy.h"
#include "runtime/duplex_sampling.h"
#include "runtime/duplex_window.h"
#include "runtime/model_impl.h"
#include "runtime/speech_stages.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <deque>
#include <exception>
#include <mutex>
#include <random>
#include <thread>

namespace minicpm {

namespace {

double now_ms() {
    using namespace std::chrono;
    return duration<double, std::milli>(steady_clock::now().time_since_epoch()).count();
}

// MiniCPMODuplex's stream constants (its CHUNK_MS, FIRST_CHUNK_MS, CNN_REDUNDANCY_MS defaults).
constexpr int kChunkMs = 1000, kFirstChunkMs = 1035, kCnnRedundancyMs = 20;
constexpr int kPrefixExtraFrames = 2, kSuffixExtraFrames = 2;   // mel frames of context (not on the first chunk)
constexpr int kTtsCodesPerUnit = 25 + 1;                          // max_token_per_chunk of streaming_generate
constexpr int kDuplexFlushMin = 5;                                // the flush keeps >= look-ahead + 5 codes
constexpr int kSpeechUnitSamples = kSpeechRate;                   // 1 s at 24 kHz (the left padding target)

// Token2wav.stream returns int16 PCM (clip, * 32767, truncation); the duplex turns it back / 32768.
void pcm16_round_trip(std::vector<float> & pcm) {
    for (float & x : pcm) {
        const float c = std::min(1.0f, std::max(-1.0f, x));
        x = (float) (int16_t) (c * 32767.0f) / 32768.0f;
    }
}

struct Ids {
    int32_t unit = -1, unit_end = -1, image = -1, image_end = -1, slice = -1, slice_end = -1;
    int32_t listen = -1, speak = -1, tts_bos = -1, chunk_eos = -1, chunk_tts_eos = -1, turn_eos = -1, tts_pad = -1;
    int32_t placeholder = 0;
};

} // namespace

// ---- the session --------------------------------------------------------------------------------

struct DuplexSession::Impl {
    std::shared_ptr<Model>       model;
    DuplexParams                 p;
    Ids                          id;
    std::vector<int32_t>         forbidden;
    std::unique_ptr<Session>     llm;
    std::unique_ptr<ComputeBackends> audio_backends;
    std::unique_ptr<AudioEncoder> audio_enc;
    std::unique_ptr<StreamingMel> mel;
    std::shared_ptr<SpeechState> speech;
    std::unique_ptr<DuplexWindow> window;
    FlowPrompt                   prompt;
    bool                         has_voice_prompt = false;
    std::vector<float>           ref_audio;        // the voice's 16 kHz recording (LLM system prompt)
    std::shared_ptr<const MediaChunk> ref_chunk;   // its embeddings (encoded once)
    std::atomic<bool>            busy{false};
    std::atomic<bool>            interrupt_pending{false};   // interrupt() while the worker runs

    // per-session state (_reset_streaming_state)
    int                  system_len = 0;
    int                  unit_idx = 0;
    int                  audio_chunk_idx = 0;
    std::vector<float>   audio_buffer;
    bool                 turn_ended = true;
    int                  generate_count = 0;
    std::vector<int32_t> generated;                // StreamDecoder.generated_tokens
    TtsRng               rng{0};
    TtsRng               tts_rng{0};
    uint64_t             seed = 0;
    int64_t              tts_pos = 0;              // tts_text_start_pos
    std::vector<int32_t> t2w_buffer;
    uint64_t             t2w_seed = 0;
    std::vector<int32_t> unit_generated;           // total_ids_in_unit of the last unit (window bookkeeping)
    std::string          unit_text;

    // async
    std::thread                                    worker;
    std::mutex                                     mu;
    std::condition_variable                        cv_in, cv_out;
    std::deque<float>                              in_pcm;
    std::deque<std::pair<size_t, std::vector<std::shared_ptr<const RgbImage>>>> in_frames;   // (sample index, frames)
    size_t                                         in_consumed = 0, in_total = 0;
    std::deque<DuplexUnitResult>                   out;
    std::function<void(const DuplexUnitResult &)>  on_result;
    std::exception_ptr                             worker_error;
    bool                                           async_on = false, stopping = false;

    Impl(std::shared_ptr<Model> m, const DuplexParams & params) : model(std::move(m)), p(params) {}

    int32_t need_token(const char * s) const {
        const int32_t t = model->tokenizer().find_token(s);
        if (t < 0) fail(ErrorKind::Format, "duplex: the vocabulary has no " + std::string(s) + " token (not a MiniCPM-o 4.5 file?)");
        return t;
    }

    void check() {
        const Model & m = *model;
        if (m.info().model_type != "minicpm-o-4.5") {
            fail(ErrorKind::Unsupported, "duplex sessions follow MiniCPM-o 4.5's MiniCPMODuplex; " + m.info().path + " is '" +
                                             m.info().model_type + "'");
        }
        if (!m.has_audio()) {
            fail(ErrorKind::Unsupported, "duplex sessions need the audio encoder: " + m.info().path +
                                             " has none (convert the checkpoint with it, or load the audio file)");
        }
        auto bad = [](const std::string & w) { fail(ErrorKind::InvalidArgument, "duplex: " + w); };
        if (p.max_speak_tokens < 1) bad("max_speak_tokens must be >= 1, got " + std::to_string(p.max_speak_tokens));
        if (p.force_listen_count < 0) bad("force_listen_count must be >= 0");
        if (p.window != "off" && p.window != "basic" && p.window != "context") {
            bad("window must be 'off', 'basic' or 'context', got '" + p.window + "'");
        }
        if (p.window_target_tokens < 1 || p.window_max_tokens < p.window_target_tokens) {
            bad("window_target_tokens must be >= 1 and <= window_max_tokens");
        }
        if (p.context_max_units < 1 || p.max_previous_tokens < 0) bad("context_max_units must be >= 1, max_previous_tokens >= 0");
        if (!(p.temperature > 0.0f) || !std::isfinite(p.temperature)) bad("temperature must be a positive number");
        if (p.top_k < 0) bad("top_k must be >= 0");
        if (!(p.top_p >= 0.0f && p.top_p <= 1.0f)) bad("top_p must be in [0, 1]");
        if (!(p.repetition_penalty > 0.0f) || !std::isfinite(p.repetition_penalty)) bad("repetition_penalty must be > 0");
        if (p.repetition_window < 0) bad("repetition_window must be >= 0");
        if (!(p.length_penalty > 0.0f) || !std::isfinite(p.length_penalty)) bad("length_penalty must be > 0");
        if (p.tts_steps < 1 || p.tts_steps > 1000) bad("tts_steps must be in [1, 1000]");
        if (!(p.tts_temperature > 0.0f) || !(p.tts_repetition_penalty > 0.0f)) bad("tts_temperature and tts_repetition_penalty must be > 0");
        if (p.n_ctx < 64) bad("n_ctx must be >= 64");
        if (p.n_threads < 0) bad("n_threads must be >= 0");
    }

    void init() {
        check();
        const Tokenizer & tok = model->tokenizer();
        id.unit = need_token("<unit>");
        id.unit_end = need_token("</unit>");
        id.image = need_token("<image>");
        id.image_end = need_token("</image>");
        id.slice = need_token("<slice>");
        id.slice_end = need_token("</slice>");
        id.listen = need_token("<|listen|>");
        id.speak = need_token("<|speak|>");
        id.tts_bos = need_token("<|tts_bos|>");
        id.chunk_eos = need_token("<|chunk_eos|>");
        id.chunk_tts_eos = need_token("<|chunk_tts_eos|>");
        id.turn_eos = need_token("<|turn_eos|>");
        id.tts_pad = need_token("<|tts_pad|>");
        const int32_t unk = tok.find_token("<unk>");
        id.placeholder = unk >= 0 ? unk : 0;
        // MiniCPMODuplex.forbidden_token_ids ([<|tts_pad|>] + bad_token_ids) and StreamDecoder's <|chunk_eos|>.
        forbidden.push_back(id.tts_pad);
        for (int32_t t : model->impl().bad_token_ids) forbidden.push_back(t);
        forbidden.push_back(id.chunk_eos);

        SessionParams sp;
        sp.n_ctx = p.n_ctx;
        sp.n_threads = p.n_threads;
        sp.seed = p.seed;
        sp.batch = p.batch;
        llm = std::make_unique<Session>(model, sp);
        audio_backends = std::make_unique<ComputeBackends>(*model->impl().devices, p.n_threads > 0 ? p.n_threads : model->params().n_threads);
        audio_enc = std::make_unique<AudioEncoder>(*model->impl().audio(), *audio_backends);

        std::optional<Voice> voice = p.voice;
        if (p.generate_audio) {
            if (!can_speak(*model)) {
                fail(ErrorKind::Unsupported, model->info().path + " cannot speak (no TTS talker / Token2Wav): set generate_audio "
                                                                  "to false for text-only duplex");
            }
            speech = std::make_shared<SpeechState>(*model, p.n_threads);
            if (!speech->stream_vocoder) {
                fail(ErrorKind::Unsupported, "duplex speech needs the streaming vocoder (cvoc.*, from assets/token2wav/hift.pt)");
            }
            if (!voice) voice = Voice::default_for(*model);
            prompt = voice_prompt(*speech, *voice);
            has_voice_prompt = true;
        } else if (!voice) {
            try {
                voice = Voice::default_for(*model);
            } catch (const Error &) {
                // no default voice: a text-only session without the reference audio in its prompt
            }
        }
        if (voice) ref_audio = voice->audio_16k;
        if (!ref_audio.empty()) {
            AudioPcm pcm;
            pcm.samples = ref_audio;
            std::vector<std::shared_ptr<const AudioChunk>> chunks = llm->encode_audio(pcm);
            auto c = std::make_shared<MediaChunk>();
            c->kind = MediaChunk::Kind::Audio;
            for (const auto & ch : chunks) {
                c->n_embd = ch->n_embd;
                c->embeddings.insert(c->embeddings.end(), ch->embeddings.begin(), ch->embeddings.end());
            }
            const int64_t n = c->n_embd > 0 ? (int64_t) c->embeddings.size() / c->n_embd : 0;
            fill_placeholders(*c, n);
            c->hash = 0x5ef0a0d10ull;
            c->n_samples = (int64_t) ref_audio.size();
            ref_chunk = c;
        }
        prepare();
        const bool warm = p.warmup ? *p.warmup : !audio_backends->main_is_cpu();
        if (speech && warm) warm_speech();
    }

    // Runs the talker's one-row step and Token2Wav's window phases (first, second, later) on
    // placeholder input, then puts their states back as a turn end does: the graphs of a turn's
    // first speaking units exist before the conversation. Each phase runs twice: ggml-cuda
    // captures a graph's CUDA graph on its second run, which cost a turn's first two windows
    // ~90 ms each on an H200 when the phases ran once. No draw is made, so the session's
    // random streams are untouched.
    void warm_speech() {
        TtsContext & tc = *speech->talker;
        const int32_t bos = tc.hparams().audio_bos;
        const std::vector<float> cond = tc.condition(&bos, nullptr, 1);
        for (int32_t i = 0; i < 3; ++i) tc.eval(cond.data(), 1, &i, false);
        tc.clear();
        const std::vector<int32_t> w(kT2wCodesPerWindow + kT2wLookahead, kT2wSilenceCode);
        for (int pass = 0; pass < 2; ++pass) {
            for (int i = 0; i < 4; ++i) token2wav_window(*speech, w, false);
            reset_token2wav();
        }
    }

    void fill_placeholders(MediaChunk & c, int64_t n) const {
        c.tokens.assign((size_t) n, id.placeholder);
        c.embed_pos.resize((size_t) n);
        for (int64_t i = 0; i < n; ++i) c.embed_pos[(size_t) i] = (int32_t) i;
    }

    // ---- context bookkeeping

    void feed_tokens(const std::vector<int32_t> & t) {
        if (!t.empty()) llm->prefill(t);
    }

    void feed_segments(const std::vector<PromptSegment> & segs) { llm->prefill(segs); }

    // The context as ids, -1 at the embedding positions (those hold the placeholder id).
    std::vector<int32_t> context_tokens(int from = 0) const {
        const std::vector<int32_t> & t = llm->tokens();
        std::vector<int32_t> out(t.begin() + from, t.end());
        for (int32_t & x : out) {
            if (x == id.placeholder) x = -1;
        }
        return out;
    }

    // ---- prepare / reset

    void reset_state() {
        unit_idx = 0;
        audio_chunk_idx = 0;
        audio_buffer.clear();
        turn_ended = true;
        generate_count = 0;
        generated.clear();
        seed = p.seed ? *p.seed : derive_speech_seed(std::nullopt, 0);
        rng = TtsRng(seed);
        tts_rng = TtsRng(derive_speech_seed(seed, 1));
        t2w_seed = derive_speech_seed(seed, 2);
        tts_pos = 0;
        t2w_buffer.clear();
    }

    void prepare() {
        llm->reset();
        reset_state();
        // init_streaming_processor: the duplex stream constants; the first chunk padded and cut by the caller.
        StreamingMelConfig mc;
        mc.chunk_ms = kChunkMs;
        mc.first_chunk_ms = kFirstChunkMs;
        mc.cnn_redundancy_ms = kCnnRedundancyMs;
        mc.pad_first_chunk = false;
        mel = std::make_unique<StreamingMel>(mc);
        audio_enc->reset_stream();
        if (speech) {
            speech->talker->clear();
            reset_token2wav();
        }
        DuplexWindowConfig wc;
        wc.mode = p.window;
        wc.basic_high_tokens = p.window_max_tokens;
        wc.basic_low_tokens = p.window_target_tokens;
        wc.context_max_units = p.context_max_units;
        wc.context_previous_max_tokens = p.max_previous_tokens;
        window = std::make_unique<DuplexWindow>(*llm, wc);

        const std::string prefix = p.prefix ? *p.prefix : "<|im_start|>system\n" + p.system + "\n<|audio_start|>";
        const std::string suffix = p.suffix ? *p.suffix : "<|audio_end|><|im_end|>";
        feed_tokens(model->tokenize(prefix, true));
        if (ref_chunk) feed_segments({PromptSegment{{}, ref_chunk}});
        const std::vector<int32_t> suffix_ids = model->tokenize(suffix, true);
        // the reference registers the kept system part only when it has one
        const bool system = !prefix.empty() || !suffix.empty() || ref_chunk;
        if (system && p.window == "context") {
            window->register_system_prompt_with_context(suffix_ids);
            feed_tokens(suffix_ids);
        } else {
            feed_tokens(suffix_ids);
            if (system) window->register_system_prompt();
        }
        system_len = llm->n_past();
    }

    void reset_token2wav() {
        start_token2wav_stream(*speech, prompt, p.tts_steps, t2w_seed);
        t2w_buffer.assign(kT2wLookahead, kT2wSilenceCode);
    }

    // ---- one unit

    std::shared_ptr<MediaChunk> audio_unit_chunk(const float * pcm, size_t n) {
        // streaming_prefill: accumulate; the first chunk is left-padded to FIRST_CHUNK_MS and cut
        // at the processor's chunk size (16480), the rest at 16000.
        audio_buffer.insert(audio_buffer.end(), pcm, pcm + n);
        if (audio_chunk_idx == 0) {
            const size_t required = (size_t) kFirstChunkMs * kAudioRate / 1000;
            if (audio_buffer.size() < required) audio_buffer.insert(audio_buffer.begin(), required - audio_buffer.size(), 0.0f);
        }
        const size_t need = mel->next_chunk_samples();
        if (audio_buffer.size() < need) fail(ErrorKind::Internal, "duplex: audio buffer shorter than a chunk");
        const MelFeatures f = mel->push(audio_buffer.data(), need, false);
        if (f.n_frames <= 0) fail(ErrorKind::Internal, "duplex: the streaming log-mel returned no frames");
        const int prefix = audio_chunk_idx == 0 ? 0 : kPrefixExtraFrames;
        std::vector<float> emb = audio_enc->encode_stream(f.data.data(), f.n_frames, true, prefix, kSuffixExtraFrames);
        // consumed: effective_first_chunk_ms (the hop-aligned first chunk) on the first, then CHUNK_MS
        const size_t consumed = audio_chunk_idx == 0 ? need : (size_t) kChunkMs * kAudioRate / 1000;
        audio_buffer.erase(audio_buffer.begin(), audio_buffer.begin() + (std::ptrdiff_t) std::min(consumed, audio_buffer.size()));
        audio_chunk_idx += 1;
        auto c = std::make_shared<MediaChunk>();
        c->kind = MediaChunk::Kind::Audio;
        c->n_embd = audio_enc->hparams().proj_dim;
        const int64_t rows = (int64_t) emb.size() / c->n_embd;
        c->embeddings = std::move(emb);
        fill_placeholders(*c, rows);
        c->hash = 0xa0d10000ull + (uint64_t) unit_idx;
        c->n_samples = (int64_t) n;
        return c;
    }

    // <image> overview </image> (<slice> piece </slice>)* of each frame (max_slice_nums 1: one piece).
    std::shared_ptr<MediaChunk> frames_chunk(const std::vector<std::shared_ptr<const RgbImage>> & frames) {
        auto c = std::make_shared<MediaChunk>();
        c->kind = MediaChunk::Kind::Image;
        ImageOptions o;
        o.max_slice_nums = 1;
        o.use_image_id = false;
        for (const auto & f : frames) {
            if (!f || f->width <= 0 || f->height <= 0 || f->pixels.size() != (size_t) f->width * (size_t) f->height * 3) {
                fail(ErrorKind::InvalidArgument, "duplex: a frame must be an RGB8 image of width * height * 3 bytes");
            }
            auto img = llm->encode_image(f->pixels.data(), f->width, f->height, o);
            const int pieces = std::max(1, img->n_slices);
            const int64_t rows = (int64_t) img->embeddings.size() / img->n_embd;
            const int64_t per = rows / pieces;
            c->n_embd = img->n_embd;
            for (int k = 0; k < pieces; ++k) {
                c->tokens.push_back(k == 0 ? id.image : id.slice);
                for (int64_t r = 0; r < per; ++r) {
                    c->embed_pos.push_back((int32_t) c->tokens.size());
                    c->tokens.push_back(id.placeholder);
                }
                c->tokens.push_back(k == 0 ? id.image_end : id.slice_end);
            }
            c->embeddings.insert(c->embeddings.end(), img->embeddings.begin(), img->embeddings.end());
            c->n_slices += pieces;
        }
        c->hash = 0x1a6e0000ull + (uint64_t) unit_idx;
        return c;
    }

    DuplexUnitResult step(const float * pcm, size_t n, const std::vector<std::shared_ptr<const RgbImage>> & frames,
                          const std::string & text, const std::vector<std::pair<int32_t, float>> & bias) {
        const double t0 = now_ms();
        if (interrupt_pending.exchange(false)) interrupt();
        const bool has_audio = pcm != nullptr && n > 0;
        if (has_audio && n != (size_t) kDuplexUnitSamples) {
            fail(ErrorKind::InvalidArgument, "duplex: a unit takes " + std::to_string(kDuplexUnitSamples) +
                                                 " samples (1 s at 16 kHz), got " + std::to_string(n));
        }
        if (has_audio) {
            for (size_t i = 0; i < n; ++i) {
                if (!std::isfinite(pcm[i])) fail(ErrorKind::InvalidArgument, "duplex: sample " + std::to_string(i) + " is not finite");
            }
        }
        const int64_t V = model->info().n_vocab;
        for (const auto & b : bias) {
            if (b.first < 0 || b.first >= V) {
                fail(ErrorKind::InvalidArgument, "duplex: logit_bias token " + std::to_string(b.first) + " is out of range [0, " +
                                                     std::to_string(V - 1) + "]");
            }
            if (std::isnan(b.second)) fail(ErrorKind::InvalidArgument, "duplex: logit_bias value is NaN");
        }
        const std::vector<int32_t> text_ids = text.empty() ? std::vector<int32_t>{} : model->tokenize(text, true);
        DuplexUnitResult r;
        r.unit = unit_idx;
        if (!has_audio && frames.empty() && text_ids.empty()) {
            // streaming_prefill's "no input": nothing fed, streaming_generate listens.
            r.audio.assign((size_t) kSpeechUnitSamples, 0.0f);
            r.ms_total = now_ms() - t0;
            return r;
        }
        const bool vision = !frames.empty();
        const bool text_mode = !has_audio && !vision;
        // the unit's worst case must fit (the window runs after it)
        const int budget = 1 + 64 * 10 * (int) frames.size() + 10 + (int) text_ids.size() + p.max_speak_tokens + 2;
        if (llm->n_past() + budget > llm->n_ctx()) {
            fail(ErrorKind::ContextFull, "duplex: the context (" + std::to_string(llm->n_ctx()) + " tokens) is full after " +
                                             std::to_string(unit_idx) + " units: turn the window on or raise n_ctx");
        }

        window->register_unit_start();
        const int unit_from = llm->n_past();
        std::vector<PromptSegment> segs;
        segs.push_back(PromptSegment{{id.unit}, nullptr});
        if (vision) segs.push_back(PromptSegment{{}, frames_chunk(frames)});
        const double t_enc = now_ms();
        if (has_audio) segs.push_back(PromptSegment{{}, audio_unit_chunk(pcm, n)});
        std::vector<float> logits;
        const double t_pre = now_ms();
        r.ms_encoder = t_pre - t_enc;
        if (!text_mode) {
            feed_segments(segs);
            r.ms_prefill = now_ms() - t_pre;
            logits = llm->logits();
            if (!text_ids.empty()) feed_tokens(text_ids);   // after the decision's logits (mixed modes)
        } else {
            std::vector<int32_t> t{id.unit};
            t.insert(t.end(), text_ids.begin(), text_ids.end());
            feed_tokens(t);
            logits = llm->logits();
        }
        if (vision && !has_audio) audio_chunk_idx += 1;

        decode_unit(logits, bias, r, t0);

        // The unit's terminator and </unit> in one evaluation: the reference feeds them one by
        // one and never reads the terminator's logits, so the cache is the same.
        feed_tokens({r.tokens.back(), id.unit_end});
        r.unit_tokens = context_tokens(unit_from);
        const char * mode = vision ? (has_audio ? "omni" : "vision") : (has_audio ? "audio" : "text");
        window->register_unit_end(mode, unit_generated, r.listening, unit_text);
        window->enforce();
        unit_idx += 1;
        r.ms_total = now_ms() - t0;
        return r;
    }

    // streaming_generate's loop; then the talker and Token2Wav when speaking.
    void decode_unit(std::vector<float> logits, const std::vector<std::pair<int32_t, float>> & bias, DuplexUnitResult & r,
                     double t0) {
        const bool force_listen = generate_count < p.force_listen_count;
        generate_count += 1;
        DuplexSampling smp;
        smp.temperature = p.temperature;
        smp.top_k = p.top_k;
        smp.top_p = p.top_p;
        smp.repetition_penalty = p.repetition_penalty;
        smp.repetition_window = p.repetition_window;
        smp.length_penalty = p.length_penalty;
        smp.greedy = p.greedy;
        smp.chunk_eos = id.chunk_eos;
        smp.turn_eos = id.turn_eos;
        smp.forbidden = &forbidden;

        std::vector<int32_t> pair_tokens, unit_ids;
        std::vector<float>   pair_hidden;
        bool is_listen = false, end_of_turn = false;
        const int64_t E = model->info().n_embd;
        for (int j = 0; j < p.max_speak_tokens; ++j) {
            if (j == p.max_speak_tokens - 1) {
                r.tokens.push_back(id.chunk_eos);   // fed with </unit> (step)
                break;
            }
            int32_t t;
            if (force_listen) {
                t = id.listen;
            } else {
                const double t_s = now_ms();
                for (const auto & b : bias) logits[(size_t) b.first] += b.second;
                t = duplex_decode(logits, smp, generated, rng);
                r.ms_sample += now_ms() - t_s;
                if (t == id.listen && !turn_ended) t = id.tts_bos;
            }
            if (j == 0) r.ms_decision = now_ms() - t0;
            r.tokens.push_back(t);
            is_listen = t == id.listen;
            if (t == id.listen || t == id.chunk_eos || t == id.chunk_tts_eos) break;   // fed with </unit> (step)
            turn_ended = false;
            llm->set_capture(true, false);
            feed_tokens({t});
            llm->set_capture(false, false);
            logits = llm->logits();
            end_of_turn = t == id.turn_eos;
            if (end_of_turn) turn_ended = true;
            if (j != 0) {
                const std::vector<float> h = llm->hidden_states(llm->n_past() - 1, 1);
                pair_tokens.push_back(t);
                pair_hidden.insert(pair_hidden.end(), h.begin(), h.begin() + E);
                unit_ids.push_back(t);
            }
        }
        r.ms_llm = now_ms() - t0;
        r.listening = is_listen;
        r.end_of_turn = is_listen ? false : end_of_turn;
        unit_text = unit_ids.empty() ? std::string() : model->detokenize(unit_ids, true);
        unit_generated = unit_ids;
        if (is_listen) {
            // streaming_generate's listen result: no text, silence, nothing for the talker
            r.audio.assign((size_t) kSpeechUnitSamples, 0.0f);
            return;
        }
        r.text = unit_text;
        if (p.capture) {
            r.tts_tokens = pair_tokens;
            r.tts_hidden = pair_hidden;
        }
        if (!p.generate_audio) return;
        speak_unit(pair_tokens, pair_hidden, end_of_turn, r, t0);
    }

    // MiniCPMTTS.generate_chunk: [condition, B] at tts_text_start_pos, then codes fed back; at
    // most 26 draws, EOS masked before min_new; the last draw is never returned.
    std::vector<int32_t> talker_chunk(const std::vector<int32_t> & toks, const std::vector<float> & hidden, int min_new) {
        TtsContext &         tc = *speech->talker;
        const TtsHparams &   hp = tc.hparams();
        std::vector<float>   cond;
        if (!toks.empty()) cond = tc.condition(toks.data(), hidden.data(), (int64_t) toks.size());
        const int32_t        bos = hp.audio_bos;
        const std::vector<float> b = tc.condition(&bos, nullptr, 1);
        cond.insert(cond.end(), b.begin(), b.end());
        const int64_t L = (int64_t) cond.size() / hp.n_embd;
        if (tts_pos + L + kTtsCodesPerUnit > tc.n_ctx()) {
            fail(ErrorKind::ContextFull, "duplex: the spoken turn outgrew the talker's context (" + std::to_string(tc.n_ctx()) +
                                             " positions)");
        }
        std::vector<int32_t> pos((size_t) L);
        for (int64_t i = 0; i < L; ++i) pos[(size_t) i] = (int32_t) (tts_pos + i);
        std::vector<float> logits = tc.eval(cond.data(), L, pos.data(), false);
        TtsSampling s;
        s.temperature = p.tts_temperature;
        s.top_p = 1.0f;
        s.top_k = 0;
        s.repetition_penalty = p.tts_repetition_penalty;
        s.penalty_window = 16;
        std::vector<int32_t> draws;
        for (int t = 0; t < kTtsCodesPerUnit; ++t) {
            if (t > 0) {
                const int32_t            c = draws.back();
                const std::vector<float> e = tc.code_embeddings(&c, 1);
                const int32_t            ps = (int32_t) (tts_pos + L + t - 1);
                logits = tc.eval(e.data(), 1, &ps, false);
            }
            const std::vector<float> pr = tts_probs(logits.data(), hp.n_audio, draws, s, t == 0, hp.eos(), t < min_new);
            const int32_t c = tts_draw(pr, tts_rng);
            draws.push_back(c);
            if (c == hp.eos()) break;
        }
        draws.pop_back();   // new_tokens[:, 0:t]
        tts_pos += L + (int64_t) draws.size();
        return draws;
    }

    void speak_unit(const std::vector<int32_t> & toks, const std::vector<float> & hidden, bool end_of_turn,
                    DuplexUnitResult & r, double t0) {
        BusyGuard guard(speech->busy, "DuplexSession");
        int  min_new = kTtsCodesPerUnit;
        bool force_flush = false;
        if (end_of_turn) min_new = 0;
        if (tts_pos == 0) {
            min_new = 0;
            force_flush = true;
        }
        const double t_talk = now_ms();
        const std::vector<int32_t> codes = talker_chunk(toks, hidden, min_new);
        r.codes = codes;
        const double t_t2w = now_ms();
        r.ms_talker = t_t2w - t_talk;
        if (end_of_turn) {
            speech->talker->clear();
            tts_pos = 0;
        }
        // _generate_waveform_from_tokens
        t2w_buffer.insert(t2w_buffer.end(), codes.begin(), codes.end());
        bool has_chunk_eos = false;
        for (int32_t c : codes) has_chunk_eos |= c == id.listen || c == id.chunk_eos || c == id.chunk_tts_eos;
        std::vector<float> pcm;
        auto emit = [&](const std::vector<int32_t> & w, bool last) {
            std::vector<float> a = token2wav_window(*speech, w, last, &r.ms_flow, &r.ms_vocoder);
            pcm16_round_trip(a);
            if (!a.empty() && r.ms_first_audio == 0) r.ms_first_audio = now_ms() - t0;
            pcm.insert(pcm.end(), a.begin(), a.end());
        };
        const size_t look = kT2wLookahead, win = kT2wCodesPerWindow;
        if (has_chunk_eos || force_flush) {
            while (t2w_buffer.size() >= look + kDuplexFlushMin) {
                const size_t k = std::min(win + look, t2w_buffer.size());
                emit(std::vector<int32_t>(t2w_buffer.begin(), t2w_buffer.begin() + (std::ptrdiff_t) k), false);
                t2w_buffer.erase(t2w_buffer.begin(), t2w_buffer.begin() + (std::ptrdiff_t) std::min(win, k - look));
            }
        } else {
            while (t2w_buffer.size() >= win + look) {
                emit(std::vector<int32_t>(t2w_buffer.begin(), t2w_buffer.begin() + (std::ptrdiff_t) (win + look)), false);
                t2w_buffer.erase(t2w_buffer.begin(), t2w_buffer.begin() + (std::ptrdiff_t) win);
            }
        }
        if (end_of_turn && !t2w_buffer.empty()) {
            emit(t2w_buffer, true);
            t2w_buffer.clear();
        }
        if (!end_of_turn && !pcm.empty() && pcm.size() < (size_t) kSpeechUnitSamples) {
            pcm.insert(pcm.begin(), (size_t) kSpeechUnitSamples - pcm.size(), 0.0f);
        }
        r.audio = std::move(pcm);
        if (end_of_turn) reset_token2wav();
        r.ms_token2wav = now_ms() - t_t2w;
    }

    void interrupt() {
        turn_ended = true;
        if (speech) {
            speech->talker->clear();
            tts_pos = 0;
            reset_token2wav();
        }
    }

    // ---- async

    void worker_loop() {
        for (;;) {
            std::vector<float>                           chunk;
            std::vector<std::shared_ptr<const RgbImage>> fr;
            {
                std::unique_lock<std::mutex> lk(mu);
                cv_in.wait(lk, [&] { return stopping || in_pcm.size() >= (size_t) kDuplexUnitSamples; });
                if (in_pcm.size() < (size_t) kDuplexUnitSamples) return;   // stopping
                chunk.assign(in_pcm.begin(), in_pcm.begin() + kDuplexUnitSamples);
                in_pcm.erase(in_pcm.begin(), in_pcm.begin() + kDuplexUnitSamples);
                const size_t end = in_consumed + (size_t) kDuplexUnitSamples;
                while (!in_frames.empty() && in_frames.front().first < end) {
                    fr.insert(fr.end(), in_frames.front().second.begin(), in_frames.front().second.end());
                    in_frames.pop_front();
                }
                in_consumed = end;
            }
            DuplexUnitResult res;
            try {
                BusyGuard g(busy, "DuplexSession");
                res = step(chunk.data(), chunk.size(), fr, "", {});
            } catch (...) {
                std::lock_guard<std::mutex> lk(mu);
                worker_error = std::current_exception();
                cv_out.notify_all();
                return;
            }
            if (on_result) {
                on_result(res);
            } else {
                std::lock_guard<std::mutex> lk(mu);
                out.push_back(std::move(res));
                cv_out.notify_all();
            }
        }
    }

    void rethrow_worker_error() {
        if (worker_error) {
            std::exception_ptr e = worker_error;
            worker_error = nullptr;
            std::rethrow_exception(e);
        }
    }
};

// ---- public ----------------------------------------------------------------------------------------

DuplexSession::DuplexSession(std::shared_ptr<Model> model, const DuplexParams & params) {
    if (!model) fail(ErrorKind::InvalidArgument, "DuplexSession needs a loaded model");
    impl_ = std::make_unique<Impl>(std::move(model), params);
    impl_->init();
}

DuplexSession::~DuplexSession() {
    if (impl_ && impl_->async_on) {
        try {
            stop_async();
        } catch (...) {
        }
    }
}

DuplexUnitResult DuplexSession::step(const float * pcm, size_t n, const std::vector<std::shared_ptr<const RgbImage>> & frames,
                                     const std::string & text, const std::vector<std::pair<int32_t, float>> & logit_bias) {
    if (impl_->async_on) fail(ErrorKind::InvalidArgument, "duplex: step() while the async mode runs (use push / poll)");
    BusyGuard g(impl_->busy, "DuplexSession");
    return impl_->step(pcm, n, frames, text, logit_bias);
}

void DuplexSession::interrupt() {
    if (impl_->async_on) {
        impl_->interrupt_pending = true;   // the worker ends the turn before its next unit
        return;
    }
    BusyGuard g(impl_->busy, "DuplexSession");
    impl_->interrupt();
}

void DuplexSession::reset() {
    if (impl_->async_on) fail(ErrorKind::InvalidArgument, "duplex: reset() while the async mode runs (stop_async first)");
    BusyGuard g(impl_->busy, "DuplexSession");
    impl_->prepare();
}

void DuplexSession::start_async(std::function<void(const DuplexUnitResult &)> on_result) {
    Impl & s = *impl_;
    if (s.async_on) fail(ErrorKind::InvalidArgument, "duplex: the async mode already runs");
    s.on_result = std::move(on_result);
    s.stopping = false;
    s.worker_error = nullptr;
    s.in_pcm.clear();
    s.in_frames.clear();
    s.in_consumed = s.in_total = 0;
    s.async_on = true;
    s.worker = std::thread([&s] { s.worker_loop(); });
}

void DuplexSession::push(const float * pcm, size_t n, const std::vector<std::shared_ptr<const RgbImage>> & frames) {
    Impl & s = *impl_;
    if (!s.async_on) fail(ErrorKind::InvalidArgument, "duplex: push() needs start_async()");
    if (n > 0 && !pcm) fail(ErrorKind::InvalidArgument, "duplex: push of null samples");
    for (size_t i = 0; i < n; ++i) {
        if (!std::isfinite(pcm[i])) fail(ErrorKind::InvalidArgument, "duplex: sample " + std::to_string(i) + " is not finite");
    }
    std::lock_guard<std::mutex> lk(s.mu);
    s.rethrow_worker_error();
    if (!frames.empty()) s.in_frames.emplace_back(s.in_total, frames);
    s.in_pcm.insert(s.in_pcm.end(), pcm, pcm + n);
    s.in_total += n;
    s.cv_in.notify_all();
}

bool DuplexSession::poll(DuplexUnitResult & out, int timeout_ms) {
    Impl & s = *impl_;
    std::unique_lock<std::mutex> lk(s.mu);
    s.cv_out.wait_for(lk, std::chrono::milliseconds(std::max(0, timeout_ms)), [&] { return !s.out.empty() || s.worker_error; });
    s.rethrow_worker_error();
    if (s.out.empty()) return false;
    out = std::move(s.out.front());
    s.out.pop_front();
    return true;
}

void DuplexSession::stop_async() {
    Impl & s = *impl_;
    if (!s.async_on) return;
    {
        std::lock_guard<std::mutex> lk(s.mu);
        s.stopping = true;
        s.cv_in.notify_all();
    }
    if (s.worker.joinable()) s.worker.join();
    s.async_on = false;
    std::lock_guard<std::mutex> lk(s.mu);
    s.rethrow_worker_error();
}

bool DuplexSession::async_active() const { return impl_->async_on; }

int DuplexSession::n_past() const { return impl_->llm->n_past(); }
std::vector<int32_t> DuplexSession::tokens() const { return impl_->context_tokens(); }
std::vector<int32_t> DuplexSession::positions() const { return impl_->llm->positions(); }
int DuplexSession::system_length() const {
    // the kept system part: the window's (it grows by the "previous" text in context mode)
    const int w = impl_->window ? impl_->window->system_length() : 0;
    return w > 0 ? w : impl_->system_len;
}
int DuplexSession::units() const { return impl_->unit_idx; }
int64_t DuplexSession::n_embd() const { return impl_->model->info().n_embd; }
Session & DuplexSession::session() { return *impl_->llm; }
const DuplexParams & DuplexSession::params() const { return impl_->p; }

} // namespace minicpm
