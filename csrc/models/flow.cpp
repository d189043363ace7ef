// Token2Wav flow matching: hyperparameters, weights (ours and llama.cpp-omni's files); the run
// time is flow_runner.cpp, the graphs flow_enc.cpp and flow_dit.cpp.
// Mirrors CausalMaskedDiffWithXvec.inference (stepaudio2/cosyvoice2/flow/flow.py) and what it
// calls; see tests/test_t2w_flow.py for the stage-by-stage parity against those classes.
#include "flow.h"
#include "models/flow_graph.h"

#include "core/cpu_ops.h"
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

namespace {

bool float_type(ggml_type t) { return t == GGML_TYPE_F32 || t == GGML_TYPE_F16 || t == GGML_TYPE_BF16; }

// The lean estimator's F32 matrices, computed at load from the file's (any float type): Q|K|V
// rows back to back in one matrix (and their biases), o / up / down and the two convolution
// kernels as F32. False (nothing changed) when a matrix is quantized.
bool derive_lean(WeightStore & s, FlowWeights & w, const FlowHparams & hp) {
    for (const FlowDitBlock & B : w.dit) {
        for (const ggml_tensor * t : {B.q_w, B.k_w, B.v_w, B.o_w, B.up_w, B.down_w, B.conv1_w, B.conv2_w, B.q_b, B.k_b, B.v_b}) {
            if (!t || !float_type(t->type)) return false;
        }
    }
    const int64_t D = hp.dit_embd, inner = hp.dit_head * hp.dit_head_dim;
    auto concat = [&s](std::vector<const ggml_tensor *> parts) {
        return [&s, parts](uint8_t * d) {
            for (const ggml_tensor * t : parts) {
                const std::vector<float> f = s.read_f32(t);
                std::memcpy(d, f.data(), f.size() * sizeof(float));
                d += f.size() * sizeof(float);
            }
        };
    };
    for (size_t il = 0; il < w.dit.size(); ++il) {
        FlowDitBlock & B = w.dit[il];
        const std::string p = "flow.dit." + std::to_string(il);
        B.qkv_w = s.derived(p + ".attn_qkv.f32", GGML_TYPE_F32, {D, 3 * inner}, concat({B.q_w, B.k_w, B.v_w}));
        B.qkv_b = s.derived(p + ".attn_qkv_b.f32", GGML_TYPE_F32, {3 * inner}, concat({B.q_b, B.k_b, B.v_b}));
        auto heads = [&s, H = hp.dit_head](const ggml_tensor * q, const ggml_tensor * k) {
            return [&s, q, k, H](uint8_t * d) {
                for (const ggml_tensor * t : {q, k}) {
                    const std::vector<float> f = s.read_f32(t);
                    for (int64_t h = 0; h < H; ++h, d += f.size() * sizeof(float)) std::memcpy(d, f.data(), f.size() * sizeof(float));
                }
            };
        };
        if (float_type(B.q_norm_w->type) && float_type(B.k_norm_w->type) && float_type(B.q_norm_b->type) &&
            float_type(B.k_norm_b->type)) {
            const int64_t hd = hp.dit_head_dim, H2 = 2 * hp.dit_head;
            B.qk_norm_w = s.derived(p + ".attn_qk_norm.f32", GGML_TYPE_F32, {hd, H2}, heads(B.q_norm_w, B.k_norm_w));
            B.qk_norm_b = s.derived(p + ".attn_qk_norm_b.f32", GGML_TYPE_F32, {hd, H2}, heads(B.q_norm_b, B.k_norm_b));
        }
        for (ggml_tensor * t : {B.q_w, B.k_w, B.v_w}) s.drop(t);
        B.q_w = B.k_w = B.v_w = nullptr;
        for (ggml_tensor ** t : {&B.o_w, &B.up_w, &B.down_w, &B.conv1_w, &B.conv2_w}) {
            ggml_tensor * src = *t;
            if (src->type == GGML_TYPE_F32) continue;   // (llama.cpp-omni's kernels: F32 copies already)
            *t = s.derived(p + "." + ggml_get_name(src) + ".f32", GGML_TYPE_F32, {src->ne[0], src->ne[1], src->ne[2]},
                           concat({src}));
            s.drop(src);
        }
    }
    return true;
}

// The K/V type of the lean estimator's flash attention (see FlowModel::flash_kv).
ggml_type flash_kv_type(const Devices & devices, const FlowHparams & hp) {
    std::vector<uint8_t> buf(8 * ggml_tensor_overhead());
    ggml_init_params ip = {buf.size(), buf.data(), true};
    ggml_context * ctx = ggml_init(ip);
    ggml_type out = GGML_TYPE_COUNT;
    for (ggml_type t : {GGML_TYPE_F32, GGML_TYPE_F16}) {
        ggml_tensor * q = ggml_new_tensor_4d(ctx, GGML_TYPE_F32, hp.dit_head_dim, 56, hp.dit_head, 2);
        ggml_tensor * k = ggml_new_tensor_4d(ctx, t, hp.dit_head_dim, 200, hp.dit_head, 2);
        ggml_tensor * v = ggml_new_tensor_4d(ctx, t, hp.dit_head_dim, 200, hp.dit_head, 2);
        ggml_tensor * o = ggml_flash_attn_ext(ctx, q, k, v, nullptr, 0.125f, 0.0f, 0.0f);
        graph::set_prec_f32(o);
        if (devices.supports_op(o)) {
            out = t;
            break;
        }
    }
    ggml_free(ctx);
    return out;
}

void set_lean(FlowModel & m, const ComponentLoad & in) {
    m.lean = in.params.flow_lean.value_or(true) && derive_lean(*m.store, m.w, m.hp);
    // On a CPU with the library's kernels (core/cpu_ops.h) the plain products of the scores
    // and values are faster than ggml's CPU flash attention (one dot product per query and key):
    // ~12 % of a streaming window on a 2-core AVX2 machine.
    const bool plain_attention = in.devices.main_is_cpu() && cpu_ops::available();
    if (m.lean && !plain_attention) m.flash_kv = flash_kv_type(in.devices, m.hp);
    m.gelu_op = m.lean && !in.devices.main_is_cpu();
}

} // namespace

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
    m.store = std::make_unique<WeightStore>(in.file, in.devices, (size_t) (m.hp.dit_depth * 35 + 16));
    const FlowOmniStores stores{m.omni_stores[0].get(), m.store.get(), m.omni_stores[1].get()};
    m.w = FlowWeights::declare(*m.store, m.hp, &stores);
    set_lean(m, in);
    for (auto & s : m.omni_stores) s->load();
    m.store->load();
}

