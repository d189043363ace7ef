// S3Tokenizer's log-mel features of 16 kHz mono PCM (s3tokenizer/utils.py log_mel_spectrogram,
// what stepaudio2's Token2wav._prepare_prompt feeds the tokenizer).
//
// torch.stft(audio, 400, 160, window=hann_window(400), center=True): frame t covers samples
// [160 t - 200, 160 t + 200), reflected (without repeating the edge sample) at both ends; the
// last frame is dropped (stft[..., :-1]), so n samples give n / 160 frames. Power spectrum,
// librosa's Slaney mel filters (sr 16000, n_fft 400, n_mels 80 or 128, as the package's
// mel_filters.npz holds them), log10 with floor 1e-10, clamp at max - 8 over the whole clip,
// then (x + 4) / 4. No padding to 30 s, unlike the Whisper front end of preprocess/audio_mel.h.
#pragma once

#include "preprocess/audio_mel.h"

#include <cstddef>
#include <vector>

namespace minicpm {

// librosa.filters.mel(sr=16000, n_fft=400, n_mels) as float32 (its float32 weights times the
// float64 norm, rounded again): [n_mels][201]. n_mels in [1, 256].
std::vector<float> s3_mel_filters(int n_mels);

// Features [n_mels][n / 160] (MelFeatures::data[bin * n_frames + frame]). Throws
// Error(InvalidArgument) for fewer than 201 samples (torch's reflect padding needs more than
// 200), a NaN/inf sample, or n_mels outside [1, 256].
MelFeatures s3_log_mel(const float * pcm, size_t n, int n_mels, int n_threads = 1);

} // namespace minicpm
