// MiniCPM-o 4.5 TTS talker (MiniCPMTTS in modeling_minicpmo.py): the condition
// emb_text[t] + n(projector_semantic(h)), a Llama decoder run on input embeddings with its own
// K/V cache, and the speech-token head (weight norm folded by the converter). The sampling of
// MiniCPMTTS.generate / TTSStreamingGenerator.generate_with_buffer (utils.py) lives here too: the
// logits warpers in the reference's order and a seeded multinomial of our own.
// See tests/ref_minicpmo_tts.py.
#pragma once

#include "core/backend.h"
#include "core/component.h"
#include "core/debug.h"
#include "core/gguf_file.h"
#include "core/weights.h"

#include "ggml.h"

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace minicpm {

// tts_config.attention_type: what the streaming form keeps of the K/V cache between text chunks.
enum class TtsAttention { Full, SlidingWindow, SlidingRecompute, Reindex };

// TTSSamplingParams with gen_logits' repetition window; defaults from the file (minicpm.tts.sampling.*).
struct TtsSampling {
    float   temperature = 0.8f;
    float   top_p = 0.85f;          // 1 (or more): off
    int32_t top_k = 25;             // 0: off
    float   repetition_penalty = 1.05f;   // 1: off
    int32_t penalty_window = 16;
    int32_t min_tokens_to_keep = 3; // gen_logits' TopP/TopK warpers
};

struct TtsHparams {
    int64_t n_embd = 0;      // hidden_size (768)
    int64_t n_ff = 0;        // intermediate_size (3072)
    int64_t n_head = 0;      // 12
    int64_t n_head_kv = 0;   // 12
    int64_t head_dim = 0;
    int64_t n_layer = 0;     // 20
    int64_t n_ctx = 0;       // max_position_embeddings (4096): default cache size
    int64_t llm_dim = 0;     // projector input (LLM hidden)
    int64_t n_text = 0;      // emb_text rows (152064)
    int64_t n_audio = 0;     // num_audio_tokens (6562): codes + EOS
    int32_t audio_bos = 0;   // emb_text row of B
    int32_t text_eos = 0;    // emb_text row of E
    float   eps = 1e-6f;
    float   rope_base = 10000.0f;
    bool    normalize_hidden = true;   // normalize_projected_hidden
    bool    interleaved = false;
    bool    omni_layout = false;   // llama.cpp-omni's tts + projector files (llama names, permuted Q/K)
    TtsAttention attention = TtsAttention::Full;
    std::string  attention_name;
    int64_t sliding_window = 300;      // streaming_sliding_window_audio_window_size
    TtsSampling sampling;

    int32_t eos() const { return (int32_t) (n_audio - 1); }
    int64_t n_embd_kv() const { return n_head_kv * head_dim; }

    static TtsHparams from_gguf(const GgufFile & f);
    // llama.cpp-omni's tts/<name>-tts-F16.gguf (a llama GGUF with the talker's extra tensors under
    // their checkpoint names) and <name>-projector-F16.gguf (architecture "projector").
    static TtsHparams from_omni(const GgufFile & tts, const GgufFile & projector);
};

struct TtsLayer {
    ggml_tensor * attn_norm, * wq, * wk, * wv, * wo, * ffn_norm, * ffn_gate, * ffn_up, * ffn_down;
};

struct TtsWeights {
    ggml_tensor * emb_text = nullptr;    // [E, n_text]
    ggml_tensor * emb_code = nullptr;    // [E, n_audio]
    ggml_tensor * head = nullptr;        // [E, n_audio]
    ggml_tensor * proj1_w = nullptr, * proj1_b = nullptr, * proj2_w = nullptr, * proj2_b = nullptr;
    ggml_tensor * output_norm = nullptr;
    std::vector<TtsLayer> layers;

    // proj: the store of the projector's file (llama.cpp-omni), or null (ours: one file).
    static TtsWeights declare(WeightStore & store, const TtsHparams & hp, WeightStore * proj = nullptr);
};

// The talker component (read-only, shared by sessions).
class TtsModel : public Component {
public:
    const char * kind() const override { return "tts"; }
    size_t       weight_bytes() const override;

    TtsHparams                   hp;
    TtsWeights                   w;
    bool                         exact = true;   // every matrix F32: F32 cache
    std::vector<float>           code_rows;      // emb_code as F32 [n_audio][E] (the embedding of each fed-back code)
    std::unique_ptr<GgufFile>    omni_projector; // llama.cpp-omni, loaded as a component: the projector file it found
    std::unique_ptr<WeightStore> store;
    std::unique_ptr<WeightStore> proj_store;     // llama.cpp-omni: the projector's own file
};

extern const ComponentType kTtsComponent;

// Whether `f` is llama.cpp-omni's TTS file / projector file.
bool is_omni_tts_file(const GgufFile & f);
bool is_omni_projector_file(const GgufFile & f);
// The talker from llama.cpp-omni's two files.
std::unique_ptr<TtsModel> load_tts_omni(const GgufFile & tts, const GgufFile & projector, const Devices & devices,
                                        const ModelParams & params);
// llama.cpp-omni's projector file next to its TTS file `tts_path`: the *projector*.gguf of that
// folder that is_omni_projector_file accepts (omni.cpp reads <tts dir>/<name>-projector-F16.gguf).
// Throws Error(File) when there is none.
std::string find_omni_projector(const std::string & tts_path);

// ---- sampling (pure functions) ------------------------------------------------------------------

// Our own seeded generator (splitmix64), so that a sampled sequence is reproducible anywhere:
// uniform() = (next() >> 11) * 2^-53.
class TtsRng {
public:
    explicit TtsRng(uint64_t seed = 0) : state_(seed) {}
    uint64_t next();
    double   uniform();
    uint64_t state() const { return state_; }

private:
    uint64_t state_;
};

// The probabilities the reference samples from for one step: logits / T; unless `bos_step`
// (the first token after an audio BOS: temperature only), the ChatTTS repetition penalty over the
// last penalty_window tokens of `history` (x * p^k where x < 0, else x / p^k), then top-p and
// top-k (each keeping min_tokens_to_keep); with `mask_eos` the EOS logit set to -inf after them
// (MiniCPMTTS.generate's min_new_token); softmax. Returns n values (0 where masked).
std::vector<float> tts_probs(const float * logits, int64_t n, const std::vector<int32_t> & history, const TtsSampling & s,
                             bool bos_step, int32_t eos, bool mask_eos);

// Multinomial draw: the first index whose running sum exceeds uniform() * sum.
int32_t tts_draw(const std::vector<float> & probs, TtsRng & rng);
// The same with the probabilities' sum (in double, in index order) already taken.
int32_t tts_draw(const std::vector<float> & probs, double sum, TtsRng & rng);

// ---- the compute state of one owner (a session) -------------------------------------------------

struct TtsGenerateParams {
    TtsSampling sampling;
    int32_t     min_new_tokens = 50;    // MiniCPMTTS.generate: EOS masked before this many
    int32_t     max_new_tokens = 2048;
};

// The talker's runners and K/V cache (cells in evaluation order, each with its position), and the
// state of a streamed turn. Not thread-safe.
class TtsContext {
public:
    // n_ctx: cache cells (0: the file's context length).
    TtsContext(const TtsModel & model, const ComputeBackends & backends, int64_t n_ctx = 0, const DebugOptions & debug = {});
    ~TtsContext();

    const TtsHparams & hparams() const;
    int64_t            n_ctx() const;

    // c_i = emb_text[tokens[i]] + n(projector_semantic(hidden[i])): hidden [n][llm_dim]
    // (nullptr: the text rows alone). Returns [n][E].
    std::vector<float> condition(const int32_t * tokens, const float * hidden, int64_t n);
    // emb_code rows of `codes`: [n][E].
    std::vector<float> code_embeddings(const int32_t * codes, int64_t n) const;

    // Appends `n` input embeddings [n][E] at positions `pos` to the cache and returns the head's
    // logits [n][n_audio] for every position (all) or the last one.
    std::vector<float> eval(const float * embd, int64_t n, const int32_t * pos, bool all);
    void    clear();                 // empties the cache
    int64_t n_cached() const;

    // Teacher forcing from an empty cache: the sequence [inputs_embeds, emb_code[audio_tokens]] at
    // positions 0.., logits for every position [n + m][n_audio].
    std::vector<float> logits(const float * embd, int64_t n, const int32_t * audio_tokens, int64_t m);

    // MiniCPMTTS.generate: [condition, E, B] from position 0, then sampled codes fed back until
    // EOS or max_new_tokens. Returns the codes as the reference does (without the last sampled
    // one: the EOS, or the token drawn at the max_new_tokens-th step).
    std::vector<int32_t> generate(const float * condition, int64_t n, const TtsGenerateParams & p, TtsRng & rng);

    // The streaming form (TTSStreamingGenerator.generate_with_buffer): each chunk [c.., (E if
    // last), B] continues the turn behind the previous chunk's codes (positions and cache as
    // tts_config.attention_type says); codes until EOS or max_new_tokens per chunk (500). Returns
    // this chunk's codes (EOS not included). The first code of a turn is the BOS step.
    std::vector<int32_t> stream_push(const float * condition, int64_t n, bool last, const TtsSampling & s, TtsRng & rng,
                                     int32_t max_new_tokens = 500);
    void                 stream_reset();                  // a new turn: positions from 0, empty cache
    const std::vector<int32_t> & stream_tokens() const;   // every code of the turn
    int64_t              stream_position() const;         // where the next chunk starts (text_start_pos)

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

} // namespace minicpm
