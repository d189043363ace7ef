// S3Tokenizer v2: hyperparameters, weights, graph and runtime. Mirrors s3tokenizer 0.3.0
// model_v2.py (AudioEncoderV2.forward, FSMNMultiHeadAttention, FSQCodebook.encode,
// S3TokenizerV2.quantize / _quantize_mixed_batch) and utils.py (merge_tokenized_segments).
#include "s3tok.h"

#include "core/error.h"
#include "core/log.h"
#include "graph/blocks.h"
#include "model/names.h"
#include "preprocess/s3_mel.h"

#include <algorithm>
#include <cmath>
#include <cstring>

namespace minicpm {

namespace {

int64_t need(const GgufFile & f, KeyName k, int64_t lo, int64_t hi) {
    const std::string key = key_name(k);
    const int64_t     v = f.get_u32(key);
    check_int_range(f, key, v, lo, hi);
    return v;
}

float need_f(const GgufFile & f, KeyName k, float lo, float hi, bool lo_open) {
    const std::string key = key_name(k);
    const float       v = f.get_f32(key);
    check_float_range(f, key, v, lo, hi, lo_open);
    return v;
}

bool s3_present(const GgufFile & f) { return f.find_tensor(tensor_name(TensorName::S3_CONV1)) != nullptr; }

// Upper bound on the nodes (and tensor objects) of one window graph: about 64 per layer.
size_t max_nodes(const S3Hparams & hp) { return (size_t) (hp.n_layer * 96 + 128); }

} // namespace

S3Hparams S3Hparams::from_gguf(const GgufFile & f) {
    S3Hparams hp;
    constexpr int64_t kMaxEmbd = 1 << 14, kMaxLayers = 256;
    hp.n_mels = need(f, KeyName::MINICPM_S3_N_MELS, 1, 256);
    hp.n_state = need(f, KeyName::MINICPM_S3_N_STATE, 1, kMaxEmbd);
    hp.n_head = need(f, KeyName::MINICPM_S3_N_HEAD, 1, 1024);
    hp.n_layer = f.get_u32(key_name(KeyName::MINICPM_S3_N_LAYER));
    check_layer_count(f, key_name(KeyName::MINICPM_S3_N_LAYER), hp.n_layer, kMaxLayers,
                      tensor_name(TensorName::S3_ATTN_Q, (int) std::max<int64_t>(1, std::min(hp.n_layer, kMaxLayers)) - 1));
    if (hp.n_layer < 1) fail(ErrorKind::Format, key_name(KeyName::MINICPM_S3_N_LAYER) + " in " + f.path() + " must be > 0");
    hp.n_ff = need(f, KeyName::MINICPM_S3_N_FF, 1, 8 * kMaxEmbd);
    hp.fsmn_kernel = need(f, KeyName::MINICPM_S3_FSMN_KERNEL, 1, 255);
    hp.attn_eps = need_f(f, KeyName::MINICPM_S3_ATTN_LN_EPS, 0.0f, 0.1f, true);
    hp.ffn_eps = need_f(f, KeyName::MINICPM_S3_FFN_LN_EPS, 0.0f, 0.1f, true);
    hp.rope_dim = need(f, KeyName::MINICPM_S3_ROPE_DIM, 2, 1024);
    hp.rope_theta = need_f(f, KeyName::MINICPM_S3_ROPE_THETA, 1.0f, 1e9f, false);
    hp.rope_max_pos = need(f, KeyName::MINICPM_S3_ROPE_MAX_POS, 1, 1 << 16);
    hp.fsq_levels = need(f, KeyName::MINICPM_S3_FSQ_LEVELS, 2, 16);
    hp.fsq_dim = need(f, KeyName::MINICPM_S3_FSQ_DIM, 1, 16);
    hp.sample_rate = need(f, KeyName::MINICPM_S3_SAMPLE_RATE, 1, 1 << 20);
    hp.n_fft = need(f, KeyName::MINICPM_S3_N_FFT, 1, 1 << 16);
    hp.hop = need(f, KeyName::MINICPM_S3_HOP, 1, 1 << 16);
    hp.window_s = need(f, KeyName::MINICPM_S3_WINDOW_S, 1, 600);
    hp.overlap_s = need(f, KeyName::MINICPM_S3_OVERLAP_S, 0, 600);
    hp.token_rate = need(f, KeyName::MINICPM_S3_TOKEN_RATE, 1, 1000);
    const std::string where = f.path() + ": S3Tokenizer ";
    if (hp.sample_rate != 16000 || hp.n_fft != 400 || hp.hop != 160) {
        fail(ErrorKind::Unsupported, where + "front end " + std::to_string(hp.sample_rate) + " Hz, n_fft " +
                                         std::to_string(hp.n_fft) + ", hop " + std::to_string(hp.hop) +
                                         "; only 16000 Hz, 400, 160 (log_mel_spectrogram) are implemented");
    }
    if (hp.n_state % hp.n_head || hp.head_dim() != hp.rope_dim || hp.rope_dim % 2) {
        fail(ErrorKind::Format, where + "width " + std::to_string(hp.n_state) + " / " + std::to_string(hp.n_head) +
                                    " heads does not give the rotary width " + std::to_string(hp.rope_dim));
    }
    double codes = 1.0;
    for (int64_t d = 0; d < hp.fsq_dim; ++d) codes *= (double) hp.fsq_levels;
    if (codes > 2147483647.0) fail(ErrorKind::Format, where + "codebook levels^dim does not fit in int32");
    if (hp.overlap_s >= hp.window_s) fail(ErrorKind::Format, where + "window overlap must be shorter than the window");
    if (hp.token_rate * hp.hop * 4 != hp.sample_rate) {
        fail(ErrorKind::Format, where + "token rate " + std::to_string(hp.token_rate) +
                                    " is not the rate of two stride-2 convolutions at this hop");
    }
    // The longest window's encoder frames must fit the rotary table (750 of 2048 in the release).
    if (S3Hparams::tokens_of(hp.window_frames()) > hp.rope_max_pos) {
        fail(ErrorKind::Format, where + "a " + std::to_string(hp.window_s) + " s window has more frames than the " +
                                    std::to_string(hp.rope_max_pos) + " rotary positions");
    }
    return hp;
}

S3Weights S3Weights::declare(WeightStore & s, const S3Hparams & hp) {
    const int64_t E = hp.n_state, M = hp.n_mels, F = hp.n_ff, K = hp.fsmn_kernel;
    auto t = [](TensorName n, int il = -1) { return tensor_name(n, il); };
    S3Weights w;
    w.conv1_w = s.require(t(TensorName::S3_CONV1), {3, M, E}, Placement::Main, TensorRole::Vector);
    w.conv1_b = s.require(t(TensorName::S3_CONV1_BIAS), {E});
    w.conv2_w = s.require(t(TensorName::S3_CONV2), {3, E, E}, Placement::Main, TensorRole::Vector);
    w.conv2_b = s.require(t(TensorName::S3_CONV2_BIAS), {E});
    for (int il = 0; il < (int) hp.n_layer; ++il) {
        S3Layer L;
        L.ln1_w = s.require(t(TensorName::S3_ATTN_NORM, il), {E});
        L.ln1_b = s.require(t(TensorName::S3_ATTN_NORM_BIAS, il), {E});
        L.q_w = s.require(t(TensorName::S3_ATTN_Q, il), {E, E}, Placement::Matrix);
        L.q_b = s.require(t(TensorName::S3_ATTN_Q_BIAS, il), {E});
        L.k_w = s.require(t(TensorName::S3_ATTN_K, il), {E, E}, Placement::Matrix);
        L.v_w = s.require(t(TensorName::S3_ATTN_V, il), {E, E}, Placement::Matrix);
        L.v_b = s.require(t(TensorName::S3_ATTN_V_BIAS, il), {E});
        L.o_w = s.require(t(TensorName::S3_ATTN_OUT, il), {E, E}, Placement::Matrix);
        L.o_b = s.require(t(TensorName::S3_ATTN_OUT_BIAS, il), {E});
        L.fsmn = s.require(t(TensorName::S3_FSMN, il), {K, 1, E}, Placement::Main, TensorRole::Vector);
        L.ln2_w = s.require(t(TensorName::S3_FFN_NORM, il), {E});
        L.ln2_b = s.require(t(TensorName::S3_FFN_NORM_BIAS, il), {E});
        L.up_w = s.require(t(TensorName::S3_FFN_UP, il), {E, F}, Placement::Matrix);
        L.up_b = s.require(t(TensorName::S3_FFN_UP_BIAS, il), {F});
        L.down_w = s.require(t(TensorName::S3_FFN_DOWN, il), {F, E}, Placement::Matrix);
        L.down_b = s.require(t(TensorName::S3_FFN_DOWN_BIAS, il), {E});
        w.layers.push_back(L);
    }
    w.fsq_w = s.require(t(TensorName::S3_FSQ_DOWN), {E, hp.fsq_dim}, Placement::Matrix);
    w.fsq_b = s.require(t(TensorName::S3_FSQ_DOWN_BIAS), {hp.fsq_dim});
    return w;
}

size_t S3TokModel::weight_bytes() const { return store->bytes_on_main() + store->bytes_on_host() + store->bytes_repacked(); }

namespace {

std::unique_ptr<Component> s3_load(const ComponentLoad & in) {
    auto m = std::make_unique<S3TokModel>();
    m->hp = S3Hparams::from_gguf(in.file);
    m->store = std::make_unique<WeightStore>(in.file, in.devices, (size_t) (m->hp.n_layer * 18 + 8));
    m->w = S3Weights::declare(*m->store, m->hp);
    m->store->load();
    MINICPM_LOG_INFO("s3tok: S3Tokenizer v2, %lld layers x %lld, %lld heads, FSMN %lld, FSQ %lld^%lld",
                     (long long) m->hp.n_layer, (long long) m->hp.n_state, (long long) m->hp.n_head,
                     (long long) m->hp.fsmn_kernel, (long long) m->hp.fsq_levels, (long long) m->hp.fsq_dim);
    return m;
}

// Conv1d(kernel 3, padding 1, stride s) as im2col + one product: x [frames, channels] (ggml
// order) -> [out channels, output frames]; F32 columns.
ggml_tensor * conv1d(ggml_context * ctx, ggml_tensor * kernel, ggml_tensor * bias, ggml_tensor * x, int stride) {
    const int64_t oc = kernel->ne[2];
    ggml_tensor * cols = ggml_im2col(ctx, kernel, x, stride, 0, 1, 0, 1, 0, false, GGML_TYPE_F32);   // [3*ic, n_out]
    cols = ggml_reshape_2d(ctx, cols, cols->ne[0], cols->ne[1] * cols->ne[2]);
    ggml_tensor * y = graph::mul_mat(ctx, ggml_reshape_2d(ctx, kernel, kernel->ne[0] * kernel->ne[1], oc), cols);
    return ggml_add(ctx, y, bias);
}

// apply_rotary_emb on x [hd, H, T]: x cos + cat(x[half:], x[:half]) sin', where sin' holds
// -sin on the first half (the reference's cat(-x[half:], x[:half]) sin). cos, sin: [hd, 1, T].
ggml_tensor * rotate(ggml_context * ctx, ggml_tensor * x, ggml_tensor * cos, ggml_tensor * sin) {
    const int64_t hd = x->ne[0], half = hd / 2;
    ggml_tensor * lo = ggml_view_3d(ctx, x, half, x->ne[1], x->ne[2], x->nb[1], x->nb[2], 0);
    ggml_tensor * hi = ggml_view_3d(ctx, x, half, x->ne[1], x->ne[2], x->nb[1], x->nb[2], (size_t) half * x->nb[0]);
    ggml_tensor * sw = ggml_concat(ctx, hi, lo, 0);
    return ggml_add(ctx, ggml_mul(ctx, x, cos), ggml_mul(ctx, sw, sin));
}

// forward_fsmn (no padding inside one window, so the masks are all ones): v [E, T] ->
// depthwise conv (zero padding (k-1)/2 left, the rest right) + v.
ggml_tensor * fsmn(ggml_context * ctx, ggml_tensor * kernel, ggml_tensor * v, int64_t K) {
    const int64_t E = v->ne[0], T = v->ne[1], left = (K - 1) / 2, right = K - 1 - left;
    ggml_tensor * x = ggml_cont(ctx, ggml_transpose(ctx, v));                            // [T, E]
    x = ggml_pad_ext(ctx, x, (int) left, (int) right, 0, 0, 0, 0, 0, 0);                  // [T + K - 1, E]
    x = ggml_reshape_3d(ctx, x, T + K - 1, 1, E);
    ggml_tensor * cols = ggml_im2col(ctx, kernel, x, 1, 0, 0, 0, 1, 0, false, GGML_TYPE_F32);   // [K, T, E]
    // the taps multiply activations elementwise: in f32 (an F16 / BF16 file is widened)
    if (kernel->type != GGML_TYPE_F32) kernel = ggml_cast(ctx, kernel, GGML_TYPE_F32);
    ggml_tensor * y = ggml_sum_rows(ctx, ggml_mul(ctx, cols, kernel));                     // [1, T, E]
    y = ggml_cont(ctx, ggml_transpose(ctx, ggml_reshape_2d(ctx, y, T, E)));                // [E, T]
    return ggml_add(ctx, y, v);
}

} // namespace

const ComponentType kS3TokComponent = {"s3tok", &s3_present, &s3_load};

// ---- runtime ------------------------------------------------------------------------------------

struct S3Tokenizer::Impl {
    const S3TokModel & m;
    const S3Hparams &  hp;
    GraphRunner        runner;
    EvalObserver       observer;
    ggml_tensor *      mel = nullptr, * cos = nullptr, * sin = nullptr, * out = nullptr;
    std::vector<float> cos_host, sin_host;   // [pos][rope_dim] for every position of a window

