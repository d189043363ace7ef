// Token2Wav's flow-matching model of MiniCPM-o 4.5: speech tokens -> 80-bin log-mel at 50 Hz.
// Mirrors minicpmo-utils 1.0.7 stepaudio2.cosyvoice2: CausalMaskedDiffWithXvec.inference
// (flow.py), UpsampleConformerEncoderV2.forward (upsample_encoder_v2.py, with the ESPnet
// relative-position attention of attention.py), DiT.forward (decoder_dit.py) and
// CausalConditionalCFM.forward / solve_euler (flow_matching.py): the whole-utterance path.
// Host arrays are frames-major: [frames][channels] row-major, which is ggml's [channels, frames].
#pragma once

#include "core/backend.h"
#include "core/component.h"
#include "core/debug.h"
#include "core/gguf_file.h"
#include "core/runner.h"
#include "core/weights.h"

#include "ggml.h"

#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

namespace minicpm {

struct FlowHparams {
    int64_t n_vocab = 0;      // speech codes (6561)
    int64_t n_in = 0;         // token embedding width (512)
    int64_t n_mel = 0;        // output_size (80)
    int64_t n_spk = 0;        // speaker vector (192)
    float   spk_eps = 0;      // F.normalize
    // encoder
    int64_t n_embd = 0;       // 512
    int64_t n_head = 0;       // 8
    int64_t n_ff = 0;         // 2048
    int64_t n_blocks = 0;     // token-rate layers (6)
    int64_t n_up_blocks = 0;  // mel-rate layers (4)
    int64_t lookahead = 0;    // 3
    int64_t up_stride = 0;    // 2 (= mel frames per token)
    bool    key_bias = true;
    float   embed_eps = 0, layer_eps = 0, out_eps = 0, pos_base = 0, lrelu_slope = 0;
    // DiT
    int64_t dit_in = 0;       // 4 * n_mel
    int64_t dit_out = 0;      // n_mel
    int64_t dit_embd = 0;     // 512
    int64_t dit_depth = 0;    // 16
    int64_t dit_head = 0;     // 8
    int64_t dit_head_dim = 0; // 64
    int64_t dit_ff = 0;       // 2048
    int64_t conv_kernel = 0;  // 3
    float   dit_eps = 0, qk_eps = 0, conv_eps = 0;
    int64_t t_freq = 0;       // 256
    float   t_scale = 0, t_max_period = 0;
    // CFM
    float   cfg_rate = 0;
    float   temperature = 1;
    int64_t n_timesteps = 0;  // default Euler steps
    int64_t max_frames = 0;   // longest mel of one call (the reference's noise buffer)
    int64_t stream_history = 0; // mel frames kept past the prompt in the streaming caches
    bool    omni_layout = false;  // llama.cpp-omni's token2wav-gguf files (see from_omni)

