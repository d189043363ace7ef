// One spoken turn (MiniCPM-o 4.5): the LLM answer with its hidden states, the TTS talker fed
// in chunks of 10 text tokens, and Token2Wav in 1 s windows (flow push + the streaming causal
// vocoder) or over the whole answer (flow_mel + the original HiFT). See minicpm/speech.h.
#include "minicpm/speech.h"

#include "core/backend.h"
#include "core/error.h"
#include "core/gguf_file.h"
#include "models/causal_vocoder.h"
#include "models/flow.h"
#include "models/hift.h"
#include "models/tts.h"
#include "runtime/busy.h"
#include "runtime/model_impl.h"
#include "runtime/speech_stages.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <deque>
#include <random>
#include <string>
#include <vector>

namespace minicpm {

namespace {

// The layout of streaming_generate / Token2wav.stream (reference constants, not file metadata:
// the official code has them as literals of the turn, not of a checkpoint).
constexpr size_t  kTextChunk = 10;           // generate_chunk_size
constexpr size_t  kCodesPerWindow = kT2wCodesPerWindow;
constexpr size_t  kLookahead = kT2wLookahead;
constexpr int32_t kSilenceCode = kT2wSilenceCode;
constexpr int32_t kMaxCodesPerChunk = 500;   // TTSStreamingGenerator's per-chunk limit
constexpr int     kTokenMelRatio = 2;        // prompt mel frames per prompt token (Voice)

const char * const kVoiceArch = "minicpm-voice";
constexpr uint32_t kVoiceVersion = 1;

template <typename T>
const T * comp(const Model & m, const char * kind) {
    const auto & c = m.impl().components;
    auto it = c.find(kind);
    return it == c.end() ? nullptr : static_cast<const T *>(it->second.get());
}

std::string model_path(const Model & m) {
    const auto & f = m.impl().files;
    return f.empty() ? m.info().path : f.front()->path();
}

// [frames][n_mel] -> [n_mel][frames] (the flow's rows to the vocoders' layout).
std::vector<float> transpose(const std::vector<float> & v, int64_t n_mel) {
    const int64_t      n = n_mel > 0 ? (int64_t) v.size() / n_mel : 0;
    std::vector<float> out(v.size());
    for (int64_t t = 0; t < n; ++t) {
        for (int64_t c = 0; c < n_mel; ++c) out[(size_t) (c * n + t)] = v[(size_t) (t * n_mel + c)];
    }
    return out;
}

} // namespace

// ---- Voice ------------------------------------------------------------------------------------

void Voice::validate() const {
    auto bad = [](const std::string & what) { fail(ErrorKind::InvalidArgument, "voice: " + what); };
    if (tokens.empty()) bad("no prompt speech tokens");
    for (int32_t t : tokens) {
        if (t < 0) bad("prompt speech token " + std::to_string(t) + " is negative");
    }
    if (speaker.empty()) bad("no speaker vector");
    for (float v : speaker) {
        if (!std::isfinite(v)) bad("the speaker vector is not finite");
    }
    if (n_mel <= 0) bad("n_mel must be > 0");
    const size_t want = (size_t) kTokenMelRatio * tokens.size() * (size_t) n_mel;
    if (prompt_mel.size() != want) {
        bad("the prompt mel must be [" + std::to_string(kTokenMelRatio) + " x " + std::to_string(tokens.size()) + " tokens][" +
            std::to_string(n_mel) + "] = " + std::to_string(want) + " values, got " + std::to_string(prompt_mel.size()));
    }
    for (float v : prompt_mel) {
        if (!std::isfinite(v)) bad("the prompt mel is not finite");
    }
}

Voice Voice::load(const std::string & path, bool embedded) {
    GgufFile f(path);
    auto bad = [&](const std::string & what) { fail(ErrorKind::Format, path + ": " + what); };
    if (!f.find_tensor("voice.tokens")) bad("not a voice file (no voice.tokens tensor)");
    if (!embedded) {
        const auto arch = f.opt_str("general.architecture");
        if (!arch || *arch != kVoiceArch) bad(std::string("not a voice file (general.architecture is not '") + kVoiceArch + "')");
    }
    if (f.get_u32("voice.version") != kVoiceVersion) {
        bad("voice file version " + std::to_string(f.get_u32("voice.version")) + ", expected " + std::to_string(kVoiceVersion));
    }
    const int64_t n = f.get_u32("voice.n_tokens"), d = f.get_u32("voice.speaker_dim"), bins = f.get_u32("voice.mel_bins");
    if (n < 1 || n > (1 << 20) || d < 1 || d > (1 << 16) || bins < 1 || bins > (1 << 12)) {
        bad("voice sizes out of range (n_tokens " + std::to_string(n) + ", speaker_dim " + std::to_string(d) + ", mel_bins " +
            std::to_string(bins) + ")");
    }
    auto tensor = [&](const char * name, ggml_type type, std::vector<int64_t> shape, bool required) -> const TensorInfo * {
        const TensorInfo * t = f.find_tensor(name);
        if (!t) {
            if (required) bad(std::string("voice tensor ") + name + " missing");
            return nullptr;
        }
        bool ok = t->type == type && (shape.empty() ? t->n_dims == 1 : t->n_dims == (int) shape.size());
        for (size_t i = 0; ok && i < shape.size(); ++i) ok = t->ne[i] == shape[i];
        if (!ok) {
            bad(std::string("voice tensor ") + name + " is " + ggml_type_name(t->type) + " " + shape_str(t->ne, t->n_dims) +
                ", expected " + ggml_type_name(type) + (shape.empty() ? std::string(" 1-D") : " " + shape_str(shape.data(), (int) shape.size())));
        }
        return t;
    };
    const TensorInfo * tt = tensor("voice.tokens", GGML_TYPE_I32, {n}, true);
    const TensorInfo * ts = tensor("voice.speaker", GGML_TYPE_F32, {d}, true);
    const TensorInfo * tm = tensor("voice.prompt_mel", GGML_TYPE_F32, {bins, kTokenMelRatio * n}, true);
    const TensorInfo * ta = tensor("voice.audio_16k", GGML_TYPE_F32, {}, false);
    const uint8_t * base = f.mapping().data();
    Voice v;
    v.tokens.resize((size_t) n);
    std::memcpy(v.tokens.data(), base + tt->offset, v.tokens.size() * sizeof(int32_t));
    v.speaker.resize((size_t) d);
    std::memcpy(v.speaker.data(), base + ts->offset, v.speaker.size() * sizeof(float));
    v.prompt_mel.resize((size_t) (kTokenMelRatio * n * bins));
    std::memcpy(v.prompt_mel.data(), base + tm->offset, v.prompt_mel.size() * sizeof(float));
    v.n_mel = bins;
    v.source_sample_rate = (int) f.get_u32("voice.source_sample_rate");
    if (ta) {
        v.audio_16k.resize((size_t) ta->ne[0]);
        std::memcpy(v.audio_16k.data(), base + ta->offset, v.audio_16k.size() * sizeof(float));
        for (float x : v.audio_16k) {
            if (!std::isfinite(x)) bad("voice tensor voice.audio_16k is not finite");
        }
    }
    try {
        v.validate();
    } catch (const Error & e) {
        bad(e.what());
    }
    return v;
}

Voice Voice::default_for(const Model & model) {
    for (const auto & f : model.impl().files) {
        if (f->find_tensor("voice.tokens")) return Voice::load(f->path(), /*embedded=*/true);
    }
    fail(ErrorKind::Unsupported, model_path(model) + " has no default voice: give one (Python: voice=model.voice('reference.wav'); "
                                                    "C++: SpeechParams::voice = Voice::load(\"ref.voice.gguf\"))");
}

bool can_speak(const Model & model) {
    return model.has_component("tts") && model.has_component("flow") &&
           (model.has_component("hift") || model.has_component("cvoc"));
}

// ---- the session's stage states --------------------------------------------------------------

SpeechState::SpeechState(const Model & m, int n_threads) {
    const std::string path = model_path(m);
    tts = comp<TtsModel>(m, "tts");
    flow = comp<FlowModel>(m, "flow");
    hift = comp<HiftModel>(m, "hift");
    cvoc = comp<CausalVocoderModel>(m, "cvoc");
    auto cannot = [&](const std::string & what) {
        fail(ErrorKind::Unsupported, path + " cannot speak: it has no " + what +
                                         "; convert a MiniCPM-o 4.5 checkpoint with its assets/token2wav folder");
    };
    if (!tts) cannot("TTS talker (tts.*)");
    if (!flow) cannot("Token2Wav flow (t2w.flow.*)");
    if (!hift && !cvoc) cannot("vocoder (HiFT)");
    if (tts->hp.llm_dim != m.info().n_embd) {
        fail(ErrorKind::Format, path + ": the TTS projector takes " + std::to_string(tts->hp.llm_dim) +
                                    "-d hidden states, the LLM has " + std::to_string(m.info().n_embd));
    }
    backends = std::make_unique<ComputeBackends>(*m.impl().devices, n_threads > 0 ? n_threads : m.params().n_threads);
    talker = std::make_unique<TtsContext>(*tts, *backends, 0);
    flow_runner = std::make_unique<FlowRunner>(*flow, *backends);
    if (hift) vocoder = std::make_unique<Vocoder>(*hift, *backends);
    if (cvoc) stream_vocoder = std::make_unique<CausalVocoder>(*cvoc, *backends);
}

FlowPrompt voice_prompt(const SpeechState & st, const Voice & voice) {
    voice.validate();
    const FlowHparams & fh = st.flow->hp;
    if ((int64_t) voice.speaker.size() != fh.n_spk) {
        fail(ErrorKind::InvalidArgument, "voice: the speaker vector has " + std::to_string(voice.speaker.size()) +
                                             " values, the flow model takes " + std::to_string(fh.n_spk));
    }
    if (voice.n_mel != fh.n_mel) {
        fail(ErrorKind::InvalidArgument, "voice: the prompt mel has " + std::to_string(voice.n_mel) + " bins, the flow model " +
                                             std::to_string(fh.n_mel));
    }
    for (int32_t t : voice.tokens) {
        if (t >= fh.n_vocab) {
            fail(ErrorKind::InvalidArgument, "voice: prompt speech token " + std::to_string(t) + " is out of range [0, " +
                                                 std::to_string(fh.n_vocab - 1) + "]");
        }
    }
    FlowPrompt p;
    p.tokens = voice.tokens;
    p.mel = voice.prompt_mel;
    p.spk = voice.speaker;
    return p;
}

uint64_t derive_speech_seed(const std::optional<uint64_t> & base, uint64_t counter) {
    if (base) {
        const unsigned __int128 v = (unsigned __int128) *base * 1000003u + counter;
        return (uint64_t) (v % ((unsigned __int128) 1 << 63));
    }
    std::random_device rd;
    return (((uint64_t) rd() << 32) ^ (uint64_t) rd()) & ((1ull << 63) - 1);
}

void start_token2wav_stream(SpeechState & st, const FlowPrompt & prompt, int n_steps, uint64_t seed) {
    st.flow_runner->stream_start(prompt, n_steps, nullptr, seed);
    CvocNoise nz;
    nz.seed = seed;
    st.stream_vocoder->reset(nz, true);
}

std::vector<float> token2wav_window(SpeechState & st, const std::vector<int32_t> & w, bool last, double * flow_ms,
                                    double * vocoder_ms) {
    using clock = std::chrono::steady_clock;
    const auto               t0 = clock::now();
    const int64_t            M = st.flow->hp.n_mel;
    const std::vector<float> mel = transpose(st.flow_runner->stream_push(w, last), M);
    const auto               t1 = clock::now();
    std::vector<float>       pcm = st.stream_vocoder->push(mel.data(), (int64_t) mel.size() / M, last);
    if (flow_ms) *flow_ms += std::chrono::duration<double, std::milli>(t1 - t0).count();
    if (vocoder_ms) *vocoder_ms += std::chrono::duration<double, std::milli>(clock::now() - t1).count();
    return pcm;
}

// ---- one turn ---------------------------------------------------------------------------------

struct SpeechTurn::Impl {
    Session &                    session;
    std::shared_ptr<SpeechState> st;
    FlowPrompt                   prompt;
    int                          steps = 10;
    uint64_t                     seed = 0;
    bool                         whole = false;
    uint64_t                     turn = 0;   // 0: not started
    TtsRng                       rng{0};
    TtsSampling                  sampling;

