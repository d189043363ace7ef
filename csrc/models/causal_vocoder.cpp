// MiniCPM-o 4.5 streaming vocoder (CosyVoice3 CausalHiFTGenerator + BoundedVocoder):
// hyperparameters, weights, the decoder graph, the host stages (float64 F0 predictor, source,
// STFT / iSTFT) and the streaming state machine of minicpmo-utils 1.0.7
// stepaudio2/causal_vocoder/bounded_vocoder.py.
#include "causal_vocoder.h"

#include "core/error.h"
#include "core/log.h"
#include "core/runner.h"
#include "graph/blocks.h"
#include "model/names.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

namespace minicpm {

namespace {

constexpr double  kPi = 3.14159265358979323846;
constexpr int64_t kMaxStages = 8, kMaxKernel = 256, kMaxChannels = 1 << 14, kMaxBlocks = 16, kMaxLayers = 64;
constexpr int64_t kMaxPush = 50 * 60 * 10;   // frames in one call (10 minutes at 50 frames/s)

std::string K(KeyName k) { return key_name(k); }

int64_t get_int(const GgufFile & f, KeyName k, int64_t lo, int64_t hi) {
    const int64_t v = f.get_u32(K(k));
    check_int_range(f, K(k), v, lo, hi);
    return v;
}

float get_float(const GgufFile & f, KeyName k, float lo, float hi, bool lo_open = false) {
    const float v = f.get_f32(K(k));
    check_float_range(f, K(k), v, lo, hi, lo_open);
    return v;
}

std::vector<int64_t> get_ints(const GgufFile & f, KeyName k, int64_t lo, int64_t hi, size_t n_lo, size_t n_hi) {
    const std::vector<int32_t> a = f.get_i32_array(K(k));
    if (a.size() < n_lo || a.size() > n_hi) {
        fail(ErrorKind::Format, "metadata key " + K(k) + " in " + f.path() + ": " + std::to_string(a.size()) +
                                    " values, expected " + std::to_string(n_lo) +
                                    (n_hi != n_lo ? " to " + std::to_string(n_hi) : std::string()));
    }
    std::vector<int64_t> out;
    for (int32_t v : a) {
        check_int_range(f, K(k), v, lo, hi);
        out.push_back(v);
    }
    return out;
}

std::vector<std::vector<int64_t>> split(const GgufFile & f, KeyName k, const std::vector<int64_t> & flat, size_t n) {
    if (n == 0 || flat.empty() || flat.size() % n || flat.size() / n > (size_t) kMaxBlocks) {
        fail(ErrorKind::Format, "metadata key " + K(k) + " in " + f.path() + ": " + std::to_string(flat.size()) +
                                    " dilations for " + std::to_string(n) + " blocks (equal counts expected)");
    }
    std::vector<std::vector<int64_t>> out(n);
    const size_t per = flat.size() / n;
    for (size_t i = 0; i < n; ++i) out[i].assign(flat.begin() + (long) (i * per), flat.begin() + (long) ((i + 1) * per));
    return out;
}

const TensorInfo * need_tensor(const GgufFile & f, TensorName t, int i = -1) {
    const TensorInfo * ti = f.find_tensor(tensor_name(t, i));
    if (!ti) fail(ErrorKind::Format, "tensor " + tensor_name(t, i) + " not found in " + f.path());
    return ti;
}

int64_t kernel_of(const GgufFile & f, TensorName t, int i = -1) {
    const TensorInfo * ti = need_tensor(f, t, i);
    if (ti->n_dims != 3 || ti->ne[0] < 1 || ti->ne[0] > kMaxKernel) {
        fail(ErrorKind::Format, "tensor " + ti->name + " in " + f.path() + ": shape " + shape_str(ti->ne, ti->n_dims) +
                                    ", expected a 1-D convolution kernel [k <= " + std::to_string(kMaxKernel) +
                                    ", in, out]");
    }
    return ti->ne[0];
}

// CausalConv1d.causal_padding
int64_t causal_pad(int64_t k, int64_t d) { return ((k * d - d) / 2) * 2 + (k + 1) % 2; }

bool cvoc_present(const GgufFile & f) { return f.find_tensor(tensor_name(TensorName::CV_CONV_PRE)) != nullptr; }

int64_t residual_history(int64_t k, const std::vector<int64_t> & dil) {
    int64_t n = 0;
    for (int64_t d : dil) n += causal_pad(k, d) + causal_pad(k, 1);
    return n;
}

} // namespace

int64_t CvocHparams::upsample_rate() const {
    int64_t s = 1;
    for (int64_t r : up_rates) s *= r;
    return s;
}

CvocHparams CvocHparams::from_gguf(const GgufFile & f) {
    using KN = KeyName;
    CvocHparams hp;
    hp.sample_rate = get_int(f, KN::MINICPM_CVOC_SAMPLE_RATE, 1000, 384000);
    hp.n_mel = get_int(f, KN::MINICPM_CVOC_IN_CHANNELS, 1, 1024);
    hp.base = get_int(f, KN::MINICPM_CVOC_BASE_CHANNELS, 1, kMaxChannels);
    hp.n_harmonics = get_int(f, KN::MINICPM_CVOC_NB_HARMONICS, 0, 63);
    hp.n_f0_layers = get_int(f, KN::MINICPM_CVOC_F0_LAYERS, 1, kMaxLayers);
    check_layer_count(f, K(KN::MINICPM_CVOC_F0_LAYERS), hp.n_f0_layers, kMaxLayers,
                      tensor_name(TensorName::CV_F0_CONV, (int) hp.n_f0_layers - 1));
    hp.sine_amp = get_float(f, KN::MINICPM_CVOC_SINE_AMP, 0.0f, 100.0f);
    hp.noise_std = get_float(f, KN::MINICPM_CVOC_NOISE_STD, 0.0f, 100.0f);
    hp.unvoiced_noise_div = get_float(f, KN::MINICPM_CVOC_UNVOICED_NOISE_DIV, 0.0f, 1e6f, true);
    hp.voiced_threshold = get_float(f, KN::MINICPM_CVOC_VOICED_THRESHOLD, 0.0f, 1e6f);
    hp.up_rates = get_ints(f, KN::MINICPM_CVOC_UPSAMPLE_RATES, 1, 64, 1, kMaxStages);
    const size_t ns = hp.up_rates.size();
    hp.n_fft = get_int(f, KN::MINICPM_CVOC_N_FFT, 2, 4096);
    if (hp.n_fft % 2) fail(ErrorKind::Format, K(KN::MINICPM_CVOC_N_FFT) + " in " + f.path() + " must be even");
    hp.hop = get_int(f, KN::MINICPM_CVOC_HOP, 1, hp.n_fft);
    const std::string window = f.get_str(K(KN::MINICPM_CVOC_WINDOW));
    if (window != "hann") {
        fail(ErrorKind::Unsupported, f.path() + ": STFT window '" + window + "' (only the periodic Hann window)");
    }
    const int64_t nk = get_int(f, KN::MINICPM_CVOC_RB_COUNT, 1, kMaxBlocks);
    hp.rb_dilations = split(f, KN::MINICPM_CVOC_RB_DILATIONS,
                            get_ints(f, KN::MINICPM_CVOC_RB_DILATIONS, 1, 64, 1, 256), (size_t) nk);
    hp.srb_dilations = split(f, KN::MINICPM_CVOC_SRB_DILATIONS,
                             get_ints(f, KN::MINICPM_CVOC_SRB_DILATIONS, 1, 64, 1, 256), ns);
    hp.down_strides = get_ints(f, KN::MINICPM_CVOC_SRC_DOWN_STRIDES, 1, 4096, ns, ns);
    hp.look_right = get_int(f, KN::MINICPM_CVOC_LOOK_RIGHT, 1, 64);
    hp.reflect_pad = get_int(f, KN::MINICPM_CVOC_REFLECT_PAD, 0, 64);
    hp.lrelu_slope = get_float(f, KN::MINICPM_CVOC_LRELU_SLOPE, 0.0f, 1.0f);
    hp.post_lrelu_slope = get_float(f, KN::MINICPM_CVOC_POST_LRELU_SLOPE, 0.0f, 1.0f);
    hp.audio_limit = get_float(f, KN::MINICPM_CVOC_AUDIO_LIMIT, 0.0f, 100.0f, true);
    hp.magnitude_clip = get_float(f, KN::MINICPM_CVOC_MAG_CLIP, 0.0f, 1e30f, true);
    hp.snake_eps = get_float(f, KN::MINICPM_CVOC_SNAKE_EPS, 0.0f, 1.0f);
    hp.noise_table_rows = get_int(f, KN::MINICPM_CVOC_NOISE_TABLE, 1, (int64_t) 1 << 31);
    hp.block_frames = get_int(f, KN::MINICPM_CVOC_BLOCK_FRAMES, 1, 4096);
    if ((hp.base >> ns) < 1) {
        fail(ErrorKind::Format, f.path() + ": " + std::to_string(hp.base) + " base channels cannot be halved " +
                                    std::to_string(ns) + " times");
    }
    if (hp.samples_per_frame() > (1 << 20)) fail(ErrorKind::Format, f.path() + ": samples per mel frame out of range");
    // kernel sizes: from the tensors
    for (int i = 0; i < (int) hp.n_f0_layers; ++i) hp.f0_kernels.push_back(kernel_of(f, TensorName::CV_F0_CONV, i));
    hp.f0_channels = need_tensor(f, TensorName::CV_F0_CONV, 0)->ne[2];
    check_int_range(f, tensor_name(TensorName::CV_F0_CONV, 0) + " channels", hp.f0_channels, 1, kMaxChannels);
    if (kernel_of(f, TensorName::CV_CONV_PRE) != hp.look_right + 1) {
        fail(ErrorKind::Format, f.path() + ": conv_pre kernel is not conv_pre_look_right + 1");
    }
    hp.conv_post_kernel = kernel_of(f, TensorName::CV_CONV_POST);
    for (size_t i = 0; i < ns; ++i) {
        hp.up_kernels.push_back(kernel_of(f, TensorName::CV_UP, (int) i));
        hp.down_kernels.push_back(kernel_of(f, TensorName::CV_SRC_DOWN, (int) i));
        const int64_t s = hp.down_strides[i], k = hp.down_kernels[i];
        if (s == 1 ? k != 1 : k % s != 0) {
            fail(ErrorKind::Format, f.path() + ": source down-sampling " + std::to_string(i) + " has kernel " +
                                        std::to_string(k) + " for stride " + std::to_string(s));
        }
        hp.srb_kernels.push_back(kernel_of(f, TensorName::CV_SRB_CONV1, (int) (i * hp.srb_dilations[0].size())));
    }
    int flat = 0;
    for (int64_t k = 0; k < nk; ++k) {
        hp.rb_kernels.push_back(kernel_of(f, TensorName::CV_RB_CONV1, flat));
        flat += (int) hp.rb_dilations[(size_t) k].size();
    }
    // BoundedVocoder's sizes: context_sizes() in units of 1 / samples_per_frame of a mel frame
    hp.f0_right = causal_pad(hp.f0_kernels[0], 1);
    for (size_t i = 1; i < hp.f0_kernels.size(); ++i) hp.f0_left += causal_pad(hp.f0_kernels[i], 1);
    const int64_t rate = hp.upsample_rate(), D = hp.samples_per_frame();
    const int64_t transform = hp.n_fft;   // n_fft / D frames
    int64_t h = 0, scale = 1;
    for (size_t i = 0; i < ns; ++i) {
        scale *= hp.up_rates[i];
        h += (hp.up_kernels[i] - 1) * (D / scale);   // CausalConv1dUpsample.causal_padding
        const int64_t src = transform + (hp.down_kernels[i] - 1) * (D / rate) +
                            residual_history(hp.srb_kernels[i], hp.srb_dilations[i]) * (D / scale);
        int64_t rmax = 0;
        for (size_t k = 0; k < (size_t) nk; ++k) {
            rmax = std::max(rmax, residual_history(hp.rb_kernels[k], hp.rb_dilations[k]));
        }
        h = std::max(h, src) + rmax * (D / scale);
    }
    h += (causal_pad(hp.conv_post_kernel, 1) + 1) * (D / rate) + transform;
    hp.history = (h + D - 1) / D + 2;
    hp.decoder_right = hp.look_right + 1;
    return hp;
}

size_t CausalVocoderModel::weight_bytes() const { return store->bytes_on_main() + store->bytes_on_host(); }

namespace {

size_t count_tensors(const CvocHparams & hp) {
    size_t n = 3 * (size_t) hp.n_f0_layers + 8 + 4 * (size_t) hp.n_stages() + 4;
    for (const auto & d : hp.srb_dilations) n += 6 * d.size();
    for (const auto & d : hp.rb_dilations) n += 6 * d.size() * (size_t) hp.n_stages();
    return n;
}

CvocWeights declare(WeightStore & s, const CvocHparams & hp) {
    using T = TensorName;
    const auto V = TensorRole::Vector;
    auto conv = [&](T wt, T bt, int i, int64_t k, int64_t in, int64_t out) {
        HiftConv c;
        c.w = s.require(tensor_name(wt, i), {k, in, out}, Placement::Main, V);
        c.b = s.require(tensor_name(bt, i), {out}, Placement::Main, V);
        return c;
    };
    CvocWeights w;
    const int64_t C = hp.f0_channels, ns = hp.n_stages(), nk = (int64_t) hp.rb_kernels.size(), nf = hp.n_fft + 2;
    for (int i = 0; i < (int) hp.n_f0_layers; ++i) {
        w.f0.push_back(conv(T::CV_F0_CONV, T::CV_F0_CONV_BIAS, i, hp.f0_kernels[(size_t) i], i == 0 ? hp.n_mel : C, C));
        w.f0_mag.push_back(s.require(tensor_name(T::CV_F0_CONV_MAG, i), {C}, Placement::Main, V));
    }
    w.f0_cls_w = s.require(tensor_name(T::CV_F0_CLS), {C, 1}, Placement::Main, V);
    w.f0_cls_b = s.require(tensor_name(T::CV_F0_CLS_BIAS), {1}, Placement::Main, V);
    w.src_w = s.require(tensor_name(T::CV_SRC_LINEAR), {hp.n_sines(), 1}, Placement::Main, V);
    w.src_b = s.require(tensor_name(T::CV_SRC_LINEAR_BIAS), {1}, Placement::Main, V);
    w.pre = conv(T::CV_CONV_PRE, T::CV_CONV_PRE_BIAS, -1, hp.look_right + 1, hp.n_mel, hp.base);
    auto resblock = [&](T c1, T c1b, T c2, T c2b, T a1, T a2, int flat0, int64_t k, const std::vector<int64_t> & dil,
                        int64_t ch) {
        HiftResBlock r;
        r.kernel = k;
        r.dilations = dil;
        for (size_t j = 0; j < dil.size(); ++j) {
            const int i = flat0 + (int) j;
            r.conv1.push_back(conv(c1, c1b, i, k, ch, ch));
            r.conv2.push_back(conv(c2, c2b, i, k, ch, ch));
            r.alpha1.push_back(s.require(tensor_name(a1, i), {ch}, Placement::Main, V));
            r.alpha2.push_back(s.require(tensor_name(a2, i), {ch}, Placement::Main, V));
        }
        return r;
    };
    for (int64_t i = 0; i < ns; ++i) {
        const int64_t in = hp.base >> i, out = hp.base >> (i + 1);
        w.ups.push_back(conv(T::CV_UP, T::CV_UP_BIAS, (int) i, hp.up_kernels[(size_t) i], in, out));
        w.downs.push_back(conv(T::CV_SRC_DOWN, T::CV_SRC_DOWN_BIAS, (int) i, hp.down_kernels[(size_t) i], nf, out));
    }
    for (int64_t i = 0; i < ns; ++i) {
        const auto & dil = hp.srb_dilations[(size_t) i];
        w.srb.push_back(resblock(T::CV_SRB_CONV1, T::CV_SRB_CONV1_BIAS, T::CV_SRB_CONV2, T::CV_SRB_CONV2_BIAS,
                                 T::CV_SRB_ALPHA1, T::CV_SRB_ALPHA2, (int) (i * (int64_t) dil.size()),
                                 hp.srb_kernels[(size_t) i], dil, hp.channels(i)));
    }
    int flat = 0;
    for (int64_t i = 0; i < ns; ++i) {
        for (int64_t k = 0; k < nk; ++k) {
            const auto & dil = hp.rb_dilations[(size_t) k];
            w.rb.push_back(resblock(T::CV_RB_CONV1, T::CV_RB_CONV1_BIAS, T::CV_RB_CONV2, T::CV_RB_CONV2_BIAS,
                                    T::CV_RB_ALPHA1, T::CV_RB_ALPHA2, flat, hp.rb_kernels[(size_t) k], dil,
                                    hp.channels(i)));
            flat += (int) dil.size();
        }
    }
    w.post = conv(T::CV_CONV_POST, T::CV_CONV_POST_BIAS, -1, hp.conv_post_kernel, hp.channels(ns - 1), nf);
    return w;
}

std::unique_ptr<Component> cvoc_load(const ComponentLoad & in) {
    auto m = std::make_unique<CausalVocoderModel>();
    m->hp = CvocHparams::from_gguf(in.file);
    m->store = std::make_unique<WeightStore>(in.file, in.devices, count_tensors(m->hp));
    m->w = declare(*m->store, m->hp);
    const std::string first = tensor_name(TensorName::CV_CONV_PRE);
    const std::string prefix = first.substr(0, first.find('.') + 1);
    for (const TensorInfo & ti : in.file.tensors()) {
        if (ti.name.rfind(prefix, 0) == 0 && ti.type != GGML_TYPE_F32) {
            fail(ErrorKind::Unsupported, in.file.path() + ": vocoder tensor " + ti.name + " is " +
                                             ggml_type_name(ti.type) + "; the vocoder takes F32 weights");
        }
    }
    m->store->load();
    // F0 predictor weights: w = v * (g / ||v||) in float64 (torch's weight norm on the float64 module)
    for (size_t l = 0; l < m->w.f0.size(); ++l) {
        const HiftConv & c = m->w.f0[l];
        const std::vector<float> v = m->store->read_f32(c.w), b = m->store->read_f32(c.b);
        const std::vector<float> g = m->store->read_f32(m->w.f0_mag[l]);
        const size_t per = v.size() / g.size();
        std::vector<double> w(v.size());
        for (size_t o = 0; o < g.size(); ++o) {
            double n2 = 0.0;
            for (size_t i = 0; i < per; ++i) n2 += (double) v[o * per + i] * (double) v[o * per + i];
            if (!(n2 > 0.0)) fail(ErrorKind::Format, in.file.path() + ": F0 predictor layer " + std::to_string(l) + " has a zero weight-norm direction");
            const double sc = (double) g[o] / std::sqrt(n2);
            for (size_t i = 0; i < per; ++i) w[o * per + i] = (double) v[o * per + i] * sc;
        }
        m->f0_w.push_back(std::move(w));
        m->f0_b.emplace_back(b.begin(), b.end());
    }
    const std::vector<float> cw = m->store->read_f32(m->w.f0_cls_w), cb = m->store->read_f32(m->w.f0_cls_b);
    m->f0_cls_w.assign(cw.begin(), cw.end());
    m->f0_cls_b = cb[0];
    m->src_w = m->store->read_f32(m->w.src_w);
    m->src_b = m->store->read_f32(m->w.src_b);
    MINICPM_LOG_INFO("cvoc: streaming vocoder %lld mel bins, %lld channels, %lld stages, %lld samples per frame, "
                     "history %lld frames, delay %lld frames",
                     (long long) m->hp.n_mel, (long long) m->hp.base, (long long) m->hp.n_stages(),
                     (long long) m->hp.samples_per_frame(), (long long) m->hp.history,
                     (long long) m->hp.delay_frames());
    return m;
}

// ---- graph blocks (activations [frames, channels], ggml order) ----------------------------------

// Conv1d without padding as im2col (F32 columns) and one product: [out frames, out channels].
ggml_tensor * conv1d(ggml_context * ctx, const HiftConv & c, ggml_tensor * x, int s, int d) {
    const int64_t oc = c.w->ne[2];
    ggml_tensor * cols = ggml_im2col(ctx, c.w, x, s, 0, 0, 0, d, 0, false, GGML_TYPE_F32);
    cols = ggml_reshape_2d(ctx, cols, cols->ne[0], cols->ne[1] * cols->ne[2]);
    ggml_tensor * y = graph::mul_mat(ctx, cols, ggml_reshape_2d(ctx, c.w, c.w->ne[0] * c.w->ne[1], oc));
    return ggml_add(ctx, y, ggml_reshape_2d(ctx, c.b, 1, oc));
}

ggml_tensor * pad_time(ggml_context * ctx, ggml_tensor * x, int left, int right) {
    if (left == 0 && right == 0) return x;
    return ggml_pad_ext(ctx, x, left, right, 0, 0, 0, 0, 0, 0);
}

// CausalConv1d(causal_type = 'left'): zeros in front.
ggml_tensor * conv_left(ggml_context * ctx, const HiftConv & c, ggml_tensor * x, int d) {
    const int64_t k = c.w->ne[0];
    return conv1d(ctx, c, pad_time(ctx, x, (int) causal_pad(k, d), 0), 1, d);
}

ggml_tensor * snake(ggml_context * ctx, ggml_tensor * x, ggml_tensor * alpha, float eps) {
    ggml_tensor * a = ggml_reshape_2d(ctx, alpha, 1, alpha->ne[0]);
    ggml_tensor * s = ggml_sqr(ctx, ggml_sin(ctx, ggml_mul(ctx, x, a)));
    return ggml_add(ctx, x, ggml_div(ctx, s, ggml_scale_bias(ctx, a, 1.0f, eps)));
}

ggml_tensor * resblock(ggml_context * ctx, const HiftResBlock & r, ggml_tensor * x, float eps) {
    for (size_t j = 0; j < r.dilations.size(); ++j) {
        ggml_tensor * t = snake(ctx, x, r.alpha1[j], eps);
        t = conv_left(ctx, r.conv1[j], t, (int) r.dilations[j]);
        t = snake(ctx, t, r.alpha2[j], eps);
        t = conv_left(ctx, r.conv2[j], t, 1);
        x = ggml_add(ctx, t, x);
    }
    return x;
}

// y[o][t] = b[o] + sum over (c, j) of W[o][c][j] * x[c][t + j], for o < oc and t < no, the
// terms added in (c, j) order (float64, separate products and sums): register tiles of 4
// outputs x 8 frames. x holds C rows of np values and at least 8 readable values after its last
// row. Built twice where the compiler can (AVX2 and the baseline, picked at run time): the same
// operations in the same order, so every machine gets the same values.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
__attribute__((target_clones("avx2", "default")))
#endif
void conv_f64(const double * W, const double * b, const double * x, int64_t C, int64_t np, int64_t k, int64_t oc,
              int64_t no, double * y) {
    typedef double v4d __attribute__((vector_size(32)));
    const int64_t ck = C * k;
    int64_t o = 0;
    for (; o + 4 <= oc; o += 4) {
        const double * w0 = W + o * ck;
        for (int64_t t = 0; t < no; t += 8) {
            v4d acc[4][2];
            for (int r = 0; r < 4; ++r) acc[r][0] = acc[r][1] = v4d{b[o + r], b[o + r], b[o + r], b[o + r]};
            for (int64_t c = 0; c < C; ++c) {
                const double * xc = x + c * np + t;
                for (int64_t j = 0; j < k; ++j) {
                    v4d xa, xb;
                    std::memcpy(&xa, xc + j, sizeof xa);
                    std::memcpy(&xb, xc + j + 4, sizeof xb);
                    const int64_t wi = c * k + j;
                    for (int r = 0; r < 4; ++r) {
                        const double wv = w0[r * ck + wi];
                        const v4d    wb = {wv, wv, wv, wv};
                        const v4d    pa = wb * xa, pb = wb * xb;
                        acc[r][0] += pa;
                        acc[r][1] += pb;
                    }
                }
            }
            const int64_t n = std::min<int64_t>(8, no - t);
            for (int r = 0; r < 4; ++r) {
                double tmp[8];
                std::memcpy(tmp, &acc[r][0], sizeof acc[r][0]);
                std::memcpy(tmp + 4, &acc[r][1], sizeof acc[r][1]);
                std::memcpy(y + (o + r) * no + t, tmp, (size_t) n * sizeof(double));
            }
        }
    }
    for (; o < oc; ++o) {
        for (int64_t t = 0; t < no; ++t) {
            double v = b[o];
            for (int64_t c = 0; c < C; ++c) {
                for (int64_t j = 0; j < k; ++j) v += W[(o * C + c) * k + j] * x[c * np + t + j];
            }
            y[o * no + t] = v;
        }
    }
}

uint64_t splitmix64(uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

} // namespace

const ComponentType kCausalVocoderComponent = {"cvoc", &cvoc_present, &cvoc_load};

// ---- runtime ------------------------------------------------------------------------------------

struct CausalVocoder::Impl {
    const CausalVocoderModel & m;
    const CvocHparams &        hp;
    GraphRunner                runner;
    struct IO {
        ggml_tensor * mel = nullptr, * stft = nullptr, * re = nullptr, * im = nullptr;
    } io;                      // the current graph's
    GraphSlots<IO>             slot_io;   // each kept graph's
    std::vector<float>         window;
    std::vector<double>        cos_t, sin_t;

