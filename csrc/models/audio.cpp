// MiniCPM-o audio encoder: hyperparameters, weights, graphs and their runtime.
// Mirrors MiniCPMWhisperEncoder.forward, MultiModalProjector and the AvgPool1d of
// MiniCPMO.get_audio_embedding / get_audio_embedding_streaming (modeling_minicpmo.py).
#include "audio.h"

#include "core/error.h"
#include "core/fold.h"
#include "core/log.h"
#include "graph/blocks.h"
#include "model/names.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>

namespace minicpm {

namespace {

// ---- file layouts ----------------------------------------------------------------------------

// llama.cpp-omni's audio GGUF (tools/omni/convert/convert_apm.py): whisper.cpp tensor names
// and un-prefixed uint32 keys.
constexpr const char * kOmniArch = "whisper";

bool is_omni(const GgufFile & f) {
    return f.opt_str(key_name(KeyName::GENERAL_ARCHITECTURE)).value_or("") == kOmniArch &&
           f.find_tensor("encoder.conv1.weight") != nullptr;
}

// The name of tensor `t` (layer `il`) in the file's layout.
std::string audio_tensor(bool omni, TensorName t, int il = -1) {
    if (!omni) return tensor_name(t, il);
    const std::string blk = "encoder.blocks." + std::to_string(il) + ".";
    switch (t) {
        case TensorName::A_CONV1: return "encoder.conv1.weight";
        case TensorName::A_CONV1_BIAS: return "encoder.conv1.bias";
        case TensorName::A_CONV2: return "encoder.conv2.weight";
        case TensorName::A_CONV2_BIAS: return "encoder.conv2.bias";
        case TensorName::A_POS_EMBD: return "encoder.positional_embedding";
        case TensorName::A_ATTN_Q: return blk + "attn.query.weight";
        case TensorName::A_ATTN_Q_BIAS: return blk + "attn.query.bias";
        case TensorName::A_ATTN_K: return blk + "attn.key.weight";
        case TensorName::A_ATTN_V: return blk + "attn.value.weight";
        case TensorName::A_ATTN_V_BIAS: return blk + "attn.value.bias";
        case TensorName::A_ATTN_OUT: return blk + "attn.out.weight";
        case TensorName::A_ATTN_OUT_BIAS: return blk + "attn.out.bias";
        case TensorName::A_LN1: return blk + "attn_ln.weight";
        case TensorName::A_LN1_BIAS: return blk + "attn_ln.bias";
        case TensorName::A_LN2: return blk + "mlp_ln.weight";
        case TensorName::A_LN2_BIAS: return blk + "mlp_ln.bias";
        case TensorName::A_FFN_UP: return blk + "mlp.0.weight";
        case TensorName::A_FFN_UP_BIAS: return blk + "mlp.0.bias";
        case TensorName::A_FFN_DOWN: return blk + "mlp.2.weight";
        case TensorName::A_FFN_DOWN_BIAS: return blk + "mlp.2.bias";
        case TensorName::A_POST_LN: return "encoder.ln_post.weight";
        case TensorName::A_POST_LN_BIAS: return "encoder.ln_post.bias";
        case TensorName::A_MM_1: return "audio_projector.linear1.weight";
        case TensorName::A_MM_1_BIAS: return "audio_projector.linear1.bias";
        case TensorName::A_MM_2: return "audio_projector.linear2.weight";
        case TensorName::A_MM_2_BIAS: return "audio_projector.linear2.bias";
        default: break;
    }
    fail(ErrorKind::Internal, "audio: no llama.cpp-omni name for tensor " + tensor_name(t, il));
}

int64_t need_u32(const GgufFile & f, const std::string & key) {
    const uint32_t v = f.get_u32(key);
    if (v == 0) fail(ErrorKind::Format, "metadata key " + key + " in " + f.path() + " must be > 0");
    return v;
}

bool audio_present(const GgufFile & f) {
    if (f.opt_bool(key_name(KeyName::CLIP_HAS_AUDIO)).value_or(false)) return true;
    if (f.find_tensor(tensor_name(TensorName::A_CONV1))) return true;
    return is_omni(f);
}

// Upper bound on the nodes of one encoder graph.
size_t max_nodes(const AudioHparams & hp) { return (size_t) (hp.n_layer * 40 + 128); }

} // namespace

AudioHparams AudioHparams::from_gguf(const GgufFile & f) {
    AudioHparams hp;
    hp.omni_layout = is_omni(f);
    if (hp.omni_layout) {
        hp.n_embd = need_u32(f, "d_model");
        hp.n_ff = need_u32(f, "encoder_ffn_dim");
        hp.n_head = need_u32(f, "encoder_attention_heads");
        hp.n_layer = need_u32(f, "encoder_layers");
        hp.n_mel = f.opt_u32("n_mel").value_or(80);
        hp.pool_step = need_u32(f, "audio_pool_step");
        hp.chunk_frames = 50;   // the reference's audio_chunk_length default (1 s); the file has no key
        const TensorInfo * lin1 = f.find_tensor("audio_projector.linear1.weight");
        if (!lin1) fail(ErrorKind::Format, "tensor audio_projector.linear1.weight not found in " + f.path());
        hp.proj_dim = lin1->ne[1];
    } else {
        hp.n_embd = need_u32(f, key_name(KeyName::CLIP_A_EMBEDDING_LENGTH));
        hp.n_ff = need_u32(f, key_name(KeyName::CLIP_A_FEED_FORWARD_LENGTH));
        hp.n_head = need_u32(f, key_name(KeyName::CLIP_A_HEAD_COUNT));
        hp.n_layer = need_u32(f, key_name(KeyName::CLIP_A_BLOCK_COUNT));
        hp.n_mel = need_u32(f, key_name(KeyName::CLIP_A_NUM_MEL_BINS));
        hp.proj_dim = need_u32(f, key_name(KeyName::CLIP_A_PROJECTION_DIM));
        hp.pool_step = need_u32(f, key_name(KeyName::MINICPM_A_POOL_STEP));
        hp.eps = f.opt_f32(key_name(KeyName::CLIP_A_LN_EPS)).value_or(1e-5f);
        check_float_range(f, key_name(KeyName::CLIP_A_LN_EPS), hp.eps, 0.0f, 0.1f, /*lo_open =*/true);   // (0, 0.1]
        const float chunk = f.opt_f32(key_name(KeyName::MINICPM_A_CHUNK_LENGTH)).value_or(1.0f);
        // seconds, [0, 30] (0 or less: no chunk mask; the encoder covers 30 s)
        check_float_range(f, key_name(KeyName::MINICPM_A_CHUNK_LENGTH), std::max(chunk, 0.0f), 0.0f, 30.0f);
        hp.chunk_frames = chunk > 0 ? (int64_t) (chunk * 50.0f) : 0;   // int(chunk_length * 50)
    }
    // Sane maxima, checked before ggml sees the values (Whisper-medium: 1024 wide, 24 layers of
    // 16 heads, n_ff 4096, 1500 positions; pool step 2 or 5).
    const std::string layer_key = hp.omni_layout ? "encoder_layers" : key_name(KeyName::CLIP_A_BLOCK_COUNT);
    constexpr int64_t kMaxEmbd = 1 << 16, kMaxLayers = 1024, kMaxHeads = 1024, kMaxPos = 4096, kMaxPool = 100;
    check_int_range(f, hp.omni_layout ? "d_model" : key_name(KeyName::CLIP_A_EMBEDDING_LENGTH), hp.n_embd, 1, kMaxEmbd);
    check_int_range(f, hp.omni_layout ? "encoder_attention_heads" : key_name(KeyName::CLIP_A_HEAD_COUNT), hp.n_head, 1,
                    kMaxHeads);
    check_int_range(f, hp.omni_layout ? "encoder_ffn_dim" : key_name(KeyName::CLIP_A_FEED_FORWARD_LENGTH), hp.n_ff, 1,
                    4 * kMaxEmbd);
    if (!hp.omni_layout) check_int_range(f, key_name(KeyName::CLIP_A_PROJECTION_DIM), hp.proj_dim, 1, kMaxEmbd);
    // Bounded by the tensors present, before the weight context is sized from it.
    check_layer_count(f, layer_key, hp.n_layer, kMaxLayers,
                      audio_tensor(hp.omni_layout, TensorName::A_LN1, (int) std::min<int64_t>(hp.n_layer, kMaxLayers) - 1));
    const TensorInfo * pos = f.find_tensor(audio_tensor(hp.omni_layout, TensorName::A_POS_EMBD));
    if (!pos) fail(ErrorKind::Format, "audio position table " + audio_tensor(hp.omni_layout, TensorName::A_POS_EMBD) +
                                          " not found in " + f.path());
    hp.n_pos = pos->ne[1];
    // The offline graph attends over all n_pos rows with a [n_pos, n_pos] mask, and the streaming
    // graph reserves 52 positions: n_pos in [52, 4096] (1500 in every MiniCPM-o).
    if (hp.n_pos < 52 || hp.n_pos > kMaxPos || pos->n_dims != 2) {
        fail(ErrorKind::Format, "audio position table " + pos->name + " in " + f.path() + ": shape " +
                                    shape_str(pos->ne, pos->n_dims) + ", expected [n_embd, n_pos] with n_pos in [52, " +
                                    std::to_string(kMaxPos) + "]");
    }
    // Pooled tokens: at least one per encoder window, so pool_step in [1, min(100, n_pos / 2)].
    check_int_range(f, hp.omni_layout ? "audio_pool_step" : key_name(KeyName::MINICPM_A_POOL_STEP), hp.pool_step, 1,
                    std::min<int64_t>(kMaxPool, hp.n_pos / 2));
    if (hp.chunk_frames > hp.n_pos) {
        fail(ErrorKind::Format, key_name(KeyName::MINICPM_A_CHUNK_LENGTH) + " in " + f.path() + " gives " +
                                    std::to_string(hp.chunk_frames) + " frames per chunk, more than the " +
                                    std::to_string(hp.n_pos) + " encoder positions");
    }
    if (hp.n_embd % hp.n_head) {
        fail(ErrorKind::Format, f.path() + ": audio width " + std::to_string(hp.n_embd) + " is not divisible by " +
                                    std::to_string(hp.n_head) + " heads");
    }
    if (hp.n_mel != 80) {
        fail(ErrorKind::Unsupported, f.path() + ": audio encoder takes " + std::to_string(hp.n_mel) +
                                         " mel bins; MiniCPM-o's log-mel front end has 80");
    }
    if (hp.n_ff / 4 != hp.n_embd) {
        fail(ErrorKind::Format, f.path() + ": the audio projector takes encoder_ffn_dim / 4 = " +
                                    std::to_string(hp.n_ff / 4) + " inputs, but the encoder is " +
                                    std::to_string(hp.n_embd) + " wide");
    }
    return hp;
}

AudioWeights AudioWeights::declare(WeightStore & s, const GgufFile & f, const AudioHparams & hp) {
    const bool    omni = hp.omni_layout;
    const int64_t E = hp.n_embd, F = hp.n_ff, D = hp.proj_dim, M = hp.n_mel;
    auto name = [&](TensorName t, int il = -1) { return audio_tensor(omni, t, il); };
    // Conv biases: 1-D in our files, [1, E] in llama.cpp-omni's.
    auto conv_bias = [&](TensorName t) {
        const TensorInfo * ti = f.find_tensor(name(t));
        const bool two_d = ti && ti->n_dims == 2;
        return s.require(name(t), two_d ? std::vector<int64_t>{1, E} : std::vector<int64_t>{E});
    };
    AudioWeights w;
    // Convolution kernels and the position table are read as floats.
    w.conv1_w = s.require(name(TensorName::A_CONV1), {3, M, E}, Placement::Main, TensorRole::Vector);
    w.conv1_b = conv_bias(TensorName::A_CONV1_BIAS);
    w.conv2_w = s.require(name(TensorName::A_CONV2), {3, E, E}, Placement::Main, TensorRole::Vector);
    w.conv2_b = conv_bias(TensorName::A_CONV2_BIAS);
    w.pos     = s.require(name(TensorName::A_POS_EMBD), {E, hp.n_pos}, Placement::Main, TensorRole::Vector);
    for (int il = 0; il < (int) hp.n_layer; ++il) {
        AudioLayer L;
        L.ln1_w = s.require(name(TensorName::A_LN1, il), {E});
        L.ln1_b = s.require(name(TensorName::A_LN1_BIAS, il), {E});
        L.q_w   = s.require(name(TensorName::A_ATTN_Q, il), {E, E}, Placement::Matrix);
        L.q_b   = s.require(name(TensorName::A_ATTN_Q_BIAS, il), {E});
        L.k_w   = s.require(name(TensorName::A_ATTN_K, il), {E, E}, Placement::Matrix);
        L.v_w   = s.require(name(TensorName::A_ATTN_V, il), {E, E}, Placement::Matrix);
        L.v_b   = s.require(name(TensorName::A_ATTN_V_BIAS, il), {E});
        L.o_w   = s.require(name(TensorName::A_ATTN_OUT, il), {E, E}, Placement::Matrix);
        L.o_b   = s.require(name(TensorName::A_ATTN_OUT_BIAS, il), {E});
        L.ln2_w = s.require(name(TensorName::A_LN2, il), {E});
        L.ln2_b = s.require(name(TensorName::A_LN2_BIAS, il), {E});
        L.fc1_w = s.require(name(TensorName::A_FFN_UP, il), {E, F}, Placement::Matrix);
        L.fc1_b = s.require(name(TensorName::A_FFN_UP_BIAS, il), {F});
        L.fc2_w = s.require(name(TensorName::A_FFN_DOWN, il), {F, E}, Placement::Matrix);
        L.fc2_b = s.require(name(TensorName::A_FFN_DOWN_BIAS, il), {E});
        w.layers.push_back(L);
    }
    w.post_ln_w = s.require(name(TensorName::A_POST_LN), {E});
    w.post_ln_b = s.require(name(TensorName::A_POST_LN_BIAS), {E});
    w.mm1_w = s.require(name(TensorName::A_MM_1), {E, D}, Placement::Matrix);
    w.mm1_b = s.require(name(TensorName::A_MM_1_BIAS), {D});
    w.mm2_w = s.require(name(TensorName::A_MM_2), {D, D}, Placement::Matrix);
    w.mm2_b = s.require(name(TensorName::A_MM_2_BIAS), {D});
    return w;
}

bool AudioWeights::fuse(WeightStore & s, const AudioHparams & hp, bool fuse_qkv, bool fold_norms, bool on_cpu) {
    const int64_t E = hp.n_embd, F = hp.n_ff;
    const AudioLayer & L0 = layers.front();
    const ggml_type t = L0.q_w->type;
    bool fold = fold_norms && is_float_type(t) && L0.fc1_w->type == t;
    for (const AudioLayer & L : layers) {
        fold = fold && L.q_w->type == t && L.k_w->type == t && L.v_w->type == t && L.fc1_w->type == t;
        for (ggml_tensor * v : {L.ln1_w, L.ln1_b, L.ln2_w, L.ln2_b, L.q_b, L.v_b, L.fc1_b}) fold = fold && is_float_type(v->type);
    }
    for (size_t il = 0; il < layers.size(); ++il) {
        AudioLayer & L = layers[il];
        const std::string p = "a.blk." + std::to_string(il);
        if (fold) {
            FoldSpec qkv{{L.q_w, L.k_w, L.v_w}, {L.q_b, nullptr, L.v_b}, L.ln1_w, L.ln1_b};
            FoldSpec fc1{{L.fc1_w}, {L.fc1_b}, L.ln2_w, L.ln2_b};
            L.qkv_w = s.derived(p + ".attn_qkv.folded", t, {E, 3 * E},
                                [&s, qkv, t](uint8_t * d) { fill_folded_matrix(s, qkv, t, d); });
            L.qkv_b = s.derived(p + ".attn_qkv_b.folded", GGML_TYPE_F32, {3 * E},
                                [&s, qkv](uint8_t * d) { fill_folded_bias(s, qkv, d); });
            ggml_tensor * up = s.derived(p + ".ffn_up.folded", t, {E, F},
                                         [&s, fc1, t](uint8_t * d) { fill_folded_matrix(s, fc1, t, d); });
            ggml_tensor * up_b = s.derived(p + ".ffn_up_b.folded", GGML_TYPE_F32, {F},
                                           [&s, fc1](uint8_t * d) { fill_folded_bias(s, fc1, d); });
            for (ggml_tensor * m : {L.q_w, L.k_w, L.v_w, L.fc1_w}) s.drop(m);
            L.q_w = L.k_w = L.v_w = nullptr;
            L.fc1_w = up;
            L.fc1_b = up_b;
            L.ln1_w = L.ln1_b = L.ln2_w = L.ln2_b = nullptr;
        } else if (fuse_qkv) {
            L.qkv_w = s.fuse_rows({L.q_w, L.k_w, L.v_w}, p + ".attn_qkv.fused", on_cpu);
            if (!L.qkv_w) continue;
            FoldSpec qkv{{L.q_w, L.k_w, L.v_w}, {L.q_b, nullptr, L.v_b}, nullptr, nullptr};
            L.qkv_b = s.derived(p + ".attn_qkv_b.fused", GGML_TYPE_F32, {3 * E},
                                [&s, qkv](uint8_t * d) { fill_folded_bias(s, qkv, d); });
        }
    }
    return fold;
}

size_t AudioModel::weight_bytes() const { return store->bytes_on_main() + store->bytes_on_host() + store->bytes_repacked(); }

namespace {

std::unique_ptr<Component> audio_load(const ComponentLoad & in) {
    auto m = std::make_unique<AudioModel>();
    m->hp = AudioHparams::from_gguf(in.file);
    m->store = std::make_unique<WeightStore>(in.file, in.devices, (size_t) (m->hp.n_layer * 16 + 16));
    m->w = AudioWeights::declare(*m->store, in.file, m->hp);
    const AudioLayer & L0 = m->w.layers.front();
    m->exact = L0.q_w->type == GGML_TYPE_F32 && L0.fc1_w->type == GGML_TYPE_F32 && m->w.mm1_w->type == GGML_TYPE_F32;
    // Fewer graph nodes on GPUs, where a pass is bound by per-kernel cost (benchmarks/RESULTS.md).
    const bool on_gpu = !in.devices.main_is_cpu();
    const bool fuse = in.params.fuse_qkv.value_or(on_gpu);
    const bool fold = in.params.audio_fold_norms.value_or(on_gpu);
    m->folded_norms = m->w.fuse(*m->store, m->hp, fuse, fold, in.params.fuse_qkv.value_or(false) || fold);
    m->fused_qkv = m->w.layers.front().qkv_w != nullptr;
    m->store->load();
    // Flash attention wherever the weights are already rounded (F16, quantized): on GPUs and on
    // the CPU alike (no [T, T] score matrix; ggml's CPU kernel beats the generic products).
    if (!m->exact) {
        std::vector<uint8_t> buf(8 * ggml_tensor_overhead());
        ggml_init_params ip = {buf.size(), buf.data(), true};
        ggml_context * ctx = ggml_init(ip);
        const int64_t hd = m->hp.n_embd / m->hp.n_head;
        ggml_tensor * q = ggml_new_tensor_3d(ctx, GGML_TYPE_F32, hd, 64, m->hp.n_head);
        ggml_tensor * k = ggml_new_tensor_3d(ctx, GGML_TYPE_F16, hd, 256, m->hp.n_head);
        ggml_tensor * v = ggml_new_tensor_3d(ctx, GGML_TYPE_F16, hd, 256, m->hp.n_head);
        ggml_tensor * mask = ggml_new_tensor_2d(ctx, GGML_TYPE_F16, 256, 64);
        ggml_tensor * o = ggml_flash_attn_ext(ctx, q, k, v, mask, 1.0f, 0.0f, 0.0f);
        graph::set_prec_f32(o);
        m->flash = in.devices.supports_op(o);
        ggml_free(ctx);
    }
    MINICPM_LOG_INFO("audio: Whisper encoder %lld layers x %lld, pool %lld, %s weights%s%s%s",
                     (long long) m->hp.n_layer, (long long) m->hp.n_embd, (long long) m->hp.pool_step,
                     m->exact ? "f32" : "reduced-precision", m->flash ? ", flash attention" : "",
                     m->folded_norms ? ", norms folded" : m->fused_qkv ? ", fused QKV" : "",
                     m->hp.omni_layout ? " (llama.cpp-omni file)" : "");
    return m;
}

// ---- graphs -----------------------------------------------------------------------------------

struct GraphIO {
    ggml_tensor * mel = nullptr;     // F32 [n_in, n_mel]
    ggml_tensor * mask = nullptr;    // [T, T] (offline)
    ggml_tensor * states = nullptr;  // F32 [E, T]
    ggml_tensor * out = nullptr;     // F32 [D, N]
    ggml_tensor * rows = nullptr;    // I64 [cur] (streaming): cache rows of the new frames
    ggml_tensor * rows32 = nullptr;  // I32 [cur]: the same, for the position table
};

// Conv1d(kernel 3, padding 1) as im2col + one product: `x` is [frames, channels] (ggml order),
// the result [out channels, output frames]. The columns are f32 (ggml_conv_1d makes them f16).
ggml_tensor * conv1d(ggml_context * ctx, ggml_tensor * kernel, ggml_tensor * bias, ggml_tensor * x, int stride) {
    const int64_t oc = kernel->ne[2];
    ggml_tensor * cols = ggml_im2col(ctx, kernel, x, stride, 0, 1, 0, 1, 0, false, GGML_TYPE_F32);   // [3*ic, n_out]
    cols = ggml_reshape_2d(ctx, cols, cols->ne[0], cols->ne[1] * cols->ne[2]);
    ggml_tensor * y = graph::mul_mat(ctx, ggml_reshape_2d(ctx, kernel, kernel->ne[0] * kernel->ne[1], oc), cols);
    return ggml_add(ctx, y, ggml_reshape_1d(ctx, bias, oc));                               // [oc, n_out]
}

// conv1 + GELU, conv2 (stride 2) + GELU: [E, encoder frames].
ggml_tensor * front_end(ggml_context * ctx, const AudioWeights & w, ggml_tensor * mel) {
    ggml_tensor * cur = ggml_gelu_erf(ctx, conv1d(ctx, w.conv1_w, w.conv1_b, mel, 1));    // [E, n_in]
    cur = ggml_cont(ctx, ggml_transpose(ctx, cur));                                       // [n_in, E]
    cur = ggml_gelu_erf(ctx, conv1d(ctx, w.conv2_w, w.conv2_b, cur, 2));                  // [E, C]
    ggml_set_name(cur, "audio_conv_out");
    return cur;
}

// Attention of one layer: called with the queries q [hd, H, n] and the layer's new keys and
// values k, v [E, n] (possibly views with a row stride); returns the attention output [E, n].
struct AttnSource {
    std::function<ggml_tensor *(int il, ggml_tensor * q, ggml_tensor * k, ggml_tensor * v)> attend;
};

// The pre-LN blocks and the final LayerNorm over x [E, n] (positions already added). Where the
// layers have a fused Q|K|V matrix, `fused` computes the three as one product; otherwise its
// row blocks serve as three products. The key bias (zero in the file, W_k b with folded norms)
// is left out: it adds q . b to every score of a row, which the softmax cancels.
ggml_tensor * blocks(ggml_context * ctx, const AudioHparams & hp, const AudioWeights & w, ggml_tensor * x,
                     bool fused, const AttnSource & attn) {
    using namespace graph;
    const int64_t E = hp.n_embd, H = hp.n_head, hd = E / H, n = x->ne[1];
    for (int il = 0; il < (int) hp.n_layer; ++il) {
        const AudioLayer & L = w.layers[(size_t) il];
        ggml_tensor * cur = layer_norm(ctx, x, L.ln1_w, L.ln1_b, hp.eps);   // (plain norm when folded)
        ggml_tensor * q, * k, * v;
        if (L.qkv_w && fused) {
            ggml_tensor * qkv = linear(ctx, cur, L.qkv_w, L.qkv_b);                     // [3E, n]
            const size_t es = ggml_element_size(qkv);
            q = ggml_view_3d(ctx, qkv, hd, H, n, hd * es, qkv->nb[1], 0);
            k = ggml_view_2d(ctx, qkv, E, n, qkv->nb[1], (size_t) E * es);
            v = ggml_view_2d(ctx, qkv, E, n, qkv->nb[1], (size_t) (2 * E) * es);
        } else if (L.qkv_w) {
            auto rows = [&](int part) {
                return ggml_view_2d(ctx, L.qkv_w, E, E, L.qkv_w->nb[1], L.qkv_w->nb[1] * (size_t) (part * E));
            };
            auto bias = [&](int part) {
                return ggml_view_1d(ctx, L.qkv_b, E, ggml_element_size(L.qkv_b) * (size_t) (part * E));
            };
            q = ggml_reshape_3d(ctx, linear(ctx, cur, rows(0), bias(0)), hd, H, n);
            k = graph::mul_mat(ctx, rows(1), cur);
            v = linear(ctx, cur, rows(2), bias(2));
        } else {
            q = ggml_reshape_3d(ctx, linear(ctx, cur, L.q_w, L.q_b), hd, H, n);
            k = graph::mul_mat(ctx, L.k_w, cur);
            v = linear(ctx, cur, L.v_w, L.v_b);
        }
        cur = attn.attend(il, q, k, v);                                                    // [E, n]
        cur = linear(ctx, cur, L.o_w, L.o_b);
        x = ggml_add(ctx, x, cur);
        cur = layer_norm(ctx, x, L.ln2_w, L.ln2_b, hp.eps);
        cur = ggml_gelu_erf(ctx, linear(ctx, cur, L.fc1_w, L.fc1_b));
        cur = linear(ctx, cur, L.fc2_w, L.fc2_b);
        x = ggml_add(ctx, x, cur);
        ggml_format_name(x, "audio_l_out-%d", il);
    }
    x = layer_norm(ctx, x, w.post_ln_w, w.post_ln_b, hp.eps);
    ggml_set_name(x, "audio_states");
    return x;
}

// Projector on the first n_tok * pool_step frames of `states`, then the average of each group of
// pool_step frames: [D, n_tok]. The sum is p strided views added (one kernel on CUDA) instead
// of a row reduction over p values (0.7 ms for 30 s on an H200). (Pooling before linear2, which
// is linear, would save work, but doubled the error of F16-accumulating GPU products: the
// average of p products is less noisy than one product of the average.)
ggml_tensor * project_pool(ggml_context * ctx, const AudioHparams & hp, const AudioWeights & w, ggml_tensor * states,
                           int64_t n_tok) {
    using namespace graph;
    const int64_t p = hp.pool_step, D = hp.proj_dim;
    ggml_tensor * x = ggml_view_2d(ctx, states, states->ne[0], n_tok * p, states->nb[1], 0);
    x = ggml_relu(ctx, linear(ctx, x, w.mm1_w, w.mm1_b));
    x = linear(ctx, x, w.mm2_w, w.mm2_b);                                                  // [D, n_tok * p]
    ggml_tensor * sum = nullptr;
    for (int64_t i = 0; i < p; ++i) {
        ggml_tensor * part = ggml_view_2d(ctx, x, D, n_tok, x->nb[1] * (size_t) p, x->nb[1] * (size_t) i);
        sum = sum ? ggml_add(ctx, sum, part) : part;
    }
    if (p == 1) sum = ggml_cont(ctx, sum);
    x = ggml_scale(ctx, sum, 1.0f / (float) p);
    ggml_set_name(x, "audio_embd");
    return x;
}

std::pair<ggml_tensor *, ggml_tensor *> heads_view(ggml_context * ctx, ggml_tensor * k, ggml_tensor * v, int64_t hd,
                                                    int64_t H) {
    const int64_t n = k->ne[1];
    // (views, so that rows of a fused Q|K|V product work as well as contiguous tensors)
    auto heads = [&](ggml_tensor * t) {
        t = ggml_view_3d(ctx, t, hd, H, n, hd * ggml_element_size(t), t->nb[1], 0);
        return ggml_permute(ctx, t, 0, 2, 1, 3);                                           // [hd, n, H]
    };
    return {heads(k), heads(v)};
}

} // namespace

const ComponentType kAudioComponent = {"audio", &audio_present, &audio_load};

// ---- runtime ------------------------------------------------------------------------------------

struct AudioEncoder::Impl {
    const AudioModel &      m;
    const AudioHparams &    hp;
    const ComputeBackends & backends;
    DebugOptions            debug;
    GraphRunner             runner;          // offline graphs
    EvalObserver            observer;
    std::unique_ptr<GraphRunner>  stream_runner;   // created at the first streaming chunk (holds the K/V cache)
    std::unique_ptr<EvalObserver> stream_observer;
    int64_t                 cache_len = 0;
    GraphKey                mask_key;        // what mask_host holds: (T, mel frames, block)
    std::vector<float>      mask_host;
    GraphIO                 io;
    GraphIO                 sio;
    ggml_type               cache_type;
    // Streaming attention over the written cache rows only, with plain products (CPU): at 800
    // cached frames 145 ms per chunk against 297 ms for flash attention, whose CPU kernel pays
    // per query and key (2 threads, benchmarks/RESULTS.md).
    bool                    span_graphs;

