// Spoken answers (MiniCPM-o 4.5) from C++: a voice, the speech parameters, and one spoken turn
// (the LLM answer, the TTS talker and Token2Wav), with callbacks or as a stream of events.
//
//   auto model = minicpm::Model::load("minicpm-o45-f16.gguf", {});
//   minicpm::Session s(model, {});
//   minicpm::SpeechParams sp;
//   sp.voice = minicpm::Voice::load("me.voice.gguf");          // unset: the file's default voice
//   minicpm::SpeechCallbacks cb;
//   cb.on_text  = [](const std::string & piece) { ... };
//   cb.on_audio = [](const float * pcm, size_t n, int sample_rate) { ... };   // 24 kHz float PCM
//   minicpm::SpeechResult r = s.speak({minicpm::Message::user("Hi")}, {}, sp, cb);
//
// The layout is the reference's streaming_generate (its offline chat(generate_audio=True)
// produces no o4.5 speech, so the streaming path is the definition): the answer is decoded with
// the speech template (ChatParams::speech), the (token, last-layer hidden state) pairs go to the
// talker in chunks of 10 (E after the last chunk when a terminator ended the text), codes are
// drawn until EOS (at most 500 per chunk); the codes, after three 4218 silence codes, are
// synthesised in windows of 28 that advance by 25 (1 s each: flow push + the streaming causal
// vocoder), the rest at the end; or, with whole_audio, in one flow-matching call and one call of
// the original HiFT vocoder over the whole answer.
//
// The Python layer's Session.chat(generate_audio=True) runs this same turn.
#pragma once