    // BoundedVocoder.cache
    std::vector<float>  mel;      // [frames][n_mel] from mel_offset
    std::vector<float>  source;   // samples from source_offset * hop
    std::vector<double> phase;    // [n_sines] cycles
    int64_t mel_offset = 0, source_offset = 0, source_end = 0, emitted = 0;
    bool    is_final = false, first_chunk = true, prefix = true;
    int64_t received_total = 0, samples_out = 0;
    CvocNoise noise;
    bool               record = false;
    std::vector<float> rec_f0, rec_source;

    Impl(const CausalVocoderModel & model, const ComputeBackends & b)
        : m(model), hp(model.hp), runner("cvoc", b, max_nodes(model.hp)) {
        window.resize((size_t) hp.n_fft);
        for (int64_t n = 0; n < hp.n_fft; ++n) {
            window[(size_t) n] = (float) (0.5 - 0.5 * std::cos(2.0 * kPi * (double) n / (double) hp.n_fft));
        }
        const int64_t N = hp.n_fft, nb = hp.n_bins();
        cos_t.resize((size_t) (nb * N));
        sin_t.resize((size_t) (nb * N));
        for (int64_t k = 0; k < nb; ++k) {
            for (int64_t n = 0; n < N; ++n) {
                const double a = 2.0 * kPi * (double) ((k * n) % N) / (double) N;
                cos_t[(size_t) (k * N + n)] = std::cos(a);
                sin_t[(size_t) (k * N + n)] = std::sin(a);
            }
        }
        const int64_t T = hp.history + hp.decoder_right + hp.block_frames;   // the largest step window
        runner.reserve([&](ggml_context * ctx, ggml_cgraph * gf) { build(ctx, gf, T, true); }, "vocoder buffers");
        // No graph cache: one push is one decoder graph, and a turn's few push lengths are
        // rebuilt in place. On an H200 (duplex, one session, every runner's cache on against
        // MINICPM_GRAPH_CACHE=0) kept graphs of each length made a push slower (62-87 against
        // 37-65 ms), probably because switching between kept graphs re-captures their CUDA
        // graphs where a rebuild in place only updates one.
        reset({}, true);
    }

