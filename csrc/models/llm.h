// Qwen2 / Qwen3 decoder (the LLM of MiniCPM-V 2.6 / o 2.6 and V 4.5 / o 4.5).
// Mirrors transformers' Qwen2ForCausalLM / Qwen3ForCausalLM forward.
#pragma once

#include "core/component.h"
#include "core/runner.h"
#include "core/gguf_file.h"
#include "core/weights.h"

#include "ggml.h"

#include <memory>
#include <string>
#include <vector>

namespace minicpm {

struct LlmHparams {
    std::string arch;          // "qwen2" | "qwen3"
    int64_t     n_vocab   = 0;
    int64_t     n_embd    = 0;
    int64_t     n_layer   = 0;
    int64_t     n_head    = 0;
    int64_t     n_head_kv = 0;
    int64_t     head_dim  = 0;
    int64_t     n_ff      = 0;
    int64_t     n_ctx_train = 0;
    float       rms_eps   = 1e-6f;
    float       rope_base = 10000.0f;
    bool        qk_norm   = false;   // qwen3: per-head RMSNorm on q and k
    bool        qkv_bias  = false;   // qwen2: biases on q, k, v

    int64_t n_embd_q() const { return n_head * head_dim; }
    int64_t n_embd_kv() const { return n_head_kv * head_dim; }

    // Reads and validates the hyperparameters; throws Error(Unsupported) for other architectures.
    static LlmHparams from_gguf(const GgufFile & f);
};

struct LlmLayer {
    ggml_tensor * attn_norm = nullptr;
    ggml_tensor * wq = nullptr, * wk = nullptr, * wv = nullptr, * wo = nullptr;
    ggml_tensor * wqkv = nullptr;   // optional [n_embd, n_q + 2 n_kv]: wq, wk, wv back to back, or
                                    // [n_embd, n_q + n_kv] (wq, wk) when wv has another type
    ggml_tensor * bq = nullptr, * bk = nullptr, * bv = nullptr;
    ggml_tensor * q_norm = nullptr, * k_norm = nullptr;
    ggml_tensor * ffn_norm = nullptr;
    ggml_tensor * ffn_gate = nullptr, * ffn_up = nullptr, * ffn_down = nullptr;
};

struct LlmWeights {
    ggml_tensor *         tok_embd    = nullptr;   // [n_embd, n_vocab]
    ggml_tensor *         output_norm = nullptr;
    ggml_tensor *         output      = nullptr;   // [n_embd, n_vocab]; token_embd when tied
    std::vector<LlmLayer> layers;

    // Declares every tensor in the store with its expected shape.
    static LlmWeights declare(WeightStore & store, const LlmHparams & hp);
    // Fuses each layer's Q, K and V matrices (WeightStore::fuse_rows) where possible; before load().
    void fuse_qkv(WeightStore & store, bool on_cpu_too);
};

// The LLM component: hyperparameters and weights, read-only.
class LlmModel : public Component {
public:
    const char * kind() const override { return "llm"; }
    size_t       weight_bytes() const override;
    size_t       repacked_bytes() const override;

    LlmHparams                   hp;
    LlmWeights                   w;
    std::unique_ptr<WeightStore> store;
    bool                         all_f32 = false;         // every weight matrix stored as F32
    const void *                 tok_embd_host = nullptr; // token_embd rows in the mapped file (for embedding prompts)
};

extern const ComponentType kLlmComponent;

// The cache tensors a forward pass writes and attends: per layer [n_embd_kv, n_cells] (the
// session's KV cache owns them and decides which cell holds which position).
struct KvTensors {
    ggml_type                  type = GGML_TYPE_F16;
    std::vector<ggml_tensor *> k, v;
};

// Inputs and outputs of one forward pass over a micro-batch, created by build_llm_graph.
struct LlmGraphInputs {
    ggml_tensor * tokens   = nullptr;   // I32 [n_tokens]         (or null when embd is used)
    ggml_tensor * embd     = nullptr;   // F32 [n_embd, n_tokens] (external embeddings)
    ggml_tensor * pos      = nullptr;   // I32 [n_tokens]
    ggml_tensor * kv_idx   = nullptr;   // I64 [n_tokens]: cache cell of each token
    ggml_tensor * kq_mask  = nullptr;   // F32/F16 [n_kv, n_tokens]
    ggml_tensor * logits   = nullptr;   // F32 [n_vocab, n_tokens or 1]
    ggml_tensor * hidden   = nullptr;   // F32 [n_embd, n_tokens] after the final norm (when asked)
};

struct LlmGraphParams {
    int64_t n_tokens    = 0;
    int64_t n_kv        = 0;       // cache cells attended (cells [0, n_kv))
    bool    use_embd    = false;   // feed embeddings instead of token ids
    bool    logits_all  = false;   // logits for every position (else the last only)
    bool    hidden      = false;   // also output the last-layer hidden states of every position
    bool    flash_attn  = false;

