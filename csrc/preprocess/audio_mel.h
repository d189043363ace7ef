// TEMPORARY naive log-mel (replaced by the exact FFT implementation).
#pragma once
#include <cstddef>
#include <vector>
namespace minicpm {
constexpr int kAudioSampleRate = 16000, kMelBins = 80, kMelHop = 160, kMelFft = 400;
struct MelFeatures { int n_frames = 0; std::vector<float> data; };
MelFeatures log_mel_clip(const float * pcm, size_t n, int n_threads = 1);
}
namespace minicpm {
struct StreamingMelConfig { int chunk_ms = 1000, first_chunk_ms = 1035, cnn_redundancy_ms = 0; bool sliding_window = true; };
class StreamingMel {
public:
    explicit StreamingMel(StreamingMelConfig c = {});
    MelFeatures push(const float * pcm, size_t n, bool is_last);
    void reset();
private:
    StreamingMelConfig cfg_; std::vector<float> buf_; long emitted_ = 0;
};
}
