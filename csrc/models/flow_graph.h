// Internal to the flow component (models/flow*.cpp): the graph builders of the encoder
// (flow_enc.cpp) and the DiT estimator (flow_dit.cpp), their inputs and outputs. Shapes in ggml
// order.
#pragma once

#include "models/flow.h"

#include "ggml.h"

#include <cstdint>
#include <vector>

namespace minicpm::flow_graph {

// Upper bounds on the nodes of one graph.
inline size_t enc_nodes(const FlowHparams & hp) { return (size_t) ((hp.n_blocks + hp.n_up_blocks) * 48 + 128); }
inline size_t dit_nodes(const FlowHparams & hp) { return (size_t) (hp.dit_depth * 96 + 128); }

// Conv1d (stride 1, no padding) over x [C_in, T_in, B]: the product of the kernel [C_in * k,
// C_out] with the k shifted windows of x stacked along channels. Returns [C_out, T_in - k + 1, B].
ggml_tensor * conv1d(ggml_context * ctx, ggml_tensor * x, ggml_tensor * kernel, ggml_tensor * bias);
// Zero frames before (`left`) and after (`right`) x [C, T, B].
ggml_tensor * pad_time(ggml_context * ctx, ggml_tensor * x, int left, int right);

// Keys and values before and after a layer: kc / vc the cached ones (null: none), k / v the
// cache plus this call's frames (what the layer hands on).
struct LayerCache {
    ggml_tensor * kc = nullptr, * vc = nullptr;
    ggml_tensor * k = nullptr, * v = nullptr;
};

struct EncIO {
    ggml_tensor * tokens = nullptr, * pos1 = nullptr, * pos2 = nullptr, * spk = nullptr;
    ggml_tensor * mu = nullptr, * spk_out = nullptr;
};

// UpsampleConformerEncoderV2.forward_chunk + encoder_proj: n_in tokens (with the look-ahead
// ones unless `last`) after `past` cached token frames. Caches: the last 2 frames after the
// look-ahead conv1, the last 2 * stride upsampled frames, and every layer's keys and values
// (token layers: past frames; mel layers: stride * past), cache first.
struct EncChunkIO {
    ggml_tensor * tokens = nullptr, * pos1 = nullptr, * pos2 = nullptr, * spk = nullptr;
    ggml_tensor * cnn1 = nullptr, * cnn2 = nullptr;          // inputs (null when past == 0)
    std::vector<LayerCache> layers;
    ggml_tensor * cnn1_out = nullptr, * cnn2_out = nullptr, * mu = nullptr, * spk_out = nullptr;
};

// The streaming state of one DiT block (DiTBlock.forward_chunk): inputs kc / vc
// [inner, Lc, 2] (keys and values of earlier frames, in the reference's order: newest chunk
// first), c1 / c2 [D, k - 1, 2] (the last input frames of the two causal convolutions); outputs
// k / v [inner, N + Lc, 2] and c1_out / c2_out.
struct DitCache {
    ggml_tensor * kc = nullptr, * vc = nullptr, * c1 = nullptr, * c2 = nullptr;
    ggml_tensor * k = nullptr, * v = nullptr, * c1_out = nullptr, * c2_out = nullptr;
};

struct DitIO {
    ggml_tensor * x = nullptr;      // [dit_in, N, 2] the estimator input (x | mu | spk | cond, and x | 0)
    ggml_tensor * t_freq = nullptr; // [t_freq]
    ggml_tensor * dt = nullptr;     // [1]
    ggml_tensor * v = nullptr;      // [n_mel, N, 2] estimator output
    ggml_tensor * x_next = nullptr; // [n_mel, N] Euler step with guidance
    std::vector<DitCache> cache;    // streaming: one per block (empty offline)
};

// A streaming chunk on the estimator states of the runner's state buffer, one slot per (solver
// step, block): k / v [inner, cap, 2, slots] whose first Lc frames hold the keys and values in the
// reference's order (newest chunk first), c1 / c2 [D, k - 1, 2, slots] the causal convolutions'
// last input frames. The graph's step i uses slots (first + i) * depth + b; each block writes
// them back, cut to the first keep_head and the last keep_tail frames when longer than both.
struct DitStreamPlan {
    ggml_tensor * k = nullptr, * v = nullptr, * c1 = nullptr, * c2 = nullptr;
    int     first = 0;
    int64_t Lc = 0, keep_head = 0, keep_tail = 0;
};

// Several Euler steps of solve_euler in one graph: x0 [n_mel, N] (the noise times the
// temperature, or where the previous steps ended), rest [dit_in - n_mel, N, 2] the other estimator
// inputs (mu | spk | cond, then zeros), t_freq [t_freq, n] and dt [n] per step; x the result.
struct DitSolveIO {
    ggml_tensor * x0 = nullptr, * rest = nullptr, * t_freq = nullptr, * dt = nullptr;
    ggml_tensor * x = nullptr;
};

// Node bound of build_dit_solve for n steps.
inline size_t solve_nodes(const FlowHparams & hp, int n) {
    return (size_t) n * (dit_nodes(hp) + (size_t) hp.dit_depth * 48 + 64) + 256;
}

// The ESPnet relative-position table for T frames: [E, 2T - 1] (host side, an input).
std::vector<float> rel_pos_table(const FlowHparams & hp, int64_t T);

// UpsampleConformerEncoderV2.forward + encoder_proj on n tokens (and the speaker projection).
void build_encoder(ggml_context * ctx, ggml_cgraph * gf, const FlowModel & m, EncIO & io, int64_t n);
// The same as forward_chunk: n_in tokens after `past` cached token frames (see EncChunkIO).
void build_encoder_chunk(ggml_context * ctx, ggml_cgraph * gf, const FlowModel & m, EncChunkIO & io, int64_t n_in,
                         bool last, int64_t past);
// DiT.forward on the CFG batch of N frames, then solve_euler's guidance and Euler step;
// stream_len >= 0: DiT.forward_chunk with stream_len cached frames per block.
void build_dit(ggml_context * ctx, ggml_cgraph * gf, const FlowModel & m, DitIO & io, int64_t N,
               int64_t stream_len = -1);
// n Euler steps (see DitSolveIO), on the cache states of `plan` when streaming.
void build_dit_solve(ggml_context * ctx, ggml_cgraph * gf, const FlowModel & m, DitSolveIO & io, int64_t N, int n,
                     const DitStreamPlan * plan = nullptr);

} // namespace minicpm::flow_graph
