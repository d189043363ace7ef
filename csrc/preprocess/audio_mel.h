// TEMPORARY naive log-mel (replaced by the exact FFT implementation).
#pragma once
#include <cstddef>
#include <vector>
namespace minicpm {
constexpr int kAudioSampleRate = 16000, kMelBins = 80, kMelHop = 160, kMelFft = 400;
struct MelFeatures { int n_frames = 0; std::vector<float> data; };
MelFeatures log_mel_clip(const float * pcm, size_t n, int n_threads = 1);
}