    static size_t max_nodes(const CvocHparams & hp) {
        size_t n = 96;
        for (const auto & d : hp.srb_dilations) n += 48 * d.size();
        for (const auto & d : hp.rb_dilations) n += 48 * d.size() * (size_t) hp.n_stages();
        return n + 48 * (size_t) hp.n_stages();
    }

    void reset(const CvocNoise & nz, bool pre) {
        mel.clear();
        source.clear();
        phase.assign((size_t) hp.n_sines(), 0.0);
        mel_offset = source_offset = source_end = emitted = 0;
        is_final = false;
        first_chunk = true;
        prefix = pre;
        received_total = samples_out = 0;
        noise = nz;
        rec_f0.clear();
        rec_source.clear();
        if (!noise.table) noise.rows = hp.noise_table_rows;
    }

    float noise_at(int64_t pos, int64_t h) const {
        const int64_t row = pos % noise.rows;
        if (noise.table) return (*noise.table)[(size_t) (row * hp.n_sines() + h)];
        const uint64_t v = splitmix64(noise.seed * 0xD1B54A32D192ED03ull ^ splitmix64((uint64_t) (row * hp.n_sines() + h)));
        return (float) (v >> 40) * (1.0f / 16777216.0f);   // 24 bits: [0, 1)
    }

