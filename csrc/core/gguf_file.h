// A GGUF file opened for reading: metadata with type-checked getters, tensor infos, and the
// file mapped into memory. Every check that can fail on user input happens here, before
// ggml sees the data (ggml's own getters assert on a type mismatch).
#pragma once

#include "ggml.h"
#include "gguf.h"

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace minicpm {

class MappedFile {
public:
    explicit MappedFile(const std::string & path);
    ~MappedFile();
    MappedFile(const MappedFile &) = delete;
    MappedFile & operator=(const MappedFile &) = delete;

    const uint8_t * data() const { return data_; }
    size_t          size() const { return size_; }

private:
    uint8_t *            data_ = nullptr;
    size_t               size_ = 0;
    std::vector<uint8_t> fallback_;   // used where mmap is not available
};

struct TensorInfo {
    std::string name;
    ggml_type   type;
    int64_t     ne[GGML_MAX_DIMS];
    int         n_dims;
    size_t      offset;   // absolute offset of the data in the file
    size_t      nbytes;
};

class GgufFile {
public:
    // Throws Error(File) if missing/unreadable, Error(Format) if not a valid or complete GGUF.
    explicit GgufFile(const std::string & path);
    ~GgufFile();
    GgufFile(const GgufFile &) = delete;
    GgufFile & operator=(const GgufFile &) = delete;

    const std::string & path() const { return path_; }
    const gguf_context * ctx() const { return ctx_; }

    bool has_key(const std::string & key) const;
    // Typed getters: throw Error(Format) naming the key, the expected and the actual type.
    std::string           get_str(const std::string & key) const;
    uint32_t              get_u32(const std::string & key) const;   // accepts any integer type >= 0
    float                 get_f32(const std::string & key) const;   // accepts f32/f64
    bool                  get_bool(const std::string & key) const;
    std::vector<std::string> get_str_array(const std::string & key) const;
    std::vector<int32_t>  get_i32_array(const std::string & key) const;

    std::optional<std::string> opt_str(const std::string & key) const;
    std::optional<uint32_t>    opt_u32(const std::string & key) const;
    std::optional<float>       opt_f32(const std::string & key) const;
    std::optional<bool>        opt_bool(const std::string & key) const;

    const std::vector<TensorInfo> & tensors() const { return tensors_; }
    const TensorInfo *              find_tensor(const std::string & name) const;

    const MappedFile & mapping() const { return *map_; }

private:
    // Fills tensors_ from ctx_, checking each tensor's size and extent against the file.
    void read_tensor_infos();

    std::string                 path_;
    gguf_context *              ctx_ = nullptr;
    std::unique_ptr<MappedFile> map_;
    std::vector<TensorInfo>     tensors_;
};

// "[4096, 151748]" for error messages.
std::string shape_str(const int64_t * ne, int n_dims);

// Checks of hyperparameters read from a file, made before ggml sees them (ggml asserts, and so
// aborts the process, where a size is out of its range). Each fails with Error(Format) naming
// the file, the key and the value.
//
// lo <= v <= hi.
void check_int_range(const GgufFile & f, const std::string & key, int64_t v, int64_t lo, int64_t hi);
// v finite and lo <= v <= hi (lo < v where lo_open).
void check_float_range(const GgufFile & f, const std::string & key, float v, float lo, float hi, bool lo_open = false);
// A layer count n read from `key`: n <= max_layers, n no larger than the file's tensor count,
// and the file holds `last_layer_tensor` (a tensor of layer n - 1). Checked before any
// per-layer allocation, so a huge count cannot size a ggml context.
void check_layer_count(const GgufFile & f, const std::string & key, int64_t n, int64_t max_layers,
                       const std::string & last_layer_tensor);

} // namespace minicpm
