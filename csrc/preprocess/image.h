// MiniCPM-V image preprocessing, identical to the reference processor
// (MiniCPMVImageProcessor / processing_minicpmo.py): slicing decision and grid, overview and
// refine sizes, Pillow-exact bicubic resize, normalisation, and the placeholder token layout.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace minicpm {

class Tokenizer;

struct SliceConfig {
    int   scale_resolution = 448;   // target side of a slice (area ~ scale_resolution^2)
    int   patch_size       = 14;
    int   max_slice_nums   = 9;     // 1 = never slice
    float mean[3]          = {0.5f, 0.5f, 0.5f};
    float std[3]           = {0.5f, 0.5f, 0.5f};
    int64_t max_patches    = 0;     // patches per piece (overview or slice) refused beyond; 0 = no limit
};

struct SliceGrid {
    int cols = 0;   // 0 x 0: the image is not sliced
    int rows = 0;
    bool sliced() const { return cols > 0 && rows > 0; }
};

// One normalised image piece, planar float [3][h][w]; w and h are multiples of patch_size.
struct ImageSlice {
    int                width  = 0;
    int                height = 0;
    std::vector<float> pixels;
};

struct PreprocessedImage {
    ImageSlice              overview;
    std::vector<ImageSlice> slices;   // row-major: top row first, left to right
    SliceGrid               grid;
};

// Limits that keep a hostile image from taking unbounded memory; checked before any work.
constexpr int64_t kMaxImagePixels = 178956970;   // Pillow's decompression-bomb error threshold

// Geometry only (pure functions, for tests and for counting tokens).
SliceGrid best_grid(int width, int height, const SliceConfig & cfg);
void      overview_size(int width, int height, const SliceConfig & cfg, int * out_w, int * out_h);
void      refine_size(int width, int height, SliceGrid grid, const SliceConfig & cfg, int * out_w, int * out_h);

// Resize an RGB8 image exactly as Pillow's Image.resize(size, BICUBIC) does (antialiased
// when shrinking, 8-bit intermediate between the horizontal and vertical passes, in the
// order Pillow 13 picks: vertical first when the height loses more than twice as many
// rows as the width loses columns). Throws Error(InvalidArgument) for an empty or
// oversized input or output.
std::vector<uint8_t> resize_bicubic_pillow(const uint8_t * rgb, int width, int height, int out_w, int out_h);

// The same with the order of the two separable passes forced (for tests of the order rule).
std::vector<uint8_t> resize_bicubic_pillow_ordered(const uint8_t * rgb, int width, int height, int out_w, int out_h,
                                                   bool vertical_pass_first);

// Full pipeline. rgb: width*height*3 bytes, row-major. Throws Error(InvalidArgument) for a
// zero or oversized image, or a bad config.
PreprocessedImage preprocess_image(const uint8_t * rgb, int width, int height, const SliceConfig & cfg);

// The placeholder text the reference builds (get_slice_image_placeholder) for this grid.
std::string image_placeholder_text(SliceGrid grid, int n_query, std::optional<int> image_id);

// Token ids of one image's placeholder: [<image_id>N</image_id>] <image> <unk>*n_query </image>
// then, when sliced, rows of (<slice> <unk>*n_query </slice>) separated by "\n".
// `image_embed_positions` receives the index (within the returned ids) of every <unk> that an
// image embedding replaces, in the order overview, slice(0,0), slice(0,1), ...
std::vector<int32_t> image_placeholder_tokens(const Tokenizer & tok, SliceGrid grid, int n_query,
                                              std::optional<int> image_id,
                                              std::vector<int32_t> * image_embed_positions);

} // namespace minicpm
