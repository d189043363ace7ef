#include "gguf_file.h"

#include "error.h"
#include "log.h"

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <sys/stat.h>

#if !defined(_WIN32)
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>
#endif

namespace minicpm {

std::string shape_str(const int64_t * ne, int n_dims) {
    std::string s = "[";
    for (int i = 0; i < n_dims; ++i) {
        if (i) s += ", ";
        s += std::to_string(ne[i]);
    }
    return s + "]";
}

MappedFile::MappedFile(const std::string & path) {
#if !defined(_WIN32)
    int fd = ::open(path.c_str(), O_RDONLY);
    if (fd < 0) {
        fail(ErrorKind::File, "cannot open " + path + ": " + std::strerror(errno));
    }
    struct stat st {};
    if (fstat(fd, &st) != 0) {
        ::close(fd);
        fail(ErrorKind::File, "cannot stat " + path);
    }
    size_ = (size_t) st.st_size;
    if (size_ > 0) {
        void * p = mmap(nullptr, size_, PROT_READ, MAP_SHARED, fd, 0);
        if (p == MAP_FAILED) {
            ::close(fd);
            fail(ErrorKind::File, "cannot map " + path + " into memory: " + std::strerror(errno));
        }
        data_ = (uint8_t *) p;
    }
    ::close(fd);
#else
    FILE * f = std::fopen(path.c_str(), "rb");
    if (!f) {
        fail(ErrorKind::File, "cannot open " + path);
    }
    std::fseek(f, 0, SEEK_END);
    size_ = (size_t) std::ftell(f);
    std::fseek(f, 0, SEEK_SET);
    fallback_.resize(size_);
    if (size_ && std::fread(fallback_.data(), 1, size_, f) != size_) {
        std::fclose(f);
        fail(ErrorKind::File, "cannot read " + path);
    }
    std::fclose(f);
    data_ = fallback_.data();
#endif
}

MappedFile::~MappedFile() {
#if !defined(_WIN32)
    if (data_ && size_) {
        munmap(data_, size_);
    }
#endif
}

GgufFile::GgufFile(const std::string & path) : path_(path) {
    install_ggml_logger();
    if (path.find('\0') != std::string::npos) {
        fail(ErrorKind::InvalidArgument, "model path contains a NUL character");
    }
    struct stat st {};
    if (stat(path.c_str(), &st) != 0) {
        fail(ErrorKind::File, "model file not found: " + path);
    }
    if (S_ISDIR(st.st_mode)) {
        fail(ErrorKind::File, path + " is a directory, expected a .gguf file");
    }
    // Regular files only: a FIFO or a device would block the open() or read forever.
    if (!S_ISREG(st.st_mode)) {
        fail(ErrorKind::File, path + " is not a regular file");
    }
    // Check the magic ourselves so a non-GGUF file gets a plain message.
    {
        FILE * f = std::fopen(path.c_str(), "rb");
        if (!f) {
            fail(ErrorKind::File, "cannot open " + path + ": " + std::strerror(errno));
        }
        char magic[4] = {0, 0, 0, 0};
        size_t n = std::fread(magic, 1, 4, f);
        std::fclose(f);
        if (n < 4 || std::memcmp(magic, "GGUF", 4) != 0) {
            fail(ErrorKind::Format, path + " is not a GGUF file (bad magic)");
        }
    }
    take_ggml_errors();
    gguf_init_params params = {/*no_alloc =*/true, /*ctx =*/nullptr};
    ctx_ = gguf_init_from_file(path.c_str(), params);
    if (!ctx_) {
        std::string detail = take_ggml_errors();
        fail(ErrorKind::Format, path + " is not a valid GGUF file (truncated or corrupt header)" +
                                    (detail.empty() ? std::string() : ": " + detail));
    }
    try {
        map_ = std::make_unique<MappedFile>(path);
        read_tensor_infos();
    } catch (...) {
        // The destructor does not run for a constructor that throws.
        gguf_free(ctx_);
        ctx_ = nullptr;
        throw;
    }
}

namespace {

// Bytes of a tensor of type `type` and shape `ne`, or false when that does not fit in size_t.
// ggml's reader checks the element count for overflow, but lets some shapes through:
// [2^32, 2^32] passes, and its byte size wraps around to 0.
bool tensor_bytes(ggml_type type, const int64_t * ne, size_t & out) {
    const size_t blck = (size_t) ggml_blck_size(type);
    const size_t type_size = ggml_type_size(type);
    if (blck == 0 || ne[0] < 0 || (size_t) ne[0] % blck != 0) return false;
    const size_t blocks = (size_t) ne[0] / blck;
    if (type_size != 0 && blocks > SIZE_MAX / type_size) return false;
    size_t bytes = blocks * type_size;
    for (int d = 1; d < GGML_MAX_DIMS; ++d) {
        if (ne[d] < 0) return false;
        if (ne[d] != 0 && bytes > SIZE_MAX / (size_t) ne[d]) return false;
        bytes *= (size_t) ne[d];
    }
    out = bytes;
    return true;
}

} // namespace

void GgufFile::read_tensor_infos() {
    const size_t  data_offset = gguf_get_data_offset(ctx_);
    const int64_t n_tensors   = gguf_get_n_tensors(ctx_);
    const size_t  file_size   = map_->size();
    tensors_.reserve((size_t) n_tensors);
    for (int64_t i = 0; i < n_tensors; ++i) {
        TensorInfo ti;
        ti.name = gguf_get_tensor_name(ctx_, i);
        ti.type = gguf_get_tensor_type(ctx_, i);
        const int64_t * ne = gguf_get_tensor_ne(ctx_, i);
        ti.n_dims = 1;
        for (int d = 0; d < GGML_MAX_DIMS; ++d) {
            ti.ne[d] = ne[d];
            if (ne[d] != 1) ti.n_dims = d + 1;
        }
        ti.offset = data_offset + gguf_get_tensor_offset(ctx_, i);
        ti.nbytes = gguf_get_tensor_size(ctx_, i);
        size_t want_bytes = 0;
        if (!tensor_bytes(ti.type, ti.ne, want_bytes)) {
            fail(ErrorKind::Format, path_ + ": tensor " + ti.name + " has shape " + shape_str(ti.ne, ti.n_dims) +
                                        " of type " + ggml_type_name(ti.type) +
                                        ", whose size in bytes does not fit in 64 bits");
        }
        if (want_bytes != ti.nbytes) {
            fail(ErrorKind::Format, path_ + ": tensor " + ti.name + " of shape " + shape_str(ti.ne, ti.n_dims) +
                                        " has " + std::to_string(ti.nbytes) + " bytes in the GGUF index, expected " +
                                        std::to_string(want_bytes));
        }
        // Written so that it cannot overflow: offset + nbytes may exceed SIZE_MAX.
        if (ti.offset > file_size || ti.nbytes > file_size - ti.offset) {
            fail(ErrorKind::Format, path_ + " is truncated: tensor " + ti.name + " needs bytes up to " +
                                        std::to_string(ti.offset + ti.nbytes) + ", file has " +
                                        std::to_string(file_size));
        }
        tensors_.push_back(std::move(ti));
    }
}

GgufFile::~GgufFile() {
    if (ctx_) {
        gguf_free(ctx_);
    }
}

const TensorInfo * GgufFile::find_tensor(const std::string & name) const {
    for (const auto & t : tensors_) {
        if (t.name == name) return &t;
    }
    return nullptr;
}

bool GgufFile::has_key(const std::string & key) const { return gguf_find_key(ctx_, key.c_str()) >= 0; }

namespace {

int64_t need_key(const gguf_context * ctx, const std::string & path, const std::string & key) {
    int64_t id = gguf_find_key(ctx, key.c_str());
    if (id < 0) {
        fail(ErrorKind::Format, "missing metadata key " + key + " in " + path);
    }
    return id;
}

[[noreturn]] void bad_type(const std::string & path, const std::string & key, const char * expected, gguf_type got) {
    fail(ErrorKind::Format, "metadata key " + key + " in " + path + ": expected " + expected + ", got " +
                                gguf_type_name(got));
}

} // namespace

std::string GgufFile::get_str(const std::string & key) const {
    int64_t id = need_key(ctx_, path_, key);
    gguf_type t = gguf_get_kv_type(ctx_, id);
    if (t != GGUF_TYPE_STRING) bad_type(path_, key, "string", t);
    return gguf_get_val_str(ctx_, id);
}

uint32_t GgufFile::get_u32(const std::string & key) const {
    int64_t id = need_key(ctx_, path_, key);
    gguf_type t = gguf_get_kv_type(ctx_, id);
    int64_t v = 0;
    switch (t) {
        case GGUF_TYPE_UINT8:  v = gguf_get_val_u8(ctx_, id); break;
        case GGUF_TYPE_INT8:   v = gguf_get_val_i8(ctx_, id); break;
        case GGUF_TYPE_UINT16: v = gguf_get_val_u16(ctx_, id); break;
        case GGUF_TYPE_INT16:  v = gguf_get_val_i16(ctx_, id); break;
        case GGUF_TYPE_UINT32: v = gguf_get_val_u32(ctx_, id); break;
        case GGUF_TYPE_INT32:  v = gguf_get_val_i32(ctx_, id); break;
        case GGUF_TYPE_UINT64: {
            uint64_t u = gguf_get_val_u64(ctx_, id);
            v = u > 0xffffffffull ? -1 : (int64_t) u;
            break;
        }
        case GGUF_TYPE_INT64: v = gguf_get_val_i64(ctx_, id); break;
        default: bad_type(path_, key, "an integer", t);
    }
    if (v < 0 || v > 0xffffffffll) {
        fail(ErrorKind::Format, "metadata key " + key + " in " + path_ + ": value " + std::to_string(v) +
                                    " out of range");
    }
    return (uint32_t) v;
}

float GgufFile::get_f32(const std::string & key) const {
    int64_t id = need_key(ctx_, path_, key);
    gguf_type t = gguf_get_kv_type(ctx_, id);
    if (t == GGUF_TYPE_FLOAT32) return gguf_get_val_f32(ctx_, id);
    if (t == GGUF_TYPE_FLOAT64) return (float) gguf_get_val_f64(ctx_, id);
    bad_type(path_, key, "a float", t);
}

bool GgufFile::get_bool(const std::string & key) const {
    int64_t id = need_key(ctx_, path_, key);
    gguf_type t = gguf_get_kv_type(ctx_, id);
    if (t != GGUF_TYPE_BOOL) bad_type(path_, key, "bool", t);
    return gguf_get_val_bool(ctx_, id);
}

std::vector<std::string> GgufFile::get_str_array(const std::string & key) const {
    int64_t id = need_key(ctx_, path_, key);
    gguf_type t = gguf_get_kv_type(ctx_, id);
    if (t != GGUF_TYPE_ARRAY || gguf_get_arr_type(ctx_, id) != GGUF_TYPE_STRING) {
        fail(ErrorKind::Format, "metadata key " + key + " in " + path_ + ": expected an array of strings");
    }
    size_t n = gguf_get_arr_n(ctx_, id);
    std::vector<std::string> out;
    out.reserve(n);
    for (size_t i = 0; i < n; ++i) {
        out.emplace_back(gguf_get_arr_str(ctx_, id, i));
    }
    return out;
}

std::vector<int32_t> GgufFile::get_i32_array(const std::string & key) const {
    int64_t id = need_key(ctx_, path_, key);
    gguf_type t = gguf_get_kv_type(ctx_, id);
    if (t != GGUF_TYPE_ARRAY) {
        fail(ErrorKind::Format, "metadata key " + key + " in " + path_ + ": expected an array of integers");
    }
    gguf_type at = gguf_get_arr_type(ctx_, id);
    if (at != GGUF_TYPE_INT32 && at != GGUF_TYPE_UINT32 && at != GGUF_TYPE_INT8 && at != GGUF_TYPE_UINT8) {
        // Checked before gguf_get_arr_data, which asserts on an array of strings.
        fail(ErrorKind::Format, "metadata key " + key + " in " + path_ + ": expected an array of int32, got " +
                                    gguf_type_name(at));
    }
    size_t n = gguf_get_arr_n(ctx_, id);
    std::vector<int32_t> out(n);
    const void * data = gguf_get_arr_data(ctx_, id);
    switch (at) {
        case GGUF_TYPE_INT32: std::memcpy(out.data(), data, n * 4); break;
        case GGUF_TYPE_UINT32:
            for (size_t i = 0; i < n; ++i) {
                const uint32_t v = ((const uint32_t *) data)[i];
                if (v > 0x7fffffffu) {
                    fail(ErrorKind::Format, "metadata key " + key + " in " + path_ + ": element " + std::to_string(i) +
                                                " = " + std::to_string(v) + " out of int32 range");
                }
                out[i] = (int32_t) v;
            }
            break;
        case GGUF_TYPE_INT8:
            for (size_t i = 0; i < n; ++i) out[i] = ((const int8_t *) data)[i];
            break;
        default:   // GGUF_TYPE_UINT8
            for (size_t i = 0; i < n; ++i) out[i] = ((const uint8_t *) data)[i];
            break;
    }
    return out;
}

void check_int_range(const GgufFile & f, const std::string & key, int64_t v, int64_t lo, int64_t hi) {
    if (v < lo || v > hi) {
        fail(ErrorKind::Format, "metadata key " + key + " in " + f.path() + ": value " + std::to_string(v) +
                                    " out of range [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
    }
}

namespace {

std::string float_str(float v) {
    char buf[48];
    std::snprintf(buf, sizeof(buf), "%.9g", (double) v);
    return buf;
}

} // namespace

void check_float_range(const GgufFile & f, const std::string & key, float v, float lo, float hi, bool lo_open) {
    const bool ok = std::isfinite(v) && (lo_open ? v > lo : v >= lo) && v <= hi;
    if (!ok) {
        fail(ErrorKind::Format, "metadata key " + key + " in " + f.path() + ": value " + float_str(v) +
                                    " out of range " + (lo_open ? "(" : "[") + float_str(lo) + ", " + float_str(hi) +
                                    "]");
    }
}

void check_layer_count(const GgufFile & f, const std::string & key, int64_t n, int64_t max_layers,
                       const std::string & last_layer_tensor) {
    check_int_range(f, key, n, 1, max_layers);
    if (n > (int64_t) f.tensors().size() || !f.find_tensor(last_layer_tensor)) {
        fail(ErrorKind::Format, "metadata key " + key + " in " + f.path() + ": value " + std::to_string(n) +
                                    " layers, but the file has no tensor " + last_layer_tensor + " (" +
                                    std::to_string(f.tensors().size()) + " tensors in all)");
    }
}

std::optional<std::string> GgufFile::opt_str(const std::string & key) const {
    if (!has_key(key)) return std::nullopt;
    return get_str(key);
}
std::optional<uint32_t> GgufFile::opt_u32(const std::string & key) const {
    if (!has_key(key)) return std::nullopt;
    return get_u32(key);
}
std::optional<float> GgufFile::opt_f32(const std::string & key) const {
    if (!has_key(key)) return std::nullopt;
    return get_f32(key);
}
std::optional<bool> GgufFile::opt_bool(const std::string & key) const {
    if (!has_key(key)) return std::nullopt;
    return get_bool(key);
}

} // namespace minicpm
