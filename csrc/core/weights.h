// Weight tensors of one GGUF file placed on the backends. Each tensor is declared with its
// expected shape (checked against the file before anything is allocated), then load()
// allocates one buffer per placement and fills it. On the CPU the mapped file is used in
// place (no copy).
#pragma once

#include "backend.h"
#include "gguf_file.h"

#include "ggml-backend.h"
#include "ggml.h"

#include <functional>
#include <string>
#include <vector>

namespace minicpm {

enum class Placement {
    Main,   // the compute device
    Matrix, // the compute device, used only as the first operand of ggml_mul_mat (so a
            // CPU-only model may keep it in a repacked layout)
    Host,   // always CPU memory (e.g. token embeddings read by get_rows)
};

// What a tensor is used for, which decides the types it may have (checked at declare time: a
// tensor whose type was switched to an integer type of the same size would pass the shape and
// size checks and crash the first graph).
enum class TensorRole {
    Auto,    // Vector for a tensor with one row or one column, Weight for anything larger
    Vector,  // norms, biases, position tables, queries, convolution kernels: F32, F16, BF16
    Weight,  // the matrix of a product (ggml_mul_mat) or a table read by get_rows: F32, F16,
             // BF16 or a quantized type with a CPU dot-product kernel (see weight_type_ok)
};

// Whether `type` may hold a tensor of that role. Never integer types (I8..I64), F64, Q8_1 and
// Q8_K (activation types, no dot kernel of their own) or removed and unknown types.
bool tensor_type_ok(ggml_type type, TensorRole role);
// "F32, F16, BF16" or the list of weight types, for error messages.
std::string allowed_types(TensorRole role);

class WeightStore {
public:
    WeightStore(const GgufFile & file, const Devices & devices, size_t max_tensors);
    ~WeightStore();
    WeightStore(const WeightStore &) = delete;
    WeightStore & operator=(const WeightStore &) = delete;

    // Declares a tensor that must exist with exactly this shape (ggml order, ne0 first) and a
    // type allowed for its role (TensorRole::Auto: Weight for Placement::Matrix, else from the
    // shape).
    ggml_tensor * require(const std::string & name, std::vector<int64_t> shape, Placement p = Placement::Main,
                          TensorRole role = TensorRole::Auto);
    // Same, but returns nullptr when the file has no such tensor.
    ggml_tensor * optional(const std::string & name, std::vector<int64_t> shape, Placement p = Placement::Main,
                           TensorRole role = TensorRole::Auto);

    // Stores already-declared matrices of one type and width back to back in one new tensor
    // [ne0, sum of rows] named `name`, so a single product computes them all (e.g. Q, K and V
    // projections). The parts become views into it, so other uses still work. Returns nullptr
    // (and changes nothing) when the parts cannot be fused: types or widths differ, or the model
    // runs on the CPU with fusion not forced (the mapped file cannot hold them back to back).
    ggml_tensor * fuse_rows(const std::vector<ggml_tensor *> & parts, const std::string & name, bool on_cpu_too);

    // A tensor that is not in the file but computed at load() from tensors that are (a fused
    // bias, a weight with a LayerNorm's scale folded in): `fill` receives the destination bytes
    // (ggml_row_size(type, ne0) * rows, zeroed) and may read declared tensors through
    // mapped_data() / read_f32(). It lives where fused tensors do (the compute device, or CPU
    // memory for a CPU model).
    ggml_tensor * derived(const std::string & name, ggml_type type, std::vector<int64_t> shape,
                          std::function<void(uint8_t * dst)> fill);
    // A declared tensor that the graphs will not use (a derived one replaces it): load() skips it.
    void drop(ggml_tensor * t);
    // A declared float tensor (F32/F16/BF16) of the file as F32 values.
    std::vector<float> read_f32(const ggml_tensor * t) const;

    // Allocates backend memory and copies (or maps) the data of every declared tensor.
    void load();

    size_t bytes_on_main() const { return bytes_main_; }
    size_t bytes_on_host() const { return bytes_host_; }
    // The bytes of a declared tensor in the mapped file (valid while the file is open), whatever
    // device holds the tensor itself.
    const void * mapped_data(const ggml_tensor * t) const;
    // Bytes of weights the CPU backend keeps in its repacked (interleaved) layout.
    size_t bytes_repacked() const { return bytes_repack_; }

    // CPU only: matrices that one of the CPU backend's extra buffer types can multiply faster
    // (ggml's repacked Q4_0/Q4_K/IQ4_NL/... kernels) are copied into that layout at load()
    // instead of being used from the mapped file, as llama.cpp does. On by default; off keeps
    // every weight mapped. (On an AVX-512 build, plain Q4_K kernels ran prompts ~1.6x faster but
    // decoded up to ~15% slower than repacked ones: benchmarks/RESULTS.md.)
    void set_cpu_repack(bool on) { cpu_repack_ = on; }

private:
    struct Entry {
        ggml_tensor *      tensor;
        const TensorInfo * info;
        Placement          placement;
        bool               cpu_matmul;  // a product's matrix on a CPU-only model
        ggml_backend_buffer_type_t buft; // set in load(): the CPU extra buffer type it goes to
        ggml_tensor *      fused = nullptr;   // the tensor it is a view of (fuse_rows)
        size_t             fused_offs = 0;
        bool               dropped = false;   // not loaded (drop)
    };
    struct Derived {
        ggml_tensor *                      tensor;
        std::function<void(uint8_t * dst)> fill;
    };
    ggml_backend_buffer_type_t repack_type_for(ggml_tensor * t) const;
    Entry * find_entry(const ggml_tensor * t);

    const GgufFile &      file_;
    const Devices &       devices_;
    ggml_context *        ctx_main_ = nullptr;
    ggml_context *        ctx_host_ = nullptr;
    ggml_context *        ctx_fused_ = nullptr;   // tensors made by fuse_rows
    std::vector<Entry>    entries_;
    std::vector<Derived>  derived_;
    std::vector<ggml_backend_buffer_t> buffers_;
    size_t                bytes_main_ = 0;
    size_t                bytes_host_ = 0;
    size_t                bytes_repack_ = 0;
    bool                  cpu_repack_ = true;
    std::vector<ggml_backend_buffer_type_t> extra_bufts_;
};

} // namespace minicpm
