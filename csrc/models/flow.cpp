// Token2Wav flow matching: hyperparameters, weights, the encoder and estimator graphs, the solver.
// Mirrors CausalMaskedDiffWithXvec.inference (stepaudio2/cosyvoice2/flow/flow.py) and what it
// calls; see tests/test_t2w_flow.py for the stage-by-stage parity against those classes.
#include "flow.h"
#include "models/flow_graph.h"

#include "core/error.h"
#include "core/log.h"
#include "graph/blocks.h"
#include "model/names.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <string>

namespace minicpm {

using namespace flow_graph;

namespace {

int64_t need_u32(const GgufFile & f, KeyName k, int64_t lo, int64_t hi) {
    const std::string key = key_name(k);
    const int64_t v = f.get_u32(key);
    check_int_range(f, key, v, lo, hi);
    return v;
}

float need_f32(const GgufFile & f, KeyName k, float lo, float hi, bool lo_open = false) {
    const std::string key = key_name(k);
    const float v = f.get_f32(key);
    check_float_range(f, key, v, lo, hi, lo_open);
    return v;
}

bool is_omni_flow_file_(const GgufFile & f);

bool flow_present(const GgufFile & f) {
    return f.find_tensor(tensor_name(TensorName::FLOW_DIT_IN_PROJ)) != nullptr ||
           f.opt_u32(key_name(KeyName::T2W_FLOW_DIT_DEPTH)).has_value() || is_omni_flow_file_(f);
}

std::string name(TensorName t, int il = -1) { return tensor_name(t, il); }

constexpr float kPi = 3.14159265358979323846f;   // torch.pi as float32

// Relations between the hyperparameters that the graphs rely on.
void check_consistent(const FlowHparams & hp, const std::string & path) {
    auto bad = [&](const std::string & what) { fail(ErrorKind::Format, path + ": token2wav flow: " + what); };
    if (hp.n_embd % hp.n_head) bad("encoder width not divisible by its heads");
    if (hp.n_in != hp.n_embd) bad("input_size differs from the encoder width (up_embed needs them equal)");
    if (hp.dit_in != 4 * hp.n_mel || hp.dit_out != hp.n_mel) bad("estimator channels are not x | mu | spk | cond");
    if (hp.t_freq % 2) bad("odd time-embedding width");
    if (hp.stream_history % hp.up_stride) bad("history_frames is not a multiple of up_stride");
}

} // namespace

FlowHparams FlowHparams::from_gguf(const GgufFile & f) {
    constexpr int64_t kMaxWidth = 1 << 14, kMaxLayers = 256, kMaxHeads = 256;
    FlowHparams hp;
    hp.n_vocab = need_u32(f, KeyName::T2W_FLOW_VOCAB_SIZE, 1, 1 << 24);
    hp.n_in = need_u32(f, KeyName::T2W_FLOW_INPUT_SIZE, 1, kMaxWidth);
    hp.n_mel = need_u32(f, KeyName::T2W_FLOW_OUTPUT_SIZE, 1, 1024);
    hp.n_spk = need_u32(f, KeyName::T2W_FLOW_SPK_EMBED_DIM, 1, 4096);
    hp.spk_eps = need_f32(f, KeyName::T2W_FLOW_SPK_NORM_EPS, 0.0f, 0.1f, true);
    hp.n_embd = need_u32(f, KeyName::T2W_FLOW_ENC_WIDTH, 1, kMaxWidth);
    hp.n_head = need_u32(f, KeyName::T2W_FLOW_ENC_HEADS, 1, kMaxHeads);
    hp.n_ff = need_u32(f, KeyName::T2W_FLOW_ENC_FF, 1, 8 * kMaxWidth);
    hp.n_blocks = need_u32(f, KeyName::T2W_FLOW_ENC_BLOCKS, 1, kMaxLayers);
    hp.n_up_blocks = need_u32(f, KeyName::T2W_FLOW_ENC_UP_BLOCKS, 1, kMaxLayers);
    hp.lookahead = need_u32(f, KeyName::T2W_FLOW_ENC_LOOKAHEAD, 1, 64);
    hp.up_stride = need_u32(f, KeyName::T2W_FLOW_ENC_UP_STRIDE, 1, 16);
    const float up_scale = need_f32(f, KeyName::T2W_FLOW_ENC_UP_SCALE, 1.0f, 16.0f);
    hp.key_bias = f.get_bool(key_name(KeyName::T2W_FLOW_ENC_KEY_BIAS));
    hp.embed_eps = need_f32(f, KeyName::T2W_FLOW_ENC_EMBED_EPS, 0.0f, 0.1f, true);
    hp.layer_eps = need_f32(f, KeyName::T2W_FLOW_ENC_LAYER_EPS, 0.0f, 0.1f, true);
    hp.out_eps = need_f32(f, KeyName::T2W_FLOW_ENC_OUT_EPS, 0.0f, 0.1f, true);
    hp.pos_base = need_f32(f, KeyName::T2W_FLOW_ENC_POS_BASE, 1.0f, 1e9f);
    hp.lrelu_slope = need_f32(f, KeyName::T2W_FLOW_ENC_LRELU_SLOPE, 0.0f, 1.0f);
    hp.dit_in = need_u32(f, KeyName::T2W_FLOW_DIT_IN, 1, 4096);
    hp.dit_out = need_u32(f, KeyName::T2W_FLOW_DIT_OUT, 1, 1024);
    hp.dit_embd = need_u32(f, KeyName::T2W_FLOW_DIT_WIDTH, 1, kMaxWidth);
    hp.dit_depth = need_u32(f, KeyName::T2W_FLOW_DIT_DEPTH, 1, kMaxLayers);
    hp.dit_head = need_u32(f, KeyName::T2W_FLOW_DIT_HEADS, 1, kMaxHeads);
    hp.dit_head_dim = need_u32(f, KeyName::T2W_FLOW_DIT_HEAD_DIM, 1, 1024);
    hp.dit_ff = need_u32(f, KeyName::T2W_FLOW_DIT_FF, 1, 8 * kMaxWidth);
    hp.conv_kernel = need_u32(f, KeyName::T2W_FLOW_DIT_CONV_KERNEL, 1, 64);
    hp.dit_eps = need_f32(f, KeyName::T2W_FLOW_DIT_NORM_EPS, 0.0f, 0.1f, true);
    hp.qk_eps = need_f32(f, KeyName::T2W_FLOW_DIT_QK_NORM_EPS, 0.0f, 0.1f, true);
    hp.conv_eps = need_f32(f, KeyName::T2W_FLOW_DIT_CONV_NORM_EPS, 0.0f, 0.1f, true);
    hp.t_freq = need_u32(f, KeyName::T2W_FLOW_DIT_T_FREQ_DIM, 2, 1 << 14);
    hp.t_scale = need_f32(f, KeyName::T2W_FLOW_DIT_T_SCALE, 0.0f, 1e6f, true);
    hp.t_max_period = need_f32(f, KeyName::T2W_FLOW_DIT_T_MAX_PERIOD, 1.0f, 1e9f);
    hp.cfg_rate = need_f32(f, KeyName::T2W_FLOW_CFG_RATE, 0.0f, 100.0f, true);
    hp.temperature = need_f32(f, KeyName::T2W_FLOW_TEMPERATURE, 0.0f, 100.0f);
    hp.n_timesteps = need_u32(f, KeyName::T2W_FLOW_N_TIMESTEPS, 1, 1000);
    hp.max_frames = need_u32(f, KeyName::T2W_FLOW_MAX_FRAMES, 1, 1 << 20);
    hp.stream_history = need_u32(f, KeyName::T2W_FLOW_STREAM_HISTORY, 1, 1 << 16);
    check_layer_count(f, key_name(KeyName::T2W_FLOW_ENC_BLOCKS), hp.n_blocks + hp.n_up_blocks, 2 * kMaxLayers,
                      name(TensorName::FLOW_ENC_ATTN_NORM, (int) (hp.n_blocks + hp.n_up_blocks - 1)));
    check_layer_count(f, key_name(KeyName::T2W_FLOW_DIT_DEPTH), hp.dit_depth, kMaxLayers,
                      name(TensorName::FLOW_DIT_ADALN, (int) hp.dit_depth - 1));
    if (up_scale != (float) hp.up_stride) {
        fail(ErrorKind::Format, f.path() + ": token2wav flow: up_scale_factor differs from up_stride (nearest x stride only)");
    }
    check_consistent(hp, f.path());
    return hp;
}

namespace {

// ---- llama.cpp-omni's token2wav-gguf/{encoder,flow_matching,flow_extra}.gguf ---------------------
// Their loader (tools/omni/token2wav/token2wav-impl.cpp: bind_flow_extra_weights,
// ue_loader_bind_all_weights, bind_flow_matching_weights) reads the flow.pt state dict under its
// own names: flow_extra.gguf the top-level tensors, encoder.gguf `encoder.*` without the prefix,
// flow_matching.gguf `decoder.estimator.*` as `estimator.*`. Shapes are torch's reversed (ggml
// order), convolution kernels [k, in, out]; the files carry no hyperparameters.
enum OmniPart { kOmniEnc = 0, kOmniDit = 1, kOmniExtra = 2 };

struct OmniName {
    OmniPart    part;
    std::string name;
};

OmniName omni_flow_name(TensorName t, int il, int64_t n_blocks) {
    using T = TensorName;
    const std::string enc = il < 0 ? std::string()
                            : il < n_blocks ? "encoders." + std::to_string(il) + "."
                                            : "up_encoders." + std::to_string(il - n_blocks) + ".";
    const std::string blk = "estimator.blocks." + std::to_string(il) + ".";
    switch (t) {
        case T::FLOW_TOKEN_EMBD: return {kOmniExtra, "input_embedding.weight"};
        case T::FLOW_SPK_PROJ: return {kOmniExtra, "spk_embed_affine_layer.weight"};
        case T::FLOW_SPK_PROJ_BIAS: return {kOmniExtra, "spk_embed_affine_layer.bias"};
        case T::FLOW_ENC_PROJ: return {kOmniExtra, "encoder_proj.weight"};
        case T::FLOW_ENC_PROJ_BIAS: return {kOmniExtra, "encoder_proj.bias"};
        case T::FLOW_ENC_EMBD: return {kOmniEnc, "embed.out.0.weight"};
        case T::FLOW_ENC_EMBD_BIAS: return {kOmniEnc, "embed.out.0.bias"};
        case T::FLOW_ENC_EMBD_NORM: return {kOmniEnc, "embed.out.1.weight"};
        case T::FLOW_ENC_EMBD_NORM_BIAS: return {kOmniEnc, "embed.out.1.bias"};
        case T::FLOW_ENC_LA_CONV1: return {kOmniEnc, "pre_lookahead_layer.conv1.weight"};
        case T::FLOW_ENC_LA_CONV1_BIAS: return {kOmniEnc, "pre_lookahead_layer.conv1.bias"};
        case T::FLOW_ENC_LA_CONV2: return {kOmniEnc, "pre_lookahead_layer.conv2.weight"};
        case T::FLOW_ENC_LA_CONV2_BIAS: return {kOmniEnc, "pre_lookahead_layer.conv2.bias"};
        case T::FLOW_ENC_ATTN_NORM: return {kOmniEnc, enc + "norm_mha.weight"};
        case T::FLOW_ENC_ATTN_NORM_BIAS: return {kOmniEnc, enc + "norm_mha.bias"};
        case T::FLOW_ENC_ATTN_Q: return {kOmniEnc, enc + "self_attn.linear_q.weight"};
        case T::FLOW_ENC_ATTN_Q_BIAS: return {kOmniEnc, enc + "self_attn.linear_q.bias"};
        case T::FLOW_ENC_ATTN_K: return {kOmniEnc, enc + "self_attn.linear_k.weight"};
        case T::FLOW_ENC_ATTN_K_BIAS: return {kOmniEnc, enc + "self_attn.linear_k.bias"};
        case T::FLOW_ENC_ATTN_V: return {kOmniEnc, enc + "self_attn.linear_v.weight"};
        case T::FLOW_ENC_ATTN_V_BIAS: return {kOmniEnc, enc + "self_attn.linear_v.bias"};
        case T::FLOW_ENC_ATTN_OUT: return {kOmniEnc, enc + "self_attn.linear_out.weight"};
        case T::FLOW_ENC_ATTN_OUT_BIAS: return {kOmniEnc, enc + "self_attn.linear_out.bias"};
        case T::FLOW_ENC_ATTN_POS: return {kOmniEnc, enc + "self_attn.linear_pos.weight"};
        case T::FLOW_ENC_POS_BIAS_U: return {kOmniEnc, enc + "self_attn.pos_bias_u"};
        case T::FLOW_ENC_POS_BIAS_V: return {kOmniEnc, enc + "self_attn.pos_bias_v"};
        case T::FLOW_ENC_FFN_NORM: return {kOmniEnc, enc + "norm_ff.weight"};
        case T::FLOW_ENC_FFN_NORM_BIAS: return {kOmniEnc, enc + "norm_ff.bias"};
        case T::FLOW_ENC_FFN_UP: return {kOmniEnc, enc + "feed_forward.w_1.weight"};
        case T::FLOW_ENC_FFN_UP_BIAS: return {kOmniEnc, enc + "feed_forward.w_1.bias"};
        case T::FLOW_ENC_FFN_DOWN: return {kOmniEnc, enc + "feed_forward.w_2.weight"};
        case T::FLOW_ENC_FFN_DOWN_BIAS: return {kOmniEnc, enc + "feed_forward.w_2.bias"};
        case T::FLOW_ENC_UP_CONV: return {kOmniEnc, "up_layer.conv.weight"};
        case T::FLOW_ENC_UP_CONV_BIAS: return {kOmniEnc, "up_layer.conv.bias"};
        case T::FLOW_ENC_UP_EMBD: return {kOmniEnc, "up_embed.out.0.weight"};
        case T::FLOW_ENC_UP_EMBD_BIAS: return {kOmniEnc, "up_embed.out.0.bias"};
        case T::FLOW_ENC_UP_EMBD_NORM: return {kOmniEnc, "up_embed.out.1.weight"};
        case T::FLOW_ENC_UP_EMBD_NORM_BIAS: return {kOmniEnc, "up_embed.out.1.bias"};
        case T::FLOW_ENC_OUT_NORM: return {kOmniEnc, "after_norm.weight"};
        case T::FLOW_ENC_OUT_NORM_BIAS: return {kOmniEnc, "after_norm.bias"};
        case T::FLOW_DIT_T_EMBD_1: return {kOmniDit, "estimator.t_embedder.mlp.0.weight"};
        case T::FLOW_DIT_T_EMBD_1_BIAS: return {kOmniDit, "estimator.t_embedder.mlp.0.bias"};
        case T::FLOW_DIT_T_EMBD_2: return {kOmniDit, "estimator.t_embedder.mlp.2.weight"};
        case T::FLOW_DIT_T_EMBD_2_BIAS: return {kOmniDit, "estimator.t_embedder.mlp.2.bias"};
        case T::FLOW_DIT_IN_PROJ: return {kOmniDit, "estimator.in_proj.weight"};
        case T::FLOW_DIT_IN_PROJ_BIAS: return {kOmniDit, "estimator.in_proj.bias"};
        case T::FLOW_DIT_ADALN: return {kOmniDit, blk + "adaLN_modulation.1.weight"};
        case T::FLOW_DIT_ADALN_BIAS: return {kOmniDit, blk + "adaLN_modulation.1.bias"};
        case T::FLOW_DIT_ATTN_Q: return {kOmniDit, blk + "attn.to_q.weight"};
        case T::FLOW_DIT_ATTN_Q_BIAS: return {kOmniDit, blk + "attn.to_q.bias"};
        case T::FLOW_DIT_ATTN_K: return {kOmniDit, blk + "attn.to_k.weight"};
        case T::FLOW_DIT_ATTN_K_BIAS: return {kOmniDit, blk + "attn.to_k.bias"};
        case T::FLOW_DIT_ATTN_V: return {kOmniDit, blk + "attn.to_v.weight"};
        case T::FLOW_DIT_ATTN_V_BIAS: return {kOmniDit, blk + "attn.to_v.bias"};
        case T::FLOW_DIT_ATTN_Q_NORM: return {kOmniDit, blk + "attn.q_norm.weight"};
        case T::FLOW_DIT_ATTN_Q_NORM_BIAS: return {kOmniDit, blk + "attn.q_norm.bias"};
        case T::FLOW_DIT_ATTN_K_NORM: return {kOmniDit, blk + "attn.k_norm.weight"};
        case T::FLOW_DIT_ATTN_K_NORM_BIAS: return {kOmniDit, blk + "attn.k_norm.bias"};
        case T::FLOW_DIT_ATTN_OUT: return {kOmniDit, blk + "attn.proj.weight"};
        case T::FLOW_DIT_ATTN_OUT_BIAS: return {kOmniDit, blk + "attn.proj.bias"};
        case T::FLOW_DIT_CONV1: return {kOmniDit, blk + "conv.block.1.weight"};
        case T::FLOW_DIT_CONV1_BIAS: return {kOmniDit, blk + "conv.block.1.bias"};
        case T::FLOW_DIT_CONV_NORM: return {kOmniDit, blk + "conv.block.3.weight"};
        case T::FLOW_DIT_CONV_NORM_BIAS: return {kOmniDit, blk + "conv.block.3.bias"};
        case T::FLOW_DIT_CONV2: return {kOmniDit, blk + "conv.block.6.weight"};
        case T::FLOW_DIT_CONV2_BIAS: return {kOmniDit, blk + "conv.block.6.bias"};
        case T::FLOW_DIT_FFN_UP: return {kOmniDit, blk + "mlp.fc1.weight"};
        case T::FLOW_DIT_FFN_UP_BIAS: return {kOmniDit, blk + "mlp.fc1.bias"};
        case T::FLOW_DIT_FFN_DOWN: return {kOmniDit, blk + "mlp.fc2.weight"};
        case T::FLOW_DIT_FFN_DOWN_BIAS: return {kOmniDit, blk + "mlp.fc2.bias"};
        case T::FLOW_DIT_FINAL_ADALN: return {kOmniDit, "estimator.final_layer.adaLN_modulation.1.weight"};
        case T::FLOW_DIT_FINAL_ADALN_BIAS: return {kOmniDit, "estimator.final_layer.adaLN_modulation.1.bias"};
        case T::FLOW_DIT_FINAL_PROJ: return {kOmniDit, "estimator.final_layer.linear.weight"};
        case T::FLOW_DIT_FINAL_PROJ_BIAS: return {kOmniDit, "estimator.final_layer.linear.bias"};
        default: break;
    }
    fail(ErrorKind::Internal, "token2wav flow: no llama.cpp-omni name for tensor " + tensor_name(t, il));
}

const char * const kOmniFileNames[3] = {"encoder.gguf", "flow_matching.gguf", "flow_extra.gguf"};

// A tensor of one of the three files with its ggml shape, `dims` dimensions and bounded sizes.
const TensorInfo & omni_need(const GgufFile & f, const std::string & n, int dims) {
    const TensorInfo * t = f.find_tensor(n);
    if (!t) {
        fail(ErrorKind::Format, "tensor " + n + " not found in " + f.path() +
                                    " (llama.cpp-omni's token2wav-gguf layout expected)");
    }
    if (t->n_dims != dims) {
        fail(ErrorKind::Format, "tensor " + n + " in " + f.path() + ": shape " + shape_str(t->ne, t->n_dims) + ", expected " +
                                    std::to_string(dims) + " dimensions");
    }
    for (int d = 0; d < dims; ++d) {
        if (t->ne[d] < 1 || t->ne[d] > (1 << 24)) {
            fail(ErrorKind::Format, "tensor " + n + " in " + f.path() + ": shape " + shape_str(t->ne, t->n_dims) +
                                        " out of range");
        }
    }
    return *t;
}

// Layers numbered prefix.0., prefix.1., ... (probed through `suffix`), bounded.
int64_t omni_count(const GgufFile & f, const std::string & prefix, const std::string & suffix, int64_t max_layers) {
    int64_t n = 0;
    while (n <= max_layers && f.find_tensor(prefix + std::to_string(n) + suffix)) ++n;
    if (n > max_layers) {
        fail(ErrorKind::Format, f.path() + ": more than " + std::to_string(max_layers) + " " + prefix + "* layers");
    }
    return n;
}

} // namespace

namespace {
bool is_omni_flow_file_(const GgufFile & f) {
    return f.find_tensor("estimator.in_proj.weight") && f.find_tensor("estimator.t_embedder.mlp.0.weight") &&
           !f.has_key(key_name(KeyName::T2W_FLOW_DIT_DEPTH));
}
} // namespace

bool is_omni_flow_file(const GgufFile & f) { return is_omni_flow_file_(f); }

bool is_omni_flow_part(const GgufFile & f) {
    return (f.find_tensor("embed.out.0.weight") && f.find_tensor("pre_lookahead_layer.conv1.weight")) ||
           (f.find_tensor("input_embedding.weight") && f.find_tensor("encoder_proj.weight"));
}

FlowHparams FlowHparams::from_omni(const GgufFile & enc, const GgufFile & dit, const GgufFile & extra) {
    constexpr int64_t kMaxLayers = 256;
    FlowHparams hp;
    hp.omni_layout = true;
    // shapes (ggml order: torch's reversed)
    const TensorInfo & emb = omni_need(extra, "input_embedding.weight", 2);        // [n_in, vocab]
    hp.n_in = emb.ne[0];
    hp.n_vocab = emb.ne[1];
    const TensorInfo & spk = omni_need(extra, "spk_embed_affine_layer.weight", 2); // [n_spk, n_mel]
    hp.n_spk = spk.ne[0];
    hp.n_mel = spk.ne[1];
    const TensorInfo & embed = omni_need(enc, "embed.out.0.weight", 2);           // [n_in, E]
    hp.n_embd = embed.ne[1];
    const TensorInfo & pos_u = omni_need(enc, "encoders.0.self_attn.pos_bias_u", 2);   // [d_k, heads]
    hp.n_head = pos_u.ne[1];
    hp.n_ff = omni_need(enc, "encoders.0.feed_forward.w_1.weight", 2).ne[1];
    hp.n_blocks = omni_count(enc, "encoders.", ".norm_mha.weight", kMaxLayers);
    hp.n_up_blocks = omni_count(enc, "up_encoders.", ".norm_mha.weight", kMaxLayers);
    // pre_lookahead_len = conv1 kernel - 1 (token2wav-impl.cpp reads it the same way)
    hp.lookahead = omni_need(enc, "pre_lookahead_layer.conv1.weight", 3).ne[0] - 1;
    // Upsample1D's conv kernel is 2 * stride + 1
    const int64_t up_k = omni_need(enc, "up_layer.conv.weight", 3).ne[0];
    if (up_k < 3 || up_k % 2 == 0) {
        fail(ErrorKind::Format, "tensor up_layer.conv.weight in " + enc.path() + ": kernel " + std::to_string(up_k) +
                                    ", expected 2 * up_stride + 1");
    }
    hp.up_stride = (up_k - 1) / 2;
    hp.key_bias = enc.find_tensor("encoders.0.self_attn.linear_k.bias") != nullptr;
    const TensorInfo & in_proj = omni_need(dit, "estimator.in_proj.weight", 2);   // [dit_in, D]
    hp.dit_in = in_proj.ne[0];
    hp.dit_embd = in_proj.ne[1];
    hp.dit_out = omni_need(dit, "estimator.final_layer.linear.weight", 2).ne[1];
    hp.dit_depth = omni_count(dit, "estimator.blocks.", ".adaLN_modulation.1.weight", kMaxLayers);
    hp.dit_head_dim = omni_need(dit, "estimator.blocks.0.attn.q_norm.weight", 1).ne[0];
    const int64_t inner = omni_need(dit, "estimator.blocks.0.attn.to_q.weight", 2).ne[1];
    if (inner % hp.dit_head_dim) {
        fail(ErrorKind::Format, dit.path() + ": estimator attention width " + std::to_string(inner) +
                                    " is not a multiple of its head size " + std::to_string(hp.dit_head_dim));
    }
    hp.dit_head = inner / hp.dit_head_dim;
    hp.dit_ff = omni_need(dit, "estimator.blocks.0.mlp.fc1.weight", 2).ne[1];
    hp.conv_kernel = omni_need(dit, "estimator.blocks.0.conv.block.1.weight", 3).ne[0];
    hp.t_freq = omni_need(dit, "estimator.t_embedder.mlp.0.weight", 2).ne[0];
    // The release's fixed values (the reference code's literals and class defaults, the same
    // values convert/t2w_flow.py writes; llama.cpp-omni hard-codes them too).
    hp.spk_eps = 1e-12f;
    hp.embed_eps = 1e-5f;
    hp.layer_eps = 1e-12f;
    hp.out_eps = 1e-5f;
    hp.pos_base = 10000.0f;
    hp.lrelu_slope = 0.01f;
    hp.dit_eps = 1e-6f;
    hp.qk_eps = 1e-5f;
    hp.conv_eps = 1e-5f;
    hp.t_scale = 1000.0f;
    hp.t_max_period = 10000.0f;
    hp.cfg_rate = 0.7f;
    hp.temperature = 1.0f;
    hp.n_timesteps = 10;
    hp.max_frames = 50 * 600;
    hp.stream_history = 100;
    auto range = [&](const GgufFile & f, const char * what, int64_t v, int64_t lo, int64_t hi) {
        if (v < lo || v > hi) {
            fail(ErrorKind::Format, f.path() + ": token2wav flow " + what + " " + std::to_string(v) + " out of range [" +
                                        std::to_string(lo) + ", " + std::to_string(hi) + "]");
        }
    };
    range(enc, "encoder blocks", hp.n_blocks, 1, kMaxLayers);
    range(enc, "encoder up blocks", hp.n_up_blocks, 1, kMaxLayers);
    range(dit, "estimator depth", hp.dit_depth, 1, kMaxLayers);
    range(enc, "look-ahead", hp.lookahead, 1, 64);
    range(enc, "up_stride", hp.up_stride, 1, 16);
    range(enc, "attention heads", hp.n_head, 1, 256);
    range(dit, "estimator heads", hp.dit_head, 1, 256);
    range(dit, "conv kernel", hp.conv_kernel, 1, 64);
    range(extra, "mel bins", hp.n_mel, 1, 1024);
    range(extra, "speaker width", hp.n_spk, 1, 4096);
    if (pos_u.ne[0] * hp.n_head != hp.n_embd) {
        fail(ErrorKind::Format, "tensor encoders.0.self_attn.pos_bias_u in " + enc.path() + ": shape " +
                                    shape_str(pos_u.ne, pos_u.n_dims) + ", expected [d_k, heads] with d_k * heads = " +
                                    std::to_string(hp.n_embd));
    }
    check_consistent(hp, dit.path());
    return hp;
}

namespace {

// A tensor to declare: its ID and layer, named and placed in the right file by FlowDecl.
struct FlowRef {
    TensorName t;
    int        il;
};

// Declares the flow's tensors in our file (t2w.flow.* names) or in llama.cpp-omni's three files.
struct FlowDecl {
    WeightStore &          own;
    const FlowOmniStores * omni;
    int64_t                n_blocks;