    Impl(const S3TokModel & model, const ComputeBackends & b, const DebugOptions & d)
        : m(model), hp(model.hp), runner("s3tok", b, max_nodes(model.hp)), observer("s3tok", d) {
        // precompute_freqs_cis(dim, end, theta) in float32: freqs = 1 / theta^(2i / dim),
        // angle = t * freqs, table cat(freqs_cis, freqs_cis): column j uses freqs[j mod dim/2].
        const int64_t D = hp.rope_dim, half = D / 2, n_pos = S3Hparams::tokens_of(hp.window_frames());
        std::vector<float> freqs((size_t) half);
        for (int64_t i = 0; i < half; ++i) {
            const float e = (float) (2 * i) / (float) D;
            freqs[(size_t) i] = 1.0f / (float) std::pow((double) hp.rope_theta, (double) e);
        }
        cos_host.resize((size_t) (n_pos * D));
        sin_host.resize((size_t) (n_pos * D));
        for (int64_t t = 0; t < n_pos; ++t) {
            for (int64_t j = 0; j < D; ++j) {
                const float a = (float) t * freqs[(size_t) (j % half)];
                cos_host[(size_t) (t * D + j)] = (float) std::cos((double) a);
                const float s = (float) std::sin((double) a);
                sin_host[(size_t) (t * D + j)] = j < half ? -s : s;
            }
        }
        runner.reserve([&](ggml_context * ctx, ggml_cgraph * gf) { build(ctx, gf, hp.window_frames()); },
                       "S3Tokenizer compute buffers for a 30 s window");
        observer.attach(runner);
    }