    int64_t n_stft(int64_t L) const { return L / hp.hop + 1; }   // center, reflect pad n_fft / 2

    // decode(x [T frames], s [T * spf samples], finalize): conv_pre over T (final: zero right pad)
    void build(ggml_context * ctx, ggml_cgraph * gf, int64_t T, bool finalize) {
        const int64_t nb = hp.n_bins(), ns = hp.n_stages(), nk = (int64_t) hp.rb_kernels.size();
        const int64_t Tx = finalize ? T : T - hp.look_right;
        const int64_t F = Tx * hp.upsample_rate() + 1;   // source STFT frames used
        io.mel = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, T, hp.n_mel);
        ggml_set_name(io.mel, "cvoc_mel");
        ggml_set_input(io.mel);
        io.stft = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, F, hp.n_fft + 2);
        ggml_set_name(io.stft, "cvoc_source_stft");
        ggml_set_input(io.stft);
        ggml_tensor * x = conv1d(ctx, m.w.pre, pad_time(ctx, io.mel, 0, finalize ? (int) hp.look_right : 0), 1, 1);
        for (int64_t i = 0; i < ns; ++i) {
            const int64_t u = hp.up_rates[(size_t) i];
            x = ggml_leaky_relu(ctx, x, hp.lrelu_slope, false);
            if (u > 1) {   // nearest upsampling along time
                ggml_tensor * x3 = ggml_reshape_3d(ctx, ggml_cont(ctx, x), 1, x->ne[0], x->ne[1]);
                x = ggml_reshape_2d(ctx, ggml_repeat_4d(ctx, x3, u, x->ne[0], x->ne[1], 1), u * x->ne[0], x->ne[1]);
            }
            x = conv1d(ctx, m.w.ups[(size_t) i], pad_time(ctx, x, (int) (hp.up_kernels[(size_t) i] - 1), 0), 1, 1);
            if (i == ns - 1 && hp.reflect_pad > 0) x = ggml_pad_reflect_1d(ctx, x, (int) hp.reflect_pad, 0);
            const int64_t st = hp.down_strides[(size_t) i];
            ggml_tensor * si = st == 1 ? conv_left(ctx, m.w.downs[(size_t) i], io.stft, 1)
                                       : conv1d(ctx, m.w.downs[(size_t) i], pad_time(ctx, io.stft, (int) (st - 1), 0),
                                                (int) st, 1);
            si = resblock(ctx, m.w.srb[(size_t) i], si, hp.snake_eps);
            if (si->ne[0] != x->ne[0]) {
                fail(ErrorKind::Format, "streaming vocoder: stage " + std::to_string(i) + " has " +
                                            std::to_string(x->ne[0]) + " frames but its source branch " +
                                            std::to_string(si->ne[0]) + " (inconsistent upsampling / STFT metadata)");
            }
            x = ggml_add(ctx, x, si);
            ggml_tensor * xs = nullptr;
            for (int64_t k = 0; k < nk; ++k) {
                ggml_tensor * r = resblock(ctx, m.w.rb[(size_t) (i * nk + k)], x, hp.snake_eps);
                xs = xs ? ggml_add(ctx, xs, r) : r;
            }
            x = ggml_scale(ctx, xs, 1.0f / (float) nk);
        }
        x = ggml_leaky_relu(ctx, x, hp.post_lrelu_slope, false);
        x = conv_left(ctx, m.w.post, x, 1);
        if (x->ne[0] != F) {
            fail(ErrorKind::Format, "streaming vocoder: conv_post gives " + std::to_string(x->ne[0]) +
                                        " frames, the source STFT " + std::to_string(F) + " (inconsistent metadata)");
        }
        ggml_tensor * mag = ggml_exp(ctx, ggml_view_2d(ctx, x, F, nb, x->nb[1], 0));
        mag = ggml_clamp(ctx, mag, -std::numeric_limits<float>::max(), hp.magnitude_clip);
        ggml_tensor * ph = ggml_sin(ctx, ggml_view_2d(ctx, x, F, hp.n_fft + 2 - nb, x->nb[1], (size_t) nb * x->nb[1]));
        io.re = ggml_mul(ctx, mag, ggml_cos(ctx, ph));
        io.im = ggml_mul(ctx, mag, ggml_sin(ctx, ph));
        ggml_set_output(io.re);
        ggml_set_output(io.im);
        ggml_build_forward_expand(gf, io.re);
        ggml_build_forward_expand(gf, io.im);
    }