    ggml_tensor * require(FlowRef r, std::vector<int64_t> shape, Placement p = Placement::Main,
                          TensorRole role = TensorRole::Auto) const {
        if (!omni) return own.require(tensor_name(r.t, r.il), std::move(shape), p, role);
        const OmniName o = omni_flow_name(r.t, r.il, n_blocks);
        ggml_tensor * t = store(o.part).require(o.name, shape, p, role);
        // Our converter writes norms, biases and position biases F32 (the graphs add and multiply
        // them as F32); llama.cpp-omni's files are F32 throughout: other vectors are refused here.
        const bool matrix = p == Placement::Matrix || role == TensorRole::Weight;
        if (!matrix && t->type != GGML_TYPE_F32) {
            fail(ErrorKind::Unsupported, "tensor " + o.name + " in " + kOmniFileNames[o.part] + " is " +
                                             ggml_type_name(t->type) + "; the flow takes its vectors (norms, biases) in F32");
        }
        return t;
    }

    // A convolution kernel, [in, k, out] in ggml order for the graphs (names.def). llama.cpp-omni
    // stores torch's [out, in, k] (ggml [k, in, out]): permuted into an F32 copy at load.
    ggml_tensor * conv(FlowRef r, int64_t k, int64_t in, int64_t out) const {
        if (!omni) return own.require(tensor_name(r.t, r.il), {in, k, out}, Placement::Main, TensorRole::Vector);
        const OmniName o = omni_flow_name(r.t, r.il, n_blocks);
        WeightStore & st = store(o.part);
        ggml_tensor * src = st.require(o.name, {k, in, out}, Placement::Main, TensorRole::Vector);
        ggml_tensor * dst = st.derived(o.name + ".in_k_out", GGML_TYPE_F32, {in, k, out}, [&st, src, k, in, out](uint8_t * d) {
            const std::vector<float> v = st.read_f32(src);   // [out][in][k]
            float * w = (float *) d;                          // [out][k][in]
            for (int64_t o2 = 0; o2 < out; ++o2) {
                for (int64_t i = 0; i < in; ++i) {
                    for (int64_t j = 0; j < k; ++j) w[(o2 * k + j) * in + i] = v[(size_t) ((o2 * in + i) * k + j)];
                }
            }
        });
        st.drop(src);
        return dst;
    }