    int                          pos = 0;         // context position of the next answer token
    int32_t                      pending = -1;    // the last sampled answer token, not yet evaluated
    bool                         finished = false;
    StopReason                   reason = StopReason::None;
    std::vector<int32_t>         tokens;          // the text chunk being gathered
    std::vector<float>           hidden;
    std::vector<int32_t>         codes;           // every code of the turn
    std::vector<int32_t>         buffer;          // codes not yet synthesised (windows)
    std::deque<SpeechEvent>      events;
    // streaming_generate (StreamingTurn): the text goes out with the audio, as the reference pairs
    // them, decoded from the tokens given to the talker; `capture` keeps their hidden states.
    bool                         paired = false;
    bool                         capture = false;
    std::vector<int32_t>         spoken;          // every answer token given to the talker
    std::vector<float>           spoken_hidden;
    size_t                       said = 0;        // bytes of their text given out

    // streaming_generate's new_text: the decoded text of the spoken tokens past what was given
    // out, trailing U+FFFD (an incomplete character) held back except at the end.
    void paired_text(bool final) {
        const std::string full = session.model()->detokenize(spoken, false);
        size_t end = full.size();
        if (!final) {
            while (end >= 3 && full.compare(end - 3, 3, "\xEF\xBF\xBD") == 0) end -= 3;
        }
        if (end > said) text(full.substr(said, end - said));
        said = std::max(said, end);
    }