    static FlowHparams from_gguf(const GgufFile & f);
    // llama.cpp-omni's encoder.gguf, flow_matching.gguf and flow_extra.gguf (no hyperparameter
    // metadata: widths, depths and heads from the tensor shapes, the rest the release's fixed
    // values, as llama.cpp-omni's token2wav-impl.cpp hard-codes them).
    static FlowHparams from_omni(const GgufFile & enc, const GgufFile & dit, const GgufFile & extra);
};

// llama.cpp-omni's token2wav-gguf/flow_matching.gguf (the DiT estimator, `estimator.*` tensors);
// its encoder.gguf / flow_extra.gguf siblings are read from the same folder.
bool is_omni_flow_file(const GgufFile & f);
// encoder.gguf or flow_extra.gguf of that folder (read through flow_matching.gguf).
bool is_omni_flow_part(const GgufFile & f);

// The stores of llama.cpp-omni's three files, one per file.
struct FlowOmniStores {
    WeightStore * enc;
    WeightStore * dit;
    WeightStore * extra;
};

struct FlowEncLayer {
    ggml_tensor * attn_norm_w, * attn_norm_b;
    ggml_tensor * q_w, * q_b, * k_w, * k_b, * v_w, * v_b, * o_w, * o_b, * pos_w, * pos_u, * pos_v;
    ggml_tensor * ffn_norm_w, * ffn_norm_b, * up_w, * up_b, * down_w, * down_b;
};

struct FlowDitBlock {
    ggml_tensor * adaln_w, * adaln_b;
    ggml_tensor * q_w, * q_b, * k_w, * k_b, * v_w, * v_b, * q_norm_w, * q_norm_b, * k_norm_w, * k_norm_b;
    ggml_tensor * o_w, * o_b;
    ggml_tensor * conv1_w, * conv1_b, * conv_norm_w, * conv_norm_b, * conv2_w, * conv2_b;
    ggml_tensor * up_w, * up_b, * down_w, * down_b;
    // The GPU graph (FlowModel::lean): Q|K|V as one F32 matrix [D, 3 inner] with its bias, and
    // F32 copies of o / up / down / conv1 / conv2 in place of the file's (null otherwise).
    ggml_tensor * qkv_w = nullptr, * qkv_b = nullptr;
    // ... and the Q and K LayerNorms as one over 2H heads: [hd, 2H] scale and shift.
    ggml_tensor * qk_norm_w = nullptr, * qk_norm_b = nullptr;
};

struct FlowWeights {
    ggml_tensor * tok_embd = nullptr;
    ggml_tensor * spk_w = nullptr, * spk_b = nullptr, * proj_w = nullptr, * proj_b = nullptr;
    ggml_tensor * embd_w = nullptr, * embd_b = nullptr, * embd_norm_w = nullptr, * embd_norm_b = nullptr;
    ggml_tensor * la1_w = nullptr, * la1_b = nullptr, * la2_w = nullptr, * la2_b = nullptr;
    std::vector<FlowEncLayer> enc;   // n_blocks token-rate layers, then n_up_blocks
    ggml_tensor * up_conv_w = nullptr, * up_conv_b = nullptr;
    ggml_tensor * up_embd_w = nullptr, * up_embd_b = nullptr, * up_embd_norm_w = nullptr, * up_embd_norm_b = nullptr;
    ggml_tensor * out_norm_w = nullptr, * out_norm_b = nullptr;
    ggml_tensor * t1_w = nullptr, * t1_b = nullptr, * t2_w = nullptr, * t2_b = nullptr;
    ggml_tensor * in_proj_w = nullptr, * in_proj_b = nullptr;
    std::vector<FlowDitBlock> dit;
    ggml_tensor * final_adaln_w = nullptr, * final_adaln_b = nullptr, * final_w = nullptr, * final_b = nullptr;

    static FlowWeights declare(WeightStore & store, const FlowHparams & hp, const FlowOmniStores * omni = nullptr);
};

// The flow component (read-only, shared by sessions).
class FlowModel : public Component {
public:
    const char * kind() const override { return "flow"; }
    size_t       weight_bytes() const override;