    WeightStore & store(OmniPart part) const {
        return part == kOmniEnc ? *omni->enc : part == kOmniDit ? *omni->dit : *omni->extra;
    }
};

} // namespace

FlowWeights FlowWeights::declare(WeightStore & store, const FlowHparams & hp, const FlowOmniStores * omni) {
    using T = TensorName;
    const int64_t E = hp.n_embd, M = hp.n_mel, D = hp.dit_embd, dk = E / hp.n_head;
    const int64_t inner = hp.dit_head * hp.dit_head_dim, K = hp.conv_kernel;
    const auto W = Placement::Matrix;
    const auto V = TensorRole::Vector;
    const FlowDecl s{store, omni, hp.n_blocks};
    auto name = [](T t, int il = -1) { return FlowRef{t, il}; };
    // conv kernels [in, kernel, out] in ggml order (see names.def)
    auto conv = [&](T t, int64_t k, int64_t in, int64_t out, int il = -1) { return s.conv({t, il}, k, in, out); };
    FlowWeights w;
    w.tok_embd = s.require(name(T::FLOW_TOKEN_EMBD), {hp.n_in, hp.n_vocab}, Placement::Main, TensorRole::Weight);
    w.spk_w = s.require(name(T::FLOW_SPK_PROJ), {hp.n_spk, M}, W);
    w.spk_b = s.require(name(T::FLOW_SPK_PROJ_BIAS), {M});
    w.proj_w = s.require(name(T::FLOW_ENC_PROJ), {E, M}, W);
    w.proj_b = s.require(name(T::FLOW_ENC_PROJ_BIAS), {M});
    w.embd_w = s.require(name(T::FLOW_ENC_EMBD), {hp.n_in, E}, W);
    w.embd_b = s.require(name(T::FLOW_ENC_EMBD_BIAS), {E});
    w.embd_norm_w = s.require(name(T::FLOW_ENC_EMBD_NORM), {E});
    w.embd_norm_b = s.require(name(T::FLOW_ENC_EMBD_NORM_BIAS), {E});
    w.la1_w = conv(T::FLOW_ENC_LA_CONV1, hp.lookahead + 1, E, E);
    w.la1_b = s.require(name(T::FLOW_ENC_LA_CONV1_BIAS), {E});
    w.la2_w = conv(T::FLOW_ENC_LA_CONV2, 3, E, E);
    w.la2_b = s.require(name(T::FLOW_ENC_LA_CONV2_BIAS), {E});
    for (int il = 0; il < (int) (hp.n_blocks + hp.n_up_blocks); ++il) {
        FlowEncLayer L;
        L.attn_norm_w = s.require(name(T::FLOW_ENC_ATTN_NORM, il), {E});
        L.attn_norm_b = s.require(name(T::FLOW_ENC_ATTN_NORM_BIAS, il), {E});
        L.q_w = s.require(name(T::FLOW_ENC_ATTN_Q, il), {E, E}, W);
        L.q_b = s.require(name(T::FLOW_ENC_ATTN_Q_BIAS, il), {E});
        L.k_w = s.require(name(T::FLOW_ENC_ATTN_K, il), {E, E}, W);
        L.k_b = hp.key_bias ? s.require(name(T::FLOW_ENC_ATTN_K_BIAS, il), {E}) : nullptr;
        L.v_w = s.require(name(T::FLOW_ENC_ATTN_V, il), {E, E}, W);
        L.v_b = s.require(name(T::FLOW_ENC_ATTN_V_BIAS, il), {E});
        L.o_w = s.require(name(T::FLOW_ENC_ATTN_OUT, il), {E, E}, W);
        L.o_b = s.require(name(T::FLOW_ENC_ATTN_OUT_BIAS, il), {E});
        L.pos_w = s.require(name(T::FLOW_ENC_ATTN_POS, il), {E, E}, W);
        L.pos_u = s.require(name(T::FLOW_ENC_POS_BIAS_U, il), {dk, hp.n_head}, Placement::Main, V);
        L.pos_v = s.require(name(T::FLOW_ENC_POS_BIAS_V, il), {dk, hp.n_head}, Placement::Main, V);
        L.ffn_norm_w = s.require(name(T::FLOW_ENC_FFN_NORM, il), {E});
        L.ffn_norm_b = s.require(name(T::FLOW_ENC_FFN_NORM_BIAS, il), {E});
        L.up_w = s.require(name(T::FLOW_ENC_FFN_UP, il), {E, hp.n_ff}, W);
        L.up_b = s.require(name(T::FLOW_ENC_FFN_UP_BIAS, il), {hp.n_ff});
        L.down_w = s.require(name(T::FLOW_ENC_FFN_DOWN, il), {hp.n_ff, E}, W);
        L.down_b = s.require(name(T::FLOW_ENC_FFN_DOWN_BIAS, il), {E});
        w.enc.push_back(L);
    }
    w.up_conv_w = conv(T::FLOW_ENC_UP_CONV, 2 * hp.up_stride + 1, E, E);
    w.up_conv_b = s.require(name(T::FLOW_ENC_UP_CONV_BIAS), {E});
    w.up_embd_w = s.require(name(T::FLOW_ENC_UP_EMBD), {hp.n_in, E}, W);
    w.up_embd_b = s.require(name(T::FLOW_ENC_UP_EMBD_BIAS), {E});
    w.up_embd_norm_w = s.require(name(T::FLOW_ENC_UP_EMBD_NORM), {E});
    w.up_embd_norm_b = s.require(name(T::FLOW_ENC_UP_EMBD_NORM_BIAS), {E});
    w.out_norm_w = s.require(name(T::FLOW_ENC_OUT_NORM), {E});
    w.out_norm_b = s.require(name(T::FLOW_ENC_OUT_NORM_BIAS), {E});
    w.t1_w = s.require(name(T::FLOW_DIT_T_EMBD_1), {hp.t_freq, D}, W);
    w.t1_b = s.require(name(T::FLOW_DIT_T_EMBD_1_BIAS), {D});
    w.t2_w = s.require(name(T::FLOW_DIT_T_EMBD_2), {D, D}, W);
    w.t2_b = s.require(name(T::FLOW_DIT_T_EMBD_2_BIAS), {D});
    w.in_proj_w = s.require(name(T::FLOW_DIT_IN_PROJ), {hp.dit_in, D}, W);
    w.in_proj_b = s.require(name(T::FLOW_DIT_IN_PROJ_BIAS), {D});
    for (int il = 0; il < (int) hp.dit_depth; ++il) {
        FlowDitBlock B;
        B.adaln_w = s.require(name(T::FLOW_DIT_ADALN, il), {D, 9 * D}, W);
        B.adaln_b = s.require(name(T::FLOW_DIT_ADALN_BIAS, il), {9 * D});
        B.q_w = s.require(name(T::FLOW_DIT_ATTN_Q, il), {D, inner}, W);
        B.q_b = s.require(name(T::FLOW_DIT_ATTN_Q_BIAS, il), {inner});
        B.k_w = s.require(name(T::FLOW_DIT_ATTN_K, il), {D, inner}, W);
        B.k_b = s.require(name(T::FLOW_DIT_ATTN_K_BIAS, il), {inner});
        B.v_w = s.require(name(T::FLOW_DIT_ATTN_V, il), {D, inner}, W);
        B.v_b = s.require(name(T::FLOW_DIT_ATTN_V_BIAS, il), {inner});
        B.q_norm_w = s.require(name(T::FLOW_DIT_ATTN_Q_NORM, il), {hp.dit_head_dim});
        B.q_norm_b = s.require(name(T::FLOW_DIT_ATTN_Q_NORM_BIAS, il), {hp.dit_head_dim});
        B.k_norm_w = s.require(name(T::FLOW_DIT_ATTN_K_NORM, il), {hp.dit_head_dim});
        B.k_norm_b = s.require(name(T::FLOW_DIT_ATTN_K_NORM_BIAS, il), {hp.dit_head_dim});
        B.o_w = s.require(name(T::FLOW_DIT_ATTN_OUT, il), {inner, D}, W);
        B.o_b = s.require(name(T::FLOW_DIT_ATTN_OUT_BIAS, il), {D});
        B.conv1_w = conv(T::FLOW_DIT_CONV1, K, D, D, il);
        B.conv1_b = s.require(name(T::FLOW_DIT_CONV1_BIAS, il), {D});
        B.conv_norm_w = s.require(name(T::FLOW_DIT_CONV_NORM, il), {D});
        B.conv_norm_b = s.require(name(T::FLOW_DIT_CONV_NORM_BIAS, il), {D});
        B.conv2_w = conv(T::FLOW_DIT_CONV2, K, D, D, il);
        B.conv2_b = s.require(name(T::FLOW_DIT_CONV2_BIAS, il), {D});
        B.up_w = s.require(name(T::FLOW_DIT_FFN_UP, il), {D, hp.dit_ff}, W);
        B.up_b = s.require(name(T::FLOW_DIT_FFN_UP_BIAS, il), {hp.dit_ff});
        B.down_w = s.require(name(T::FLOW_DIT_FFN_DOWN, il), {hp.dit_ff, D}, W);
        B.down_b = s.require(name(T::FLOW_DIT_FFN_DOWN_BIAS, il), {D});
        w.dit.push_back(B);
    }
    w.final_adaln_w = s.require(name(T::FLOW_DIT_FINAL_ADALN), {D, 2 * D}, W);
    w.final_adaln_b = s.require(name(T::FLOW_DIT_FINAL_ADALN_BIAS), {2 * D});
    w.final_w = s.require(name(T::FLOW_DIT_FINAL_PROJ), {D, hp.dit_out}, W);
    w.final_b = s.require(name(T::FLOW_DIT_FINAL_PROJ_BIAS), {hp.dit_out});
    return w;
}

size_t FlowModel::weight_bytes() const {
    size_t n = store->bytes_on_main() + store->bytes_on_host() + store->bytes_repacked();
    for (const auto & s : omni_stores) n += s->bytes_on_main() + s->bytes_on_host() + s->bytes_repacked();
    return n;
}

namespace {

// The directory part of a path ("" for a bare file name).
std::string dir_of(const std::string & path) {
    const size_t slash = path.find_last_of("/\\");
    return slash == std::string::npos ? std::string() : path.substr(0, slash + 1);
}

// llama.cpp-omni's layout: `in.file` is flow_matching.gguf; encoder.gguf and flow_extra.gguf
// come from its folder (token2wav-gguf/, as omni.cpp finds them).
void load_omni(FlowModel & m, const ComponentLoad & in) {
    const std::string dir = dir_of(in.file.path());
    for (int part : {kOmniEnc, kOmniExtra}) {
        const std::string p = dir + kOmniFileNames[part];
        std::error_code ec;
        if (!std::filesystem::is_regular_file(p, ec)) {
            fail(ErrorKind::File, in.file.path() + " is llama.cpp-omni's Token2Wav flow_matching.gguf; it needs " +
                                      kOmniFileNames[part] + " in the same folder (" + p + " not found)");
        }
        m.omni_files.push_back(std::make_unique<GgufFile>(p));
    }
    const GgufFile & enc = *m.omni_files[0];
    const GgufFile & extra = *m.omni_files[1];
    if (!enc.find_tensor("embed.out.0.weight")) {
        fail(ErrorKind::Format, enc.path() + " is not llama.cpp-omni's Token2Wav encoder.gguf (no embed.out.0.weight)");
    }
    if (!extra.find_tensor("input_embedding.weight")) {
        fail(ErrorKind::Format, extra.path() + " is not llama.cpp-omni's Token2Wav flow_extra.gguf (no input_embedding.weight)");
    }
    m.hp = FlowHparams::from_omni(enc, in.file, extra);
    const size_t n_enc = (size_t) ((m.hp.n_blocks + m.hp.n_up_blocks) * 20 + 32);
    m.omni_stores.push_back(std::make_unique<WeightStore>(enc, in.devices, n_enc));
    m.omni_stores.push_back(std::make_unique<WeightStore>(extra, in.devices, 8));
    m.store = std::make_unique<WeightStore>(in.file, in.devices, (size_t) (m.hp.dit_depth * 30 + 16));
    const FlowOmniStores stores{m.omni_stores[0].get(), m.store.get(), m.omni_stores[1].get()};
    m.w = FlowWeights::declare(*m.store, m.hp, &stores);
    for (auto & s : m.omni_stores) s->load();
    m.store->load();
}

std::unique_ptr<Component> flow_load(const ComponentLoad & in) {
    auto m = std::make_unique<FlowModel>();
    if (is_omni_flow_file(in.file)) {
        load_omni(*m, in);
    } else {
        m->hp = FlowHparams::from_gguf(in.file);
        const size_t n_tensors = (size_t) ((m->hp.n_blocks + m->hp.n_up_blocks) * 20 + m->hp.dit_depth * 26 + 48);
        m->store = std::make_unique<WeightStore>(in.file, in.devices, n_tensors);
        m->w = FlowWeights::declare(*m->store, m->hp);
        m->store->load();
    }
    MINICPM_LOG_INFO("token2wav flow: encoder %lld+%lld layers x %lld, DiT %lld blocks x %lld, %lld steps, cfg %.2f%s",
                     (long long) m->hp.n_blocks, (long long) m->hp.n_up_blocks, (long long) m->hp.n_embd,
                     (long long) m->hp.dit_depth, (long long) m->hp.dit_embd, (long long) m->hp.n_timesteps,
                     m->hp.cfg_rate, m->hp.omni_layout ? " (llama.cpp-omni token2wav-gguf files)" : "");
    return m;
}

// splitmix64, for the default noise table.
uint64_t mix64(uint64_t z) {
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// t_span = 1 - cos(linspace(0, 1, n + 1) * pi / 2), float32 as torch.linspace computes it.
std::vector<float> time_span(int n_steps) {
    const int64_t n_pts = n_steps + 1;
    const float step = 1.0f / (float) n_steps;
    std::vector<float> span((size_t) n_pts);
    for (int64_t i = 0; i < n_pts; ++i) {
        const float lin = i < n_pts / 2 ? (float) i * step : 1.0f - (float) (n_pts - 1 - i) * step;
        span[(size_t) i] = 1.0f - std::cos(lin * 0.5f * kPi);
    }
    return span;
}

std::vector<float> noise_rows(int64_t M, int64_t first, int64_t n, uint64_t seed) {
    // Standard normal values (Box-Muller on two 53-bit uniforms) from a counter hash of (seed,
    // absolute frame, channel): the same frame always gets the same noise, whatever the chunking.
    std::vector<float> out((size_t) (n * M));
    for (int64_t f = 0; f < n; ++f) {
        for (int64_t c = 0; c < M; ++c) {
            const uint64_t key = mix64(seed ^ mix64((uint64_t) (first + f) * 0x100000001B3ull + (uint64_t) c));
            const double u1 = ((double) (mix64(key) >> 11) + 1.0) * 0x1.0p-53;   // (0, 1]
            const double u2 = (double) (mix64(key ^ 0x5851F42D4C957F2Dull) >> 11) * 0x1.0p-53;
            out[(size_t) (f * M + c)] = (float) (std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2));
        }
    }
    return out;
}

} // namespace

const ComponentType kFlowComponent = {"flow", &flow_present, &flow_load};

// ---- runtime ----------------------------------------------------------------------------------

struct FlowRunner::Impl {
    const FlowModel &   m;
    const FlowHparams & hp;
    GraphRunner         enc_runner;
    GraphRunner         dit_runner;
    EvalObserver        enc_observer;
    EvalObserver        dit_observer;
    EncIO               eio;
    DitIO               dio;
    // streaming (created at the first stream_start)
    // One encoder and one solver graph per chunk phase (prompt pass, first, second, later and
    // last windows): the cache lengths settle by the third window, so each phase's graph is
    // built once per voice prompt and kept across turns.
    static constexpr int kPhases = 5;
    struct Phase {
        std::unique_ptr<GraphRunner> enc, dit;
        EncChunkIO                   cio;
        DitSolveIO                   sio;
    };
    std::array<Phase, kPhases> phases;
    int phase(bool last) const { return last ? kPhases - 1 : std::min(st.chunks, kPhases - 2); }
    // the solver: several Euler steps per graph (offline; streaming on the estimator states)
    static constexpr int         kUnroll = 10;
    std::unique_ptr<GraphRunner> solve_runner, state_runner;   // state_runner: the estimator states only
    DitSolveIO          solve_io;
    int64_t             state_cap = 0;             // frames per estimator state slot
    int                 state_steps = 0;           // solver steps the states were made for
    struct Stream {
        bool                 active = false;
        int                  n_steps = 0;
        int64_t              prompt_frames = 0;    // mel frames of the prompt
        int64_t              past = 0;             // token frames in the conformer caches
        std::vector<float>   cnn1, cnn2;           // [2][E], [2 stride][E]
        std::vector<std::vector<float>> enc_k, enc_v;   // per layer [len][E]
        int                  chunks = 0;           // chunks through the estimator (the prompt pass first)
        int64_t              dit_len = 0;          // frames in each estimator cache (in the runner's states)
        std::vector<float>   spk80, spk_in;       // projected / as given
        std::vector<float>   noise;                // injected table [frames][n_mel], or empty
        uint64_t             seed = 0;
    } st;