    // f0_predictor(features.double(), finalize).to(float32) over mel frames [a, b) of the cache
    std::vector<float> f0_predict(int64_t a, int64_t b, bool finalize) const {
        const int64_t T = b - a, nm = hp.n_mel;
        std::vector<double> x((size_t) (nm * T));   // [C][T]
        for (int64_t t = 0; t < T; ++t) {
            for (int64_t c = 0; c < nm; ++c) x[(size_t) (c * T + t)] = mel[(size_t) ((a - mel_offset + t) * nm + c)];
        }
        int64_t C = nm, n = T;
        for (size_t l = 0; l < m.f0_w.size(); ++l) {
            const int64_t k = hp.f0_kernels[l], oc = hp.f0_channels, p = causal_pad(k, 1);
            // layer 0: right-causal (final: zeros after; else the last p frames are the look-ahead)
            int64_t left = 0, right = 0;
            if (l == 0) right = finalize ? p : 0;
            else left = p;
            const int64_t np = left + n + right, no = np - k + 1;
            if (no <= 0) fail(ErrorKind::Internal, "streaming vocoder: F0 window too short");
            std::vector<double> xp((size_t) (C * np + 8), 0.0);   // (+ 8: conv_f64's tiles read past the last row)
            for (int64_t c = 0; c < C; ++c) std::memcpy(&xp[(size_t) (c * np + left)], &x[(size_t) (c * n)], (size_t) n * sizeof(double));
            std::vector<double> y((size_t) (oc * no));
            conv_f64(m.f0_w[l].data(), m.f0_b[l].data(), xp.data(), C, np, k, oc, no, y.data());
            for (double & v : y) v = v > 0.0 ? v : std::exp(v) - 1.0;   // ATen's ELU
            x.swap(y);
            C = oc;
            n = no;
        }
        std::vector<float> f0((size_t) n);
        for (int64_t t = 0; t < n; ++t) {
            double v = m.f0_cls_b;
            for (int64_t c = 0; c < C; ++c) v += m.f0_cls_w[(size_t) c] * x[(size_t) (c * n + t)];
            f0[(size_t) t] = (float) std::fabs(v);
        }
        return f0;
    }