    Impl(const AudioModel & model, const ComputeBackends & b, const DebugOptions & d)
        : m(model), hp(model.hp), backends(b), debug(d), runner("audio", b, max_nodes(model.hp)), observer("audio", d),
          cache_type(model.exact ? GGML_TYPE_F32 : GGML_TYPE_F16), span_graphs(b.main_is_cpu()) {
        // The offline mask lives in the runner's state buffer: uploaded when its shape or the
        // item's length changes, not at every call (30 s: 4.5 MiB at F16).
        const int64_t T = hp.n_pos;
        runner.add_state("audio_mask", m.flash ? GGML_TYPE_F16 : GGML_TYPE_F32, {T * T});
        runner.allocate_state();
        // The largest offline graph: a 30 s piece (every position row), 1 s chunk mask.
        runner.reserve([&](ggml_context * ctx, ggml_cgraph * gf) { build_offline(ctx, gf, 2 * T, T, hp.pooled(T)); },
                       "audio encoder compute buffers for a 30 s clip");
        observer.attach(runner);
    }

    // Offline graph: n_in mel frames in, T encoder frames attended, n_tok pooled tokens out.
    void build_offline(ggml_context * ctx, ggml_cgraph * gf, int64_t n_in, int64_t T, int64_t n_tok) {
        io = GraphIO{};
        io.mel = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, n_in, hp.n_mel);
        ggml_set_name(io.mel, "inp_mel");
        ggml_set_input(io.mel);
        ggml_tensor * mask_state = runner.state("audio_mask");
        io.mask = ggml_view_2d(ctx, mask_state, T, T, (size_t) T * ggml_element_size(mask_state), 0);
        ggml_set_name(io.mask, "audio_mask");
        ggml_tensor * x = front_end(ctx, m.w, io.mel);
        x = ggml_view_2d(ctx, x, hp.n_embd, T, x->nb[1], 0);
        x = ggml_add(ctx, x, ggml_view_2d(ctx, m.w.pos, hp.n_embd, T, m.w.pos->nb[1], 0));
        const int64_t hd = hp.n_embd / hp.n_head;
        const float   scale = 1.0f / std::sqrt((float) hd);
        AttnSource attn{[&](int, ggml_tensor * q, ggml_tensor * k, ggml_tensor * v) {
            if (m.flash) {   // flash attention's fast kernels take F16 keys and values
                k = ggml_cast(ctx, k, GGML_TYPE_F16);
                v = ggml_cast(ctx, v, GGML_TYPE_F16);
            }
            auto [kk, vv] = heads_view(ctx, k, v, hd, hp.n_head);
            return graph::attention(ctx, q, kk, vv, io.mask, scale, m.flash);
        }};
        // Separate Q, K, V products: at 1500 frames they are compute-bound anyway, and K and V
        // come out contiguous for their F16 conversion (views of a fused product convert slowly).
        io.states = blocks(ctx, hp, m.w, x, /*fused=*/false, attn);
        ggml_set_output(io.states);
        ggml_build_forward_expand(gf, io.states);
        if (n_tok > 0) {
            io.out = project_pool(ctx, hp, m.w, io.states, n_tok);
            ggml_set_output(io.out);
            ggml_build_forward_expand(gf, io.out);
        }
    }