    Impl(const FlowModel & model, const ComputeBackends & b, const DebugOptions & d)
        : m(model), hp(model.hp), enc_runner("flow-encoder", b, enc_nodes(model.hp)),
          dit_runner("flow-dit", b, dit_nodes(model.hp)), enc_observer("flow-encoder", d), dit_observer("flow-dit", d) {
        // 10 s of speech (250 tokens, 500 mel frames); longer inputs grow the buffers.
        enc_runner.reserve([&](ggml_context * ctx, ggml_cgraph * gf) { build_encoder(ctx, gf, m, eio, 250); },
                           "token2wav flow encoder compute buffers");
        dit_runner.reserve([&](ggml_context * ctx, ggml_cgraph * gf) { build_dit(ctx, gf, m, dio, 500); },
                           "token2wav flow estimator compute buffers");
        enc_observer.attach(enc_runner);
        dit_observer.attach(dit_runner);
    }

    // The sinusoid of TimestepEmbedder.timestep_embedding(t * scale): [cos | sin], float32.
    std::vector<float> t_freq(float t) const {
        const int64_t half = hp.t_freq / 2;
        const float ts = t * hp.t_scale;
        const float a = (float) -std::log((double) hp.t_max_period);
        std::vector<float> out((size_t) hp.t_freq);
        for (int64_t i = 0; i < half; ++i) {
            const float f = std::exp((float) i * a / (float) half);
            const float arg = ts * f;
            out[(size_t) i] = std::cos(arg);
            out[(size_t) (half + i)] = std::sin(arg);
        }
        return out;
    }

