// MiniCPM-o audio input: the Whisper encoder (MiniCPMWhisperEncoder), the projector
// (MultiModalProjector: Linear -> ReLU -> Linear) and AvgPool1d(pool_step), as
// modeling_minicpmo.py's get_audio_embedding (offline, block-causal 1 s mask) and
// get_audio_embedding_streaming (per-stream K/V cache) compute them; see
// tests/ref_minicpmo_audio.py. Loads our files (mtmd's a.* / mm.a.* names) and llama.cpp-omni's
// audio GGUF (architecture "whisper", whisper.cpp names).
#pragma once

#include "core/backend.h"
#include "core/component.h"
#include "core/debug.h"
#include "core/gguf_file.h"
#include "core/runner.h"
#include "core/weights.h"

#include "ggml.h"

#include <memory>
#include <string>
#include <vector>

namespace minicpm {

struct AudioHparams {
    int64_t n_embd = 0;     // d_model (1024)
    int64_t n_ff = 0;       // 4096
    int64_t n_head = 0;     // 16
    int64_t n_layer = 0;    // 24
    int64_t n_mel = 80;
    int64_t n_pos = 0;      // rows of the position table (1500 = 30 s of encoder frames)
    int64_t proj_dim = 0;   // LLM width
    int64_t pool_step = 0;  // 5 (o4.5) | 2 (o2.6)
    int64_t chunk_frames = 50;   // encoder frames of one block of the offline mask (chunk_length * 50); 0 = full
    float   eps = 1e-5f;
    bool    omni_layout = false;   // llama.cpp-omni's file

    // Encoder frames for F mel frames (two convolutions, the second with stride 2).
    static int64_t encoder_frames(int64_t n_mel_frames) { return (n_mel_frames - 1) / 2 + 1; }
    // LLM tokens after pooling C encoder frames.
    int64_t pooled(int64_t n_enc) const { return n_enc < pool_step ? 0 : (n_enc - pool_step) / pool_step + 1; }

    static AudioHparams from_gguf(const GgufFile & f);
};

struct AudioLayer {
    ggml_tensor * ln1_w, * ln1_b, * ln2_w, * ln2_b;
    ggml_tensor * q_w, * q_b, * k_w, * v_w, * v_b, * o_w, * o_b;
    ggml_tensor * fc1_w, * fc1_b, * fc2_w, * fc2_b;
    // Optional (AudioWeights::fuse): one Q|K|V product [E, 3E] with its bias [3E] (zeros for
    // K). With folded norms, ln1 / ln2 are null: their scale and shift live in qkv_w / qkv_b
    // and fc1_w / fc1_b (W diag(g) and W b + c, computed at load in f32).
    ggml_tensor * qkv_w = nullptr, * qkv_b = nullptr;
};

struct AudioWeights {
    ggml_tensor * conv1_w = nullptr, * conv1_b = nullptr, * conv2_w = nullptr, * conv2_b = nullptr;
    ggml_tensor * pos = nullptr;
    std::vector<AudioLayer> layers;
    ggml_tensor * post_ln_w = nullptr, * post_ln_b = nullptr;
    ggml_tensor * mm1_w = nullptr, * mm1_b = nullptr, * mm2_w = nullptr, * mm2_b = nullptr;

    static AudioWeights declare(WeightStore & store, const GgufFile & f, const AudioHparams & hp);
    // Fewer, larger graph nodes (before store.load()): `fuse_qkv` computes each layer's Q, K and V
    // as one product; `fold_norms` also folds each block's LayerNorm affine into the product that
    // follows it (float weights only; one more rounding of those matrices to their type).
    // Returns whether norms were folded.
    bool fuse(WeightStore & store, const AudioHparams & hp, bool fuse_qkv, bool fold_norms, bool on_cpu);
};

// The audio component (read-only, shared by sessions).
class AudioModel : public Component {
public:
    const char * kind() const override { return "audio"; }
    size_t       weight_bytes() const override;

    AudioHparams                 hp;
    AudioWeights                 w;
    bool                         exact = true;    // every matrix F32: f32 arithmetic throughout
    bool                         flash = false;   // flash attention (reduced-precision weights, where supported)
    bool                         fused_qkv = false;
    bool                         folded_norms = false;
    std::unique_ptr<WeightStore> store;
};

extern const ComponentType kAudioComponent;

// The compute state of the audio encoder for one owner (a session): its runner and the
// streaming K/V cache. Not thread-safe.
class AudioEncoder {
public:
    AudioEncoder(const AudioModel & model, const ComputeBackends & backends, const DebugOptions & debug = {});
    ~AudioEncoder();

    const AudioHparams & hparams() const;

    // The offline path (get_audio_embedding) for one item of a chat's audio batch: `mel` is
    // [n_mel][n_frames] row-major, `batch_frames` the longest item of the batch in mel frames
    // (>= n_frames; the reference pads every item to it, which changes the last frames' inputs
    // and which keys a short item attends), `chunked` the 1 s block-causal mask
    // (chunk_length > 0) or full attention. Returns [pooled][proj_dim] row-major; `states`, when
    // given, receives the post-LayerNorm encoder states [encoder_frames][n_embd].
    std::vector<float> encode(const float * mel, int64_t n_frames, int64_t batch_frames, bool chunked,
                              std::vector<float> * states = nullptr);

    // The streaming path (get_audio_embedding_streaming): one chunk of mel frames, attending to
    // every earlier chunk's keys and values in this encoder's cache. With extra context (duplex)
    // the chunk carries `prefix` / `suffix` redundancy mel frames that are trimmed after the
    // convolutions. The cache restarts (positions from 0) when it would reach the position table.
    std::vector<float> encode_stream(const float * mel, int64_t n_frames, bool extra_context = false, int prefix = 0,
                                     int suffix = 0, std::vector<float> * states = nullptr);
    void    reset_stream();
    int64_t stream_frames() const;   // encoder frames in the streaming cache

    void warm_up();

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

} // namespace minicpm