    Impl(Session & s, std::shared_ptr<SpeechState> state) : session(s), st(std::move(state)) {}

    void audio(std::vector<float> pcm, bool last) {
        if (paired) paired_text(last);
        SpeechEvent ev;
        ev.kind = SpeechEvent::Kind::Audio;
        ev.pcm = std::move(pcm);
        ev.last = last;
        events.push_back(std::move(ev));
    }

    void text(const std::string & t) {
        SpeechEvent ev;
        ev.kind = SpeechEvent::Kind::Text;
        ev.text = t;
        events.push_back(std::move(ev));
    }

    // One answer token and its hidden state; `more`: another answer token follows.
    void feed(int32_t token, const std::vector<float> & h, bool more) {
        tokens.push_back(token);
        hidden.insert(hidden.end(), h.begin(), h.end());
        if (tokens.size() == kTextChunk && more) push_text(false);
    }

    // The end of the answer: the remaining pairs (E when the text ended, not when a limit cut it).
    void finish(bool text_finished) {
        if (!tokens.empty() || text_finished) push_text(text_finished);
        flush();
    }

    void push_text(bool last) {
        const int64_t      n = (int64_t) tokens.size();
        spoken.insert(spoken.end(), tokens.begin(), tokens.end());
        if (capture) spoken_hidden.insert(spoken_hidden.end(), hidden.begin(), hidden.end());
        std::vector<float> cond;
        if (n > 0) cond = st->talker->condition(tokens.data(), hidden.data(), n);
        tokens.clear();
        hidden.clear();
        std::vector<int32_t> got;
        if (n > 0 || last) {
            const float dummy = 0.0f;
            got = st->talker->stream_push(n > 0 ? cond.data() : &dummy, n, last, sampling, rng, kMaxCodesPerChunk);
        }
        codes.insert(codes.end(), got.begin(), got.end());
        if (whole) return;
        buffer.insert(buffer.end(), got.begin(), got.end());
        while (buffer.size() >= kCodesPerWindow + kLookahead) {
            window(std::vector<int32_t>(buffer.begin(), buffer.begin() + (long) (kCodesPerWindow + kLookahead)), false);
            buffer.erase(buffer.begin(), buffer.begin() + (long) kCodesPerWindow);
        }
    }

