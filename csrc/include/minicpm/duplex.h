// Full-duplex voice sessions (MiniCPM-o 4.5): the model listens and speaks at the same time, one
// time slot ("unit") per second of user audio, as the reference's MiniCPMODuplex does.
//
//   auto model = minicpm::Model::load("minicpm-o45.gguf", {});
//   minicpm::DuplexSession d(model, {});                 // prepare(): system prompt + voice
//   for (each 1 s of 16 kHz mono audio `pcm`) {
//       minicpm::DuplexUnitResult r = d.step(pcm.data(), pcm.size());
//       if (!r.listening) play(r.audio);                  // 24 kHz float PCM
//   }
//
// One unit (MiniCPMODuplex.streaming_prefill + streaming_generate): <unit>, the frames of the
// unit (omni mode: <image> 64 embeddings </image>, slices as <slice>..</slice>), the 10 audio
// embeddings of the 1 s chunk (streaming log-mel with 20 ms of CNN context each side, the audio
// encoder with its cache of the earlier chunks), the unit's text; then the decision sampled from
// the logits of the last audio position (StreamDecoder.decode): <|listen|> or speech tokens until
// a unit terminator (<|listen|>, <|chunk_eos|>, <|chunk_tts_eos|>) or max_speak_tokens, then
// </unit>. A speaking unit runs the talker on its (token, last-layer hidden) pairs (at most 26
// codes a unit, TTS.generate_chunk) and Token2Wav with the duplex flush rules; the end of the
// spoken turn (<|turn_eos|>) resets both.
//
// Threads. A DuplexSession is used from one thread at a time (Error(Busy) otherwise); sessions
// on one Model run at the same time from different threads. The async mode (start_async) is the
// one place of the library that starts a thread: push() hands audio from a capture thread to the
// session's worker, which steps each whole second; results come to a callback or to poll().
#pragma once

