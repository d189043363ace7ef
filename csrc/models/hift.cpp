// MiniCPM-o 4.5 Token2Wav vocoder (original HiFT): hyperparameters, weights, graphs, the source
// module, STFT and iSTFT. Mirrors HiFTGenerator.forward of minicpmo-utils 1.0.7
// (flashcosyvoice/modules/hifigan.py, hifigan_components/layers.py SineGen2 / SourceModuleHnNSF2).
#include "hift.h"

#include "core/error.h"
#include "core/log.h"
#include "graph/blocks.h"
#include "model/names.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>

namespace minicpm {

namespace {

constexpr double  kPi = 3.14159265358979323846;
constexpr int64_t kMaxStages = 8, kMaxKernel = 256, kMaxChannels = 1 << 14, kMaxBlocks = 16, kMaxLayers = 64;

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

// [[d...] per kernel] from a flat array: equal counts per kernel.
std::vector<std::vector<int64_t>> split(const GgufFile & f, KeyName k, const std::vector<int64_t> & flat, size_t n) {
    if (n == 0 || flat.size() % n || flat.empty() || flat.size() / n > (size_t) kMaxBlocks) {
        fail(ErrorKind::Format, "metadata key " + K(k) + " in " + f.path() + ": " + std::to_string(flat.size()) +
                                    " dilations for " + std::to_string(n) + " kernels (equal counts expected)");
    }
    std::vector<std::vector<int64_t>> out(n);
    const size_t per = flat.size() / n;
    for (size_t i = 0; i < n; ++i) out[i].assign(flat.begin() + (long) (i * per), flat.begin() + (long) ((i + 1) * per));
    return out;
}

// ---- llama.cpp-omni's token2wav-gguf/hifigan2.gguf: the original HiFT (its loader,
// token2wav-impl.cpp hg2_model::hg_model_bind_from_loader, builds HiFTGenerator's structure with
// conv_pre k7/p3, ups 8/5/3, source_downs and Snake ResBlocks) under the state-dict names of
// hift_original.pt without the generator. prefix, weight norms folded, torch shapes reversed
// (conv kernels [k, in, out], ConvTranspose1d [k, out, in]), F32. The resblock flat index of
// names.def is block * dilations + dilation there.
constexpr int64_t kOmniDilations = 3;   // resblock_dilation_sizes [[1, 3, 5]] * 3 of the release

std::string omni_hift_name(TensorName t, int i) {
    using T = TensorName;
    const std::string rb = i < 0 ? std::string()
                                 : std::to_string(i / kOmniDilations) + ".";
    const std::string j = i < 0 ? std::string() : std::to_string(i % kOmniDilations);
    switch (t) {
        case T::HIFT_F0_CONV: return "f0_predictor.condnet." + std::to_string(2 * i) + ".weight";
        case T::HIFT_F0_CONV_BIAS: return "f0_predictor.condnet." + std::to_string(2 * i) + ".bias";
        case T::HIFT_F0_CLS: return "f0_predictor.classifier.weight";
        case T::HIFT_F0_CLS_BIAS: return "f0_predictor.classifier.bias";
        case T::HIFT_SRC_LINEAR: return "m_source.l_linear.weight";
        case T::HIFT_SRC_LINEAR_BIAS: return "m_source.l_linear.bias";
        case T::HIFT_CONV_PRE: return "conv_pre.weight";
        case T::HIFT_CONV_PRE_BIAS: return "conv_pre.bias";
        case T::HIFT_CONV_POST: return "conv_post.weight";
        case T::HIFT_CONV_POST_BIAS: return "conv_post.bias";
        case T::HIFT_UP: return "ups." + std::to_string(i) + ".weight";
        case T::HIFT_UP_BIAS: return "ups." + std::to_string(i) + ".bias";
        case T::HIFT_SRC_DOWN: return "source_downs." + std::to_string(i) + ".weight";
        case T::HIFT_SRC_DOWN_BIAS: return "source_downs." + std::to_string(i) + ".bias";
        case T::HIFT_RB_CONV1: return "resblocks." + rb + "convs1." + j + ".weight";
        case T::HIFT_RB_CONV1_BIAS: return "resblocks." + rb + "convs1." + j + ".bias";
        case T::HIFT_RB_CONV2: return "resblocks." + rb + "convs2." + j + ".weight";
        case T::HIFT_RB_CONV2_BIAS: return "resblocks." + rb + "convs2." + j + ".bias";
        case T::HIFT_RB_ALPHA1: return "resblocks." + rb + "activations1." + j + ".alpha";
        case T::HIFT_RB_ALPHA2: return "resblocks." + rb + "activations2." + j + ".alpha";
        case T::HIFT_SRB_CONV1: return "source_resblocks." + rb + "convs1." + j + ".weight";
        case T::HIFT_SRB_CONV1_BIAS: return "source_resblocks." + rb + "convs1." + j + ".bias";
        case T::HIFT_SRB_CONV2: return "source_resblocks." + rb + "convs2." + j + ".weight";
        case T::HIFT_SRB_CONV2_BIAS: return "source_resblocks." + rb + "convs2." + j + ".bias";
        case T::HIFT_SRB_ALPHA1: return "source_resblocks." + rb + "activations1." + j + ".alpha";
        case T::HIFT_SRB_ALPHA2: return "source_resblocks." + rb + "activations2." + j + ".alpha";
        default: break;
    }
    fail(ErrorKind::Internal, "hift: no llama.cpp-omni name for tensor " + tensor_name(t, i));
}

// The name of a vocoder tensor in our file or in llama.cpp-omni's.
std::string hname(bool omni, TensorName t, int i = -1) { return omni ? omni_hift_name(t, i) : tensor_name(t, i); }

const TensorInfo * need_tensor(const GgufFile & f, TensorName t, int i = -1, bool omni = false) {
    const TensorInfo * ti = f.find_tensor(hname(omni, t, i));
    if (!ti) fail(ErrorKind::Format, "tensor " + hname(omni, t, i) + " not found in " + f.path());
    return ti;
}

// The kernel size of a [k, in, out] convolution in the file, bounded.
int64_t kernel_of(const GgufFile & f, TensorName t, int i = -1, bool omni = false) {
    const TensorInfo * ti = need_tensor(f, t, i, omni);
    if (ti->n_dims != 3 || ti->ne[0] < 1 || ti->ne[0] > kMaxKernel) {
        fail(ErrorKind::Format, "tensor " + ti->name + " in " + f.path() + ": shape " + shape_str(ti->ne, ti->n_dims) +
                                    ", expected a 1-D convolution kernel [k <= " + std::to_string(kMaxKernel) +
                                    ", in, out]");
    }
    return ti->ne[0];
}

bool hift_present(const GgufFile & f) {
    return f.find_tensor(tensor_name(TensorName::HIFT_CONV_PRE)) != nullptr || is_omni_hift_file(f);
}

int64_t conv_out(int64_t n, int64_t k, int64_t s, int64_t p, int64_t d) { return (n + 2 * p - d * (k - 1) - 1) / s + 1; }

} // namespace

int64_t HiftHparams::upsample_scale() const {
    int64_t s = hop;
    for (int64_t r : up_rates) s *= r;
    return s;
}

HiftHparams HiftHparams::from_gguf(const GgufFile & f) {
    HiftHparams hp;
    hp.sample_rate = get_int(f, KeyName::MINICPM_HIFT_SAMPLE_RATE, 1000, 384000);
    hp.n_mel = get_int(f, KeyName::MINICPM_HIFT_IN_CHANNELS, 1, 1024);
    hp.base = get_int(f, KeyName::MINICPM_HIFT_BASE_CHANNELS, 1, kMaxChannels);
    hp.n_harmonics = get_int(f, KeyName::MINICPM_HIFT_NB_HARMONICS, 0, 63);
    hp.n_f0_layers = get_int(f, KeyName::MINICPM_HIFT_F0_LAYERS, 1, kMaxLayers);
    check_layer_count(f, K(KeyName::MINICPM_HIFT_F0_LAYERS), hp.n_f0_layers, kMaxLayers,
                      tensor_name(TensorName::HIFT_F0_CONV, (int) hp.n_f0_layers - 1));
    hp.f0_pad = get_int(f, KeyName::MINICPM_HIFT_F0_PADDING, 0, kMaxKernel);
    hp.sine_amp = get_float(f, KeyName::MINICPM_HIFT_SINE_AMP, 0.0f, 100.0f);
    hp.noise_std = get_float(f, KeyName::MINICPM_HIFT_NOISE_STD, 0.0f, 100.0f);
    hp.unvoiced_noise_div = get_float(f, KeyName::MINICPM_HIFT_UNVOICED_NOISE_DIV, 0.0f, 1e6f, true);
    hp.voiced_threshold = get_float(f, KeyName::MINICPM_HIFT_VOICED_THRESHOLD, 0.0f, 1e6f);
    hp.up_rates = get_ints(f, KeyName::MINICPM_HIFT_UPSAMPLE_RATES, 1, 64, 1, kMaxStages);
    const size_t ns = hp.up_rates.size();
    hp.up_kernels = get_ints(f, KeyName::MINICPM_HIFT_UPSAMPLE_KERNELS, 1, kMaxKernel, ns, ns);
    hp.up_pad = get_ints(f, KeyName::MINICPM_HIFT_UPSAMPLE_PADDING, 0, kMaxKernel, ns, ns);
    hp.n_fft = get_int(f, KeyName::MINICPM_HIFT_N_FFT, 2, 4096);
    if (hp.n_fft % 2) fail(ErrorKind::Format, K(KeyName::MINICPM_HIFT_N_FFT) + " in " + f.path() + " must be even");
    hp.hop = get_int(f, KeyName::MINICPM_HIFT_HOP, 1, hp.n_fft);
    const std::string window = f.get_str(K(KeyName::MINICPM_HIFT_WINDOW));
    if (window != "hann") {
        fail(ErrorKind::Unsupported, f.path() + ": STFT window '" + window + "' (only the periodic Hann window)");
    }
    hp.rb_kernels = get_ints(f, KeyName::MINICPM_HIFT_RB_KERNELS, 1, kMaxKernel, 1, kMaxBlocks);
    hp.rb_dilations = split(f, KeyName::MINICPM_HIFT_RB_DILATIONS,
                            get_ints(f, KeyName::MINICPM_HIFT_RB_DILATIONS, 1, 64, 1, 256), hp.rb_kernels.size());
    hp.srb_kernels = get_ints(f, KeyName::MINICPM_HIFT_SRB_KERNELS, 1, kMaxKernel, ns, ns);
    hp.srb_dilations = split(f, KeyName::MINICPM_HIFT_SRB_DILATIONS,
                             get_ints(f, KeyName::MINICPM_HIFT_SRB_DILATIONS, 1, 64, 1, 256), ns);
    hp.down_strides = get_ints(f, KeyName::MINICPM_HIFT_SRC_DOWN_STRIDES, 1, 4096, ns, ns);
    hp.down_pad = get_ints(f, KeyName::MINICPM_HIFT_SRC_DOWN_PADDING, 0, 4096, ns, ns);
    hp.conv_pre_pad = get_int(f, KeyName::MINICPM_HIFT_CONV_PRE_PADDING, 0, kMaxKernel);
    hp.conv_post_pad = get_int(f, KeyName::MINICPM_HIFT_CONV_POST_PADDING, 0, kMaxKernel);
    hp.reflect_pad = get_int(f, KeyName::MINICPM_HIFT_REFLECT_PAD, 0, 64);
    hp.lrelu_slope = get_float(f, KeyName::MINICPM_HIFT_LRELU_SLOPE, 0.0f, 1.0f);
    hp.post_lrelu_slope = get_float(f, KeyName::MINICPM_HIFT_POST_LRELU_SLOPE, 0.0f, 1.0f);
    hp.audio_limit = get_float(f, KeyName::MINICPM_HIFT_AUDIO_LIMIT, 0.0f, 100.0f, true);
    hp.magnitude_clip = get_float(f, KeyName::MINICPM_HIFT_MAG_CLIP, 0.0f, 1e30f, true);
    hp.snake_eps = get_float(f, KeyName::MINICPM_HIFT_SNAKE_EPS, 0.0f, 1.0f);
    if ((hp.base >> ns) < 1) {
        fail(ErrorKind::Format, f.path() + ": " + std::to_string(hp.base) + " base channels cannot be halved " +
                                    std::to_string(ns) + " times");
    }
    if (hp.upsample_scale() > (1 << 20)) fail(ErrorKind::Format, f.path() + ": samples per mel frame out of range");
    hp.kernels_from_tensors(f);
    return hp;
}

void HiftHparams::kernels_from_tensors(const GgufFile & f) {
    HiftHparams & hp = *this;
    const bool omni = hp.omni_layout;
    const size_t ns = hp.up_rates.size();
    // kernel sizes the metadata does not carry: from the tensors
    hp.f0_kernel = kernel_of(f, TensorName::HIFT_F0_CONV, 0, omni);
    hp.f0_channels = need_tensor(f, TensorName::HIFT_F0_CONV, 0, omni)->ne[2];
    check_int_range(f, hname(omni, TensorName::HIFT_F0_CONV, 0) + " channels", hp.f0_channels, 1, kMaxChannels);
    hp.conv_pre_kernel = kernel_of(f, TensorName::HIFT_CONV_PRE, -1, omni);
    hp.conv_post_kernel = kernel_of(f, TensorName::HIFT_CONV_POST, -1, omni);
    hp.down_kernels.clear();
    for (size_t i = 0; i < ns; ++i) hp.down_kernels.push_back(kernel_of(f, TensorName::HIFT_SRC_DOWN, (int) i, omni));
    // Lengths are kept by the "same" convolutions (F0 predictor, conv_pre, conv_post).
    auto same = [&](int64_t k, int64_t p, const char * what) {
        if (conv_out(100, k, 1, p, 1) != 100) {
            fail(ErrorKind::Format, f.path() + ": " + what + " (kernel " + std::to_string(k) + ", padding " +
                                        std::to_string(p) + ") does not keep the length");
        }
    };
    same(hp.f0_kernel, hp.f0_pad, "F0 predictor convolution");
    same(hp.conv_pre_kernel, hp.conv_pre_pad, "conv_pre");
    same(hp.conv_post_kernel, hp.conv_post_pad, "conv_post");
}

bool is_omni_hift_file(const GgufFile & f) {
    return f.find_tensor("conv_pre.weight") && f.find_tensor("m_source.l_linear.weight") &&
           f.find_tensor("f0_predictor.classifier.weight") && !f.has_key(K(KeyName::MINICPM_HIFT_SAMPLE_RATE));
}

HiftHparams HiftHparams::from_omni(const GgufFile & f) {
    if (!is_omni_hift_file(f)) {
        fail(ErrorKind::Format, f.path() + " is not llama.cpp-omni's hifigan2.gguf (conv_pre.weight, m_source.l_linear.weight, "
                                           "f0_predictor.classifier.weight)");
    }
    HiftHparams hp;
    hp.omni_layout = true;
    // HiFTGenerator()'s class defaults and code literals (the release builds it bare; the same
    // values convert/t2w_hift.py writes as metadata, and llama.cpp-omni hard-codes them).
    hp.sample_rate = 24000;
    hp.sine_amp = 0.1f;
    hp.noise_std = 0.003f;
    hp.unvoiced_noise_div = 3.0f;
    hp.voiced_threshold = 10.0f;
    hp.up_rates = {8, 5, 3};
    hp.n_fft = 16;
    hp.hop = 4;
    hp.rb_kernels = {3, 7, 11};
    hp.rb_dilations = {{1, 3, 5}, {1, 3, 5}, {1, 3, 5}};
    hp.srb_kernels = {7, 7, 11};
    hp.srb_dilations = {{1, 3, 5}, {1, 3, 5}, {1, 3, 5}};
    hp.conv_pre_pad = 3;
    hp.conv_post_pad = 3;
    hp.f0_pad = 1;
    hp.reflect_pad = 1;
    hp.lrelu_slope = 0.1f;
    hp.post_lrelu_slope = 0.01f;
    hp.audio_limit = 0.99f;
    hp.magnitude_clip = 100.0f;
    hp.snake_eps = 1e-9f;
    // source_downs: strides = cumulative products of [1] + reversed rates, reversed (15, 3, 1);
    // kernel 2u, padding u / 2 (kernel 1, no padding for u = 1), as HiFTGenerator builds them.
    const size_t ns = hp.up_rates.size();
    std::vector<int64_t> cum(ns, 1);
    for (size_t i = 1; i < ns; ++i) cum[i] = cum[i - 1] * hp.up_rates[ns - i];
    for (size_t i = 0; i < ns; ++i) {
        const int64_t u = cum[ns - 1 - i];
        hp.down_strides.push_back(u);
        hp.down_pad.push_back(u == 1 ? 0 : u / 2);
    }
    // sizes from the tensors: mel bins and base width (conv_pre [k, n_mel, base]), harmonics
    // (m_source.l_linear [harmonics + 1, 1]), F0 layers, upsampling kernels
    const TensorInfo * pre = need_tensor(f, TensorName::HIFT_CONV_PRE, -1, true);
    if (pre->n_dims != 3) fail(ErrorKind::Format, "tensor conv_pre.weight in " + f.path() + ": expected [k, in, out]");
    hp.n_mel = pre->ne[1];
    hp.base = pre->ne[2];
    check_int_range(f, "conv_pre.weight mel bins", hp.n_mel, 1, 1024);
    check_int_range(f, "conv_pre.weight channels", hp.base, 1, kMaxChannels);
    const TensorInfo * lin = need_tensor(f, TensorName::HIFT_SRC_LINEAR, -1, true);
    hp.n_harmonics = lin->ne[0] - 1;
    check_int_range(f, "m_source.l_linear.weight harmonics", hp.n_harmonics, 0, 63);
    while (hp.n_f0_layers <= kMaxLayers && f.find_tensor(omni_hift_name(TensorName::HIFT_F0_CONV, (int) hp.n_f0_layers))) {
        ++hp.n_f0_layers;
    }
    check_int_range(f, "f0_predictor.condnet convolutions", hp.n_f0_layers, 1, kMaxLayers);
    for (size_t i = 0; i < ns; ++i) {
        const TensorInfo * up = need_tensor(f, TensorName::HIFT_UP, (int) i, true);
        if (up->n_dims != 3 || up->ne[0] < hp.up_rates[i] || up->ne[0] > kMaxKernel) {
            fail(ErrorKind::Format, "tensor " + up->name + " in " + f.path() + ": shape " + shape_str(up->ne, up->n_dims) +
                                        ", expected a ConvTranspose1d kernel [k >= " + std::to_string(hp.up_rates[i]) +
                                        ", out, in]");
        }
        hp.up_kernels.push_back(up->ne[0]);
        hp.up_pad.push_back((up->ne[0] - hp.up_rates[i]) / 2);
    }
    if ((hp.base >> ns) < 1) fail(ErrorKind::Format, f.path() + ": conv_pre width too small for 3 stages");
    hp.kernels_from_tensors(f);
    return hp;
}

HiftWeights HiftWeights::declare(WeightStore & s, const GgufFile & f, const HiftHparams & hp) {
    using T = TensorName;
    const auto V = TensorRole::Vector;
    auto tensor_name = [omni = hp.omni_layout](T t, int i = -1) { return hname(omni, t, i); };
    auto conv = [&](T wt, T bt, int i, int64_t k, int64_t in, int64_t out) {
        HiftConv c;
        c.w = s.require(tensor_name(wt, i), {k, in, out}, Placement::Main, V);
        c.b = s.require(tensor_name(bt, i), {out}, Placement::Main, V);
        return c;
    };
    HiftWeights w;
    const int64_t C = hp.f0_channels, ns = hp.n_stages(), nk = (int64_t) hp.rb_kernels.size();
    for (int i = 0; i < (int) hp.n_f0_layers; ++i) {
        w.f0.push_back(conv(T::HIFT_F0_CONV, T::HIFT_F0_CONV_BIAS, i, hp.f0_kernel, i == 0 ? hp.n_mel : C, C));
    }
    w.f0_cls_w = s.require(tensor_name(T::HIFT_F0_CLS), {C, 1}, Placement::Main, V);
    w.f0_cls_b = s.require(tensor_name(T::HIFT_F0_CLS_BIAS), {1}, Placement::Main, V);
    w.src_w = s.require(tensor_name(T::HIFT_SRC_LINEAR), {hp.n_sines(), 1}, Placement::Main, V);
    w.src_b = s.require(tensor_name(T::HIFT_SRC_LINEAR_BIAS), {1}, Placement::Main, V);
    w.pre = conv(T::HIFT_CONV_PRE, T::HIFT_CONV_PRE_BIAS, -1, hp.conv_pre_kernel, hp.n_mel, hp.base);
    const int64_t nf = hp.n_fft + 2;
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
        // ConvTranspose1d: torch [in, out, k] -> ggml [k, out, in]
        HiftConv up;
        up.w = s.require(tensor_name(T::HIFT_UP, (int) i), {hp.up_kernels[(size_t) i], out, in}, Placement::Main, V);
        up.b = s.require(tensor_name(T::HIFT_UP_BIAS, (int) i), {out}, Placement::Main, V);
        w.ups.push_back(up);
        w.downs.push_back(conv(T::HIFT_SRC_DOWN, T::HIFT_SRC_DOWN_BIAS, (int) i, hp.down_kernels[(size_t) i], nf, out));
    }
    for (int64_t i = 0; i < ns; ++i) {
        const auto & dil = hp.srb_dilations[(size_t) i];
        w.srb.push_back(resblock(T::HIFT_SRB_CONV1, T::HIFT_SRB_CONV1_BIAS, T::HIFT_SRB_CONV2, T::HIFT_SRB_CONV2_BIAS,
                                 T::HIFT_SRB_ALPHA1, T::HIFT_SRB_ALPHA2, (int) (i * (int64_t) dil.size()),
                                 hp.srb_kernels[(size_t) i], dil, hp.channels(i)));
    }
    int flat = 0;
    for (int64_t i = 0; i < ns; ++i) {
        for (int64_t k = 0; k < nk; ++k) {
            const auto & dil = hp.rb_dilations[(size_t) k];
            w.rb.push_back(resblock(T::HIFT_RB_CONV1, T::HIFT_RB_CONV1_BIAS, T::HIFT_RB_CONV2, T::HIFT_RB_CONV2_BIAS,
                                    T::HIFT_RB_ALPHA1, T::HIFT_RB_ALPHA2, flat, hp.rb_kernels[(size_t) k], dil,
                                    hp.channels(i)));
            flat += (int) dil.size();
        }
    }
    w.post = conv(T::HIFT_CONV_POST, T::HIFT_CONV_POST_BIAS, -1, hp.conv_post_kernel, hp.channels(ns - 1), nf);
    return w;
}

