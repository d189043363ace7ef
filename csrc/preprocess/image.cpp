// MiniCPM-V image preprocessing. Geometry follows the reference processor step by step in
// double precision (Python float semantics: true division, round() to even, int()
// truncation); the resize reproduces Pillow's fixed-point bicubic convolution.
#include "preprocess/image.h"

#include "core/parallel.h"
#include "minicpm/error.h"
#include "preprocess/tokenizer.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <thread>
#include <vector>

namespace minicpm {

namespace {

[[noreturn]] void invalid(const std::string & msg) {
    throw Error(ErrorKind::InvalidArgument, msg);
}

// Runs fn(begin, end) over [0, n) in contiguous bands on up to 8 threads when the work
// (n * cost_per_item multiply-adds) is large enough to pay for starting them. The bands
// compute exactly what one call would (every output is independent).
template <typename Fn> void parallel_bands(int n, int64_t cost_per_item, Fn fn) {
    const int64_t min_work = 1 << 20;
    if (in_parallel_worker()) {   // one image of several being preprocessed side by side
        fn(0, n);
        return;
    }
    int n_threads = (int) std::min<int64_t>({(int64_t) std::max(1u, std::thread::hardware_concurrency()), 8,
                                             (int64_t) n * cost_per_item / min_work, (int64_t) n});
    if (n_threads <= 1) {
        fn(0, n);
        return;
    }
    std::vector<std::thread> pool;
    const int band = (n + n_threads - 1) / n_threads;
    for (int t = 1; t < n_threads; ++t) {
        const int b0 = t * band, b1 = std::min(n, b0 + band);
        if (b0 < b1) pool.emplace_back(fn, b0, b1);
    }
    fn(0, std::min(n, band));
    for (auto & th : pool) th.join();
}

std::string size_str(int64_t w, int64_t h) {
    return std::to_string(w) + "x" + std::to_string(h);
}

void check_config(const SliceConfig & cfg) {
    if (cfg.patch_size < 1 || cfg.patch_size > 1024) {
        invalid("slice config: patch_size must be in [1, 1024], got " + std::to_string(cfg.patch_size));
    }
    if (cfg.scale_resolution < cfg.patch_size || cfg.scale_resolution > 16384) {
        invalid("slice config: scale_resolution must be in [patch_size, 16384], got " +
                std::to_string(cfg.scale_resolution));
    }
    if (cfg.max_slice_nums < 1 || cfg.max_slice_nums > 1024) {
        invalid("slice config: max_slice_nums must be in [1, 1024], got " + std::to_string(cfg.max_slice_nums));
    }
    for (int c = 0; c < 3; ++c) {
        if (!std::isfinite(cfg.mean[c]) || !std::isfinite(cfg.std[c]) || cfg.std[c] == 0.0f) {
            invalid("slice config: mean must be finite and std finite and non-zero (channel " +
                    std::to_string(c) + ")");
        }
    }
}

void check_image_size(int width, int height) {
    if (width <= 0 || height <= 0) {
        invalid("image size " + size_str(width, height) + ": width and height must be positive");
    }
    if ((int64_t) width * height > kMaxImagePixels) {
        invalid("image size " + size_str(width, height) + " has more than " + std::to_string(kMaxImagePixels) +
                " pixels");
    }
}

// Python's round() on a float: nearest integer, halves to the even neighbour.
double round_half_even(double x) {
    const double f = std::floor(x);
    const double frac = x - f;   // exact for |x| < 2^52
    if (frac > 0.5) return f + 1.0;
    if (frac < 0.5) return f;
    return std::fmod(f, 2.0) == 0.0 ? f : f + 1.0;
}

// Reference ensure_divide: max(round(length / p) * p, p).
int ensure_divide(double length, int p) {
    const double v = round_half_even(length / (double) p) * (double) p;
    return (int) std::max(v, (double) p);
}

// Reference find_best_resize. `w`, `h` are Python numbers (ints for an image size, floats
// for a refine cell); the product test is exact for every size we accept.
void find_best_resize(double w, double h, const SliceConfig & cfg, bool allow_upscale, int * out_w, int * out_h) {
    const double s = (double) cfg.scale_resolution;
    if (w * h > s * s || allow_upscale) {
        const double r = w / h;
        h = std::trunc(s / std::sqrt(r));
        w = std::trunc(h * r);
    }
    *out_w = ensure_divide(w, cfg.patch_size);
    *out_h = ensure_divide(h, cfg.patch_size);
}

void check_output_size(const char * what, int w, int h) {
    if ((int64_t) w * h > kMaxImagePixels) {
        invalid(std::string("image preprocessing: the ") + what + " would be " + size_str(w, h) +
                ", more than " + std::to_string(kMaxImagePixels) + " pixels");
    }
}

// ---------------------------------------------------------------------------------------
// Pillow-compatible bicubic resampling.
//
// Each output sample is a convolution of the input row (or column) with a cubic kernel
// (a = -0.5) centred on the output pixel's centre mapped into input coordinates. When
// shrinking, the kernel is widened by the reduction factor (antialiasing). Weights are
// normalised to sum 1 in double, then converted to fixed point with kPrecisionBits
// fractional bits, rounding halves away from zero; sums start at half a unit, are shifted
// back and clipped to [0, 255]. The image is resampled in two separable passes with an
// 8-bit intermediate.

constexpr int kPrecisionBits = 32 - 8 - 2;   // 8 bits of result, 2 bits of headroom

double cubic_weight(double x) {
    constexpr double a = -0.5;
    if (x < 0.0) x = -x;
    if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
    if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
    return 0.0;
}

// Weights of output samples [begin, end) of a resampling from in_size to out_size samples.
// Computed in chunks so that an extreme reduction (a kernel of millions of taps) never
// holds more than about kMaxKernelEntries weights.
struct Kernel {
    int                  begin = 0;    // first output sample covered
    int                  taps  = 0;    // coefficients stored per output sample
    std::vector<int>     first;        // first input index of each output sample
    std::vector<int>     count;        // number of inputs used
    std::vector<int32_t> weights;      // (end - begin) * taps fixed-point weights
};

constexpr int64_t kMaxKernelEntries = 1 << 22;

struct KernelShape {
    double scale, support, inv_filterscale;
    int    taps;
};

KernelShape kernel_shape(int in_size, int out_size) {
    constexpr double support_1x = 2.0;
    KernelShape ks;
    // The box edges are single-precision floats in Pillow.
    ks.scale = (double) ((float) in_size - 0.0f) / out_size;
    const double filterscale = std::max(ks.scale, 1.0);
    ks.support         = support_1x * filterscale;
    ks.inv_filterscale = 1.0 / filterscale;
    ks.taps            = (int) std::ceil(ks.support) * 2 + 1;
    return ks;
}

// Number of output samples per chunk.
int kernel_chunk(int in_size, int out_size) {
    const int64_t taps = kernel_shape(in_size, out_size).taps;
    return (int) std::max<int64_t>(1, std::min<int64_t>(out_size, kMaxKernelEntries / taps));
}

Kernel make_kernel(int in_size, int out_size, int begin, int end) {
    const KernelShape ks = kernel_shape(in_size, out_size);
    Kernel k;
    k.begin = begin;
    k.taps  = ks.taps;
    const int n_out = end - begin;
    k.first.resize(n_out);
    k.count.resize(n_out);
    k.weights.assign((size_t) n_out * k.taps, 0);
    std::vector<double> w(k.taps);

    for (int o = begin; o < end; ++o) {
        const double center = (o + 0.5) * ks.scale;
        int lo = (int) (center - ks.support + 0.5);
        if (lo < 0) lo = 0;
        int hi = (int) (center + ks.support + 0.5);
        if (hi > in_size) hi = in_size;
        const int n = hi - lo;
        double sum = 0.0;
        for (int i = 0; i < n; ++i) {
            w[i] = cubic_weight((i + lo - center + 0.5) * ks.inv_filterscale);
            sum += w[i];
        }
        int32_t * dst = &k.weights[(size_t) (o - begin) * k.taps];
        for (int i = 0; i < n; ++i) {
            const double v = sum != 0.0 ? w[i] / sum : w[i];
            const double fixed = v * (double) (1 << kPrecisionBits);
            dst[i] = (int32_t) (v < 0 ? -0.5 + fixed : 0.5 + fixed);
        }
        k.first[o - begin] = lo;
        k.count[o - begin] = n;
    }
    return k;
}

inline uint8_t clip_fixed(int32_t acc) {
    const int32_t v = acc >> kPrecisionBits;   // arithmetic shift: floor division
    return (uint8_t) (v < 0 ? 0 : (v > 255 ? 255 : v));
}

// Horizontal pass: rows [row0, row0 + rows) of `src` (width in_w) into `dst` (width out_w).
void pass_horizontal(const uint8_t * src, int in_w, int row0, int rows, int out_w, uint8_t * dst) {
    const int32_t half  = 1 << (kPrecisionBits - 1);
    const int     chunk = kernel_chunk(in_w, out_w);
    for (int x0 = 0; x0 < out_w; x0 += chunk) {
        const int    x1 = std::min(out_w, x0 + chunk);
        const Kernel k  = make_kernel(in_w, out_w, x0, x1);
        for (int y = 0; y < rows; ++y) {
            const uint8_t * line = src + ((size_t) (row0 + y) * in_w) * 3;
            uint8_t *       out  = dst + (size_t) y * out_w * 3;
            for (int x = x0; x < x1; ++x) {
                const int32_t * wt = &k.weights[(size_t) (x - x0) * k.taps];
                const uint8_t * p  = line + (size_t) k.first[x - x0] * 3;
                int32_t s0 = half, s1 = half, s2 = half;
                for (int i = 0, n = k.count[x - x0]; i < n; ++i) {
                    s0 += p[3 * i + 0] * wt[i];
                    s1 += p[3 * i + 1] * wt[i];
                    s2 += p[3 * i + 2] * wt[i];
                }
                out[3 * x + 0] = clip_fixed(s0);
                out[3 * x + 1] = clip_fixed(s1);
                out[3 * x + 2] = clip_fixed(s2);
            }
        }
    }
}

// Vertical pass from in_h to out_h rows (output rows [y_begin, y_end)); `src` has width w and
// holds source rows from row0 on.
void pass_vertical(const uint8_t * src, int w, int in_h, int row0, int out_h, uint8_t * dst, int y_begin, int y_end) {
    const int32_t half   = 1 << (kPrecisionBits - 1);
    const size_t  stride = (size_t) w * 3;
    const int     chunk  = kernel_chunk(in_h, out_h);
    std::vector<int32_t> acc(stride);
    for (int y0 = y_begin; y0 < y_end; y0 += chunk) {
        const int    y1 = std::min(y_end, y0 + chunk);
        const Kernel k  = make_kernel(in_h, out_h, y0, y1);
        for (int y = y0; y < y1; ++y) {
            std::fill(acc.begin(), acc.end(), half);
            const int32_t * wt = &k.weights[(size_t) (y - y0) * k.taps];
            for (int i = 0, n = k.count[y - y0]; i < n; ++i) {
                const uint8_t * line = src + (size_t) (k.first[y - y0] - row0 + i) * stride;
                const int32_t   c    = wt[i];
                for (size_t j = 0; j < stride; ++j) acc[j] += line[j] * c;
            }
            uint8_t * out = dst + (size_t) y * stride;
            for (size_t j = 0; j < stride; ++j) out[j] = clip_fixed(acc[j]);
        }
    }
}

// The two passes over all rows, split across threads.
void pass_horizontal_mt(const uint8_t * src, int in_w, int row0, int rows, int out_w, uint8_t * dst) {
    const int64_t taps = kernel_shape(in_w, out_w).taps;
    parallel_bands(rows, (int64_t) out_w * 3 * taps, [&](int b0, int b1) {
        pass_horizontal(src, in_w, row0 + b0, b1 - b0, out_w, dst + (size_t) b0 * out_w * 3);
    });
}
void pass_vertical_mt(const uint8_t * src, int w, int in_h, int row0, int out_h, uint8_t * dst) {
    const int64_t taps = kernel_shape(in_h, out_h).taps;
    parallel_bands(out_h, (int64_t) w * 3 * taps, [&](int b0, int b1) {
        pass_vertical(src, w, in_h, row0, out_h, dst, b0, b1);
    });
}

bool vertical_first(int in_w, int in_h, int out_w, int out_h);

std::vector<uint8_t> resize_impl(const uint8_t * rgb, int in_w, int in_h, int out_w, int out_h, int order) {
    const bool need_h = out_w != in_w;
    const bool need_v = out_h != in_h;
    if (!need_h && !need_v) return std::vector<uint8_t>(rgb, rgb + (size_t) in_w * in_h * 3);

    const bool v_first = need_h && need_v &&
                         (order < 0 ? vertical_first(in_w, in_h, out_w, out_h) : order == 1);
    std::vector<uint8_t> out((size_t) out_w * out_h * 3);
    if (!need_v) {
        pass_horizontal_mt(rgb, in_w, 0, in_h, out_w, out.data());
    } else if (!need_h) {
        pass_vertical_mt(rgb, in_w, in_h, 0, out_h, out.data());
    } else if (v_first) {
        std::vector<uint8_t> tmp((size_t) in_w * out_h * 3);
        pass_vertical_mt(rgb, in_w, in_h, 0, out_h, tmp.data());
        pass_horizontal_mt(tmp.data(), in_w, 0, out_h, out_w, out.data());
    } else {
        // Only the source rows that the vertical kernel reaches are resampled horizontally.
        const Kernel top    = make_kernel(in_h, out_h, 0, 1);
        const Kernel bottom = make_kernel(in_h, out_h, out_h - 1, out_h);
        const int    row0   = top.first[0];
        const int    row1   = bottom.first[0] + bottom.count[0];
        std::vector<uint8_t> tmp((size_t) out_w * (row1 - row0) * 3);
        pass_horizontal_mt(rgb, in_w, row0, row1 - row0, out_w, tmp.data());
        pass_vertical_mt(tmp.data(), out_w, in_h, row0, out_h, out.data());
    }
    return out;
}

bool vertical_first(int in_w, int in_h, int out_w, int out_h) {
    const int64_t rows_lost = (int64_t) in_h - out_h;
    const int64_t cols_lost = (int64_t) in_w - out_w;
    return rows_lost > 0 && rows_lost > cols_lost * 2;
}

void crop_normalise(const uint8_t * rgb, int width, int x0, int y0, int w, int h, const SliceConfig & cfg,
                    ImageSlice * out) {
    out->width  = w;
    out->height = h;
    out->pixels.resize((size_t) 3 * w * h);
    // The reference divides float32 pixels by 255 and applies mean/std cast to float32:
    // every step is one float32 operation, so the result is bit-identical. A pixel has 256
    // values: the results are tabulated once per channel.
    float lut[3][256];
    for (int c = 0; c < 3; ++c) {
        const float mean = cfg.mean[c];
        const float sd   = cfg.std[c];
        for (int i = 0; i < 256; ++i) {
            const float v = (float) i / 255.0f;
            lut[c][i] = (v - mean) / sd;
        }
    }
    float * d0 = out->pixels.data();
    float * d1 = d0 + (size_t) w * h;
    float * d2 = d1 + (size_t) w * h;
    for (int y = 0; y < h; ++y) {
        const uint8_t * src = rgb + ((size_t) (y0 + y) * width + x0) * 3;
        const size_t    row = (size_t) y * w;
        for (int x = 0; x < w; ++x) {
            d0[row + x] = lut[0][src[3 * x + 0]];
            d1[row + x] = lut[1][src[3 * x + 1]];
            d2[row + x] = lut[2][src[3 * x + 2]];
        }
    }
}

} // namespace

// ---------------------------------------------------------------------------------------

SliceGrid best_grid(int width, int height, const SliceConfig & cfg) {
    check_config(cfg);
    check_image_size(width, height);
    const double  log_ratio = std::log((double) width / (double) height);
    const double  ratio = (double) ((int64_t) width * height) /
                         (double) ((int64_t) cfg.scale_resolution * cfg.scale_resolution);
    const int64_t multiple = std::min<int64_t>((int64_t) std::ceil(ratio), cfg.max_slice_nums);
    if (multiple <= 1) return {};

    SliceGrid best{1, 1};
    double    min_error = std::numeric_limits<double>::infinity();
    for (int64_t n = multiple - 1; n <= multiple + 1; ++n) {
        if (n == 1 || n > cfg.max_slice_nums) continue;
        for (int64_t m = 1; m <= n; ++m) {
            if (n % m != 0) continue;
            const double error = std::fabs(log_ratio - std::log((double) m / (double) (n / m)));
            if (error < min_error) {
                best      = SliceGrid{(int) m, (int) (n / m)};
                min_error = error;
            }
        }
    }
    return best;
}

void overview_size(int width, int height, const SliceConfig & cfg, int * out_w, int * out_h) {
    const SliceGrid grid = best_grid(width, height, cfg);
    // Unsliced images are resized to about scale_resolution^2 either way (upscaled when
    // small); sliced ones are only ever shrunk.
    find_best_resize(width, height, cfg, !grid.sliced(), out_w, out_h);
}

void refine_size(int width, int height, SliceGrid grid, const SliceConfig & cfg, int * out_w, int * out_h) {
    check_config(cfg);
    check_image_size(width, height);
    if (!grid.sliced()) {
        invalid("refine_size: grid " + size_str(grid.cols, grid.rows) + " is not a slicing grid");
    }
    const int    refine_w = ensure_divide(width, grid.cols);
    const int    refine_h = ensure_divide(height, grid.rows);
    const double cell_w   = (double) refine_w / grid.cols;
    const double cell_h   = (double) refine_h / grid.rows;
    int          best_w = 0, best_h = 0;
    find_best_resize(cell_w, cell_h, cfg, true, &best_w, &best_h);
    *out_w = best_w * grid.cols;
    *out_h = best_h * grid.rows;
}

std::vector<uint8_t> resize_bicubic_pillow(const uint8_t * rgb, int width, int height, int out_w, int out_h) {
    check_image_size(width, height);
    if (out_w <= 0 || out_h <= 0) invalid("resize: output size " + size_str(out_w, out_h) + " must be positive");
    check_output_size("resized image", out_w, out_h);
    if (!rgb) invalid("resize: null image data");
    return resize_impl(rgb, width, height, out_w, out_h, -1);
}

std::vector<uint8_t> resize_bicubic_pillow_ordered(const uint8_t * rgb, int width, int height, int out_w, int out_h,
                                                   bool vertical_pass_first) {
    check_image_size(width, height);
    if (out_w <= 0 || out_h <= 0) invalid("resize: output size " + size_str(out_w, out_h) + " must be positive");
    check_output_size("resized image", out_w, out_h);
    if (!rgb) invalid("resize: null image data");
    return resize_impl(rgb, width, height, out_w, out_h, vertical_pass_first ? 1 : 0);
}

PreprocessedImage preprocess_image(const uint8_t * rgb, int width, int height, const SliceConfig & cfg) {
    check_config(cfg);
    check_image_size(width, height);
    if (!rgb) invalid("preprocess_image: null image data");

    PreprocessedImage res;
    res.grid = best_grid(width, height, cfg);

    int ow = 0, oh = 0;
    overview_size(width, height, cfg, &ow, &oh);
    check_output_size("overview", ow, oh);
    int rw = 0, rh = 0;
    if (res.grid.sliced()) {
        refine_size(width, height, res.grid, cfg, &rw, &rh);
        check_output_size("refine image", rw, rh);
    }
    // Attention over one piece grows with the square of its patches: refuse pieces past the limit
    // before resizing anything.
    auto check_patches = [&](const char * what, int w, int h) {
        const int64_t n = (int64_t) (w / cfg.patch_size) * (h / cfg.patch_size);
        if (cfg.max_patches > 0 && n > cfg.max_patches) {
            invalid("image of " + size_str(width, height) + ": its " + what + " would be " + size_str(w, h) +
                    " pixels = " + std::to_string(n) + " patches, more than the limit of " +
                    std::to_string(cfg.max_patches) + " (max_image_patches; a normal piece has about " +
                    std::to_string((int64_t) (cfg.scale_resolution / cfg.patch_size) * (cfg.scale_resolution / cfg.patch_size)) +
                    "): such an extreme aspect ratio costs a quadratic attention over all of them");
        }
    };
    check_patches("overview", ow, oh);
    if (res.grid.sliced()) check_patches("slices", rw / res.grid.cols, rh / res.grid.rows);

    {
        const std::vector<uint8_t> ov = resize_impl(rgb, width, height, ow, oh, -1);
        crop_normalise(ov.data(), ow, 0, 0, ow, oh, cfg, &res.overview);
    }
    if (res.grid.sliced()) {
        const std::vector<uint8_t> refine = resize_impl(rgb, width, height, rw, rh, -1);
        const int cell_w = rw / res.grid.cols;
        const int cell_h = rh / res.grid.rows;
        res.slices.resize((size_t) res.grid.cols * res.grid.rows);
        for (int r = 0; r < res.grid.rows; ++r) {
            for (int c = 0; c < res.grid.cols; ++c) {
                crop_normalise(refine.data(), rw, c * cell_w, r * cell_h, cell_w, cell_h, cfg,
                               &res.slices[(size_t) r * res.grid.cols + c]);
            }
        }
    }
    return res;
}

std::string image_placeholder_text(SliceGrid grid, int n_query, std::optional<int> image_id) {
    if (n_query < 1 || n_query > 65536) {
        invalid("image placeholder: n_query must be in [1, 65536], got " + std::to_string(n_query));
    }
    if (image_id && *image_id < 0) {
        invalid("image placeholder: image_id must be >= 0, got " + std::to_string(*image_id));
    }
    if (grid.cols < 0 || grid.rows < 0 || (grid.cols == 0) != (grid.rows == 0) ||
        (int64_t) grid.cols * grid.rows > 1024) {
        invalid("image placeholder: bad grid " + size_str(grid.cols, grid.rows));
    }
    std::string unk;
    unk.reserve((size_t) n_query * 5);
    for (int i = 0; i < n_query; ++i) unk += "<unk>";

    std::string s;
    if (image_id) s += "<image_id>" + std::to_string(*image_id) + "</image_id>";
    s += "<image>" + unk + "</image>";
    for (int r = 0; r < grid.rows; ++r) {
        if (r > 0) s += "\n";
        for (int c = 0; c < grid.cols; ++c) s += "<slice>" + unk + "</slice>";
    }
    return s;
}

std::vector<int32_t> image_placeholder_tokens(const Tokenizer & tok, SliceGrid grid, int n_query,
                                              std::optional<int> image_id,
                                              std::vector<int32_t> * image_embed_positions) {
    const std::string text = image_placeholder_text(grid, n_query, image_id);

    const char * const names[] = {"<image>", "</image>", "<slice>", "</slice>", "<unk>"};
    int32_t ids[5];
    for (int i = 0; i < 5; ++i) {
        ids[i] = tok.find_token(names[i]);
        if (ids[i] < 0) {
            throw Error(ErrorKind::Unsupported,
                        std::string("image placeholder: the tokenizer has no ") + names[i] + " token");
        }
    }
    const int32_t im_start = ids[0], im_end = ids[1], sl_start = ids[2], sl_end = ids[3], unk = ids[4];

    std::vector<int32_t> out = tok.encode(text, true);

    // As the reference's image_bound: every token strictly between a start token (<image>,
    // <slice>) and the next end token (</image>, </slice>).
    std::vector<int32_t> positions;
    int64_t open = -1;
    int     spans = 0;
    for (size_t i = 0; i < out.size(); ++i) {
        const int32_t t = out[i];
        if (t == im_start || t == sl_start) {
            open = (int64_t) i;
        } else if ((t == im_end || t == sl_end) && open >= 0) {
            const int64_t n = (int64_t) i - open - 1;
            if (n != n_query) {
                throw Error(ErrorKind::Format, "image placeholder: a span holds " + std::to_string(n) +
                                                   " tokens, expected " + std::to_string(n_query) +
                                                   ": the model's tokenizer does not keep <unk> as a single "
                                                   "token (check tokenizer.ggml.token_type)");
            }
            for (int64_t j = open + 1; j < (int64_t) i; ++j) {
                if (out[j] != unk) {
                    throw Error(ErrorKind::Format, "image placeholder: <unk> did not encode as one token: the model's "
                                                   "tokenizer does not keep it as a single token (check "
                                                   "tokenizer.ggml.token_type)");
                }
                positions.push_back((int32_t) j);
            }
            open = -1;
            ++spans;
        }
    }
    const int expected_spans = 1 + grid.cols * grid.rows;
    if (spans != expected_spans) {
        // A vocabulary whose markers are not added tokens (tokenizer.ggml.token_type missing or
        // rewritten) splits "<image>" into pieces: the file is at fault, not the caller.
        throw Error(ErrorKind::Format, "image placeholder: found " + std::to_string(spans) + " image spans, expected " +
                                           std::to_string(expected_spans) +
                                           ": the model's tokenizer does not keep the image markers as single "
                                           "tokens (check tokenizer.ggml.token_type)");
    }
    if (image_embed_positions) *image_embed_positions = std::move(positions);
    return out;
}

} // namespace minicpm
