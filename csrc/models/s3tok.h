// S3Tokenizer v2 (s3tokenizer 0.3.0 model_v2.py: S3TokenizerV2.quantize), the speech tokenizer
// of MiniCPM-o 4.5's voice cloning (stepaudio2 Token2wav._prepare_prompt): 16 kHz audio ->
// 25 Hz speech tokens in [0, levels^fsq_dim).
//
// AudioEncoderV2: Conv1d(n_mels, E, 3, stride 2, pad 1) + GELU, Conv1d(E, E, 3, stride 2, pad 1)
// + GELU, then n_layer pre-LN blocks whose attention adds an FSMN memory (a depthwise
// Conv1d over the values, zero padding (k-1)/2 left, the rest right, plus the values) and
// rotates q and k with a 64-wide rotary table (the two halves of each head rotated together);
// no final norm. FSQ: Linear(E, fsq_dim), tanh, round((h + 1) (L - 1) / 2) per dimension,
// index sum_d digit_d L^d. Clips over 30 s go in 30 s windows with a 26 s stride; each
// window's tokens are merged keeping the middle (merge_tokenized_segments).
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

struct S3Hparams {
    int64_t n_mels = 0, n_state = 0, n_head = 0, n_layer = 0, n_ff = 0, fsmn_kernel = 0;
    int64_t rope_dim = 0, rope_max_pos = 0, fsq_levels = 0, fsq_dim = 0;
    int64_t sample_rate = 0, n_fft = 0, hop = 0, window_s = 0, overlap_s = 0, token_rate = 0;
    float   attn_eps = 0.0f, ffn_eps = 0.0f, rope_theta = 0.0f;

    int64_t head_dim() const { return n_state / n_head; }
    // Encoder frames (tokens) of F mel frames: two stride-2 convolutions.
    static int64_t tokens_of(int64_t n_frames) {
        const int64_t c1 = (n_frames - 1) / 2 + 1;
        return (c1 - 1) / 2 + 1;
    }
    int64_t window_frames() const { return window_s * sample_rate / hop; }    // 3000
    int64_t overlap_frames() const { return overlap_s * sample_rate / hop; }  // 400

    static S3Hparams from_gguf(const GgufFile & f);
};

struct S3Layer {
    ggml_tensor * ln1_w, * ln1_b, * q_w, * q_b, * k_w, * v_w, * v_b, * o_w, * o_b, * fsmn;
    ggml_tensor * ln2_w, * ln2_b, * up_w, * up_b, * down_w, * down_b;
};

struct S3Weights {
    ggml_tensor * conv1_w = nullptr, * conv1_b = nullptr, * conv2_w = nullptr, * conv2_b = nullptr;
    std::vector<S3Layer> layers;
    ggml_tensor * fsq_w = nullptr, * fsq_b = nullptr;

    static S3Weights declare(WeightStore & store, const S3Hparams & hp);
};

class S3TokModel : public Component {
public:
    const char * kind() const override { return "s3tok"; }
    size_t       weight_bytes() const override;

    S3Hparams                    hp;
    S3Weights                    w;
    std::unique_ptr<WeightStore> store;
};

extern const ComponentType kS3TokComponent;

// The tokenizer's compute state for one owner. Not thread-safe.
class S3Tokenizer {
public:
    S3Tokenizer(const S3TokModel & model, const ComputeBackends & backends, const DebugOptions & debug = {});
    ~S3Tokenizer();

    const S3Hparams & hparams() const;

    // Tokens of 16 kHz mono PCM: the log-mel of the whole clip (preprocess/s3_mel.h), then
    // tokens_from_mel. Throws Error(InvalidArgument) for too few samples or non-finite ones.
    std::vector<int32_t> tokens(const float * pcm, size_t n);

    // Tokens of mel features [n_mels][n_frames] row-major (S3TokenizerV2.quantize on one clip).
    // `projections`, when given, receives the FSQ inputs of every window before tanh:
    // [window][token][fsq_dim] back to back (tests).
    std::vector<int32_t> tokens_from_mel(const float * mel, int64_t n_frames, std::vector<float> * projections = nullptr);

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

} // namespace minicpm
