// MiniCPM-V vision path: SigLIP NaViT encoder (modeling_navit_siglip.py) and the 2D perceiver
// resampler (Resampler in modeling_minicpmo.py / resampler.py). Weights use clip.cpp's names
// (names.def), so both our model files and llama.cpp mmproj files load.
#pragma once

#include "minicpm/minicpm.h"

#include "core/backend.h"
#include "core/component.h"
#include "core/debug.h"
#include "core/gguf_file.h"
#include "core/runner.h"
#include "core/weights.h"
#include "preprocess/image.h"

#include "ggml-backend.h"
#include "ggml.h"

#include <memory>
#include <string>
#include <vector>

namespace minicpm {

struct VisionHparams {
    int64_t n_embd = 0;        // 1152
    int64_t n_layer = 0;       // layers stored and run (the converter drops an unused last layer)
    int64_t n_head = 0;        // 16
    int64_t n_ff = 0;          // 4304
    int64_t patch_size = 0;    // 14
    int64_t image_size = 0;    // 448: slice side (scale_resolution)
    int64_t n_pos = 0;         // rows of the position table (4900)
    int64_t pos_side = 0;      // sqrt(n_pos) = 70 buckets per side
    float   eps = 1e-6f;
    float   mean[3] = {0.5f, 0.5f, 0.5f};
    float   std[3]  = {0.5f, 0.5f, 0.5f};
    // resampler
    int64_t n_query = 0;       // 64
    int64_t rs_dim = 0;        // resampler width = LLM n_embd
    int64_t rs_heads = 0;      // rs_dim / 128
    float   rs_eps = 1e-6f;
    // prompt layout defaults
    int     max_slice_nums = 9;
    bool    use_image_id = true;
    int     minicpmv_version = 0;
    bool    ffn_swapped = false;   // legacy mmproj: ffn_down holds fc1 and ffn_up fc2
    // 3D resampler (minicpm.resampler.kind "3d", MiniCPM-V 4.5): keys get a temporal sin-cos
    // vector per frame and each temporal group of frames is one cross-attention.
    bool    temporal = false;

    static VisionHparams from_gguf(const GgufFile & f);
    SliceConfig slice_config() const;
};

struct VisionLayer {
    ggml_tensor * ln1_w, * ln1_b, * ln2_w, * ln2_b;
    ggml_tensor * q_w, * q_b, * k_w, * k_b, * v_w, * v_b, * o_w, * o_b;
    ggml_tensor * fc1_w, * fc1_b, * fc2_w, * fc2_b;
    ggml_tensor * qkv_w = nullptr, * qkv_b = nullptr;   // optional: [E, 3E] and [E, 3] (fuse_qkv, fold)
};

struct VisionWeights {
    ggml_tensor * patch_w = nullptr, * patch_b = nullptr, * pos = nullptr;
    std::vector<VisionLayer> layers;
    ggml_tensor * post_ln_w = nullptr, * post_ln_b = nullptr;
    // resampler
    ggml_tensor * query = nullptr, * kv_w = nullptr;
    ggml_tensor * q_w, * q_b, * k_w, * k_b, * v_w, * v_b, * o_w, * o_b;
    ggml_tensor * ln_q_w, * ln_q_b, * ln_kv_w, * ln_kv_b, * ln_post_w, * ln_post_b;
    ggml_tensor * proj = nullptr;

    static VisionWeights declare(WeightStore & store, const VisionHparams & hp);
    // One Q|K|V product (and bias) per ViT layer (WeightStore::fuse_rows); before load().
    void fuse_qkv(WeightStore & store, bool on_cpu_too);
    // ViT layers computed at load (before load(); float matrices only, else false and nothing
    // changes): one Q|K|V product per layer; with fold_norms each LayerNorm's scale and shift
    // folded into the product after it (ln1 into Q|K|V, ln2 into fc1: their ln*_w/_b become
    // nullptr, the graph normalises only); with head_to > the head size, Q|K|V rows stored in
    // heads of head_to (zero rows after each head) and o_w taking such heads (zero columns), so
    // flash attention runs at that size with no padding in the graph.
    bool fold(WeightStore & store, const VisionHparams & hp, bool fold_norms, int64_t head_to);

    // The head size of the stored Q|K|V rows (fold with head_to), 0: the model's own.
    int64_t head_stored = 0;
};

// How the graph computes, decided at load from the weights and the device. exact: every ViT
// matrix is F32, and the graph keeps f32 arithmetic throughout (parity with the float32
// reference); otherwise the weights are already rounded (F16, BF16, quantized) and the graph
// uses the fast kernels of the same precision class.
struct VisionMode {
    bool      exact = true;
    bool      flash = false;                 // ggml_flash_attn_ext in the ViT and the resampler
    ggml_type kv_type = GGML_TYPE_F32;       // K/V type of flash attention
    bool      fa_pad = false;                // pad head sizes without a fast kernel (GPUs)
    bool      pad_strided = false;           // the backend's ggml_pad takes strided views
    bool      fast_gelu = false;             // ggml_gelu (an f16 table on the CPU) instead of f32 ops
    // The head size flash attention runs at: the next one with fast GPU kernels when padding.
    int64_t fa_pad_to(int64_t d) const;
};

// The vision component: SigLIP tower + resampler weights, read-only.
class VisionModel : public Component {
public:
    const char * kind() const override { return "vision"; }
    size_t       weight_bytes() const override;