size_t HiftModel::weight_bytes() const { return store->bytes_on_main() + store->bytes_on_host(); }

namespace {

size_t count_tensors(const HiftHparams & hp) {
    size_t n = 2 * (size_t) hp.n_f0_layers + 8 + 4 * (size_t) hp.n_stages() + 4;
    for (const auto & d : hp.srb_dilations) n += 6 * d.size();
    for (const auto & d : hp.rb_dilations) n += 6 * d.size() * (size_t) hp.n_stages();
    return n;
}

std::unique_ptr<Component> hift_load(const ComponentLoad & in) {
    auto m = std::make_unique<HiftModel>();
    const bool omni = is_omni_hift_file(in.file);
    m->hp = omni ? HiftHparams::from_omni(in.file) : HiftHparams::from_gguf(in.file);
    m->store = std::make_unique<WeightStore>(in.file, in.devices, count_tensors(m->hp));
    m->w = HiftWeights::declare(*m->store, in.file, m->hp);
    // The graphs compute in F32 (products with the kernels as the second operand need F32).
    const std::string first = tensor_name(TensorName::HIFT_CONV_PRE);
    const std::string prefix = omni ? std::string() : first.substr(0, first.find('.') + 1);   // the component's name prefix
    for (const TensorInfo & ti : in.file.tensors()) {
        if (ti.name.rfind(prefix, 0) == 0 && ti.type != GGML_TYPE_F32) {
            fail(ErrorKind::Unsupported, in.file.path() + ": vocoder tensor " + ti.name + " is " +
                                             ggml_type_name(ti.type) + "; the vocoder takes F32 weights");
        }
    }
    m->store->load();
    m->src_w = m->store->read_f32(m->w.src_w);
    m->src_b = m->store->read_f32(m->w.src_b);
    MINICPM_LOG_INFO("hift: vocoder %lld mel bins, %lld channels, %lld stages, %lld samples per frame at %lld Hz%s",
                     (long long) m->hp.n_mel, (long long) m->hp.base, (long long) m->hp.n_stages(),
                     (long long) m->hp.upsample_scale(), (long long) m->hp.sample_rate,
                     omni ? " (llama.cpp-omni hifigan2.gguf)" : "");
    return m;
}

// ---- graph blocks (activations [frames, channels], ggml order) ----------------------------------

// Conv1d as im2col (F32 columns) and one product giving [out frames, out channels] directly.
ggml_tensor * conv1d(ggml_context * ctx, const HiftConv & c, ggml_tensor * x, int s, int p, int d) {
    const int64_t oc = c.w->ne[2];
    ggml_tensor * cols = ggml_im2col(ctx, c.w, x, s, 0, p, 0, d, 0, false, GGML_TYPE_F32);   // [k*ic, n_out]
    cols = ggml_reshape_2d(ctx, cols, cols->ne[0], cols->ne[1] * cols->ne[2]);
    ggml_tensor * y = graph::mul_mat(ctx, cols, ggml_reshape_2d(ctx, c.w, c.w->ne[0] * c.w->ne[1], oc));   // [n_out, oc]
    return ggml_add(ctx, y, ggml_reshape_2d(ctx, c.b, 1, oc));
}

// ConvTranspose1d(stride s, padding p): ggml's full transposed convolution, cropped by p each side.
ggml_tensor * conv_transpose1d(ggml_context * ctx, const HiftConv & c, ggml_tensor * x, int s, int p) {
    const int64_t oc = c.w->ne[1];
    ggml_tensor * y = ggml_conv_transpose_1d(ctx, c.w, x, s, 0, 1);   // [(n-1)*s + k, oc]
    const int64_t n = y->ne[0] - 2 * p;
    y = ggml_cont(ctx, ggml_view_2d(ctx, y, n, oc, y->nb[1], (size_t) p * ggml_element_size(y)));
    return ggml_add(ctx, y, ggml_reshape_2d(ctx, c.b, 1, oc));
}

// Snake: x + sin(alpha x)^2 / (alpha + eps), alpha per channel.
ggml_tensor * snake(ggml_context * ctx, ggml_tensor * x, ggml_tensor * alpha, float eps) {
    ggml_tensor * a = ggml_reshape_2d(ctx, alpha, 1, alpha->ne[0]);
    ggml_tensor * s = ggml_sqr(ctx, ggml_sin(ctx, ggml_mul(ctx, x, a)));
    return ggml_add(ctx, x, ggml_div(ctx, s, ggml_scale_bias(ctx, a, 1.0f, eps)));
}

ggml_tensor * resblock(ggml_context * ctx, const HiftResBlock & r, ggml_tensor * x, float eps) {
    for (size_t j = 0; j < r.dilations.size(); ++j) {
        const int d = (int) r.dilations[j];
        ggml_tensor * t = snake(ctx, x, r.alpha1[j], eps);
        t = conv1d(ctx, r.conv1[j], t, 1, (int) ((r.kernel * d - d) / 2), d);
        t = snake(ctx, t, r.alpha2[j], eps);
        t = conv1d(ctx, r.conv2[j], t, 1, (int) ((r.kernel - 1) / 2), 1);
        x = ggml_add(ctx, t, x);
    }
    return x;
}

// ---- host stages ------------------------------------------------------------------------------

// std::mt19937_64 is specified exactly by the standard; the uniform and normal transforms are
// written out (std::normal_distribution is not), so the draws are the same on every platform.
struct Rng {
    std::mt19937_64 g;
    explicit Rng(uint64_t seed) : g(seed) {}
    double uniform() { return (double) (g() >> 11) * (1.0 / 9007199254740992.0); }   // [0, 1)
    float  normal() {   // Box-Muller
        double u1 = uniform(), u2 = uniform();
        if (u1 < 1e-300) u1 = 1e-300;
        return (float) (std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2));
    }
};

