// The speech stages of one owner (a Session's spoken turns, a DuplexSession): the talker, the
// Token2Wav flow and the vocoders with their compute state, and the pieces both turn layouts
// share (the voice as a flow prompt, the seed rule, one 1 s window of Token2wav.stream).
#pragma once

#include "minicpm/speech.h"

#include "core/backend.h"
#include "models/causal_vocoder.h"
#include "models/flow.h"
#include "models/hift.h"
#include "models/tts.h"

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

namespace minicpm {

// Token2wav.stream's layout (reference constants of the turn, not of a checkpoint).
constexpr size_t  kT2wCodesPerWindow = 25;   // 1 s of codes per window advance
constexpr size_t  kT2wLookahead = 3;         // look-ahead codes each window also reads
constexpr int32_t kT2wSilenceCode = 4218;    // put before the first window, kT2wLookahead times

struct SpeechState {
    const TtsModel *                 tts = nullptr;
    const FlowModel *                flow = nullptr;
    const HiftModel *                hift = nullptr;
    const CausalVocoderModel *       cvoc = nullptr;
    std::unique_ptr<ComputeBackends> backends;
    std::unique_ptr<TtsContext>      talker;
    std::unique_ptr<FlowRunner>      flow_runner;
    std::unique_ptr<Vocoder>         vocoder;          // original HiFT (whole answers)
    std::unique_ptr<CausalVocoder>   stream_vocoder;   // streaming vocoder (windows)
    uint64_t                         turn = 0;         // the active turn's number
    uint64_t                         n_spoken = 0;     // turns with a seed from the session
    std::atomic<bool>                busy{false};      // the stages are used by one thread at a time

    // n_threads: CPU threads (0: the model's). Throws Error(Unsupported) for a file that cannot speak.
    explicit SpeechState(const Model & m, int n_threads = 0);
};

// The voice as the flow's prompt, checked against the flow model (Error(InvalidArgument)).
FlowPrompt voice_prompt(const SpeechState & st, const Voice & voice);

// A turn seed from a base seed and a counter (as the Python layer derives it), else random.
uint64_t derive_speech_seed(const std::optional<uint64_t> & base, uint64_t counter);

// Token2wav.set_stream_cache / the restore of its caches: the flow's prompt pass and a new
// vocoder stream (prefix silence on).
void start_token2wav_stream(SpeechState & st, const FlowPrompt & prompt, int n_steps, uint64_t seed);

// One Token2wav.stream call: the window's codes (with their look-ahead unless `last`) through the
// flow and the streaming vocoder; 24 kHz float PCM. `flow_ms` / `vocoder_ms`, when given, are
// incremented by the two stages' wall times.
std::vector<float> token2wav_window(SpeechState & st, const std::vector<int32_t> & window, bool last,
                                    double * flow_ms = nullptr, double * vocoder_ms = nullptr);

} // namespace minicpm