std::unique_ptr<Component> flow_load(const ComponentLoad & in) {
    auto m = std::make_unique<FlowModel>();
    if (is_omni_flow_file(in.file)) {
        load_omni(*m, in);
    } else {
        m->hp = FlowHparams::from_gguf(in.file);
        const size_t n_tensors = (size_t) ((m->hp.n_blocks + m->hp.n_up_blocks) * 20 + m->hp.dit_depth * 31 + 48);
        m->store = std::make_unique<WeightStore>(in.file, in.devices, n_tensors);
        m->w = FlowWeights::declare(*m->store, m->hp);
        set_lean(*m, in);
        m->store->load();
    }
    MINICPM_LOG_INFO("token2wav flow: encoder %lld+%lld layers x %lld, DiT %lld blocks x %lld%s, %lld steps, cfg %.2f%s",
                     (long long) m->hp.n_blocks, (long long) m->hp.n_up_blocks, (long long) m->hp.n_embd,
                     (long long) m->hp.dit_depth, (long long) m->hp.dit_embd, m->lean ? " (lean GPU graph)" : "",
                     (long long) m->hp.n_timesteps,
                     m->hp.cfg_rate, m->hp.omni_layout ? " (llama.cpp-omni token2wav-gguf files)" : "");
    return m;
}

} // namespace

const ComponentType kFlowComponent = {"flow", &flow_present, &flow_load};

} // namespace minicpm
