// S3Tokenizer log-mel (see s3_mel.h). The spectrum comes from audio_mel.cpp's 400-point FFT in
// double; filters are float32 as the package stores them, the log mel float32 as torch holds it.
#include "preprocess/s3_mel.h"

#include "minicpm/error.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <thread>

namespace minicpm {

namespace {

constexpr int kHalf = kMelFft / 2;

// Slaney mel scale (librosa.hz_to_mel / mel_to_hz, htk=False).
constexpr double kFsp = 200.0 / 3.0, kMinLogHz = 1000.0, kMinLogMel = kMinLogHz / kFsp;

double hz_to_mel(double hz) {
    static const double step = std::log(6.4) / 27.0;
    return hz < kMinLogHz ? hz / kFsp : kMinLogMel + std::log(hz / kMinLogHz) / step;
}

double mel_to_hz(double mel) {
    static const double step = std::log(6.4) / 27.0;
    return mel < kMinLogMel ? kFsp * mel : kMinLogHz * std::exp(step * (mel - kMinLogMel));
}

} // namespace

std::vector<float> s3_mel_filters(int n_mels) {
    if (n_mels < 1 || n_mels > 256) {
        throw Error(ErrorKind::InvalidArgument, "s3 log-mel: n_mels must be in [1, 256], got " + std::to_string(n_mels));
    }
    std::vector<double> mel_f((size_t) n_mels + 2);
    const double m0 = hz_to_mel(0.0), m1 = hz_to_mel(kAudioSampleRate / 2.0);
    const double step = (m1 - m0) / (n_mels + 1);   // numpy.linspace: start + i * step, exact end
    for (int i = 0; i < n_mels + 2; ++i) mel_f[(size_t) i] = mel_to_hz(i == n_mels + 1 ? m1 : m0 + i * step);
    std::vector<float> filters((size_t) n_mels * kMelFreqBins, 0.0f);
    for (int b = 0; b < n_mels; ++b) {
        const double enorm = 2.0 / (mel_f[(size_t) b + 2] - mel_f[(size_t) b]);
        for (int k = 0; k < kMelFreqBins; ++k) {
            const double f     = (double) k * kAudioSampleRate / kMelFft;
            const double lower = (f - mel_f[(size_t) b]) / (mel_f[(size_t) b + 1] - mel_f[(size_t) b]);
            const double upper = (mel_f[(size_t) b + 2] - f) / (mel_f[(size_t) b + 2] - mel_f[(size_t) b + 1]);
            // librosa: weights (float32) = max(0, min(lower, upper)); weights *= enorm (float64)
            const float tri = (float) std::max(0.0, std::min(lower, upper));
            filters[(size_t) b * kMelFreqBins + k] = (float) ((double) tri * enorm);
        }
    }
    return filters;
}

MelFeatures s3_log_mel(const float * pcm, size_t n, int n_mels, int n_threads) {
    if (n <= (size_t) kHalf) {
        throw Error(ErrorKind::InvalidArgument, "s3 log-mel: " + std::to_string(n) +
                                                    " samples; the STFT's reflect padding needs more than 200");
    }
    if (!pcm) throw Error(ErrorKind::InvalidArgument, "s3 log-mel: null sample pointer");
    for (size_t i = 0; i < n; ++i) {
        if (!std::isfinite(pcm[i])) {
            throw Error(ErrorKind::InvalidArgument, "s3 log-mel: sample " + std::to_string(i) + " is " +
                                                        (std::isnan(pcm[i]) ? "NaN" : "infinite"));
        }
    }
    if (n_threads < 0) throw Error(ErrorKind::InvalidArgument, "s3 log-mel: n_threads must be >= 0");
    if (n_threads == 0) n_threads = (int) std::max(1u, std::thread::hardware_concurrency());
    const std::vector<float> filt = s3_mel_filters(n_mels);
    std::vector<int> lo((size_t) n_mels, 0), hi((size_t) n_mels, 0);
    for (int b = 0; b < n_mels; ++b) {
        const float * f = &filt[(size_t) b * kMelFreqBins];
        int l = kMelFreqBins, h = 0;
        for (int k = 0; k < kMelFreqBins; ++k) {
            if (f[k] != 0.0f) {
                l = std::min(l, k);
                h = k + 1;
            }
        }
        lo[(size_t) b] = h ? l : 0;
        hi[(size_t) b] = h;
    }
    const double * window = hann_window_400();
    const int64_t  len = (int64_t) n, n_frames = len / kMelHop;   // 1 + n / 160 frames, the last dropped
    std::vector<float> logm((size_t) (n_frames * n_mels));        // [frame][bin]
    auto band = [&](int64_t f0, int64_t f1) {
        double x[kMelFft], power[kMelFreqBins];
        for (int64_t t = f0; t < f1; ++t) {
            const int64_t start = t * kMelHop - kHalf;
            for (int i = 0; i < kMelFft; ++i) {
                int64_t s = start + i;
                if (s < 0) s = -s;
                else if (s >= len) s = 2 * (len - 1) - s;
                x[i] = window[i] * (double) pcm[s];
            }
            power_spectrum_400(x, power);
            float * out = &logm[(size_t) (t * n_mels)];
            for (int b = 0; b < n_mels; ++b) {
                const float * f   = &filt[(size_t) b * kMelFreqBins];
                double        acc = 0.0;
                for (int k = lo[(size_t) b]; k < hi[(size_t) b]; ++k) acc += (double) f[k] * (double) (float) power[k];
                out[b] = (float) std::log10((double) std::max((float) acc, 1e-10f));
            }
        }
    };
    const int64_t n_bands = std::max<int64_t>(1, std::min<int64_t>(n_threads, n_frames / 250));
    const int64_t per = (n_frames + n_bands - 1) / n_bands;
    std::vector<std::thread> pool;
    for (int64_t i = 1; i < n_bands; ++i) {
        const int64_t b0 = i * per, b1 = std::min(n_frames, b0 + per);
        if (b0 < b1) pool.emplace_back(band, b0, b1);
    }
    band(0, std::min(n_frames, per));
    for (auto & th : pool) th.join();

    MelFeatures out;
    out.n_frames = (int) n_frames;
    out.data.resize((size_t) (n_frames * n_mels));
    if (n_frames == 0) return out;
    const float threshold = *std::max_element(logm.begin(), logm.end()) - 8.0f;
    for (int64_t t = 0; t < n_frames; ++t) {
        for (int b = 0; b < n_mels; ++b) {
            out.data[(size_t) b * n_frames + t] = (std::max(logm[(size_t) (t * n_mels + b)], threshold) + 4.0f) / 4.0f;
        }
    }
    return out;
}

} // namespace minicpm