    // The estimator input [2][N][dit_in]: x | mu | spk | cond, then x | 0 | 0 | 0.
    std::vector<float> dit_input(const std::vector<float> & x, const std::vector<float> & mu,
                                 const std::vector<float> & spk, const std::vector<float> & cond, int64_t N) const {
        const int64_t M = hp.n_mel, C = hp.dit_in;
        std::vector<float> in((size_t) (2 * N * C), 0.0f);
        for (int64_t t = 0; t < N; ++t) {
            float * r0 = in.data() + t * C;
            float * r1 = in.data() + (N + t) * C;
            std::memcpy(r0, x.data() + t * M, (size_t) M * sizeof(float));
            std::memcpy(r0 + M, mu.data() + t * M, (size_t) M * sizeof(float));
            std::memcpy(r0 + 2 * M, spk.data(), (size_t) M * sizeof(float));
            std::memcpy(r0 + 3 * M, cond.data() + t * M, (size_t) M * sizeof(float));
            std::memcpy(r1, x.data() + t * M, (size_t) M * sizeof(float));
        }
        return in;
    }

    // The estimator inputs besides x, [2][N][dit_in - n_mel]: mu | spk | cond, then zeros.
    std::vector<float> solve_rest(const std::vector<float> & mu, const std::vector<float> & spk,
                                  const std::vector<float> & cond, int64_t N) const {
        const int64_t M = hp.n_mel, C = hp.dit_in - M;
        std::vector<float> in((size_t) (2 * N * C), 0.0f);
        for (int64_t t = 0; t < N; ++t) {
            float * r0 = in.data() + t * C;
            std::memcpy(r0, mu.data() + t * M, (size_t) M * sizeof(float));
            std::memcpy(r0 + M, spk.data(), (size_t) M * sizeof(float));
            std::memcpy(r0 + 2 * M, cond.data() + t * M, (size_t) M * sizeof(float));
        }
        return in;
    }

