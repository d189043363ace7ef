// MiniCPM-o 4.5 streaming Token2Wav vocoder: CosyVoice3's CausalHiFTGenerator as minicpmo-utils
// 1.0.7 runs it (stepaudio2/causal_vocoder: generator.py, f0_predictor.py, convolution.py,
// driven by bounded_vocoder.py BoundedVocoder, as token2wav.py Token2wav.stream calls it).
// 80-bin log mel at 50 Hz -> 24 kHz PCM, pushed in chunks.
//
// Stages (one BoundedVocoder step; every size from the minicpm.cvoc.* metadata):
//   F0 predictor (host, float64 as the reference runs it): a right-causal Conv1d (look-ahead
//     f0_right frames), then left-causal Conv1d, ELU after each; Linear; |.|; cast to float32.
//   source (host): per frame, harmonic increments (f0 * h / sr) mod 1 in float32, accumulated in
//     float64 times the hop onto a per-stream phase; the sine of each frame's phase held over its
//     hop samples where voiced; plus a uniform noise table read at the absolute sample position;
//     Linear(harmonics -> 1), tanh.
//   decoder (graph): right-causal conv_pre (look-right frames), per stage LeakyReLU, nearest
//     upsampling + left-causal conv, (last stage: reflection pad), + source_resblock(causal
//     down-sampling of the source STFT), mean of the causal Snake ResBlocks; LeakyReLU, causal
//     conv_post, exp (clipped) / sin; iSTFT (host); a non-final step drops its last hop.
// The streaming state (BoundedVocoder.cache) keeps a bounded mel and source history, the phase
// and the absolute frame counters; every step recomputes its windows exactly as the reference.
#pragma once

#include "core/backend.h"
#include "core/component.h"
#include "core/gguf_file.h"
#include "core/weights.h"
#include "models/hift.h"

#include "ggml.h"

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace minicpm {

struct CvocHparams {
    int64_t sample_rate = 0, n_mel = 0, base = 0, n_harmonics = 0;
    int64_t n_f0_layers = 0, f0_channels = 0;
    std::vector<int64_t> f0_kernels;        // per layer; layer 0 right-causal, the rest left-causal
    float   sine_amp = 0, noise_std = 0, unvoiced_noise_div = 0, voiced_threshold = 0;
    std::vector<int64_t> up_rates, up_kernels;
    int64_t n_fft = 0, hop = 0;
    std::vector<int64_t> rb_kernels;
    std::vector<std::vector<int64_t>> rb_dilations;    // [kernel][dilation]
    std::vector<int64_t> srb_kernels;
    std::vector<std::vector<int64_t>> srb_dilations;   // [stage][dilation]
    std::vector<int64_t> down_kernels, down_strides;
    int64_t look_right = 0, conv_post_kernel = 0, reflect_pad = 0;
    float   lrelu_slope = 0, post_lrelu_slope = 0, audio_limit = 0, magnitude_clip = 0, snake_eps = 0;
    int64_t noise_table_rows = 0, block_frames = 0;

    // BoundedVocoder's derived sizes (bounded_vocoder.py context_sizes, __init__)
    int64_t f0_left = 0, f0_right = 0, history = 0, decoder_right = 0;

    int64_t n_stages() const { return (int64_t) up_rates.size(); }
    int64_t channels(int64_t stage) const { return base >> (stage + 1); }
    int64_t n_sines() const { return n_harmonics + 1; }
    int64_t upsample_rate() const;              // prod(up_rates): STFT frames per mel frame
    int64_t samples_per_frame() const { return upsample_rate() * hop; }
    int64_t n_bins() const { return n_fft / 2 + 1; }
    int64_t delay_frames() const { return f0_right + decoder_right; }

    static CvocHparams from_gguf(const GgufFile & f);
};

struct CvocWeights {
    std::vector<HiftConv>     f0;       // w: the weight-norm direction v
    std::vector<ggml_tensor *> f0_mag;  // g per layer
    ggml_tensor *             f0_cls_w = nullptr, * f0_cls_b = nullptr;
    ggml_tensor *             src_w = nullptr, * src_b = nullptr;
    HiftConv                  pre, post;
    std::vector<HiftConv>     ups, downs;
    std::vector<HiftResBlock> srb;   // per stage
    std::vector<HiftResBlock> rb;    // stage * n_kernels + kernel
};

class CausalVocoderModel : public Component {
public:
    const char * kind() const override { return "cvoc"; }
    size_t       weight_bytes() const override;

    CvocHparams                      hp;
    CvocWeights                      w;
    // the host stages' weights, read once: F0 predictor in float64, the source Linear
    std::vector<std::vector<double>> f0_w, f0_b;
    std::vector<double>              f0_cls_w;
    double                           f0_cls_b = 0;
    std::vector<float>               src_w, src_b;
    std::unique_ptr<WeightStore>     store;
};

extern const ComponentType kCausalVocoderComponent;

// The noise the source adds: the reference draws a uniform table torch.rand(1, rows, sines) once
// at construction and reads row (absolute sample position mod rows). Here it is either given
// ([rows][n_sines] float32 values, any rows >= 1) or, by default, a table of
// hp.noise_table_rows rows whose values are a fixed function of (seed, row, sine): uniform in
// [0, 1), the same on every platform, computed where read (never stored).
struct CvocNoise {
    uint64_t                                  seed = 0;
    std::shared_ptr<const std::vector<float>> table;   // empty: seeded
    int64_t                                   rows = 0;
};

// One stream's state (BoundedVocoder.cache) and the compute state to run it. Not thread-safe.
class CausalVocoder {
public:
    CausalVocoder(const CausalVocoderModel & model, const ComputeBackends & backends);
    ~CausalVocoder();

    const CvocHparams & hparams() const;

    // Starts a new utterance (BoundedVocoder.reset): empty history, phases 0, positions 0.
    // `prefix_silence`: the first non-empty output of a stream whose first output is not also
    // its last gets delay_frames() * samples_per_frame() zero samples in front
    // (Token2wav._stream_vocode).
    void reset(const CvocNoise & noise = {}, bool prefix_silence = true);

    // Appends `n_frames` fresh mel frames (`mel` is [n_mel][n_frames] row-major, n_frames may be 0)
    // and returns the PCM that is ready (BoundedVocoder.stream(mel, finalize=last)). After a last
    // call only an empty last call is accepted (InvalidArgument otherwise) until reset().
    std::vector<float> push(const float * mel, int64_t n_frames, bool last);

    // With `record` on (reset clears the records), every F0 frame [Hz] and source sample the
    // stream computed, in order (for comparisons with the reference's stages).
    void                       set_record(bool on);
    const std::vector<float> & recorded_f0() const;
    const std::vector<float> & recorded_source() const;

    bool    finalized() const;
    int64_t frames_received() const;
    int64_t samples_emitted() const;

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

} // namespace minicpm