    // One window of n_in mel frames -> FSQ projections [fsq_dim, T].
    void build(ggml_context * ctx, ggml_cgraph * gf, int64_t n_in) {
        using namespace graph;
        const int64_t H = hp.n_head, hd = hp.head_dim(), T = S3Hparams::tokens_of(n_in);
        mel = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, n_in, hp.n_mels);
        ggml_set_name(mel, "inp_mel");
        ggml_set_input(mel);
        cos = ggml_new_tensor_3d(ctx, GGML_TYPE_F32, hd, 1, T);
        ggml_set_name(cos, "inp_rope_cos");
        ggml_set_input(cos);
        sin = ggml_new_tensor_3d(ctx, GGML_TYPE_F32, hd, 1, T);
        ggml_set_name(sin, "inp_rope_sin");
        ggml_set_input(sin);

        ggml_tensor * x = ggml_gelu_erf(ctx, conv1d(ctx, m.w.conv1_w, m.w.conv1_b, mel, 2));   // [E, T1]
        x = ggml_cont(ctx, ggml_transpose(ctx, x));                                            // [T1, E]
        x = ggml_gelu_erf(ctx, conv1d(ctx, m.w.conv2_w, m.w.conv2_b, x, 2));                  // [E, T]
        ggml_set_name(x, "s3_conv_out");
        // (D / H)^-0.25 on q and on k: 1 / sqrt(hd) on the scores.
        const float scale = 1.0f / std::sqrt((float) hd);
        for (int il = 0; il < (int) hp.n_layer; ++il) {
            const S3Layer & L = m.w.layers[(size_t) il];
            ggml_tensor * h = layer_norm(ctx, x, L.ln1_w, L.ln1_b, hp.attn_eps);
            ggml_tensor * q = ggml_reshape_3d(ctx, linear(ctx, h, L.q_w, L.q_b), hd, H, T);
            ggml_tensor * k = ggml_reshape_3d(ctx, graph::mul_mat(ctx, L.k_w, h), hd, H, T);
            ggml_tensor * v = linear(ctx, h, L.v_w, L.v_b);                                       // [E, T]
            q = rotate(ctx, q, cos, sin);
            k = rotate(ctx, k, cos, sin);
            ggml_tensor * mem = fsmn(ctx, L.fsmn, v, hp.fsmn_kernel);
            ggml_format_name(mem, "s3_fsmn-%d", il);
            ggml_tensor * kk = ggml_permute(ctx, k, 0, 2, 1, 3);                                  // [hd, T, H]
            ggml_tensor * vv = ggml_permute(ctx, ggml_reshape_3d(ctx, v, hd, H, T), 0, 2, 1, 3);
            ggml_tensor * a = attention(ctx, q, kk, vv, nullptr, scale, false);                 // [E, T]
            x = ggml_add(ctx, x, ggml_add(ctx, linear(ctx, a, L.o_w, L.o_b), mem));
            h = layer_norm(ctx, x, L.ln2_w, L.ln2_b, hp.ffn_eps);
            h = linear(ctx, ggml_gelu_erf(ctx, linear(ctx, h, L.up_w, L.up_b)), L.down_w, L.down_b);
            x = ggml_add(ctx, x, h);
            ggml_format_name(x, "s3_l_out-%d", il);
        }
        out = linear(ctx, x, m.w.fsq_w, m.w.fsq_b);                                             // [fsq_dim, T]
        ggml_set_name(out, "s3_fsq_in");
        ggml_set_output(out);
        ggml_build_forward_expand(gf, out);
    }

