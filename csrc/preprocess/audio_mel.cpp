#include "audio_mel.h"
#include <cmath>
#include <algorithm>
namespace minicpm {
static std::vector<double> filters() {
    auto hz2mel = [](double f) { const double fs = 200.0 / 3, mh = 1000.0, mm = mh / fs, ls = std::log(6.4) / 27.0;
        return f >= mh ? mm + std::log(f / mh) / ls : f / fs; };
    auto mel2hz = [](double m) { const double fs = 200.0 / 3, mh = 1000.0, mm = mh / fs, ls = std::log(6.4) / 27.0;
        return m >= mm ? mh * std::exp(ls * (m - mm)) : fs * m; };
    std::vector<double> w(80 * 201, 0.0), pts(82), fft(201);
    for (int i = 0; i < 201; ++i) fft[i] = i * 8000.0 / 200.0;
    const double lo = hz2mel(0), hi = hz2mel(8000);
    for (int i = 0; i < 82; ++i) pts[i] = mel2hz(lo + (hi - lo) * i / 81.0);
    for (int m = 0; m < 80; ++m) {
        const double enorm = 2.0 / (pts[m + 2] - pts[m]);
        for (int k = 0; k < 201; ++k) {
            const double lower = (fft[k] - pts[m]) / (pts[m + 1] - pts[m]);
            const double upper = (pts[m + 2] - fft[k]) / (pts[m + 2] - pts[m + 1]);
            w[m * 201 + k] = std::max(0.0, std::min(lower, upper)) * enorm;
        }
    }
    return w;
}
MelFeatures log_mel_clip(const float * pcm, size_t n, int) {
    static const std::vector<double> fb = filters();
    const size_t N = 480000;
    std::vector<double> x(N + 400, 0.0);
    for (size_t i = 0; i < N + 400; ++i) {
        long j = (long) i - 200;
        if (j < 0) j = -j;
        if (j >= (long) N) j = 2 * ((long) N - 1) - j;
        x[i] = (size_t) j < n ? pcm[j] : 0.0;
    }
    const int T = 3000;
    std::vector<double> logm((size_t) 80 * T);
    std::vector<double> win(400), pw(201);
    for (int i = 0; i < 400; ++i) win[i] = 0.5 - 0.5 * std::cos(2 * M_PI * i / 400.0);
    const int F = (int) ((n + 159) / 160);
    double mx = -1e30;
    for (int t = 0; t < T; ++t) {
        if (t > F + 2) { for (int m = 0; m < 80; ++m) logm[(size_t) m * T + t] = -10.0; continue; }
        for (int k = 0; k < 201; ++k) {
            double re = 0, im = 0;
            for (int i = 0; i < 400; ++i) { const double v = x[(size_t) t * 160 + i] * win[i]; re += v * std::cos(2 * M_PI * k * i / 400.0); im -= v * std::sin(2 * M_PI * k * i / 400.0); }
            pw[k] = re * re + im * im;
        }
        for (int m = 0; m < 80; ++m) {
            double s = 0; for (int k = 0; k < 201; ++k) s += fb[m * 201 + k] * pw[k];
            const double l = std::log10(std::max(s, 1e-10));
            logm[(size_t) m * T + t] = l; mx = std::max(mx, l);
        }
    }
    MelFeatures out; out.n_frames = F; out.data.resize((size_t) 80 * F);
    for (int m = 0; m < 80; ++m) for (int t = 0; t < F; ++t) out.data[(size_t) m * F + t] = (float) ((std::max(logm[(size_t) m * T + t], mx - 8.0) + 4.0) / 4.0);
    return out;
}
}
namespace minicpm {
// TEMPORARY whole-buffer version without sliding (replaced by the exact incremental one).
static MelFeatures raw_mel(const std::vector<float> & x, bool floor_mode) {
    static const std::vector<double> fb = filters();
    const long L = (long) x.size();
    const int T = (int) (L / 160);
    std::vector<double> win(400), pw(201), logm((size_t) 80 * T);
    for (int i = 0; i < 400; ++i) win[i] = 0.5 - 0.5 * std::cos(2 * M_PI * i / 400.0);
    double mx = -1e30;
    for (int t = 0; t < T; ++t) {
        for (int k = 0; k < 201; ++k) {
            double re = 0, im = 0;
            for (int i = 0; i < 400; ++i) { long j = (long) t * 160 + i - 200; if (j < 0) j = -j; if (j >= L) j = 2 * (L - 1) - j;
                const double v = x[j] * win[i]; re += v * std::cos(2 * M_PI * k * i / 400.0); im -= v * std::sin(2 * M_PI * k * i / 400.0); }
            pw[k] = re * re + im * im;
        }
        for (int m = 0; m < 80; ++m) { double s = 0; for (int k = 0; k < 201; ++k) s += fb[m * 201 + k] * pw[k];
            const double l = std::log10(std::max(s, 1e-10)); logm[(size_t) m * T + t] = l; mx = std::max(mx, l); }
    }
    MelFeatures out; out.n_frames = T; out.data.resize((size_t) 80 * T);
    for (size_t i = 0; i < out.data.size(); ++i) out.data[i] = (float) ((std::max(logm[i], floor_mode ? -10.0 : mx - 8.0) + 4.0) / 4.0);
    return out;
}
StreamingMel::StreamingMel(StreamingMelConfig c) : cfg_(c) {}
void StreamingMel::reset() { buf_.clear(); emitted_ = 0; }
MelFeatures StreamingMel::push(const float * pcm, size_t n, bool is_last) {
    buf_.insert(buf_.end(), pcm, pcm + n);
    MelFeatures full = raw_mel(buf_, buf_.size() < 5 * 16000);
    const long stable = std::min<long>(full.n_frames, ((long) buf_.size() - 200) / 160 + 1);
    const long r = cfg_.cnn_redundancy_ms * 16 / 160;
    const long core_end = emitted_ + cfg_.chunk_ms / 10;
    MelFeatures out;
    if (stable >= core_end + r || is_last) {
        const long s = std::max(0L, emitted_ - r), e = std::min<long>(core_end + r, full.n_frames);
        out.n_frames = (int) std::max(0L, e - s); out.data.resize((size_t) 80 * out.n_frames);
        for (int m = 0; m < 80; ++m) for (long t = s; t < e; ++t) out.data[(size_t) m * out.n_frames + (t - s)] = full.data[(size_t) m * full.n_frames + t];
        emitted_ = core_end;
    }
    return out;
}
}
