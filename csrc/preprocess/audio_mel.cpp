// MiniCPM-o log-mel features. Each frame is windowed, transformed by a 400-point real FFT
// (one 200-point complex Stockham FFT of the even/odd samples, radices 4, 2, 5, 5), reduced
// to power, mel-filtered over the few non-zero bins of each filter, and log10'd, all in double
// with the values rounded to float where torch holds float32 tensors (filters, window, log
// mel, clamp and scale). What remains of the difference to the float32 reference is mostly its
// own STFT rounding: ~1e-5 on the features where the clamp is on, up to a few 1e-4 in bins
// near the 1e-10 floor where it is off (streaming under 5 s), where this code is the closer
// one to exact arithmetic.
#include "preprocess/audio_mel.h"

#include "minicpm/error.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <thread>

namespace minicpm {

namespace {

[[noreturn]] void invalid(const std::string & msg) {
    throw Error(ErrorKind::InvalidArgument, msg);
}

constexpr double kPi = 3.14159265358979323846;
constexpr int    kHalfWindow = kMelFft / 2;        // reflect padding of torch.stft(center=True)
constexpr float  kLogFloor   = -10.0f;             // log10 of the 1e-10 mel floor
constexpr float  kDynamicRange = 8.0f;             // the clamp: max - 8
constexpr size_t kDynamicMinSamples = 5 * (size_t) kAudioSampleRate;   // streaming: floor mode below 5 s

struct Cpx {
    double re, im;
};
inline Cpx operator+(Cpx a, Cpx b) { return {a.re + b.re, a.im + b.im}; }
inline Cpx operator-(Cpx a, Cpx b) { return {a.re - b.re, a.im - b.im}; }
inline Cpx operator*(Cpx a, Cpx b) { return {a.re * b.re - a.im * b.im, a.re * b.im + a.im * b.re}; }
inline Cpx operator*(double s, Cpx a) { return {s * a.re, s * a.im}; }
inline Cpx mul_neg_i(Cpx a) { return {a.im, -a.re}; }   // -i * a
inline Cpx conj(Cpx a) { return {a.re, -a.im}; }

// Slaney's mel scale (librosa.hz_to_mel / mel_to_hz with htk=False): linear below 1 kHz,
// logarithmic above.
constexpr double kMelFsp = 200.0 / 3.0, kMinLogHz = 1000.0, kMinLogMel = kMinLogHz / kMelFsp;
const double     kLogStep = std::log(6.4) / 27.0;

double hz_to_mel(double hz) {
    return hz < kMinLogHz ? hz / kMelFsp : kMinLogMel + std::log(hz / kMinLogHz) / kLogStep;
}

double mel_to_hz(double mel) {
    return mel < kMinLogMel ? kMelFsp * mel : kMinLogHz * std::exp(kLogStep * (mel - kMinLogMel));
}

constexpr int kFftHalf = kMelFft / 2;   // the complex FFT's size

// Everything that depends only on the constants, built once.
struct Tables {
    std::vector<float>  filters;         // [kMelBins][kMelFreqBins], float as torch uses them
    std::vector<double> filters_d;       // the same values, for the accumulation
    int                 lo[kMelBins], hi[kMelBins];   // non-zero bins [lo, hi) of each filter
    double              window[kMelFft];              // periodic Hann as torch.hann_window computes it

    struct Stage {
        int              ns;             // product of the earlier radices
        std::vector<Cpx> tw;             // tw[k * (radix - 1) + r - 1] = exp(-2 pi i r k / (ns * radix))
    };
    std::vector<Stage> stages;
    Cpx                post[kFftHalf + 1];   // exp(-2 pi i k / 400): splits the packed transform