    // BoundedVocoder._source(f0 part, frame_offset): appends part * spf samples to `source`
    void make_source(const float * f0, int64_t n, int64_t frame_offset) {
        const int64_t H = hp.n_sines(), spf = hp.samples_per_frame();
        const float sr = (float) hp.sample_rate;
        const float unvoiced = (1.0f * hp.sine_amp) / hp.unvoiced_noise_div;   // (1 - uv) * sine_amp / 3, left to right
        std::vector<double> cum((size_t) H, 0.0);
        std::vector<float> sines((size_t) H);
        std::vector<double> last((size_t) H);
        const size_t base = source.size();
        source.resize(base + (size_t) (n * spf));
        for (int64_t i = 0; i < n; ++i) {
            for (int64_t h = 0; h < H; ++h) {
                float inc = (f0[i] * (float) (h + 1)) / sr;
                inc = inc - std::floor(inc);
                cum[(size_t) h] += (double) inc;
                const double cyc = cum[(size_t) h] * (double) spf + phase[(size_t) h];
                last[(size_t) h] = cyc;
                const double r = cyc - std::floor(cyc);
                sines[(size_t) h] = (float) std::sin(r * (2.0 * kPi));
            }
            const bool voiced = f0[i] > hp.voiced_threshold;
            const float v = voiced ? 1.0f : 0.0f;
            const float namp = voiced ? v * hp.noise_std : unvoiced;
            for (int64_t j = 0; j < spf; ++j) {
                const int64_t pos = (frame_offset + i) * spf + j;
                float acc = 0.0f;
                for (int64_t h = 0; h < H; ++h) {
                    const float e = sines[(size_t) h] * hp.sine_amp * v + namp * noise_at(pos, h);
                    acc += m.src_w[(size_t) h] * e;
                }
                source[base + (size_t) (i * spf + j)] = std::tanh(acc + m.src_b[0]);
            }
        }
        for (int64_t h = 0; h < H; ++h) phase[(size_t) h] = last[(size_t) h] - std::floor(last[(size_t) h]);
    }