    // solve_euler over x [N][n_mel] (in place), kUnroll steps per graph; on the estimator
    // states (Lc frames in them) when streaming.
    void run_solve(GraphRunner & r, DitSolveIO & io, std::vector<float> & x, const std::vector<float> & rest, int64_t N,
                   int n_steps, const GraphRunner * states, int64_t Lc) {
        const bool stream = states != nullptr;
        const std::vector<float> span = time_span(n_steps);
        std::vector<float> ts, dts;   // t and dt of each step, accumulated as solve_euler does
        float t = span[0], dt = span[1] - span[0];
        for (int stp = 1; stp <= n_steps; ++stp) {
            ts.push_back(t);
            dts.push_back(dt);
            t = t + dt;
            if (stp < n_steps) dt = span[(size_t) stp + 1] - t;
        }
        for (int s0 = 0; s0 < n_steps; s0 += kUnroll) {
            const int u = std::min(kUnroll, n_steps - s0);
            DitStreamPlan plan;
            if (stream) {
                plan.k = states->state("dit_k");
                plan.v = states->state("dit_v");
                plan.c1 = states->state("dit_c1");
                plan.c2 = states->state("dit_c2");
                plan.first = s0;
                plan.Lc = Lc;
                plan.keep_head = st.prompt_frames;
                plan.keep_tail = hp.stream_history;
            }
            r.prepare({N, u, stream ? s0 : -1, stream ? Lc : -1, plan.keep_head},
                      [&](ggml_context * ctx, ggml_cgraph * gf) {
                          build_dit_solve(ctx, gf, m, io, N, u, stream ? &plan : nullptr);
                      });
            std::vector<float> tf;
            for (int i = 0; i < u; ++i) {
                const std::vector<float> f = t_freq(ts[(size_t) (s0 + i)]);
                tf.insert(tf.end(), f.begin(), f.end());
            }
            ggml_backend_tensor_set(io.x0, x.data(), 0, x.size() * sizeof(float));
            ggml_backend_tensor_set(io.rest, rest.data(), 0, rest.size() * sizeof(float));
            ggml_backend_tensor_set(io.t_freq, tf.data(), 0, tf.size() * sizeof(float));
            ggml_backend_tensor_set(io.dt, dts.data() + s0, 0, (size_t) u * sizeof(float));
            r.compute();
            ggml_backend_tensor_get(io.x, x.data(), 0, x.size() * sizeof(float));
        }
    }

    // The streaming solver's runner with estimator states for n_steps and `cap` frames.
    void stream_states(int n_steps, int64_t cap) {
        if (state_runner && state_steps == n_steps && state_cap == cap) return;
        for (Phase & p : phases) p.dit.reset();   // their graphs view the old states
        state_runner.reset();
        const int64_t inner = hp.dit_head * hp.dit_head_dim, km1 = hp.conv_kernel - 1;
        const int64_t slots = (int64_t) n_steps * hp.dit_depth;
        auto r = std::make_unique<GraphRunner>("flow-dit-states", dit_runner.backends(), 16);
        r->add_state("dit_k", GGML_TYPE_F32, {inner, cap, 2, slots});
        r->add_state("dit_v", GGML_TYPE_F32, {inner, cap, 2, slots});
        r->add_state("dit_c1", GGML_TYPE_F32, {hp.dit_embd, km1, 2, slots});
        r->add_state("dit_c2", GGML_TYPE_F32, {hp.dit_embd, km1, 2, slots});
        r->allocate_state();
        MINICPM_LOG_INFO("token2wav flow: streaming estimator cache %.1f MiB (%d steps, %lld frames)",
                         r->state_bytes() / 1048576.0, n_steps, (long long) cap);
        state_runner = std::move(r);
        state_steps = n_steps;
        state_cap = cap;
    }

    void run_dit(const std::vector<float> & in, int64_t N, float t, float dt) {
        dit_runner.prepare({N}, [&](ggml_context * ctx, ggml_cgraph * gf) { build_dit(ctx, gf, m, dio, N); });
        ggml_backend_tensor_set(dio.x, in.data(), 0, in.size() * sizeof(float));
        const std::vector<float> tf = t_freq(t);
        ggml_backend_tensor_set(dio.t_freq, tf.data(), 0, tf.size() * sizeof(float));
        ggml_backend_tensor_set(dio.dt, &dt, 0, sizeof(float));
        dit_runner.compute();
        dit_observer.finish();
    }

    std::vector<float> enc_chunk(const std::vector<int32_t> & tokens, bool last, const std::vector<float> & spk);
    std::vector<float> dit_chunk(const std::vector<float> & mu, const std::vector<float> & cond, bool last);
    void               trim();