// torch's linear interpolation index and weights (align_corners = false), the source coordinate
// computed as ATen's CPU kernel does it (scale * (i + 0.5) - 0.5 with one rounding).
struct Lerp {
    int64_t i0, i1;
    float   l0, l1;
};
Lerp lerp_index(int64_t dst, float ratio, int64_t n_in) {
    float src = std::fmaf(ratio, (float) dst + 0.5f, -0.5f);
    if (src < 0.0f) src = 0.0f;
    Lerp r;
    r.i0 = std::min<int64_t>((int64_t) src, n_in - 1);
    r.i1 = r.i0 + (r.i0 < n_in - 1 ? 1 : 0);
    r.l1 = std::min(std::max(src - (float) r.i0, 0.0f), 1.0f);
    r.l0 = 1.0f - r.l1;
    return r;
}

} // namespace

const ComponentType kHiftComponent = {"hift", &hift_present, &hift_load};

// ---- runtime ------------------------------------------------------------------------------------

struct Vocoder::Impl {
    const HiftModel &   m;
    const HiftHparams & hp;
    GraphRunner         f0_runner, dec_runner;
    ggml_tensor *       f0_in = nullptr, * f0_out = nullptr;
    ggml_tensor *       dec_mel = nullptr, * dec_stft = nullptr, * dec_re = nullptr, * dec_im = nullptr;
    std::vector<float>  window;   // periodic Hann [n_fft]
    std::vector<double> cos_t, sin_t;   // [n_bins][n_fft]: cos / sin(2 pi k n / n_fft)