#include "minicpm/minicpm.h"

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace minicpm {

constexpr int kSpeechRate = 24000;   // Token2Wav's output sample rate

// A reference voice (what Token2Wav speaks with): the S3 speech tokens of the recording, its
// CAM++ speaker vector and its 24 kHz prompt mel (2 frames per token), as the Python Voice
// holds them. Made by the Python layer (Model.voice: S3 tokenizer in C++, CAM++ through
// onnxruntime) and saved as a small GGUF; a converted model file may embed a default one.
struct Voice {
    std::vector<int32_t> tokens;           // prompt speech tokens
    std::vector<float>   speaker;          // speaker vector (192)
    std::vector<float>   prompt_mel;       // [2 * tokens.size()][n_mel] row-major
    int64_t              n_mel = 80;
    int                  source_sample_rate = 16000;
    std::vector<float>   audio_16k;        // the recording (may be empty)

    // Voice.save's file (general.architecture "minicpm-voice", voice.* keys and tensors); with
    // `embedded`, the voice tensors and keys inside another GGUF (a model file's default voice).
    // Throws Error(File) / Error(Format).
    static Voice load(const std::string & path, bool embedded = false);
    // The default voice stored in the model's files; Error(Unsupported) when there is none.
    static Voice default_for(const Model & model);
    // Error(InvalidArgument) unless the tokens are non-empty and >= 0, the speaker vector and the
    // mel finite and the mel 2 frames per token.
    void validate() const;
};

struct SpeechParams {
    std::optional<Voice>    voice;             // unset: Voice::default_for(model)
    int                     n_timesteps = 10;  // flow-matching Euler steps (tts_steps), 1..1000; 5 and 3 are faster
    // The seed of the talker's sampler, the CFM noise and the vocoder's noise. Unset: from the
    // session's seed and the count of its spoken answers (reproducible with SessionParams::seed),
    // else random.
    std::optional<uint64_t> seed;
    // true: the whole answer synthesised at the end (flow over every code, the original HiFT);
    // false: 1 s windows as they are ready (needs the streaming vocoder); unset: windows when the
    // file has the streaming vocoder.
    std::optional<bool>     whole_audio;
};

// What a turn produces, in order: text pieces and audio chunks (24 kHz float PCM; the last one
// has `last` set; chunks may be empty).
struct SpeechEvent {
    enum class Kind { Text, Audio };
    Kind               kind = Kind::Text;
    std::string        text;
    std::vector<float> pcm;
    int                sample_rate = kSpeechRate;
    bool               last = false;
};

struct SpeechCallbacks {
    std::function<void(const std::string &)>               on_text;
    std::function<void(const float *, size_t, int)>        on_audio;   // (pcm, n samples, sample rate)
};

struct SpeechResult {
    std::string          text;           // as chat() returns it (answer prefix included)
    std::vector<float>   audio;          // the whole answer, float32 mono
    int                  sample_rate = kSpeechRate;
    std::vector<int32_t> codes;          // the talker's speech codes
    StopReason           reason = StopReason::None;
};

// streaming_generate's arguments, with its defaults (MiniCPMO.streaming_generate and
// ChunkPrefillChunkGenerate.chunk_generate of MiniCPM-o 4.5).
struct StreamingGenerateParams {
    bool  generate_audio = true;        // false: text only (no talker, no Token2Wav)
    int   max_new_tokens = 256;         // ceil(n / 10) LLM chunks of 10 answer tokens
    bool  do_sample = true;             // false: argmax (after the suppressed tokens and the penalty)
    float temperature = 0.7f;
    float top_p = 0.8f;
    int   top_k = 100;
    float repetition_penalty = 1.02f;   // over the last 128 answer tokens before each chunk and the chunk's own
    bool  enable_thinking = false;      // true: no empty <think></think> block in the assistant prompt
    bool  use_tts_template = true;      // <|tts_bos|> at the end of the assistant prompt
    std::optional<std::string> bos_input;   // the whole assistant prompt instead of the default
    SpeechParams speech;                // voice, flow steps, seed, whole_audio (generate_audio only)
    bool  capture = false;              // keep the last-layer hidden states given to the talker
};

// One streamed answer of a simplex session (Session::streaming_prefill), pulled event by event
// as the reference's streaming_generate yields: with audio, each 1 s window of speech comes
// after the text of the answer tokens the talker has received so far (decoded whole, a trailing
// incomplete character held back to the next window), the last window (last set) with the rest
// of the text; without audio, the text of each LLM chunk (10 tokens). The LLM draws its answer
// in chunks of 10 (11 in the first, whose last token starts the next chunk), with
// ChunkPrefillChunkGenerate's suppressed tokens and repetition penalty, until <|tts_eos|> or
// <|im_end|> (never fed back) or the chunk limit; the talker and Token2Wav are SpeechTurn's.
// The constructor checks everything first (Error(InvalidArgument): nothing prefilled, bad
// values; the SpeechTurn errors with generate_audio), then adds the assistant prompt
// "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n<|tts_bos|>" and begins.
class StreamingTurn {
public:
    StreamingTurn(Session & session, const StreamingGenerateParams & params);
    ~StreamingTurn();
    StreamingTurn(const StreamingTurn &) = delete;
    StreamingTurn & operator=(const StreamingTurn &) = delete;

    bool next(SpeechEvent & ev);

    const std::vector<int32_t> & codes() const;           // the talker's codes (generate_audio)
    // The answer tokens the reference yields (to the talker, or as text), in order: the
    // terminator and a last token drawn at the chunk limit are not among them.
    const std::vector<int32_t> & answer_tokens() const;
    // With capture (generate_audio): [answer_tokens().size()][n_embd] hidden states the talker got.
    const std::vector<float> &   talker_hidden() const;
    StopReason                   stop_reason() const;
    uint64_t                     seed() const;

    struct Impl;

private:
    std::unique_ptr<Impl> impl_;
};

// Whether `model` holds what speech output needs: the talker, Token2Wav's flow and a vocoder.
bool can_speak(const Model & model);

// One spoken turn, pulled event by event (Session::speak is this with callbacks). The
// constructor checks everything (Error(Unsupported) for a file that cannot speak, or windows
// without the streaming vocoder; Error(InvalidArgument) for bad parameters or a bad voice) and
// prepares the session's speech stages (kept by the session for its next turns); start() begins
// the LLM answer (Session::begin_chat with ChatParams::speech on) and the talker and Token2Wav
// streams; next() returns false when the turn is over. A newer turn on the same session ends
// this one (its next() then throws Error(InvalidArgument)).
class SpeechTurn {
public:
    SpeechTurn(Session & session, const SpeechParams & params);
    ~SpeechTurn();
    SpeechTurn(const SpeechTurn &) = delete;
    SpeechTurn & operator=(const SpeechTurn &) = delete;

    void start(const std::vector<Message> & messages, const ChatParams & params);
    // The same, for an answer the caller began itself (begin_chat with ChatParams::speech):
    // `answer_prefix` (ChatPrompt::answer_prefix) is the first text event.
    void start_begun(const std::string & answer_prefix);
    bool next(SpeechEvent & ev);

    const std::vector<int32_t> & codes() const;
    StopReason                   stop_reason() const;
    bool                         whole_audio() const;
    uint64_t                     seed() const;

    struct Impl;

private:
    static std::optional<uint64_t> session_seed(const Session & session);   // SessionParams::seed
    std::unique_ptr<Impl> impl_;
    friend class StreamingTurn;
};

} // namespace minicpm