    // FSQ projections [T][fsq_dim] of mel frames [f0, f0 + n) of a [n_mels][n_frames] array.
    std::vector<float> window(const float * mel_all, int64_t n_frames, int64_t f0, int64_t n) {
        runner.prepare({n}, [&](ggml_context * ctx, ggml_cgraph * gf) { build(ctx, gf, n); });
        std::vector<float> buf((size_t) (n * hp.n_mels));
        for (int64_t b = 0; b < hp.n_mels; ++b) {
            std::memcpy(buf.data() + b * n, mel_all + b * n_frames + f0, (size_t) n * sizeof(float));
        }
        ggml_backend_tensor_set(mel, buf.data(), 0, buf.size() * sizeof(float));
        const int64_t T = S3Hparams::tokens_of(n);
        const size_t  bytes = (size_t) (T * hp.rope_dim) * sizeof(float);
        ggml_backend_tensor_set(cos, cos_host.data(), 0, bytes);
        ggml_backend_tensor_set(sin, sin_host.data(), 0, bytes);
        runner.compute();
        observer.finish();
        std::vector<float> h((size_t) (T * hp.fsq_dim));
        ggml_backend_tensor_get(out, h.data(), 0, h.size() * sizeof(float));
        return h;
    }

    // FSQCodebook.encode: tanh, clamp to +-(1 - 1e-6), round((h + 1) (L - 1) / 2) (half to even
    // as torch.round), index sum_d digit_d L^d.
    std::vector<int32_t> codes(const std::vector<float> & h) const {
        const int64_t D = hp.fsq_dim, L = hp.fsq_levels, T = (int64_t) h.size() / D;
        std::vector<int32_t> out((size_t) T);
        for (int64_t t = 0; t < T; ++t) {
            int64_t idx = 0, p = 1;
            for (int64_t d = 0; d < D; ++d) {
                float v = std::tanh(h[(size_t) (t * D + d)]);
                v = std::min(std::max(v, -1.0f + 1e-6f), 1.0f - 1e-6f);
                const float s = (v + 1.0f) * (float) (L - 1) / 2.0f;
                idx += (int64_t) std::nearbyint(s) * p;
                p *= L;
            }
            out[(size_t) t] = (int32_t) idx;
        }
        return out;
    }
};