    void ensure_stream_runner() {
        if (stream_runner) return;
        stream_runner = std::make_unique<GraphRunner>("audio-stream", backends, max_nodes(hp) + (size_t) hp.n_layer * 8);
        for (int il = 0; il < (int) hp.n_layer; ++il) {
            stream_runner->add_state("audio_k-" + std::to_string(il), cache_type, {hp.n_embd, hp.n_pos});
            stream_runner->add_state("audio_v-" + std::to_string(il), cache_type, {hp.n_embd, hp.n_pos});
        }
        stream_runner->allocate_state();
        stream_runner->reserve([&](ggml_context * ctx, ggml_cgraph * gf) {
            build_stream(ctx, gf, 104, 52, 0, span_graphs ? hp.n_pos : 0);
        }, "audio streaming compute buffers");
        stream_observer = std::make_unique<EvalObserver>("audio-stream", debug);
        stream_observer->attach(*stream_runner);
        MINICPM_LOG_INFO("audio: streaming cache %.1f MiB", stream_runner->state_bytes() / 1048576.0);
    }

    // Streaming graph: n_in mel frames; `cur` encoder frames kept from offset `pre` after the
    // convolutions. Where they go is an input (their cache rows and position rows, `inp_rows`).
    // span == 0 (GPUs): attention runs over the whole cache with a mask hiding the rows not yet
    // written, so one graph serves every chunk of a size (kept allocated; CUDA replays it as a
    // CUDA graph). span > 0 (CPU): over the first `span` cache rows, all written, without a mask:
    // the work follows the cache instead of its capacity, for a graph build per chunk.
    void build_stream(ggml_context * ctx, ggml_cgraph * gf, int64_t n_in, int64_t cur, int64_t pre, int64_t span) {
        sio = GraphIO{};
        sio.mel = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, n_in, hp.n_mel);
        ggml_set_name(sio.mel, "inp_mel");
        ggml_set_input(sio.mel);
        sio.rows = ggml_new_tensor_1d(ctx, GGML_TYPE_I64, cur);
        ggml_set_name(sio.rows, "inp_rows");
        ggml_set_input(sio.rows);
        sio.rows32 = ggml_new_tensor_1d(ctx, GGML_TYPE_I32, cur);
        ggml_set_name(sio.rows32, "inp_rows32");
        ggml_set_input(sio.rows32);
        if (!span) {
            sio.mask = ggml_new_tensor_2d(ctx, m.flash ? GGML_TYPE_F16 : GGML_TYPE_F32, hp.n_pos, cur);
            ggml_set_name(sio.mask, "inp_audio_mask");
            ggml_set_input(sio.mask);
        }
        ggml_tensor * x = front_end(ctx, m.w, sio.mel);
        x = ggml_view_2d(ctx, x, hp.n_embd, cur, x->nb[1], (size_t) pre * x->nb[1]);
        x = ggml_add(ctx, x, ggml_get_rows(ctx, m.w.pos, sio.rows32));
        const int64_t hd = hp.n_embd / hp.n_head;
        const float   scale = 1.0f / std::sqrt((float) hd);
        GraphRunner & r = *stream_runner;
        AttnSource attn{[&](int il, ggml_tensor * q, ggml_tensor * k, ggml_tensor * v) {
            ggml_tensor * kc = ggml_set_rows(ctx, r.state("audio_k-" + std::to_string(il)), k, sio.rows);
            ggml_tensor * vc = ggml_set_rows(ctx, r.state("audio_v-" + std::to_string(il)), v, sio.rows);
            if (span) {
                kc = ggml_view_2d(ctx, kc, kc->ne[0], span, kc->nb[1], 0);
                vc = ggml_view_2d(ctx, vc, vc->ne[0], span, vc->nb[1], 0);
            }
            auto [kk, vv] = heads_view(ctx, kc, vc, hd, hp.n_head);
            return graph::attention(ctx, q, kk, vv, sio.mask, scale, span ? false : m.flash);
        }};
        // One Q|K|V product where the weights are fused (50 frames: per-kernel cost dominates).
        sio.states = blocks(ctx, hp, m.w, x, /*fused=*/true, attn);
        ggml_set_output(sio.states);
        ggml_build_forward_expand(gf, sio.states);
        const int64_t n_tok = hp.pooled(cur);
        if (n_tok > 0) {
            sio.out = project_pool(ctx, hp, m.w, sio.states, n_tok);
            ggml_set_output(sio.out);
            ggml_build_forward_expand(gf, sio.out);
        }
    }

    static void set_mask(ggml_tensor * t, const std::vector<float> & mask) {
        if (t->type == GGML_TYPE_F32) {
            ggml_backend_tensor_set(t, mask.data(), 0, mask.size() * sizeof(float));
            return;
        }
        std::vector<ggml_fp16_t> h(mask.size());
        ggml_fp32_to_fp16_row(mask.data(), h.data(), (int64_t) mask.size());
        ggml_backend_tensor_set(t, h.data(), 0, h.size() * sizeof(ggml_fp16_t));
    }

    // The mel input [n_mel][n_in]: the item's frames, zeros after them.
    static std::vector<float> padded_mel(const float * mel, int64_t n_frames, int64_t n_mel, int64_t n_in) {
        std::vector<float> buf((size_t) (n_mel * n_in), 0.0f);
        const int64_t n = std::min(n_frames, n_in);
        for (int64_t b = 0; b < n_mel; ++b) {
            std::memcpy(buf.data() + b * n_in, mel + b * n_frames, (size_t) n * sizeof(float));
        }
        return buf;
    }

    static std::vector<float> read(ggml_tensor * t, int64_t cols) {
        std::vector<float> out((size_t) (t->ne[0] * cols));
        ggml_backend_tensor_get(t, out.data(), 0, out.size() * sizeof(float));
        return out;
    }
};