    void window(const std::vector<int32_t> & w, bool last) { audio(token2wav_window(*st, w, last), last); }

    void flush() {
        if (whole) {
            if (codes.empty()) return audio({}, true);
            const int64_t            M = st->flow->hp.n_mel;
            const std::vector<float> mel = transpose(st->flow_runner->flow_mel(codes, prompt, steps, nullptr, seed), M);
            const int64_t            frames = (int64_t) mel.size() / M;
            if (st->vocoder) {
                // Token2wav.__call__: the original HiFT over the whole utterance.
                VocodeOptions opt;
                opt.seed = seed;
                return audio(st->vocoder->vocode(mel.data(), frames, opt).wav, true);
            }
            // a file with only the streaming vocoder: that one over the whole mel, one final push
            CvocNoise nz;
            nz.seed = seed;
            st->stream_vocoder->reset(nz, false);
            return audio(st->stream_vocoder->push(mel.data(), frames, true), true);
        }
        std::vector<int32_t> rest;
        rest.swap(buffer);
        if (rest.empty()) return audio({}, true);
        window(rest, true);
    }

    void check_active() const {
        if (turn == 0) fail(ErrorKind::InvalidArgument, "speech turn: call start() first");
        if (st->turn != turn) fail(ErrorKind::InvalidArgument, "speech turn: ended by a newer spoken turn on this session");
    }

