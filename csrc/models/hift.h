// MiniCPM-o 4.5 Token2Wav vocoder: the original HiFT (minicpmo-utils 1.0.7
// flashcosyvoice/modules/hifigan.py HiFTGenerator with hifigan_components/layers.py), 80-bin log
// mel at 50 Hz -> 24 kHz PCM, whole utterances (Token2wav.__call__ uses it on hift_original.pt).
//
// Stages (HiFTGenerator.forward / decode):
//   F0 predictor (graph 1): n x [Conv1d + ELU] -> Linear -> |.|            f0 [T] in Hz
//   source (host, float32 op for op as torch computes it): F0 upsampled (nearest) to samples,
//     SineGen2 (harmonic phases accumulated at frame rate, linearly interpolated), voiced mask,
//     noise, Linear(harmonics -> 1), tanh                                  s [T * scale]
//   STFT of s (host)                                                       [frames, n_fft + 2]
//   decoder (graph 2): conv_pre, per stage LeakyReLU, ConvTranspose1d, (last: reflection pad),
//     + source_resblock(source_down(stft)), mean of the stage's Snake ResBlocks; LeakyReLU,
//     conv_post, exp (clipped) / sin -> real and imaginary parts
//   iSTFT (host, torch.istft's overlap-add and window normalisation), clamp.
// Every size and constant comes from the minicpm.hift.* metadata (convert/t2w_hift.py).
#pragma once

#include "core/backend.h"
#include "core/component.h"
#include "core/gguf_file.h"
#include "core/runner.h"
#include "core/weights.h"

#include "ggml.h"

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace minicpm {

struct HiftHparams {
    int64_t sample_rate = 0;
    int64_t n_mel = 0;         // in_channels
    int64_t base = 0;          // base_channels
    int64_t n_harmonics = 0;   // nb_harmonics (sines = n_harmonics + 1)
    int64_t n_f0_layers = 0;
    int64_t f0_channels = 0;
    int64_t f0_kernel = 0, f0_pad = 0;
    float   sine_amp = 0, noise_std = 0, unvoiced_noise_div = 0, voiced_threshold = 0;
    std::vector<int64_t> up_rates, up_kernels, up_pad;
    int64_t n_fft = 0, hop = 0;
    std::vector<int64_t> rb_kernels;                  // per stage: one ResBlock per kernel
    std::vector<std::vector<int64_t>> rb_dilations;   // [kernel][dilation]
    std::vector<int64_t> srb_kernels;                 // one source ResBlock per stage
    std::vector<std::vector<int64_t>> srb_dilations;
    std::vector<int64_t> down_kernels, down_strides, down_pad;
    int64_t conv_pre_kernel = 0, conv_pre_pad = 0, conv_post_kernel = 0, conv_post_pad = 0, reflect_pad = 0;
    float   lrelu_slope = 0, post_lrelu_slope = 0, audio_limit = 0, magnitude_clip = 0, snake_eps = 0;

    int64_t n_stages() const { return (int64_t) up_rates.size(); }
    int64_t channels(int64_t stage) const { return base >> (stage + 1); }   // after ups[stage]
    int64_t n_sines() const { return n_harmonics + 1; }
    int64_t upsample_scale() const;   // samples per mel frame: prod(up_rates) * hop
    int64_t n_bins() const { return n_fft / 2 + 1; }

    bool    omni_layout = false;   // llama.cpp-omni's hifigan2.gguf (from_omni)

    static HiftHparams from_gguf(const GgufFile & f);
    // llama.cpp-omni's token2wav-gguf/hifigan2.gguf: no metadata; sizes from the tensor shapes,
    // the rest HiFTGenerator()'s class defaults (the release's vocoder, as that loader builds it).
    static HiftHparams from_omni(const GgufFile & f);
    // The kernel sizes and widths the metadata does not carry, from the tensors (with checks).
    void kernels_from_tensors(const GgufFile & f);
};

// Whether `f` is llama.cpp-omni's hifigan2.gguf (original HiFT under hift_original.pt's names).
bool is_omni_hift_file(const GgufFile & f);

struct HiftConv {
    ggml_tensor * w = nullptr;   // [k, in, out] (ConvTranspose1d: [k, out, in])
    ggml_tensor * b = nullptr;   // [out]
};

struct HiftResBlock {
    int64_t                     kernel = 0;
    std::vector<int64_t>        dilations;
    std::vector<HiftConv>       conv1, conv2;
    std::vector<ggml_tensor *>  alpha1, alpha2;
};

struct HiftWeights {
    std::vector<HiftConv>     f0;
    ggml_tensor *             f0_cls_w = nullptr, * f0_cls_b = nullptr;
    ggml_tensor *             src_w = nullptr, * src_b = nullptr;
    HiftConv                  pre, post;
    std::vector<HiftConv>     ups, downs;
    std::vector<HiftResBlock> srb;   // per stage
    std::vector<HiftResBlock> rb;    // stage * n_kernels + kernel

    static HiftWeights declare(WeightStore & store, const GgufFile & f, const HiftHparams & hp);
};

class HiftModel : public Component {
public:
    const char * kind() const override { return "hift"; }
    size_t       weight_bytes() const override;

    HiftHparams                  hp;
    HiftWeights                  w;
    std::vector<float>           src_w, src_b;   // the source Linear, read once (host stage)
    std::unique_ptr<WeightStore> store;
};

extern const ComponentType kHiftComponent;

// The random parts of the source module (SineGen2). The reference draws them from torch's global
// generator at every call; here they are injectable, and by default drawn from a generator seeded
// with `seed` (a fixed seed gives the same waveform every call and on every platform):
//   phases: [n_sines] initial phase offsets in cycles, U[0, 1) with the fundamental's forced to 0
//           (SineGen2's rand_ini). They are added to the first sample's phase increment, which
//           the frame-rate downsampling never reads (it takes samples 239.5 + 480 k of each
//           frame), so they do not change the output; kept for fidelity.
//   noise:  [n_samples][n_sines] standard normal draws (torch.randn_like(sine_waves)), scaled
//           by noise_std where voiced and by sine_amp / unvoiced_noise_div where unvoiced.
struct VocodeOptions {
    uint64_t             seed = 0;
    bool                 add_noise = true;     // false: the noise term is zero (deterministic source)
    std::vector<float>   phases;               // empty: drawn
    std::vector<float>   noise;                // empty: drawn
    std::vector<float>   f0;                   // [n_frames] Hz: replaces the F0 predictor (empty: predicted)
};

struct VocodeResult {
    std::vector<float> wav;      // [T * upsample_scale]
    std::vector<float> f0;       // [T] Hz
    std::vector<float> source;   // [T * upsample_scale] excitation (after tanh)
};

// The vocoder's compute state for one owner: two runners (F0 predictor, decoder). Not thread-safe.
class Vocoder {
public:
    Vocoder(const HiftModel & model, const ComputeBackends & backends);
    ~Vocoder();

    const HiftHparams & hparams() const;

    // `mel` is [n_mel][n_frames] row-major (natural-log mel, §2.8.4). Throws InvalidArgument for
    // no frames, non-finite values or injected arrays of the wrong size.
    VocodeResult vocode(const float * mel, int64_t n_frames, const VocodeOptions & opt = {});

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

} // namespace minicpm