    Tables() {
        // librosa.filters.mel(sr=16000, n_fft=400, n_mels=80, fmin=0, fmax=8000, norm="slaney").
        double mel_f[kMelBins + 2];
        const double m0 = hz_to_mel(0.0), m1 = hz_to_mel(kAudioSampleRate / 2.0);
        const double step = (m1 - m0) / (kMelBins + 1);   // numpy.linspace: start + i * step, exact end
        for (int i = 0; i < kMelBins + 2; ++i) mel_f[i] = mel_to_hz(i == kMelBins + 1 ? m1 : m0 + i * step);
        filters.assign((size_t) kMelBins * kMelFreqBins, 0.0f);
        filters_d.assign(filters.size(), 0.0);
        for (int b = 0; b < kMelBins; ++b) {
            const double enorm = 2.0 / (mel_f[b + 2] - mel_f[b]);
            lo[b] = kMelFreqBins;
            hi[b] = 0;
            for (int k = 0; k < kMelFreqBins; ++k) {
                const double f     = (double) k * kAudioSampleRate / kMelFft;
                const double lower = (f - mel_f[b]) / (mel_f[b + 1] - mel_f[b]);
                const double upper = (mel_f[b + 2] - f) / (mel_f[b + 2] - mel_f[b + 1]);
                const double w     = std::max(0.0, std::min(lower, upper)) * enorm;
                const size_t at    = (size_t) b * kMelFreqBins + k;
                filters[at]   = (float) w;
                filters_d[at] = (double) filters[at];
                if (filters[at] != 0.0f) {
                    lo[b] = std::min(lo[b], k);
                    hi[b] = k + 1;
                }
            }
            if (hi[b] == 0) lo[b] = 0;
        }

        // torch.hann_window's float32 steps: arange * float(2 pi / N), cos, * -0.5 + 0.5 (its
        // vectorised cos differs from a rounded exact one in about 12 of the 400 taps, by 1 ulp).
        const float angle_step = (float) (2.0 * kPi / kMelFft);
        for (int n = 0; n < kMelFft; ++n) window[n] = (float) std::cos((double) ((float) n * angle_step)) * -0.5f + 0.5f;

        int ns = 1;
        for (int radix : {4, 2, 5, 5}) {
            Stage s{ns, {}};
            for (int k = 0; k < ns; ++k) {
                for (int r = 1; r < radix; ++r) {
                    const double a = -2.0 * kPi * r * k / (ns * radix);
                    s.tw.push_back({std::cos(a), std::sin(a)});
                }
            }
            stages.push_back(std::move(s));
            ns *= radix;
        }
        for (int k = 0; k <= kFftHalf; ++k) {
            const double a = -2.0 * kPi * k / kMelFft;
            post[k] = {std::cos(a), std::sin(a)};
        }
    }
};

const Tables & tables() {
    static const Tables t;
    return t;
}

// Scratch of one thread.
struct Work {
    double x[kMelFft];
    Cpx    a[kFftHalf], b[kFftHalf];
    double power[kMelFreqBins];
};

// Small DFTs of the Stockham stages (forward, exp(-i ...)).
inline void dft4(Cpx * v) {
    const Cpx s02 = v[0] + v[2], d02 = v[0] - v[2], s13 = v[1] + v[3], d13 = mul_neg_i(v[1] - v[3]);
    v[0] = s02 + s13;
    v[2] = s02 - s13;
    v[1] = d02 + d13;
    v[3] = d02 - d13;
}

inline void dft5(Cpx * v) {
    static const double c1 = std::cos(2 * kPi / 5), c2 = std::cos(4 * kPi / 5);
    static const double s1 = std::sin(2 * kPi / 5), s2 = std::sin(4 * kPi / 5);
    const Cpx b1 = v[1] + v[4], b2 = v[2] + v[3], d1 = v[1] - v[4], d2 = v[2] - v[3];
    const Cpx t1 = v[0] + c1 * b1 + c2 * b2, t2 = v[0] + c2 * b1 + c1 * b2;
    const Cpx u1 = mul_neg_i(s1 * d1 + s2 * d2), u2 = mul_neg_i(s2 * d1 - s1 * d2);   // -i (...)
    v[0] = v[0] + b1 + b2;
    v[1] = t1 + u1;
    v[4] = t1 - u1;
    v[2] = t2 + u2;
    v[3] = t2 - u2;
}

inline void dft2(Cpx * v) {
    const Cpx v0 = v[0];
    v[0] = v0 + v[1];
    v[1] = v0 - v[1];
}

// One Stockham stage of radix R after stages whose radices multiply to ns: butterfly j
// (j = q ns + k) reads src[j + r 200 / R] times exp(-2 pi i r k / (ns R)) and writes
// dst[q ns R + k + r ns], so the output comes out in natural order.
template <int R> void fft_stage(const Cpx * src, Cpx * dst, const Tables::Stage & s) {
    constexpr int stride = kFftHalf / R;
    const int     ns     = s.ns;
    const Cpx *   tw     = s.tw.data();
    for (int q = 0; q < stride / ns; ++q) {
        for (int k = 0; k < ns; ++k) {
            const int j = q * ns + k;
            Cpx       v[R];
            v[0] = src[j];
            for (int r = 1; r < R; ++r) v[r] = src[j + r * stride] * tw[k * (R - 1) + r - 1];
            if constexpr (R == 2) dft2(v);
            else if constexpr (R == 4) dft4(v);
            else dft5(v);
            for (int r = 0; r < R; ++r) dst[q * ns * R + k + r * ns] = v[r];
        }
    }
}

// 200-point complex FFT of w.a; the result is in w.a.
void fft200(const Tables & t, Work & w) {
    static_assert(kFftHalf == 4 * 2 * 5 * 5, "the stages below are those of a 200-point FFT");
    fft_stage<4>(w.a, w.b, t.stages[0]);
    fft_stage<2>(w.b, w.a, t.stages[1]);
    fft_stage<5>(w.a, w.b, t.stages[2]);
    fft_stage<5>(w.b, w.a, t.stages[3]);
}

// log10(max(mel, 1e-10)) of the windowed frame in w.x, into out[kMelBins].
void frame_log_mel(const Tables & t, Work & w, float * out) {
    for (int m = 0; m < kFftHalf; ++m) w.a[m] = {w.x[2 * m], w.x[2 * m + 1]};
    fft200(t, w);
    const Cpx * z = w.a;
    // z = FFT(even + i odd): X[k] = E[k] + exp(-2 pi i k / 400) O[k] with
    // E = (z[k] + conj z[200 - k]) / 2 and O = (z[k] - conj z[200 - k]) / 2i.
    for (int k = 0; k <= kFftHalf; ++k) {
        const Cpx zk = z[k % kFftHalf], zm = conj(z[(kFftHalf - k) % kFftHalf]);
        const Cpx e = 0.5 * (zk + zm), o = mul_neg_i(0.5 * (zk - zm));
        const Cpx x = e + t.post[k] * o;
        w.power[k] = x.re * x.re + x.im * x.im;
    }
    for (int b = 0; b < kMelBins; ++b) {
        const double * f   = &t.filters_d[(size_t) b * kMelFreqBins];
        double         acc = 0.0;
        for (int k = t.lo[b]; k < t.hi[b]; ++k) acc += f[k] * w.power[k];
        out[b] = std::log10(std::max((float) acc, 1e-10f));
    }
}

// Log mel of frame `frame` of a signal of `len` samples whose first n_real are `pcm` and the
// rest zeros, reflected (without repeating the edge sample) at 0 and at len, as torch.stft
// pads it. len > kHalfWindow.
void signal_frame(const Tables & t, Work & w, const float * pcm, int64_t n_real, int64_t len, int64_t frame,
                  float * out) {
    const int64_t start = frame * kMelHop - kHalfWindow;
    if (start >= 0 && start + kMelFft <= n_real) {
        for (int i = 0; i < kMelFft; ++i) w.x[i] = t.window[i] * pcm[start + i];
    } else {
        for (int i = 0; i < kMelFft; ++i) {
            int64_t s = start + i;
            if (s < 0) s = -s;
            else if (s >= len) s = 2 * (len - 1) - s;
            w.x[i] = s < n_real ? t.window[i] * pcm[s] : 0.0;
        }
    }
    frame_log_mel(t, w, out);
}

void check_finite(const float * pcm, size_t n, const char * what) {
    if (n > 0 && pcm == nullptr) invalid(std::string(what) + ": null sample pointer for " + std::to_string(n) + " samples");
    for (size_t i = 0; i < n; ++i) {
        if (!std::isfinite(pcm[i])) {
            invalid(std::string(what) + ": sample " + std::to_string(i) + " is " + (std::isnan(pcm[i]) ? "NaN" : "infinite") +
                    " (expected finite PCM)");
        }
    }
}

int resolve_threads(int n_threads, const char * what) {
    if (n_threads < 0) invalid(std::string(what) + ": n_threads must be >= 0 (0 = from the core count), got " +
                               std::to_string(n_threads));
    if (n_threads == 0) n_threads = (int) std::max(1u, std::thread::hardware_concurrency());
    return n_threads;
}

// Runs fn(begin, end, work) over frames [0, n) in contiguous bands, one per thread, at least
// kMinFramesPerThread frames each (a frame costs ~3 us; fewer would not pay for the thread).
template <typename Fn> void parallel_frames(int64_t n, int n_threads, Fn fn) {
    constexpr int64_t kMinFramesPerThread = 250;
    const int64_t     n_bands = std::max<int64_t>(1, std::min<int64_t>(n_threads, n / kMinFramesPerThread));
    const int64_t     band    = (n + n_bands - 1) / n_bands;
    auto run = [&](int64_t b0, int64_t b1) {
        Work w;
        fn(b0, b1, w);
    };
    std::vector<std::thread> pool;
    for (int64_t i = 1; i < n_bands; ++i) {
        const int64_t b0 = i * band, b1 = std::min(n, b0 + band);
        if (b0 < b1) pool.emplace_back(run, b0, b1);
    }
    run(0, std::min(n, band));
    for (auto & th : pool) th.join();
}

// The clamp and scale of MiniCPMAAudioProcessor, in float32 as torch computes them.
inline float normalise(float log_mel, float threshold) {
    return (std::max(log_mel, threshold) + 4.0f) / 4.0f;
}

// log_mel_clip without the argument checks.
MelFeatures clip_features(const float * pcm, size_t n, int n_threads) {
    const Tables & t = tables();
    const int64_t  n_total = (int64_t) kMelPieceSamples;
    // The reference featurises all 3000 frames of the padded piece; frames whose window starts
    // past the audio see only zeros and are exactly the floor, below every other value, so
    // they change neither the maximum nor the kept frames.
    const int64_t n_out  = ((int64_t) n + kMelHop - 1) / kMelHop;
    const int64_t n_calc = std::min<int64_t>(n_total / kMelHop, ((int64_t) n + kHalfWindow + kMelHop - 1) / kMelHop);

    std::vector<float> log_mel((size_t) n_calc * kMelBins);   // [frame][bin]
    parallel_frames(n_calc, n_threads, [&](int64_t f0, int64_t f1, Work & w) {
        for (int64_t f = f0; f < f1; ++f) signal_frame(t, w, pcm, (int64_t) n, n_total, f, &log_mel[(size_t) f * kMelBins]);
    });
    const float threshold = *std::max_element(log_mel.begin(), log_mel.end()) - kDynamicRange;

    MelFeatures out;
    out.n_frames = (int) n_out;
    out.data.resize((size_t) kMelBins * n_out);
    for (int64_t f = 0; f < n_out; ++f) {
        for (int b = 0; b < kMelBins; ++b) {
            out.data[(size_t) b * n_out + f] = normalise(log_mel[(size_t) f * kMelBins + b], threshold);
        }
    }
    return out;
}

} // namespace

const std::vector<float> & mel_filter_bank() {
    return tables().filters;
}

MelFeatures log_mel_clip(const float * pcm, size_t n, int n_threads) {
    if (n == 0) invalid("log-mel: empty audio (0 samples)");
    if (n > kMelPieceSamples) {
        invalid("log-mel: a clip holds at most " + std::to_string(kMelPieceSamples) + " samples (30 s at 16 kHz), got " +
                std::to_string(n) + "; cut longer audio into 30 s pieces (log_mel_pieces)");
    }
    check_finite(pcm, n, "log-mel");
    return clip_features(pcm, n, resolve_threads(n_threads, "log-mel"));
}

std::vector<MelFeatures> log_mel_pieces(const float * pcm, size_t n, int n_threads) {
    if (n == 0) invalid("log-mel: empty audio (0 samples)");
    check_finite(pcm, n, "log-mel");
    const int threads = resolve_threads(n_threads, "log-mel");
    std::vector<MelFeatures> out;
    for (size_t at = 0; at < n; at += kMelPieceSamples) {
        out.push_back(clip_features(pcm + at, std::min(kMelPieceSamples, n - at), threads));
    }
    return out;
}

// ---------------------------------------------------------------------------------------
// Streaming.

StreamingMel::StreamingMel(const StreamingMelConfig & cfg) : cfg_(cfg) {
    const int kMaxMs = 600000;   // 10 minutes: far beyond any use, and no overflow below
    if (cfg.chunk_ms < 10 || cfg.chunk_ms > kMaxMs) {
        invalid("streaming mel: chunk_ms must be in [10, " + std::to_string(kMaxMs) + "] (at least one 10 ms frame), got " +
                std::to_string(cfg.chunk_ms));
    }
    if (cfg.first_chunk_ms < 0 || cfg.first_chunk_ms > kMaxMs) {
        invalid("streaming mel: first_chunk_ms must be in [0, " + std::to_string(kMaxMs) + "], got " +
                std::to_string(cfg.first_chunk_ms));
    }
    if (cfg.cnn_redundancy_ms < 0 || cfg.cnn_redundancy_ms > kMaxMs) {
        invalid("streaming mel: cnn_redundancy_ms must be in [0, " + std::to_string(kMaxMs) + "], got " +
                std::to_string(cfg.cnn_redundancy_ms));
    }
    const int64_t ms = kAudioSampleRate / 1000;
    chunk_samples_       = (int64_t) cfg.chunk_ms * ms;
    chunk_frames_        = chunk_samples_ / kMelHop;
    pad_target_          = (int64_t) cfg.first_chunk_ms * ms;
    first_chunk_samples_ = std::max<int64_t>(kMelHop, pad_target_ / kMelHop * kMelHop);
    redundancy_          = (int64_t) cfg.cnn_redundancy_ms * ms / kMelHop;
    if (cfg.sliding_window) {
        // The reference keeps min(1 s, L - stride) samples; a stride that leaves less than
        // 1 s of the trigger length (or all of it) would empty the buffer.
        if (!std::isfinite(cfg.slide_trigger_s) || !std::isfinite(cfg.slide_stride_s) || cfg.slide_stride_s <= 0 ||
            cfg.slide_trigger_s > 3600 || cfg.slide_trigger_s - cfg.slide_stride_s < 1.0) {
            invalid("streaming mel: the sliding window needs 0 < slide_stride_s <= slide_trigger_s - 1 and "
                    "slide_trigger_s <= 3600, got trigger " + std::to_string(cfg.slide_trigger_s) + " s, stride " +
                    std::to_string(cfg.slide_stride_s) + " s");
        }
        trigger_samples_ = (int64_t) (cfg.slide_trigger_s * kAudioSampleRate);
        stride_samples_  = (int64_t) (cfg.slide_stride_s * kAudioSampleRate);
    }
}

void StreamingMel::reset() {
    buffer_.clear();
    n_unstored_ = 0;
    base_       = 0;
    next_core_  = 0;
    first_      = true;
    cache_.clear();
    cache_max_.clear();
    cache_begin_ = 0;
    cache_peak_  = 0.0f;
    edge_ids_.clear();
    edges_.clear();
}

size_t StreamingMel::next_chunk_samples() const {
    return (size_t) (first_ ? first_chunk_samples_ : chunk_samples_);
}

void StreamingMel::append(const float * pcm, size_t n) {
    size_t store = n;
    if (!cfg_.sliding_window) store = std::min(n, kMelPieceSamples - std::min(kMelPieceSamples, buffer_.size()));
    if (pcm) buffer_.insert(buffer_.end(), pcm, pcm + store);
    else buffer_.insert(buffer_.end(), store, 0.0f);
    n_unstored_ += n - store;
}

// The reference's _maybe_slide_buffer: once the buffer reaches the trigger, drop the stride
// (hop-aligned, keeping at least min(1 s, L - stride) samples) and move the frame base.
void StreamingMel::slide() {
    const int64_t len = (int64_t) buffer_.size();
    if (!cfg_.sliding_window || len < trigger_samples_) return;
    const int64_t keep = std::min<int64_t>(kAudioSampleRate, len - stride_samples_);
    const int64_t drop = std::min(stride_samples_, std::max<int64_t>(0, len - keep)) / kMelHop * kMelHop;
    if (drop <= 0) return;
    buffer_.erase(buffer_.begin(), buffer_.begin() + drop);
    base_ += drop / kMelHop;
}

// Brings the cache to the interior frames of the analysed signal (length L'): local frames
// [2, (L' - 200) / 160], whose windows need no reflection. Their values depend only on the
// samples under the window, so a frame computed once stays right until it leaves the buffer.
void StreamingMel::update_cache() {
    const Tables & t   = tables();
    const int64_t  len = analysed_len();
    const int64_t  lo  = base_ + 2;                                  // first interior frame (global)
    const int64_t  hi  = base_ + (len - kHalfWindow) / kMelHop + 1;  // one past the last

    int64_t cached = (int64_t) cache_max_.size();
    if (cached == 0 || cache_begin_ + cached < lo) {
        cache_.clear();
        cache_max_.clear();
        cache_begin_ = lo;
        cached       = 0;
    } else if (cache_begin_ < lo) {
        // After a slide: frames now left of the buffer or at its reflected left edge go.
        const int64_t gone = lo - cache_begin_;
        cache_.erase(cache_.begin(), cache_.begin() + gone * kMelBins);
        cache_max_.erase(cache_max_.begin(), cache_max_.begin() + gone);
        cache_begin_ = lo;
        cached -= gone;
        if (cached > 0) cache_peak_ = *std::max_element(cache_max_.begin(), cache_max_.end());
    }
    if (cache_begin_ + cached >= hi) return;

    cache_.resize((size_t) (hi - cache_begin_) * kMelBins);
    cache_max_.resize((size_t) (hi - cache_begin_));
    Work w;
    for (int64_t g = cache_begin_ + cached; g < hi; ++g) {
        float * dst = &cache_[(size_t) (g - cache_begin_) * kMelBins];
        signal_frame(t, w, buffer_.data(), len, len, g - base_, dst);
        const float m = *std::max_element(dst, dst + kMelBins);
        cache_max_[(size_t) (g - cache_begin_)] = m;
        cache_peak_ = g == cache_begin_ ? m : std::max(cache_peak_, m);
    }
}

// Featurises the analysed signal as the reference does on every call: interior frames from
// the cache, the (at most four) frames at a reflected edge afresh. Returns the clamp
// threshold, whose maximum covers all of them.
float StreamingMel::analyse() {
    const Tables & t           = tables();
    const int64_t  len         = analysed_len();
    const int64_t  n_full      = len / kMelHop;                        // torch.stft frames minus the last
    const int64_t  first_right = (len - kHalfWindow) / kMelHop + 1;   // first frame past the interior
    update_cache();

    edge_ids_.clear();
    for (int64_t f = 0; f < std::min<int64_t>(2, n_full); ++f) edge_ids_.push_back(f);
    for (int64_t f = std::max<int64_t>(2, first_right); f < n_full; ++f) edge_ids_.push_back(f);
    edges_.resize(edge_ids_.size() * kMelBins);
    float peak = cache_max_.empty() ? std::numeric_limits<float>::lowest() : cache_peak_;
    Work  w;
    for (size_t e = 0; e < edge_ids_.size(); ++e) {
        float * dst = &edges_[e * kMelBins];
        signal_frame(t, w, buffer_.data(), len, len, edge_ids_[e], dst);
        peak = std::max(peak, *std::max_element(dst, dst + kMelBins));
    }
    return total_len() >= kDynamicMinSamples ? peak - kDynamicRange : kLogFloor;
}

MelFeatures StreamingMel::emit(int64_t begin, int64_t end, float threshold) const {
    MelFeatures out;
    out.n_frames = (int) (end - begin);
    out.data.resize((size_t) kMelBins * out.n_frames);
    for (int64_t f = begin; f < end; ++f) {
        const int64_t g   = base_ + f;
        const float * src = nullptr;
        if (g >= cache_begin_ && g < cache_begin_ + (int64_t) cache_max_.size()) {
            src = &cache_[(size_t) (g - cache_begin_) * kMelBins];
        } else {
            const size_t e = (size_t) (std::find(edge_ids_.begin(), edge_ids_.end(), f) - edge_ids_.begin());
            src = &edges_[e * kMelBins];
        }
        for (int b = 0; b < kMelBins; ++b) out.data[(size_t) b * out.n_frames + (f - begin)] = normalise(src[b], threshold);
    }
    return out;
}

MelFeatures StreamingMel::push(const float * pcm, size_t n, bool is_last) {
    check_finite(pcm, n, "streaming mel");
    if (first_ && cfg_.pad_first_chunk && (int64_t) n < pad_target_) append(nullptr, (size_t) pad_target_ - n);
    append(pcm, n);
    slide();
    if (total_len() < (size_t) kMelFft) return {};   // the reference raises: no frame is complete

    const float   threshold  = analyse();
    const int64_t n_full     = analysed_len() / kMelHop;
    const int64_t stable     = std::min(n_full, ((int64_t) total_len() - kHalfWindow) / kMelHop + 1);
    const int64_t core_begin = next_core_, core_end = next_core_ + chunk_frames_;
    first_ = false;
    if (base_ + stable < core_end + redundancy_ && !is_last) return {};

    const int64_t begin = std::min(std::max<int64_t>(0, std::max<int64_t>(0, core_begin - redundancy_) - base_), n_full);
    const int64_t end   = std::max(begin, std::min(core_end + redundancy_ - base_, n_full));
    next_core_ = core_end;   // the core pointer moves by one chunk even when fewer frames exist
    return emit(begin, end, threshold);
}

MelFeatures StreamingMel::flush() {
    if (total_len() < (size_t) kMelFft) return {};
    const float   threshold = analyse();
    const int64_t n_full    = analysed_len() / kMelHop;
    if (next_core_ >= base_ + n_full) return {};
    const int64_t begin = std::max<int64_t>(0, next_core_ - base_);
    next_core_ = base_ + n_full;
    return emit(begin, n_full, threshold);
}

void power_spectrum_400(const double * x, double * power) {
    const Tables & t = tables();
    Work           w;
    for (int m = 0; m < kFftHalf; ++m) w.a[m] = {x[2 * m], x[2 * m + 1]};
    fft200(t, w);
    const Cpx * z = w.a;
    for (int k = 0; k <= kFftHalf; ++k) {   // as frame_log_mel splits the packed transform
        const Cpx zk = z[k % kFftHalf], zm = conj(z[(kFftHalf - k) % kFftHalf]);
        const Cpx e = 0.5 * (zk + zm), o = mul_neg_i(0.5 * (zk - zm));
        const Cpx v = e + t.post[k] * o;
        power[k] = v.re * v.re + v.im * v.im;
    }
}

const double * hann_window_400() { return tables().window; }

} // namespace minicpm