AudioEncoder::AudioEncoder(const AudioModel & model, const ComputeBackends & backends, const DebugOptions & debug)
    : impl_(std::make_unique<Impl>(model, backends, debug)) {}

AudioEncoder::~AudioEncoder() = default;

const AudioHparams & AudioEncoder::hparams() const { return impl_->hp; }

namespace {

void check_mel(const float * mel, int64_t n_frames, const AudioHparams & hp, const char * what) {
    if (!mel || n_frames <= 0) fail(ErrorKind::InvalidArgument, std::string(what) + ": no mel frames");
    const int64_t C = AudioHparams::encoder_frames(n_frames);
    if (C < hp.pool_step) {
        fail(ErrorKind::InvalidArgument, std::string(what) + ": " + std::to_string(n_frames) + " mel frames give " +
                                             std::to_string(C) + " encoder frames, fewer than the pooling step " +
                                             std::to_string(hp.pool_step) + " (audio too short: it takes more than " +
                                             std::to_string((2 * hp.pool_step - 2) * 10) + " ms, at least " +
                                             std::to_string((2 * hp.pool_step - 2) * 160 + 1) + " samples at 16 kHz)");
    }
}

} // namespace

std::vector<float> AudioEncoder::encode(const float * mel, int64_t n_frames, int64_t batch_frames, bool chunked,
                                        std::vector<float> * states) {
    Impl & s = *impl_;
    check_mel(mel, n_frames, s.hp, "audio");
    if (batch_frames < n_frames) batch_frames = n_frames;
    const int64_t C = AudioHparams::encoder_frames(n_frames);
    const int64_t c_max = AudioHparams::encoder_frames(batch_frames);
    if (c_max > s.hp.n_pos) {
        fail(ErrorKind::InvalidArgument, "audio piece of " + std::to_string(batch_frames) + " mel frames exceeds the " +
                                             std::to_string(s.hp.n_pos) + " encoder positions (30 s): split it first");
    }
    // Frames that rows [0, C) depend on: with the block mask a row sees keys up to the end of its
    // block, which in the reference's padded batch may lie past the item's own frames.
    const int64_t block = chunked && s.hp.chunk_frames > 0 ? s.hp.chunk_frames : 0;
    const int64_t T = block ? std::min(c_max, (C + block - 1) / block * block) : c_max;
    const int64_t n_in = std::min(batch_frames, 2 * T);
    const int64_t n_tok = s.hp.pooled(C);

    s.runner.prepare({n_in, T, n_tok}, [&](ggml_context * ctx, ggml_cgraph * gf) { s.build_offline(ctx, gf, n_in, T, n_tok); });
    const std::vector<float> in = Impl::padded_mel(mel, n_frames, s.hp.n_mel, n_in);
    ggml_backend_tensor_set(s.io.mel, in.data(), 0, in.size() * sizeof(float));
    // get_audio_embedding's mask: key j is hidden from row i when j >= the item's MEL length (the
    // reference compares encoder-frame indices with mel lengths) or j lies past row i's block.
    // It depends on (T, mel length, block) only: built and uploaded when that changes.
    const GraphKey mkey = {T, std::min(n_frames, T), block};
    if (mkey != s.mask_key) {
        s.mask_host.assign((size_t) (T * T), 0.0f);
        const float ninf = -std::numeric_limits<float>::infinity();
        for (int64_t i = 0; i < T; ++i) {
            const int64_t end = std::min(block ? (i / block + 1) * block : T, n_frames);
            float * row = s.mask_host.data() + i * T;
            for (int64_t j = end; j < T; ++j) row[j] = ninf;
        }
        Impl::set_mask(s.runner.state("audio_mask"), s.mask_host);
        s.mask_key = mkey;
    }
    s.runner.compute();
    s.observer.finish();
    if (states) {
        *states = Impl::read(s.io.states, T);
        states->resize((size_t) (C * s.hp.n_embd));
    }
    return Impl::read(s.io.out, n_tok);
}