    // torch.stft(center, reflect, periodic Hann): [n_fft + 2][F] (real parts, then imaginary)
    std::vector<float> stft(const float * s, int64_t L, int64_t F) const {
        const int64_t N = hp.n_fft, pad = N / 2, nb = hp.n_bins();
        std::vector<float> out((size_t) ((N + 2) * F));
        std::vector<double> frame((size_t) N);
        for (int64_t f = 0; f < F; ++f) {
            for (int64_t n = 0; n < N; ++n) {
                int64_t i = f * hp.hop + n - pad;
                if (i < 0) i = -i;
                if (i >= L) i = 2 * (L - 1) - i;
                frame[(size_t) n] = (double) window[(size_t) n] * (double) s[i];
            }
            for (int64_t k = 0; k < nb; ++k) {
                double re = 0.0, im = 0.0;
                const double * c = cos_t.data() + k * N, * sn = sin_t.data() + k * N;
                for (int64_t n = 0; n < N; ++n) {
                    re += frame[(size_t) n] * c[n];
                    im -= frame[(size_t) n] * sn[n];
                }
                out[(size_t) (k * F + f)] = (float) re;
                out[(size_t) ((nb + k) * F + f)] = (float) im;
            }
        }
        return out;
    }

    // torch.istft(center, periodic Hann, onesided): hop * (F - 1) samples
    std::vector<float> istft(const std::vector<float> & re, const std::vector<float> & im, int64_t F) const {
        const int64_t N = hp.n_fft, nb = hp.n_bins(), pad = N / 2, full = N + hp.hop * (F - 1);
        std::vector<double> y((size_t) full, 0.0), env((size_t) full, 0.0);
        for (int64_t f = 0; f < F; ++f) {
            for (int64_t n = 0; n < N; ++n) {
                double v = re[(size_t) f] + ((n % 2) ? -1.0 : 1.0) * re[(size_t) ((nb - 1) * F + f)];
                for (int64_t k = 1; k < nb - 1; ++k) {
                    const size_t t = (size_t) (k * N + n);
                    v += 2.0 * ((double) re[(size_t) (k * F + f)] * cos_t[t] - (double) im[(size_t) (k * F + f)] * sin_t[t]);
                }
                v /= (double) N;
                const double wn = window[(size_t) n];
                y[(size_t) (f * hp.hop + n)] += v * wn;
                env[(size_t) (f * hp.hop + n)] += wn * wn;
            }
        }
        const int64_t len = hp.hop * (F - 1);
        std::vector<float> out((size_t) len);
        for (int64_t i = 0; i < len; ++i) {
            const double e = env[(size_t) (i + pad)];
            if (std::fabs(e) < 1e-11) fail(ErrorKind::Internal, "streaming vocoder: iSTFT window envelope is zero");
            out[(size_t) i] = (float) (y[(size_t) (i + pad)] / e);
        }
        return out;
    }

    // model.decode(mel frames [a, b), source from frame a, finalize)
    std::vector<float> decode(int64_t a, int64_t b, bool finalize) {
        const int64_t T = b - a, nm = hp.n_mel, spf = hp.samples_per_frame();
        std::vector<float> x((size_t) (nm * T));
        for (int64_t t = 0; t < T; ++t) {
            for (int64_t c = 0; c < nm; ++c) x[(size_t) (c * T + t)] = mel[(size_t) ((a - mel_offset + t) * nm + c)];
        }
        const int64_t L = T * spf;
        const float * s = source.data() + (size_t) ((a - source_offset) * spf);
        if ((int64_t) source.size() - (a - source_offset) * spf != L) {
            fail(ErrorKind::Internal, "streaming vocoder: source and mel windows differ");
        }
        const int64_t Tx = finalize ? T : T - hp.look_right;
        if (Tx < 1) fail(ErrorKind::Internal, "streaming vocoder: decoder window too short");
        const int64_t F = Tx * hp.upsample_rate() + 1;   // (the non-final step drops the look-right frames)
        if (F > n_stft(L)) fail(ErrorKind::Internal, "streaming vocoder: STFT frames");
        const std::vector<float> spec = stft(s, L, F);
        slot_io.prepare(runner, {T, finalize ? 1 : 0}, [&](ggml_context * ctx, ggml_cgraph * gf) { build(ctx, gf, T, finalize); },
                        true, io);
        ggml_backend_tensor_set(io.mel, x.data(), 0, x.size() * sizeof(float));
        ggml_backend_tensor_set(io.stft, spec.data(), 0, spec.size() * sizeof(float));
        runner.compute();
        std::vector<float> re((size_t) (F * hp.n_bins())), im(re.size());
        ggml_backend_tensor_get(io.re, re.data(), 0, re.size() * sizeof(float));
        ggml_backend_tensor_get(io.im, im.data(), 0, im.size() * sizeof(float));
        std::vector<float> wav = istft(re, im, F);
        if (!finalize) wav.resize(wav.size() - (size_t) spf);
        for (float & v : wav) v = std::min(std::max(v, -hp.audio_limit), hp.audio_limit);
        return wav;
    }