    Impl(const HiftModel & model, const ComputeBackends & b)
        : m(model), hp(model.hp), f0_runner("hift-f0", b, 64 + 16 * (size_t) model.hp.n_f0_layers),
          dec_runner("hift", b, max_nodes(model.hp)) {
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
        const int64_t T = 50;   // 1 s: the size of a streaming window
        f0_runner.reserve([&](ggml_context * ctx, ggml_cgraph * gf) { build_f0(ctx, gf, T); }, "vocoder F0 buffers");
        dec_runner.reserve([&](ggml_context * ctx, ggml_cgraph * gf) { build_dec(ctx, gf, T); }, "vocoder buffers");
    }

    static size_t max_nodes(const HiftHparams & hp) {
        size_t n = 64;
        for (const auto & d : hp.srb_dilations) n += 40 * d.size();
        for (const auto & d : hp.rb_dilations) n += 40 * d.size() * (size_t) hp.n_stages();
        return n + 32 * (size_t) hp.n_stages();
    }

    int64_t n_samples(int64_t T) const { return T * hp.upsample_scale(); }
    int64_t n_stft(int64_t T) const { return (n_samples(T) + 2 * (hp.n_fft / 2) - hp.n_fft) / hp.hop + 1; }

    void build_f0(ggml_context * ctx, ggml_cgraph * gf, int64_t T) {
        f0_in = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, T, hp.n_mel);
        ggml_set_name(f0_in, "hift_mel");
        ggml_set_input(f0_in);
        ggml_tensor * x = f0_in;
        for (const HiftConv & c : m.w.f0) x = ggml_elu(ctx, conv1d(ctx, c, x, 1, (int) hp.f0_pad, 1));   // [T, C]
        x = ggml_cont(ctx, ggml_transpose(ctx, x));                                                    // [C, T]
        x = ggml_add(ctx, graph::mul_mat(ctx, m.w.f0_cls_w, x), m.w.f0_cls_b);                           // [1, T]
        f0_out = ggml_abs(ctx, x);
        ggml_set_name(f0_out, "hift_f0");
        ggml_set_output(f0_out);
        ggml_build_forward_expand(gf, f0_out);
    }

    void build_dec(ggml_context * ctx, ggml_cgraph * gf, int64_t T) {
        const int64_t F = n_stft(T), nb = hp.n_bins(), ns = hp.n_stages(), nk = (int64_t) hp.rb_kernels.size();
        dec_mel = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, T, hp.n_mel);
        ggml_set_name(dec_mel, "hift_mel");
        ggml_set_input(dec_mel);
        dec_stft = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, F, hp.n_fft + 2);
        ggml_set_name(dec_stft, "hift_source_stft");
        ggml_set_input(dec_stft);
        ggml_tensor * x = conv1d(ctx, m.w.pre, dec_mel, 1, (int) hp.conv_pre_pad, 1);
        for (int64_t i = 0; i < ns; ++i) {
            x = ggml_leaky_relu(ctx, x, hp.lrelu_slope, false);
            x = conv_transpose1d(ctx, m.w.ups[(size_t) i], x, (int) hp.up_rates[(size_t) i], (int) hp.up_pad[(size_t) i]);
            if (i == ns - 1 && hp.reflect_pad > 0) x = ggml_pad_reflect_1d(ctx, x, (int) hp.reflect_pad, 0);
            ggml_tensor * si = conv1d(ctx, m.w.downs[(size_t) i], dec_stft, (int) hp.down_strides[(size_t) i],
                                      (int) hp.down_pad[(size_t) i], 1);
            si = resblock(ctx, m.w.srb[(size_t) i], si, hp.snake_eps);
            if (si->ne[0] != x->ne[0]) {
                fail(ErrorKind::Format, "vocoder: stage " + std::to_string(i) + " has " + std::to_string(x->ne[0]) +
                                            " frames but its source branch " + std::to_string(si->ne[0]) +
                                            " (inconsistent upsampling / STFT metadata)");
            }
            x = ggml_add(ctx, x, si);
            ggml_tensor * xs = nullptr;
            for (int64_t k = 0; k < nk; ++k) {
                ggml_tensor * r = resblock(ctx, m.w.rb[(size_t) (i * nk + k)], x, hp.snake_eps);
                xs = xs ? ggml_add(ctx, xs, r) : r;
            }
            x = ggml_scale(ctx, xs, 1.0f / (float) nk);
            ggml_format_name(x, "hift_stage-%d", (int) i);
        }
        x = ggml_leaky_relu(ctx, x, hp.post_lrelu_slope, false);
        x = conv1d(ctx, m.w.post, x, 1, (int) hp.conv_post_pad, 1);                          // [F, n_fft + 2]
        if (x->ne[0] != F) {
            fail(ErrorKind::Format, "vocoder: conv_post gives " + std::to_string(x->ne[0]) + " frames, the source STFT " +
                                        std::to_string(F) + " (inconsistent metadata)");
        }
        ggml_tensor * mag = ggml_exp(ctx, ggml_view_2d(ctx, x, F, nb, x->nb[1], 0));
        mag = ggml_clamp(ctx, mag, -std::numeric_limits<float>::max(), hp.magnitude_clip);
        ggml_tensor * ph = ggml_sin(ctx, ggml_view_2d(ctx, x, F, hp.n_fft + 2 - nb, x->nb[1], (size_t) nb * x->nb[1]));
        dec_re = ggml_mul(ctx, mag, ggml_cos(ctx, ph));
        dec_im = ggml_mul(ctx, mag, ggml_sin(ctx, ph));
        ggml_set_name(dec_re, "hift_spec_re");
        ggml_set_name(dec_im, "hift_spec_im");
        ggml_set_output(dec_re);
        ggml_set_output(dec_im);
        ggml_build_forward_expand(gf, dec_re);
        ggml_build_forward_expand(gf, dec_im);
    }

    // SourceModuleHnNSF2(f0 upsampled): [L] excitation. Float32 operations in torch's order (the
    // phase reaches thousands of radians, so each rounding shows in the sines).
    std::vector<float> source(const std::vector<float> & f0, const VocodeOptions & opt) const {
        const int64_t T = (int64_t) f0.size(), up = hp.upsample_scale(), L = T * up, H = hp.n_sines();
        Rng rng(opt.seed);
        std::vector<float> phases = opt.phases;
        if (phases.empty()) {
            phases.resize((size_t) H);
            for (auto & p : phases) p = (float) rng.uniform();
        }
        phases[0] = 0.0f;   // rand_ini[:, 0] = 0
        // f0_upsamp: nearest, index floor(j * (float) (1 / up))
        const float inv_up = (float) (1.0 / (double) up);
        std::vector<float> fu((size_t) L);
        for (int64_t j = 0; j < L; ++j) {
            const int64_t i = std::min<int64_t>((int64_t) std::floor((float) j * inv_up), T - 1);
            fu[(size_t) j] = f0[(size_t) i];
        }
        // rad = (f0 * h / sr) % 1 at the samples the frame-rate interpolation reads (it is
        // linear with scale 1 / up: source coordinate up * (i + 0.5) - 0.5)
        const float sr = (float) hp.sample_rate;
        auto rad_at = [&](int64_t j, int64_t h) {
            float r = fu[(size_t) j] * (float) (h + 1) / sr;
            r = r - std::floor(r);
            if (j == 0) r += phases[(size_t) h];
            return r;
        };
        std::vector<float> phase((size_t) (T * H));   // [T][H], times up
        const float pi = (float) kPi;
        for (int64_t h = 0; h < H; ++h) {
            double acc = 0.0;   // torch's CPU cumsum accumulates in double
            for (int64_t i = 0; i < T; ++i) {
                const Lerp w = lerp_index(i, (float) up, L);
                const float r = std::fmaf(rad_at(w.i0, h), w.l0, rad_at(w.i1, h) * w.l1);
                acc += (double) r;
                float p = (float) acc * 2.0f;
                p = p * pi;
                phase[(size_t) (i * H + h)] = p * (float) up;
            }
        }
        const bool draw = opt.noise.empty() && opt.add_noise;
        const float unvoiced_amp = (1.0f * hp.sine_amp) / hp.unvoiced_noise_div;
        std::vector<float> s((size_t) L);
        std::vector<float> sines((size_t) H);
        const float ratio = inv_up;
        for (int64_t j = 0; j < L; ++j) {
            const Lerp w = lerp_index(j, ratio, T);
            const bool voiced = fu[(size_t) j] > hp.voiced_threshold;
            const float namp = voiced ? hp.noise_std : unvoiced_amp;
            double acc = (double) m.src_b[0];
            for (int64_t h = 0; h < H; ++h) {
                const float p = std::fmaf(phase[(size_t) (w.i0 * H + h)], w.l0, phase[(size_t) (w.i1 * H + h)] * w.l1);
                float v = std::sin(p) * hp.sine_amp;
                v = voiced ? v : 0.0f;
                float z = 0.0f;
                if (!opt.noise.empty()) z = opt.noise[(size_t) (j * H + h)];
                else if (draw) z = rng.normal();
                v = v + namp * z;
                acc += (double) m.src_w[(size_t) h] * (double) v;
            }
            s[(size_t) j] = std::tanh((float) acc);
        }
        return s;
    }

    // torch.stft(center, reflect pad n_fft / 2, periodic Hann, onesided): [n_fft + 2][F] rows
    // (real parts of the bins, then imaginary parts).
    std::vector<float> stft(const std::vector<float> & s) const {
        const int64_t L = (int64_t) s.size(), N = hp.n_fft, pad = N / 2, F = (L + 2 * pad - N) / hp.hop + 1,
                      nb = hp.n_bins();
        std::vector<float> out((size_t) ((N + 2) * F));
        std::vector<double> frame((size_t) N);
        for (int64_t f = 0; f < F; ++f) {
            for (int64_t n = 0; n < N; ++n) {
                int64_t i = f * hp.hop + n - pad;
                if (i < 0) i = -i;
                if (i >= L) i = 2 * (L - 1) - i;
                frame[(size_t) n] = (double) window[(size_t) n] * (double) s[(size_t) i];
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

    // torch.istft(center, periodic Hann, onesided): inverse real DFT per frame (imaginary parts of
    // the DC and Nyquist bins ignored), windowed overlap-add, divided by the summed squared window,
    // n_fft / 2 trimmed at both ends; then the output clamp.
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
            if (std::fabs(e) < 1e-11) fail(ErrorKind::Internal, "vocoder: iSTFT window envelope is zero");
            float v = (float) (y[(size_t) (i + pad)] / e);
            out[(size_t) i] = std::min(std::max(v, -hp.audio_limit), hp.audio_limit);
        }
        return out;
    }
};