    void check_frames(const std::vector<float> & v, int64_t N, const char * what) const {
        if ((int64_t) v.size() != N * hp.n_mel) {
            fail(ErrorKind::InvalidArgument, std::string("token2wav flow: ") + what + " must hold " +
                                                 std::to_string(N) + " frames of " + std::to_string(hp.n_mel) +
                                                 " values, got " + std::to_string(v.size()) + " values");
        }
    }
};

// ---- streaming (CausalMaskedDiffWithXvec.setup_cache / inference_chunk, Token2wav.stream) -------

namespace {

void set_input(ggml_tensor * t, const std::vector<float> & v) {
    if (t) ggml_backend_tensor_set(t, v.data(), 0, v.size() * sizeof(float));
}

std::vector<float> get_output(const ggml_tensor * t) {
    std::vector<float> v((size_t) ggml_nelements(t));
    ggml_backend_tensor_get(t, v.data(), 0, v.size() * sizeof(float));
    return v;
}

// Frames [0, keep_head) and [len - keep_tail, len) of each of `batch` blocks of [len][width].
std::vector<float> keep_ends(const std::vector<float> & v, int64_t batch, int64_t len, int64_t width, int64_t head,
                             int64_t tail) {
    std::vector<float> out;
    out.reserve((size_t) (batch * (head + tail) * width));
    for (int64_t b = 0; b < batch; ++b) {
        const float * base = v.data() + b * len * width;
        out.insert(out.end(), base, base + head * width);
        out.insert(out.end(), base + (len - tail) * width, base + len * width);
    }
    return out;
}

} // namespace

std::vector<float> FlowRunner::Impl::enc_chunk(const std::vector<int32_t> & tokens, bool last,
                                               const std::vector<float> & spk) {
    const int64_t n_in = (int64_t) tokens.size(), past = st.past;
    const int64_t T1 = last ? n_in : n_in - hp.lookahead, L1 = past + T1;
    Phase & ph = phases[(size_t) phase(last)];
    if (!ph.enc) ph.enc = std::make_unique<GraphRunner>("flow-encoder-stream", dit_runner.backends(), enc_nodes(hp) * 2);
    EncChunkIO & cio = ph.cio;
    ph.enc->prepare({n_in, last ? 1 : 0, past}, [&](ggml_context * ctx, ggml_cgraph * gf) {
        build_encoder_chunk(ctx, gf, m, cio, n_in, last, past);
    });
    ggml_backend_tensor_set(cio.tokens, tokens.data(), 0, tokens.size() * sizeof(int32_t));
    set_input(cio.pos1, rel_pos_table(hp, L1));
    set_input(cio.pos2, rel_pos_table(hp, hp.up_stride * L1));
    set_input(cio.spk, spk);
    if (past > 0) {
        set_input(cio.cnn1, st.cnn1);
        set_input(cio.cnn2, st.cnn2);
        for (size_t il = 0; il < cio.layers.size(); ++il) {
            set_input(cio.layers[il].kc, st.enc_k[il]);
            set_input(cio.layers[il].vc, st.enc_v[il]);
        }
    }
    ph.enc->compute();
    st.spk80 = get_output(cio.spk_out);
    if (cio.cnn1_out) st.cnn1 = get_output(cio.cnn1_out);
    st.cnn2 = get_output(cio.cnn2_out);
    st.enc_k.resize(cio.layers.size());
    st.enc_v.resize(cio.layers.size());
    for (size_t il = 0; il < cio.layers.size(); ++il) {
        st.enc_k[il] = get_output(cio.layers[il].k);
        st.enc_v[il] = get_output(cio.layers[il].v);
    }
    st.past = L1;
    return get_output(cio.mu);
}

std::vector<float> FlowRunner::Impl::dit_chunk(const std::vector<float> & mu, const std::vector<float> & cond, bool last) {
    const int64_t M = hp.n_mel, N = (int64_t) (mu.size() / (size_t) M), Lc = st.dit_len;
    // CausalConditionalCFM.forward_chunk: noise from the frame offset = the cache length
    std::vector<float> z;
    if (!st.noise.empty()) {
        if ((int64_t) (st.noise.size() / (size_t) M) < Lc + N) {
            fail(ErrorKind::InvalidArgument, "token2wav flow stream: the noise table has " +
                                                 std::to_string(st.noise.size() / (size_t) M) + " frames, this chunk needs " +
                                                 std::to_string(Lc + N));
        }
        z.assign(st.noise.begin() + Lc * M, st.noise.begin() + (Lc + N) * M);
    } else {
        z = noise_rows(M, Lc, N, st.seed);
    }
    std::vector<float> x(z.size());
    for (size_t i = 0; i < x.size(); ++i) x[i] = z[i] * hp.temperature;
    Phase & ph = phases[(size_t) phase(last)];
    if (!ph.dit) ph.dit = std::make_unique<GraphRunner>("flow-dit-stream", dit_runner.backends(), solve_nodes(hp, kUnroll));
    run_solve(*ph.dit, ph.sio, x, solve_rest(mu, st.spk80, cond, N), N, st.n_steps, state_runner.get(), Lc);
    ++st.chunks;
    // the states now hold the chunk's frames and the cached ones, cut as _trim_estimator_cache
    st.dit_len = std::min(Lc + N, st.prompt_frames + hp.stream_history);
    return x;
}

// Token2wav._trim_estimator_cache / _trim_conformer_cache: past prompt + history frames, keep
// the prompt's count of leading frames and the last `history` (the estimator's cache is in the
// reference's order, newest chunk first, and is cut the same way).
void FlowRunner::Impl::trim() {
    const int64_t P = st.prompt_frames, Hh = hp.stream_history;
    const int64_t E = hp.n_embd, s = hp.up_stride;
    if (s * st.past > P + Hh) {
        const int64_t head1 = P / s, tail1 = Hh / s;
        for (size_t il = 0; il < st.enc_k.size(); ++il) {
            const bool token_rate = (int64_t) il < hp.n_blocks;
            const int64_t len = token_rate ? st.past : s * st.past;
            const int64_t head = token_rate ? head1 : P, tail = token_rate ? tail1 : Hh;
            st.enc_k[il] = keep_ends(st.enc_k[il], 1, len, E, head, tail);
            st.enc_v[il] = keep_ends(st.enc_v[il], 1, len, E, head, tail);
        }
        st.past = head1 + tail1;
    }
}

FlowRunner::FlowRunner(const FlowModel & model, const ComputeBackends & backends, const DebugOptions & debug)
    : impl_(std::make_unique<Impl>(model, backends, debug)) {}

FlowRunner::~FlowRunner() = default;

const FlowHparams & FlowRunner::hparams() const { return impl_->hp; }

std::vector<float> FlowRunner::encode(const std::vector<int32_t> & tokens, const std::vector<float> & spk,
                                      std::vector<float> * spk_out) {
    Impl & s = *impl_;
    const FlowHparams & hp = s.hp;
    const int64_t n = (int64_t) tokens.size();
    if (n == 0) fail(ErrorKind::InvalidArgument, "token2wav flow: no speech tokens");
    if (n * hp.up_stride > hp.max_frames) {
        fail(ErrorKind::InvalidArgument, "token2wav flow: " + std::to_string(n) + " speech tokens give more than " +
                                             std::to_string(hp.max_frames) + " mel frames (the reference's limit)");
    }
    for (size_t i = 0; i < tokens.size(); ++i) {
        if (tokens[i] < 0 || tokens[i] >= hp.n_vocab) {
            fail(ErrorKind::InvalidArgument, "token2wav flow: speech token " + std::to_string(tokens[i]) + " at " +
                                                 std::to_string(i) + " is out of range [0, " +
                                                 std::to_string(hp.n_vocab - 1) + "]");
        }
    }
    std::vector<float> spk_in = spk;
    if (spk_in.empty()) spk_in.assign((size_t) hp.n_spk, 0.0f);
    if ((int64_t) spk_in.size() != hp.n_spk) {
        fail(ErrorKind::InvalidArgument, "token2wav flow: the speaker vector must have " + std::to_string(hp.n_spk) +
                                             " values, got " + std::to_string(spk_in.size()));
    }
    for (float v : spk_in) {
        if (!std::isfinite(v)) fail(ErrorKind::InvalidArgument, "token2wav flow: the speaker vector is not finite");
    }
    s.enc_runner.prepare({n}, [&](ggml_context * ctx, ggml_cgraph * gf) { build_encoder(ctx, gf, s.m, s.eio, n); });
    ggml_backend_tensor_set(s.eio.tokens, tokens.data(), 0, tokens.size() * sizeof(int32_t));
    const std::vector<float> p1 = rel_pos_table(hp, n), p2 = rel_pos_table(hp, hp.up_stride * n);
    ggml_backend_tensor_set(s.eio.pos1, p1.data(), 0, p1.size() * sizeof(float));
    ggml_backend_tensor_set(s.eio.pos2, p2.data(), 0, p2.size() * sizeof(float));
    ggml_backend_tensor_set(s.eio.spk, spk_in.data(), 0, spk_in.size() * sizeof(float));
    s.enc_runner.compute();
    s.enc_observer.finish();
    std::vector<float> mu((size_t) (hp.n_mel * hp.up_stride * n));
    ggml_backend_tensor_get(s.eio.mu, mu.data(), 0, mu.size() * sizeof(float));
    if (spk_out) {
        spk_out->resize((size_t) hp.n_mel);
        ggml_backend_tensor_get(s.eio.spk_out, spk_out->data(), 0, spk_out->size() * sizeof(float));
    }
    return mu;
}

std::vector<float> FlowRunner::dit(const std::vector<float> & x, const std::vector<float> & mu,
                                   const std::vector<float> & spk, const std::vector<float> & cond, float t) {
    Impl & s = *impl_;
    const int64_t N = (int64_t) (x.size() / (size_t) s.hp.n_mel);
    if (N <= 0) fail(ErrorKind::InvalidArgument, "token2wav flow: no frames");
    if (N > s.hp.max_frames) fail(ErrorKind::InvalidArgument, "token2wav flow: more frames than the model's limit");
    s.check_frames(x, N, "x");
    s.check_frames(mu, N, "mu");
    s.check_frames(cond, N, "cond");
    s.check_frames(spk, 1, "spk");
    if (!std::isfinite(t)) fail(ErrorKind::InvalidArgument, "token2wav flow: t is not finite");
    s.run_dit(s.dit_input(x, mu, spk, cond, N), N, t, 0.0f);
    std::vector<float> out((size_t) (2 * N * s.hp.n_mel));
    ggml_backend_tensor_get(s.dio.v, out.data(), 0, out.size() * sizeof(float));
    return out;
}

std::vector<float> FlowRunner::solve(const std::vector<float> & noise, const std::vector<float> & mu,
                                     const std::vector<float> & spk, const std::vector<float> & cond, int n_steps) {
    Impl & s = *impl_;
    const FlowHparams & hp = s.hp;
    if (n_steps <= 0 || n_steps > 1000) {
        fail(ErrorKind::InvalidArgument, "token2wav flow: n_timesteps must be in [1, 1000], got " + std::to_string(n_steps));
    }
    const int64_t N = (int64_t) (mu.size() / (size_t) hp.n_mel);
    if (N <= 0) fail(ErrorKind::InvalidArgument, "token2wav flow: no frames");
    if (N > hp.max_frames) fail(ErrorKind::InvalidArgument, "token2wav flow: more frames than the model's limit");
    s.check_frames(mu, N, "mu");
    s.check_frames(noise, N, "noise");
    s.check_frames(cond, N, "cond");
    s.check_frames(spk, 1, "spk");
    std::vector<float> x(noise.size());
    for (size_t i = 0; i < x.size(); ++i) x[i] = noise[i] * hp.temperature;
    if (!s.solve_runner) {
        s.solve_runner = std::make_unique<GraphRunner>("flow-solve", s.dit_runner.backends(),
                                                       solve_nodes(hp, Impl::kUnroll));
    }
    s.run_solve(*s.solve_runner, s.solve_io, x, s.solve_rest(mu, spk, cond, N), N, n_steps, nullptr, 0);
    return x;
}

void FlowRunner::stream_start(const FlowPrompt & prompt, int n_steps, const std::vector<float> * noise, uint64_t seed) {
    Impl & s = *impl_;
    const FlowHparams & hp = s.hp;
    const int64_t M = hp.n_mel, la = hp.lookahead, Tp = (int64_t) prompt.tokens.size();
    if (n_steps <= 0 || n_steps > 1000) {
        fail(ErrorKind::InvalidArgument, "token2wav flow: n_timesteps must be in [1, 1000], got " + std::to_string(n_steps));
    }
    if (Tp < la) {
        fail(ErrorKind::InvalidArgument, "token2wav flow stream: the prompt needs at least " + std::to_string(la) +
                                             " speech tokens (its first ones are the look-ahead of the prompt pass)");
    }
    if ((int64_t) prompt.mel.size() != hp.up_stride * Tp * M) {
        fail(ErrorKind::InvalidArgument, "token2wav flow stream: the prompt mel must have " +
                                             std::to_string(hp.up_stride * Tp) + " frames (" +
                                             std::to_string(hp.up_stride) + " per prompt token), got " +
                                             std::to_string(prompt.mel.size() / (size_t) M));
    }
    for (float v : prompt.mel) {
        if (!std::isfinite(v)) fail(ErrorKind::InvalidArgument, "token2wav flow: the prompt mel is not finite");
    }
    if (noise && (noise->empty() || noise->size() % (size_t) M)) {
        fail(ErrorKind::InvalidArgument, "token2wav flow stream: the noise must be [frames][" + std::to_string(M) + "]");
    }
    std::vector<int32_t> tokens = prompt.tokens;
    tokens.insert(tokens.end(), prompt.tokens.begin(), prompt.tokens.begin() + la);
    for (int32_t t : tokens) {
        if (t < 0 || t >= hp.n_vocab) fail(ErrorKind::InvalidArgument, "token2wav flow: prompt speech token out of range");
    }
    std::vector<float> spk = prompt.spk;
    if ((int64_t) spk.size() != hp.n_spk) {
        fail(ErrorKind::InvalidArgument, "token2wav flow: the speaker vector must have " + std::to_string(hp.n_spk) + " values");
    }
    s.st = Impl::Stream{};
    s.st.n_steps = n_steps;
    s.st.seed = seed;
    if (noise) s.st.noise = *noise;
    s.st.prompt_frames = hp.up_stride * Tp;
    try {
        s.stream_states(n_steps, s.st.prompt_frames + hp.stream_history);
        const std::vector<float> mu = s.enc_chunk(tokens, /*last=*/false, spk);
        s.dit_chunk(mu, prompt.mel, /*last=*/false);
    } catch (...) {
        s.st = Impl::Stream{};
        throw;
    }
    s.st.spk_in = spk;
    s.st.active = true;
}

std::vector<float> FlowRunner::stream_push(const std::vector<int32_t> & tokens, bool last) {
    Impl & s = *impl_;
    const FlowHparams & hp = s.hp;
    if (!s.st.active) fail(ErrorKind::InvalidArgument, "token2wav flow stream: call stream_start (set_prompt) first");
    const int64_t n = (int64_t) tokens.size();
    if (n == 0 && last) return {};
    if (!last && n < hp.lookahead + 2) {
        fail(ErrorKind::InvalidArgument, "token2wav flow stream: a chunk that is not the last needs at least 2 new tokens "
                                         "plus " + std::to_string(hp.lookahead) + " look-ahead tokens, got " + std::to_string(n));
    }
    if (n > hp.max_frames / hp.up_stride) fail(ErrorKind::InvalidArgument, "token2wav flow stream: chunk too long");
    for (size_t i = 0; i < tokens.size(); ++i) {
        if (tokens[i] < 0 || tokens[i] >= hp.n_vocab) {
            fail(ErrorKind::InvalidArgument, "token2wav flow: speech token " + std::to_string(tokens[i]) +
                                                 " is out of range [0, " + std::to_string(hp.n_vocab - 1) + "]");
        }
    }
    const int64_t N = hp.up_stride * (last ? n : n - hp.lookahead);
    if (!s.st.noise.empty() && (int64_t) (s.st.noise.size() / (size_t) hp.n_mel) < s.st.dit_len + N) {
        fail(ErrorKind::InvalidArgument, "token2wav flow stream: the noise table has " +
                                             std::to_string(s.st.noise.size() / (size_t) hp.n_mel) +
                                             " frames, this chunk needs " + std::to_string(s.st.dit_len + N));
    }
    const std::vector<float> mu = s.enc_chunk(tokens, last, s.st.spk_in);
    const std::vector<float> cond(mu.size(), 0.0f);
    std::vector<float> x = s.dit_chunk(mu, cond, last);
    s.trim();
    return x;
}

std::pair<int64_t, int64_t> FlowRunner::stream_frames() const {
    return impl_->st.active ? std::make_pair(impl_->st.past, impl_->st.dit_len) : std::make_pair<int64_t, int64_t>(0, 0);
}

std::vector<float> FlowRunner::default_noise(int64_t first, int64_t n, uint64_t seed) const {
    return noise_rows(impl_->hp.n_mel, first, n, seed);
}

std::vector<float> FlowRunner::flow_mel(const std::vector<int32_t> & tokens, const FlowPrompt & prompt, int n_steps,
                                        const std::vector<float> * noise, uint64_t seed) {
    const FlowHparams & hp = impl_->hp;
    const int64_t M = hp.n_mel;
    if (tokens.empty()) fail(ErrorKind::InvalidArgument, "token2wav flow: no speech tokens to synthesise");
    if (n_steps <= 0 || n_steps > 1000) {
        fail(ErrorKind::InvalidArgument, "token2wav flow: n_timesteps must be in [1, 1000], got " + std::to_string(n_steps));
    }
    if (prompt.mel.size() % (size_t) M) {
        fail(ErrorKind::InvalidArgument, "token2wav flow: the prompt mel must be [frames][" + std::to_string(M) + "]");
    }
    std::vector<int32_t> all = prompt.tokens;
    all.insert(all.end(), tokens.begin(), tokens.end());
    const int64_t N = hp.up_stride * (int64_t) all.size();
    const int64_t n_pm = (int64_t) (prompt.mel.size() / (size_t) M);
    if (n_pm > N) {
        fail(ErrorKind::InvalidArgument, "token2wav flow: the prompt mel has " + std::to_string(n_pm) +
                                             " frames, more than the " + std::to_string(N) + " of all tokens");
    }
    for (float v : prompt.mel) {
        if (!std::isfinite(v)) fail(ErrorKind::InvalidArgument, "token2wav flow: the prompt mel is not finite");
    }
    std::vector<float> spk80;
    const std::vector<float> mu = encode(all, prompt.spk, &spk80);
    std::vector<float> cond((size_t) (N * M), 0.0f);
    std::copy(prompt.mel.begin(), prompt.mel.end(), cond.begin());
    std::vector<float> z;
    if (noise) {
        if ((int64_t) noise->size() < N * M || noise->size() % (size_t) M) {
            fail(ErrorKind::InvalidArgument, "token2wav flow: the noise must be [>= " + std::to_string(N) + "][" +
                                                 std::to_string(M) + "] (total frames), got " +
                                                 std::to_string(noise->size()) + " values");
        }
        z.assign(noise->begin(), noise->begin() + N * M);
    } else {
        z = default_noise(0, N, seed);
    }
    std::vector<float> x = solve(z, mu, spk80, cond, n_steps);
    return std::vector<float>(x.begin() + n_pm * M, x.end());
}

} // namespace minicpm