    VisionHparams                hp;
    VisionWeights                w;
    VisionMode                   mode;
    std::unique_ptr<WeightStore> store;
};

extern const ComponentType kVisionComponent;

// Host-side inputs of the graphs, exposed for tests.
// Rows of the position table for a ph x pw patch grid, row-major: NaViT bucketing onto a
// side x side table with the reference's float32 arithmetic (SiglipVisionEmbeddings.forward).
std::vector<int32_t> navit_position_ids(int64_t ph, int64_t pw, int64_t side);
// The resampler's 2D sin-cos key positions for a ph x pw grid, [ph * pw][dim] row-major
// (get_2d_sincos_pos_embed: column half first); dim must be a multiple of 4.
std::vector<float> resampler_pos_embed(int64_t dim, int64_t ph, int64_t pw);
// The 3D resampler's temporal vector of id t, [dim] (get_1d_sincos_pos_embed_from_temporal_size:
// dim/2 frequencies, sines then cosines); id -1 (a still image) is the zero vector.
std::vector<float> resampler_temporal_embed(int64_t dim, int64_t t);

// Frames per temporal group of a video (the reference recipe's valid packing range is 1..6).
constexpr int kMaxVideoPacking = 6;
// Temporal ids are times in units of the recipe's 0.1 s: bounded so that every id is an exact
// float32 integer (2^24 units, ~19 days).
constexpr int64_t kMaxTemporalId = (int64_t) 1 << 24;

// The compute state of the vision encoder for one session (or ImageEncoder): runs encoder +
// resampler on preprocessed slices through its own GraphRunner. Compute buffers are reserved
// once for the largest square-slice image. Not thread-safe: one owner.
class VisionEncoder {
public:
    VisionEncoder(const VisionModel & model, const ComputeBackends & backends, const DebugOptions & debug = {});
    ~VisionEncoder();

    // n_query * slices.size() embeddings of width rs_dim, row-major [slice][query][rs_dim].
    std::vector<float> encode(const std::vector<const ImageSlice *> & slices);

    // The 3D resampler (hparams().temporal): frames in order, grouped by `groups` (one temporal
    // id per frame, groups consecutive); n_query * groups.size() embeddings, [group][query][rs_dim].
    // Frames of one group must have one size. Groups of equal size and packing share a batch.
    std::vector<float> encode_temporal(const std::vector<const ImageSlice *> & frames,
                                       const std::vector<std::vector<int>> & groups);

    // For parity tests: the post-LayerNorm features of one slice, [n_patches][n_embd].
    std::vector<float> encode_vit(const ImageSlice & slice);

    // One single-patch slice through every layer (page faults, kernel start-up).
    void warm_up();

    const VisionHparams & hparams() const;

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

// Preprocesses an RGB8 image and encodes it into an ImageChunk (placeholder tokens + embeddings).
// `max_patches`: per piece, refused beyond (ModelParams::max_image_patches; 0 = no limit).
std::shared_ptr<const ImageChunk> encode_image_chunk(VisionEncoder & enc, const Tokenizer & tok, const uint8_t * rgb,
                                                     int width, int height, const ImageOptions & opts,
                                                     int64_t max_patches = 0);

// Validates a video's frames and temporal ids (counts, group sizes 1..6, id range).
void check_video_frames(const VideoFrames & video);

// Content hash of each frame (its size and pixels), on several threads.
std::vector<uint64_t> video_frame_hashes(const VideoFrames & video);

// A video given as frames with temporal ids (VideoFrames with temporal_ids): each group of frames
// becomes one unsliced image chunk without <image_id> (the reference's use_image_id=False,
// max_slice_nums=1), its embeddings from the 3D resampler. Frames are preprocessed a window at a
// time on several threads, the next window while the encoder runs the current one.
// `frame_hashes`: video_frame_hashes(video) when the caller has them (computed otherwise).
// Throws Error(Unsupported) when the model's resampler is not 3D, Error(InvalidArgument) for
// bad frames or ids.
std::vector<std::shared_ptr<const ImageChunk>> encode_video_chunks(VisionEncoder & enc, const Tokenizer & tok,
                                                                   const VideoFrames & video, int64_t max_patches = 0,
                                                                   const std::vector<uint64_t> * frame_hashes = nullptr);

} // namespace minicpm