    FlowHparams                  hp;
    FlowWeights                  w;
    // llama.cpp-omni's layout: the sibling files (encoder.gguf, flow_extra.gguf), then the stores
    // of encoder, flow_extra (the files outlive their stores).
    std::vector<std::unique_ptr<GgufFile>>    omni_files;
    std::vector<std::unique_ptr<WeightStore>> omni_stores;
    std::unique_ptr<WeightStore> store;
    // The estimator graph with fewer, larger kernels (a GPU's streaming window is bound by its
    // count of small kernels, benchmarks/RESULTS.md): F32 copies of the matrices (one cuBLAS
    // product each on CUDA, no F16 conversions; on the CPU ggml's F32 products beat its F16 ones
    // and keep the activations in F32), one Q|K|V product, one LayerNorm for Q and K, flash
    // attention, and on GPUs ggml's tanh GELU. On by default; ModelParams::flow_lean = false
    // gives the file's matrices in the reference's order of operations.
    bool lean = false;
    // The lean graph's flash attention K/V type (F32 where the device takes it, else F16), or
    // GGML_TYPE_COUNT: none (the products and softmax; on a CPU with core/cpu_ops.h's kernels,
    // where those products are faster than ggml's CPU flash attention).
    ggml_type flash_kv = GGML_TYPE_COUNT;
    // ggml_gelu for the MLP's tanh GELU (not on the CPU, whose ggml_gelu reads a float16 table).
    bool gelu_op = false;
};

extern const ComponentType kFlowComponent;

// The speaker / prompt part of one flow call (a Voice's contents).
struct FlowPrompt {
    std::vector<int32_t> tokens;   // prompt speech tokens
    std::vector<float>   mel;      // [n_mel_frames][n_mel] prompt mel (cond), may be empty
    std::vector<float>   spk;      // [n_spk] speaker vector (CAM++)
};

// The compute state of the flow model for one owner (a session): its runners. Not thread-safe.
class FlowRunner {
public:
    FlowRunner(const FlowModel & model, const ComputeBackends & backends, const DebugOptions & debug = {});
    ~FlowRunner();

    const FlowHparams & hparams() const;

    // The encoder on `tokens` (each in [0, n_vocab)): mu [up_stride * n][n_mel]; `spk_out`, when
    // given a speaker vector `spk` [n_spk], receives its projection [n_mel] (F.normalize, Linear).
    std::vector<float> encode(const std::vector<int32_t> & tokens, const std::vector<float> & spk = {},
                              std::vector<float> * spk_out = nullptr);

    // One estimator evaluation on the CFG batch of two (conditional: x, mu, spk, cond;
    // unconditional: x and zeros) at time t: x, mu, cond [n][n_mel], spk [n_mel] (projected).
    // Returns [2][n][n_mel] (conditional first).
    std::vector<float> dit(const std::vector<float> & x, const std::vector<float> & mu, const std::vector<float> & spk,
                           const std::vector<float> & cond, float t);

    // The Euler solve of CausalConditionalCFM.forward: noise [n][n_mel] (before the temperature),
    // cosine time grid over n_steps, guidance with the model's cfg rate. Returns x [n][n_mel].
    std::vector<float> solve(const std::vector<float> & noise, const std::vector<float> & mu,
                             const std::vector<float> & spk, const std::vector<float> & cond, int n_steps);

    // CausalMaskedDiffWithXvec.inference: the mel of `tokens` spoken by `prompt`'s voice, the
    // prompt frames removed: [n_frames][n_mel]. `noise` [>= total frames][n_mel] replaces the
    // default noise (a seeded normal table indexed by absolute frame and channel).
    std::vector<float> flow_mel(const std::vector<int32_t> & tokens, const FlowPrompt & prompt, int n_steps,
                                const std::vector<float> * noise = nullptr, uint64_t seed = 0);

    // Streaming (Token2wav.set_stream_cache / stream): the prompt pass fills the encoder and
    // estimator caches (prompt tokens + their first pre_lookahead_len tokens as look-ahead, the
    // prompt mel as cond; the prompt mel must have up_stride frames per prompt token). `noise`
    // [frames][n_mel] replaces the default table; chunks read it from the estimator cache length.
    void stream_start(const FlowPrompt & prompt, int n_steps, const std::vector<float> * noise = nullptr,
                      uint64_t seed = 0);
    // One window: its tokens with pre_lookahead_len look-ahead tokens at the end (unless `last`,
    // which pads them). Returns the mel of the new frames [up_stride * (n - lookahead or n)][n_mel];
    // the caches are then cut to prompt + history frames as the reference does.
    std::vector<float> stream_push(const std::vector<int32_t> & tokens, bool last);
    // (token frames in the conformer caches, frames in each estimator cache); 0, 0 when not started.
    std::pair<int64_t, int64_t> stream_frames() const;

    // The default noise: frames [first, first + n) of the seeded table, [n][n_mel].
    std::vector<float> default_noise(int64_t first, int64_t n, uint64_t seed) const;

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

} // namespace minicpm