    GraphKey key() const { return {n_tokens, n_kv, use_embd, logits_all, hidden, flash_attn}; }
};

// Builds the forward graph into gf: keys/values go to the cells kv_idx lists, attention covers
// cells [0, n_kv) under kq_mask. Intermediates are named per layer ("attn_norm-3", "ffn_out-3",
// "l_out-3") and at the end ("result_norm", "result_output").
void build_llm_graph(ggml_context * ctx, ggml_cgraph * gf, const LlmModel & m, const KvTensors & kv,
                     const LlmGraphParams & p, LlmGraphInputs & in);

// One sequence of a batched forward pass over several caches (several sessions): its rows of
// the batch (consecutive, in the order of the list) and the cache it writes and attends.
struct LlmBatchSeq {
    const KvTensors * kv       = nullptr;
    int64_t           n_tokens = 0;
    int64_t           n_kv     = 0;   // cells of its cache attended
};

// Inputs and outputs of a batched pass (build_llm_batch_graph).
struct LlmBatchInputs {
    ggml_tensor *              embd = nullptr;     // F32 [n_embd, n_rows]: every row's embedding
    ggml_tensor *              pos  = nullptr;     // I32 [n_rows]
    std::vector<ggml_tensor *> kv_idx, kq_mask;    // per sequence: I64 [n_tokens], F32/F16 [n_kv, n_tokens]
    ggml_tensor *              last = nullptr;     // I32 [n_out]: the rows whose logits are wanted
    ggml_tensor *              logits = nullptr;   // F32 [n_vocab, n_out]
    ggml_tensor *              hidden = nullptr;   // F32 [n_embd, n_rows] after the final norm (when asked)
};

// The decoder over the rows of several sequences at once: the weight products see every row
// (each weight is read once for the whole batch), each sequence's attention runs over its own
// cache. Row r's output equals build_llm_graph's for its sequence alone (up to the kernels'
// rounding for other batch sizes).
// n_out: the rows whose logits are wanted (`last`; one per request, a sequence may carry
// several requests: the rows of sessions sharing one cache, each masked to its own cells).
void build_llm_batch_graph(ggml_context * ctx, ggml_cgraph * gf, const LlmModel & m, const std::vector<LlmBatchSeq> & seqs,
                           int64_t n_out, bool flash_attn, bool hidden, LlmBatchInputs & in);
size_t llm_batch_graph_max_nodes(const LlmHparams & hp, size_t n_seq);

// The K-shift graph: rotates the cached keys of cells [first_cell, first_cell + n_cells) of every
// layer in place by the I32 position deltas `shift` ([n_cells]; 0 leaves a cell unchanged), with
// the forward pass's RoPE (llama.cpp's K-shift). The stored keys are rope(k_norm(k), pos), so a
// rotation by d moves them to pos + d.
void build_llm_kshift_graph(ggml_context * ctx, ggml_cgraph * gf, const LlmModel & m, const KvTensors & kv,
                            int64_t first_cell, int64_t n_cells, ggml_tensor * shift);

// An upper bound on the nodes of build_llm_graph.
size_t llm_graph_max_nodes(const LlmHparams & hp);

} // namespace minicpm