    // BoundedVocoder._process(finalize) for the blocks of one push at once. `marks`: the mel
    // frames received after each of its blocks (stream() calls _process once per block of
    // block_frames). The F0 predictor and the decoder run once over the frames of all blocks:
    // each F0 frame has its full context either way (the first f0_left outputs are dropped),
    // and the decoder's `history` frames cover its receptive field, so every sample equals the
    // block-by-block result; the sources are made in the parts block by block makes them
    // (each block's new F0 frames, split into block_frames), which their phase sums follow.
    std::vector<float> process(const std::vector<int64_t> & marks, bool finalize) {
        const int64_t spf = hp.samples_per_frame(), nm = hp.n_mel;
        const int64_t received = mel_offset + (int64_t) mel.size() / nm;
        const int64_t available_source = std::max<int64_t>(0, received - (finalize ? 0 : hp.f0_right));
        if (available_source > source_end) {
            const int64_t start = std::max<int64_t>(0, source_end - hp.f0_left);
            std::vector<float> f0 = f0_predict(start, received, finalize);
            for (int64_t mark : marks) {   // f0[i] is frame start + i
                const int64_t avail = std::max<int64_t>(0, mark - (finalize ? 0 : hp.f0_right));
                while (source_end < avail) {
                    const int64_t part = std::min(hp.block_frames, avail - source_end);
                    const int64_t at = source_end - start;
                    const size_t before = source.size();
                    make_source(f0.data() + at, part, source_end);
                    if (record) {
                        rec_f0.insert(rec_f0.end(), f0.begin() + (long) at, f0.begin() + (long) (at + part));
                        rec_source.insert(rec_source.end(), source.begin() + (long) before, source.end());
                    }
                    source_end += part;
                }
            }
            if (source_end != available_source) fail(ErrorKind::Internal, "streaming vocoder: source frames");
        }
        const int64_t available_speech = std::max<int64_t>(0, source_end - (finalize ? 0 : hp.decoder_right));
        std::vector<float> speech;
        if (available_speech > emitted) {
            const int64_t start = std::max<int64_t>(0, emitted - hp.history);
            std::vector<float> wav = decode(start, source_end, finalize);
            const size_t skip = (size_t) ((emitted - start) * spf);
            if (wav.size() < skip || wav.size() - skip != (size_t) ((available_speech - emitted) * spf)) {
                fail(ErrorKind::Internal, "streaming vocoder: unexpected sample count");
            }
            speech.assign(wav.begin() + (long) skip, wav.end());
            emitted = available_speech;
        }
        const int64_t keep_mel = std::max<int64_t>(0, std::min(emitted - hp.history, source_end - hp.f0_left));
        const int64_t keep_source = std::max<int64_t>(0, emitted - hp.history);
        mel.erase(mel.begin(), mel.begin() + (long) ((keep_mel - mel_offset) * nm));
        source.erase(source.begin(), source.begin() + (long) ((keep_source - source_offset) * spf));
        mel_offset = keep_mel;
        source_offset = keep_source;
        return speech;
    }
};

CausalVocoder::CausalVocoder(const CausalVocoderModel & model, const ComputeBackends & backends)
    : impl_(std::make_unique<Impl>(model, backends)) {}

CausalVocoder::~CausalVocoder() = default;

const CvocHparams & CausalVocoder::hparams() const { return impl_->hp; }

void CausalVocoder::reset(const CvocNoise & noise, bool prefix_silence) {
    const CvocHparams & hp = impl_->hp;
    if (noise.table) {
        if (noise.rows < 1 || (int64_t) noise.table->size() != noise.rows * hp.n_sines()) {
            fail(ErrorKind::InvalidArgument, "streaming vocoder: the noise table must be [rows >= 1, " +
                                                 std::to_string(hp.n_sines()) + "] values");
        }
        for (float v : *noise.table) {
            if (!std::isfinite(v)) fail(ErrorKind::InvalidArgument, "streaming vocoder: the noise table holds NaN or infinite values");
        }
    }
    impl_->reset(noise, prefix_silence);
}

std::vector<float> CausalVocoder::push(const float * mel, int64_t n_frames, bool last) {
    Impl & s = *impl_;
    const CvocHparams & hp = s.hp;
    if (n_frames < 0 || (n_frames > 0 && !mel)) fail(ErrorKind::InvalidArgument, "streaming vocoder: bad mel frames");
    if (n_frames > kMaxPush) {
        fail(ErrorKind::InvalidArgument, "streaming vocoder: " + std::to_string(n_frames) + " mel frames in one call, more than " +
                                             std::to_string(kMaxPush));
    }
    if (s.is_final) {
        if (n_frames > 0 || !last) {
            fail(ErrorKind::InvalidArgument, "streaming vocoder: the stream is already finalized; reset() it for a new utterance");
        }
        return {};
    }
    const int64_t nm = hp.n_mel;
    for (int64_t i = 0; i < n_frames * nm; ++i) {
        if (!std::isfinite(mel[i])) fail(ErrorKind::InvalidArgument, "streaming vocoder: the mel holds NaN or infinite values");
    }
    std::vector<float> out;
    if (n_frames > 0) {
        const size_t base = s.mel.size();
        s.mel.resize(base + (size_t) (n_frames * nm));
        for (int64_t t = 0; t < n_frames; ++t) {
            for (int64_t c = 0; c < nm; ++c) s.mel[base + (size_t) (t * nm + c)] = mel[c * n_frames + t];
        }
        std::vector<int64_t> marks;   // BoundedVocoder.stream's blocks
        const int64_t received = s.mel_offset + (int64_t) (base / (size_t) nm);
        for (int64_t i = 0; i < n_frames; i += hp.block_frames) marks.push_back(received + std::min(n_frames, i + hp.block_frames));
        s.received_total += n_frames;
        out = s.process(marks, false);
    }
    if (last) {
        std::vector<float> y = s.process({s.mel_offset + (int64_t) (s.mel.size() / (size_t) nm)}, true);
        out.insert(out.end(), y.begin(), y.end());
        s.is_final = true;
    }
    for (float v : out) {
        if (!std::isfinite(v)) fail(ErrorKind::Internal, "streaming vocoder: non-finite audio");
    }
    if (!out.empty() && s.first_chunk) {
        s.first_chunk = false;
        if (!last && s.prefix) out.insert(out.begin(), (size_t) (hp.delay_frames() * hp.samples_per_frame()), 0.0f);
    }
    s.samples_out += (int64_t) out.size();
    return out;
}

void CausalVocoder::set_record(bool on) { impl_->record = on; }
const std::vector<float> & CausalVocoder::recorded_f0() const { return impl_->rec_f0; }
const std::vector<float> & CausalVocoder::recorded_source() const { return impl_->rec_source; }

bool CausalVocoder::finalized() const { return impl_->is_final; }
int64_t CausalVocoder::frames_received() const { return impl_->received_total; }
int64_t CausalVocoder::samples_emitted() const { return impl_->samples_out; }

} // namespace minicpm