Vocoder::Vocoder(const HiftModel & model, const ComputeBackends & backends)
    : impl_(std::make_unique<Impl>(model, backends)) {}

Vocoder::~Vocoder() = default;

const HiftHparams & Vocoder::hparams() const { return impl_->hp; }

VocodeResult Vocoder::vocode(const float * mel, int64_t n_frames, const VocodeOptions & opt) {
    Impl & s = *impl_;
    const HiftHparams & hp = s.hp;
    if (!mel || n_frames <= 0) fail(ErrorKind::InvalidArgument, "vocoder: no mel frames");
    constexpr int64_t kMaxFrames = 50 * 60 * 10;   // 10 minutes at 50 frames/s
    if (n_frames > kMaxFrames) {
        fail(ErrorKind::InvalidArgument, "vocoder: " + std::to_string(n_frames) + " mel frames, more than " +
                                             std::to_string(kMaxFrames) + " (split the utterance)");
    }
    const size_t n_in = (size_t) (n_frames * hp.n_mel);
    for (size_t i = 0; i < n_in; ++i) {
        if (!std::isfinite(mel[i])) fail(ErrorKind::InvalidArgument, "vocoder: the mel holds NaN or infinite values");
    }
    const int64_t L = s.n_samples(n_frames), H = hp.n_sines();
    if (!opt.phases.empty() && (int64_t) opt.phases.size() != H) {
        fail(ErrorKind::InvalidArgument, "vocoder: phases must hold " + std::to_string(H) + " values");
    }
    if (!opt.noise.empty() && (int64_t) opt.noise.size() != L * H) {
        fail(ErrorKind::InvalidArgument, "vocoder: noise must hold " + std::to_string(L) + " x " + std::to_string(H) +
                                             " values (samples x sines)");
    }
    for (float v : opt.phases) {
        if (!std::isfinite(v)) fail(ErrorKind::InvalidArgument, "vocoder: phases hold NaN or infinite values");
    }
    for (float v : opt.noise) {
        if (!std::isfinite(v)) fail(ErrorKind::InvalidArgument, "vocoder: noise holds NaN or infinite values");
    }
    if (!opt.f0.empty() && (int64_t) opt.f0.size() != n_frames) {
        fail(ErrorKind::InvalidArgument, "vocoder: f0 must hold one value per mel frame (" + std::to_string(n_frames) + ")");
    }
    for (float v : opt.f0) {
        if (!std::isfinite(v)) fail(ErrorKind::InvalidArgument, "vocoder: f0 holds NaN or infinite values");
    }
    VocodeResult r;
    if (!opt.f0.empty()) {
        r.f0 = opt.f0;
    } else {
        s.f0_runner.prepare({n_frames}, [&](ggml_context * ctx, ggml_cgraph * gf) { s.build_f0(ctx, gf, n_frames); });
        ggml_backend_tensor_set(s.f0_in, mel, 0, n_in * sizeof(float));
        s.f0_runner.compute();
        r.f0.resize((size_t) n_frames);
        ggml_backend_tensor_get(s.f0_out, r.f0.data(), 0, r.f0.size() * sizeof(float));
    }

    r.source = s.source(r.f0, opt);
    const std::vector<float> spec = s.stft(r.source);
    const int64_t F = s.n_stft(n_frames);

    s.dec_runner.prepare({n_frames}, [&](ggml_context * ctx, ggml_cgraph * gf) { s.build_dec(ctx, gf, n_frames); });
    ggml_backend_tensor_set(s.dec_mel, mel, 0, n_in * sizeof(float));
    ggml_backend_tensor_set(s.dec_stft, spec.data(), 0, spec.size() * sizeof(float));
    s.dec_runner.compute();
    std::vector<float> re((size_t) (F * hp.n_bins())), im(re.size());
    ggml_backend_tensor_get(s.dec_re, re.data(), 0, re.size() * sizeof(float));
    ggml_backend_tensor_get(s.dec_im, im.data(), 0, im.size() * sizeof(float));
    r.wav = s.istft(re, im, F);
    (void) L;
    return r;
}

} // namespace minicpm