std::vector<float> AudioEncoder::encode_stream(const float * mel, int64_t n_frames, bool extra_context, int prefix,
                                               int suffix, std::vector<float> * states) {
    Impl & s = *impl_;
    if (prefix < 0 || suffix < 0) fail(ErrorKind::InvalidArgument, "audio stream: redundancy frames must be >= 0");
    if (!mel || n_frames <= 0) fail(ErrorKind::InvalidArgument, "audio stream: no mel frames");
    const int64_t C = AudioHparams::encoder_frames(n_frames);
    int64_t pre = 0, cur = C;
    if (extra_context) {
        // conv2 halves (rounding up) the redundancy frames; the suffix is only cut while frames remain
        pre = prefix > 0 ? (prefix + 1) / 2 : 0;
        const int64_t suf = suffix > 0 ? (suffix + 1) / 2 : 0;
        if (pre >= C) fail(ErrorKind::InvalidArgument, "audio stream: the chunk is shorter than its prefix context");
        cur = C - pre;
        if (suf > 0 && suf < cur) cur -= suf;
    }
    if (s.hp.pooled(cur) <= 0) {
        fail(ErrorKind::InvalidArgument, "audio stream: a chunk of " + std::to_string(n_frames) +
                                             " mel frames gives fewer encoder frames than the pooling step " +
                                             std::to_string(s.hp.pool_step));
    }
    if (cur > s.hp.n_pos) fail(ErrorKind::InvalidArgument, "audio stream: chunk longer than 30 s");
    s.ensure_stream_runner();
    // The reference drops the cache when it and the new chunk (before trimming) would reach the
    // position table.
    if (s.cache_len + C >= s.hp.n_pos) s.cache_len = 0;
    const int64_t past = s.cache_len;
    const int64_t span = s.span_graphs ? past + cur : 0;
    s.stream_runner->prepare({n_frames, cur, pre, span}, [&](ggml_context * ctx, ggml_cgraph * gf) {
        s.build_stream(ctx, gf, n_frames, cur, pre, span);
    });
    ggml_backend_tensor_set(s.sio.mel, mel, 0, (size_t) (n_frames * s.hp.n_mel) * sizeof(float));
    std::vector<int64_t> rows((size_t) cur);
    std::vector<int32_t> rows32((size_t) cur);
    for (int64_t i = 0; i < cur; ++i) rows[(size_t) i] = rows32[(size_t) i] = (int32_t) (past + i);
    ggml_backend_tensor_set(s.sio.rows, rows.data(), 0, rows.size() * sizeof(int64_t));
    ggml_backend_tensor_set(s.sio.rows32, rows32.data(), 0, rows32.size() * sizeof(int32_t));
    // The chunk attends to every cached frame and to itself (the reference's all-zero mask over
    // past + current); rows past that are not written yet.
    if (s.sio.mask) {
        std::vector<float> mask((size_t) (s.hp.n_pos * cur));
        const float ninf = -std::numeric_limits<float>::infinity();
        for (int64_t i = 0; i < cur; ++i) {
            for (int64_t j = 0; j < s.hp.n_pos; ++j) mask[(size_t) (i * s.hp.n_pos + j)] = j < past + cur ? 0.0f : ninf;
        }
        Impl::set_mask(s.sio.mask, mask);
    }
    s.stream_runner->compute();
    s.stream_observer->finish();
    s.cache_len = past + cur;
    if (states) *states = Impl::read(s.sio.states, cur);
    return Impl::read(s.sio.out, s.hp.pooled(cur));
}

void AudioEncoder::reset_stream() { impl_->cache_len = 0; }

int64_t AudioEncoder::stream_frames() const { return impl_->cache_len; }

void AudioEncoder::warm_up() {
    std::vector<float> mel((size_t) (impl_->hp.n_mel * 100), 0.0f);
    encode(mel.data(), 100, 100, true);
    impl_->runner.invalidate();
}

} // namespace minicpm