    // One LLM step and what it makes ready.
    void step() {
        const GenerationStep g = session.next();
        if (pending >= 0) {
            // Every step evaluates the token drawn at the step before (then draws the next):
            // `pending` now has its hidden state, at context position `pos`.
            const std::vector<float> h = session.hidden_states(pos, 1);
            pos += 1;
            feed(pending, h, !g.done);
            pending = -1;
        }
        if (!g.text.empty() && !paired) text(g.text);
        if (g.done) {
            reason = g.reason;
            finished = true;
            // A terminator ends the text (E goes to the talker); a token limit only cuts it, and
            // its last token, never evaluated, has no hidden state (as in the reference).
            finish(g.reason == StopReason::EndOfTurn);
            return;
        }
        pending = g.token;
    }
};

SpeechTurn::SpeechTurn(Session & session, const SpeechParams & params) {
    const Model & m = *session.model();
    if (params.n_timesteps < 1 || params.n_timesteps > 1000) {
        fail(ErrorKind::InvalidArgument, "speech: n_timesteps (tts_steps) must be in [1, 1000], got " +
                                             std::to_string(params.n_timesteps));
    }
    std::shared_ptr<SpeechState> st = session.speech_;
    if (!st) {
        st = std::make_shared<SpeechState>(m);
        session.speech_ = st;
    }
    const bool whole = params.whole_audio.value_or(st->cvoc == nullptr);
    if (!whole && !st->cvoc) {
        fail(ErrorKind::Unsupported, "windowed speech needs the streaming vocoder (cvoc.*, from assets/token2wav/hift.pt); "
                                     "set whole_audio to synthesise the answer in one piece");
    }
    const Voice voice = params.voice ? *params.voice : Voice::default_for(m);
    FlowPrompt  prompt = voice_prompt(*st, voice);
    impl_ = std::make_unique<Impl>(session, st);
    Impl & s = *impl_;
    s.prompt = std::move(prompt);
    s.steps = params.n_timesteps;
    s.whole = whole;
    if (params.seed) {
        s.seed = *params.seed;
    } else {
        // from the session's seed and the count of spoken answers (as the Python layer), else random
        st->n_spoken += 1;
        s.seed = derive_speech_seed(session_seed(session), st->n_spoken);
    }
    s.sampling = st->tts->hp.sampling;
}

SpeechTurn::~SpeechTurn() = default;

void SpeechTurn::start(const std::vector<Message> & messages, const ChatParams & params) {
    ChatParams cp = params;
    cp.speech = true;
    const ChatPrompt p = impl_->session.begin_chat(messages, cp);
    start_begun(p.answer_prefix);
}

void SpeechTurn::start_begun(const std::string & answer_prefix) {
    Impl & s = *impl_;
    if (s.turn != 0) fail(ErrorKind::InvalidArgument, "speech turn: already started");
    SpeechState & st = *s.st;
    BusyGuard     guard(st.busy, "Session");
    s.pos = s.session.n_past();
    // TTSStreamingGenerator: a new turn of the talker; Token2wav.stream: the prompt pass fills
    // the flow's caches and the vocoder stream starts.
    st.talker->stream_reset();
    s.rng = TtsRng(s.seed);
    if (!s.whole) {
        s.buffer.assign(kLookahead, kSilenceCode);   // Token2wav.stream's silence before the first window
        start_token2wav_stream(st, s.prompt, s.steps, s.seed);
    }
    s.turn = ++st.turn;
    if (!answer_prefix.empty()) s.text(answer_prefix);
}

bool SpeechTurn::next(SpeechEvent & ev) {
    Impl & s = *impl_;
    BusyGuard guard(s.st->busy, "Session");
    s.check_active();
    while (s.events.empty() && !s.finished) s.step();
    if (s.events.empty()) return false;
    ev = std::move(s.events.front());
    s.events.pop_front();
    return true;
}

const std::vector<int32_t> & SpeechTurn::codes() const { return impl_->codes; }
StopReason SpeechTurn::stop_reason() const { return impl_->reason; }
bool SpeechTurn::whole_audio() const { return impl_->whole; }
uint64_t SpeechTurn::seed() const { return impl_->seed; }

// ---- Session::speak ---------------------------------------------------------------------------

namespace {

// Runs a turn (SpeechTurn, StreamingTurn) to its end: the callbacks get each event, the result
// the whole text, audio and codes.
template <class Turn> SpeechResult drain_turn(Turn & turn, const SpeechCallbacks & callbacks) {
    SpeechResult r;
    SpeechEvent  ev;
    while (turn.next(ev)) {
        if (ev.kind == SpeechEvent::Kind::Text) {
            r.text += ev.text;
            if (callbacks.on_text) callbacks.on_text(ev.text);
        } else {
            r.audio.insert(r.audio.end(), ev.pcm.begin(), ev.pcm.end());
            if (callbacks.on_audio) callbacks.on_audio(ev.pcm.data(), ev.pcm.size(), ev.sample_rate);
        }
    }
    r.codes = turn.codes();
    r.reason = turn.stop_reason();
    return r;
}

} // namespace

SpeechResult Session::speak(const std::vector<Message> & messages, const ChatParams & params, const SpeechParams & speech,
                            const SpeechCallbacks & callbacks) {
    SpeechTurn turn(*this, speech);
    turn.start(messages, params);
    return drain_turn(turn, callbacks);
}

SpeechResult Session::speak(const std::vector<Message> & messages, const ChatParams & params, const SpeechParams & speech) {
    return speak(messages, params, speech, SpeechCallbacks{});
}

// ---- StreamingTurn ----------------------------------------------------------------------------

struct StreamingTurn::Impl {
    Session &                   session;
    std::unique_ptr<SpeechTurn> speech;   // generate_audio
    // text only: the answer tokens yielded per LLM chunk, as streaming_token_decoder decodes them
    std::vector<int32_t>        ids;
    std::vector<int32_t>        no_codes;
    std::vector<float>          no_hidden;
    int32_t                     pending = -1;   // the last drawn token, fed at the next draw
    int64_t                     drawn = 0;
    bool                        finished = false;
    StopReason                  reason = StopReason::None;
    size_t                      said = 0;
    std::deque<SpeechEvent>     events;