S3Tokenizer::S3Tokenizer(const S3TokModel & model, const ComputeBackends & backends, const DebugOptions & debug)
    : impl_(std::make_unique<Impl>(model, backends, debug)) {}

S3Tokenizer::~S3Tokenizer() = default;

const S3Hparams & S3Tokenizer::hparams() const { return impl_->hp; }

std::vector<int32_t> S3Tokenizer::tokens(const float * pcm, size_t n) {
    const MelFeatures mel = s3_log_mel(pcm, n, (int) impl_->hp.n_mels);
    return tokens_from_mel(mel.data.data(), mel.n_frames, nullptr);
}

std::vector<int32_t> S3Tokenizer::tokens_from_mel(const float * mel, int64_t n_frames, std::vector<float> * projections) {
    Impl & s = *impl_;
    if (!mel || n_frames <= 0) fail(ErrorKind::InvalidArgument, "s3tok: no mel frames");
    for (int64_t i = 0; i < n_frames * s.hp.n_mels; ++i) {
        if (!std::isfinite(mel[i])) fail(ErrorKind::InvalidArgument, "s3tok: non-finite mel value");
    }
    if (projections) projections->clear();
    const int64_t win = s.hp.window_frames();
    if (n_frames <= win) {   // quantize(): one pass over the whole clip
        std::vector<float> h = s.window(mel, n_frames, 0, n_frames);
        if (projections) *projections = h;
        return s.codes(h);
    }
    // _quantize_mixed_batch: windows of `win` frames every win - overlap frames while the start
    // lies inside the clip (each window computed alone: the reference's zero padding and
    // length masks leave a short last window's frames as they are unpadded).
    const int64_t stride = win - s.hp.overlap_frames();
    std::vector<std::vector<int32_t>> segs;
    for (int64_t start = 0; start < n_frames; start += stride) {
        const int64_t n = std::min(start + win, n_frames) - start;
        std::vector<float> h = s.window(mel, n_frames, start, n);
        if (projections) projections->insert(projections->end(), h.begin(), h.end());
        segs.push_back(s.codes(h));
    }
    // merge_tokenized_segments: drop (overlap // 2) * token_rate tokens at each inner edge
    // (Python slicing: tokens[l:r] with r = -k counts from the end, empty when it crosses l).
    const int64_t k = (s.hp.overlap_s / 2) * s.hp.token_rate;
    std::vector<int32_t> merged;
    for (size_t i = 0; i < segs.size(); ++i) {
        const int64_t len = (int64_t) segs[i].size();
        const int64_t l = i == 0 ? 0 : std::min(k, len);
        const int64_t r = i + 1 == segs.size() ? len : std::max<int64_t>(0, len - k);
        if (r > l) merged.insert(merged.end(), segs[i].begin() + l, segs[i].begin() + r);
    }
    return merged;
}

} // namespace minicpm