#include "minicpm/minicpm.h"
#include "minicpm/speech.h"

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace minicpm {

constexpr int kDuplexUnitSamples = 16000;   // one unit: 1 s of 16 kHz audio (CHUNK_MS)

struct DuplexParams {
    // System prompt: "<|im_start|>system\n{system}\n<|audio_start|>" + the voice's recording as
    // audio embeddings + "<|audio_end|><|im_end|>" (the reference README's layout); prefix /
    // suffix replace those strings whole.
    std::string                system = "You are a helpful assistant.";
    std::optional<std::string> prefix, suffix;
    std::optional<Voice>       voice;            // unset: Voice::default_for(model)

    int   max_speak_tokens = 20;                 // max_new_speak_tokens_per_chunk
    int   force_listen_count = 0;                // the first N units listen without decoding
    // Sliding window over whole units (StreamDecoder.enforce_window*): "off" | "basic" | "context".
    std::string window = "off";
    int   window_max_tokens = 4000, window_target_tokens = 3500;    // basic: high / low water
    int   context_max_units = 24, max_previous_tokens = 500;        // context mode

    float temperature = 0.7f;
    int   top_k = 20;
    float top_p = 0.8f;
    float repetition_penalty = 1.05f;            // text_repetition_penalty
    int   repetition_window = 512;               // text_repetition_window_size
    float length_penalty = 1.1f;                 // on <|turn_eos|>
    bool  greedy = false;                        // decode_mode "greedy"
    std::optional<uint64_t> seed;                // unset: random

    bool  generate_audio = true;                 // false: text only (a model without TTS works)
    int   tts_steps = 10;                        // flow-matching steps (init_tts n_timesteps)
    float tts_temperature = 0.8f;
    float tts_repetition_penalty = 1.05f;

    bool  capture = false;                       // keep the talker's inputs per unit (tts_tokens / tts_hidden)
    int   n_ctx = 8192;                          // LLM context of the session
    int   n_threads = 0;                         // 0: the model's
    bool  batch = false;                         // LLM steps through the model's cross-session batcher (SessionParams::batch)
    // Build the speech graphs at construction (the talker's step, Token2Wav's window phases),
    // so that the first answer does not: unset = on a GPU, off on the CPU (where building them
    // costs little next to computing them).
    std::optional<bool> warmup;
};

struct DuplexUnitResult {
    int                  unit = 0;               // index of the unit in the session (0-based)
    bool                 listening = true;
    std::string          text;                   // the text of this unit (special tokens skipped)
    std::vector<float>   audio;                  // 24 kHz; 1 s of silence when listening; may be empty
    bool                 end_of_turn = false;
    std::vector<int32_t> tokens;                 // generated ids in feed order, terminator included
    std::vector<int32_t> unit_tokens;            // the unit as fed, -1 per embedding, <unit> .. </unit>
    std::vector<int32_t> tts_tokens;             // capture: the talker's (token, hidden) pairs
    std::vector<float>   tts_hidden;             // [tts_tokens.size()][n_embd]
    std::vector<int32_t> codes;                  // the talker's codes of this unit
    // Times of this unit [ms]: from the call to the decision (first generated token), to the
    // first PCM of the unit (0 when none), and the whole unit.
    double               ms_decision = 0, ms_first_audio = 0, ms_total = 0;
    // Where the unit's time went [ms]: the LLM (audio encoder and unit prefill included, up to
    // the end of the decode loop), the talker, and Token2Wav (flow and vocoder, the stream
    // restart at the end of a turn included).
    double               ms_llm = 0, ms_talker = 0, ms_token2wav = 0;
    // Finer [ms]: inside ms_llm the streaming log-mel + audio encoder, the unit's prefill, and the
    // host sampling of the decode loop (penalties, softmax, draws); inside ms_token2wav the flow
    // and the streaming vocoder.
    double               ms_encoder = 0, ms_prefill = 0, ms_sample = 0, ms_flow = 0, ms_vocoder = 0;
};

class DuplexSession {
public:
    // Checks the model (MiniCPM-o 4.5 with an audio encoder; the speech stages when
    // generate_audio) and the parameters, then runs prepare(). Error(Unsupported) /
    // Error(InvalidArgument).
    DuplexSession(std::shared_ptr<Model> model, const DuplexParams & params);
    ~DuplexSession();
    DuplexSession(const DuplexSession &) = delete;
    DuplexSession & operator=(const DuplexSession &) = delete;

    // One unit: exactly kDuplexUnitSamples 16 kHz samples (or none, with frames or text: the
    // reference's VISION / TEXT modes), optional frames (RGB) and text, and an optional bias
    // added to the LLM logits at every decode step of this unit.
    DuplexUnitResult step(const float * pcm, size_t n, const std::vector<std::shared_ptr<const RgbImage>> & frames = {},
                          const std::string & text = "", const std::vector<std::pair<int32_t, float>> & logit_bias = {});

    // Barge-in: the current spoken turn ends now (the next unit may listen); the talker and
    // Token2Wav start a new turn, their pending codes dropped.
    void interrupt();
    // Back to just after prepare(): the system prompt only, the counters and the RNG at their start.
    void reset();

    // Async mode: a worker thread steps every whole second of pushed audio (frames given with a
    // push go to the unit that starts with its first sample). Results go to `on_result` when
    // given (on the worker thread), else to a queue read by poll(). step() is refused meanwhile.
    void start_async(std::function<void(const DuplexUnitResult &)> on_result = {});
    void push(const float * pcm, size_t n, const std::vector<std::shared_ptr<const RgbImage>> & frames = {});
    // Waits up to timeout_ms for a result; false when none came. An error of the worker is
    // thrown here (or by push / stop_async).
    bool poll(DuplexUnitResult & out, int timeout_ms);
    // Steps what whole units remain, then ends the worker (a partial last second is dropped).
    void stop_async();
    bool async_active() const;

    int                  n_past() const;
    std::vector<int32_t> tokens() const;      // -1 for embedding positions
    std::vector<int32_t> positions() const;
    int                  system_length() const;
    int                  units() const;       // units stepped since prepare()
    int64_t              n_embd() const;
    Session &            session();
    const DuplexParams & params() const;

    struct Impl;

private:
    std::unique_ptr<Impl> impl_;
};

} // namespace minicpm