    explicit Impl(Session & s) : session(s) {}

    void chunk_text(bool final) {
        const std::string full = session.model()->detokenize(ids, false);
        size_t end = full.size();
        if (!final) {
            while (end >= 3 && full.compare(end - 3, 3, "\xEF\xBF\xBD") == 0) end -= 3;
        }
        if (end > said) {
            SpeechEvent ev;
            ev.kind = SpeechEvent::Kind::Text;
            ev.text = full.substr(said, end - said);
            events.push_back(std::move(ev));
        }
        said = std::max(said, end);
    }

    void step() {
        const GenerationStep g = session.next();
        if (pending >= 0) ids.push_back(pending);   // evaluated by this step
        pending = -1;
        if (g.done) {
            reason = g.reason;
            finished = true;
            // a terminator ends the text (the decoder's final piece); at the chunk limit the
            // last drawn token is never yielded, and a trailing incomplete character stays out
            chunk_text(g.reason == StopReason::EndOfTurn);
            return;
        }
        pending = g.token;
        drawn += 1;
        // chunk_generate's chunks: 11 draws, then 10 each; a chunk yields the tokens fed in it
        if (drawn >= 11 && (drawn - 11) % 10 == 0) chunk_text(false);
    }
};

StreamingTurn::StreamingTurn(Session & session, const StreamingGenerateParams & params) {
    if (!session.streaming_started()) {
        fail(ErrorKind::InvalidArgument, "streaming_generate: nothing was prefilled: call streaming_prefill first "
                                         "(a system prompt, the user's chunks)");
    }
    impl_ = std::make_unique<Impl>(session);
    if (params.generate_audio) {
        impl_->speech = std::make_unique<SpeechTurn>(session, params.speech);
        SpeechTurn::Impl & t = *impl_->speech->impl_;
        t.paired = true;
        t.capture = params.capture;
    }
    session.begin_streaming_generate(params);
    if (impl_->speech) impl_->speech->start_begun("");
}

StreamingTurn::~StreamingTurn() = default;

bool StreamingTurn::next(SpeechEvent & ev) {
    Impl & s = *impl_;
    if (s.speech) return s.speech->next(ev);
    while (s.events.empty() && !s.finished) s.step();
    if (s.events.empty()) return false;
    ev = std::move(s.events.front());
    s.events.pop_front();
    return true;
}

const std::vector<int32_t> & StreamingTurn::codes() const { return impl_->speech ? impl_->speech->codes() : impl_->no_codes; }
const std::vector<int32_t> & StreamingTurn::answer_tokens() const {
    return impl_->speech ? impl_->speech->impl_->spoken : impl_->ids;
}
const std::vector<float> & StreamingTurn::talker_hidden() const {
    return impl_->speech ? impl_->speech->impl_->spoken_hidden : impl_->no_hidden;
}
StopReason StreamingTurn::stop_reason() const { return impl_->speech ? impl_->speech->stop_reason() : impl_->reason; }
uint64_t StreamingTurn::seed() const { return impl_->speech ? impl_->speech->seed() : 0; }

SpeechResult Session::streaming_generate(const StreamingGenerateParams & params, const SpeechCallbacks & callbacks) {
    StreamingTurn turn(*this, params);
    return drain_turn(turn, callbacks);
}

SpeechResult Session::streaming_generate(const StreamingGenerateParams & params) {
    return streaming_generate(params, SpeechCallbacks{});
}

} // namespace minicpm
