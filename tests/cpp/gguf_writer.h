// Writes GGUF files byte by byte for the reader tests, so that every field can be made wrong
// on purpose: counts, version, types, offsets and lengths are written as given, never derived
// from what follows. Layout (GGUF v3, little-endian):
//   "GGUF" u32 version, u64 n_tensors, u64 n_kv
//   n_kv x   (string key, u32 gguf_type, value)          string = u64 length + bytes
//   n_tensors x (string name, u32 n_dims, i64 ne[n_dims], u32 ggml_type, u64 offset)
//   padding to the alignment, then the data section (offsets are relative to its start)
#pragma once

#include "ggml.h"
#include "gguf.h"

#include <cstdint>
#include <cstdio>
#include <cstdlib>   // mkdtemp (POSIX)
#include <cstring>
#include <filesystem>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace test_gguf {

// Little-endian serialisation (the machines we run on are little-endian, as GGUF is).
class Bytes {
public:
    Bytes & u8(uint8_t v) { return raw(&v, 1); }
    Bytes & u32(uint32_t v) { return raw(&v, 4); }
    Bytes & u64(uint64_t v) { return raw(&v, 8); }
    Bytes & i64(int64_t v) { return raw(&v, 8); }
    Bytes & f32(float v) { return raw(&v, 4); }
    Bytes & f64(double v) { return raw(&v, 8); }
    Bytes & str(const std::string & s) { return u64(s.size()).raw(s.data(), s.size()); }
    Bytes & raw(const void * p, size_t n) {
        const auto * b = (const uint8_t *) p;
        data.insert(data.end(), b, b + n);
        return *this;
    }
    Bytes & append(const Bytes & other) { return raw(other.data.data(), other.data.size()); }
    void pad_to(size_t align) {
        while (data.size() % align) data.push_back(0);
    }
    size_t size() const { return data.size(); }

    std::vector<uint8_t> data;
};

struct TensorSpec {
    std::string              name;
    uint32_t                 type = GGML_TYPE_F32;   // raw, so that unknown types can be written
    std::vector<int64_t>     ne;                     // written as given (n_dims = ne.size())
    std::optional<uint64_t>  offset;                 // default: the next aligned offset
    std::vector<uint8_t>     payload;                // the tensor's bytes in the data section
};

class GgufWriter {
public:
    uint32_t                version   = 3;
    size_t                  alignment = 32;      // for the layout; a general.alignment KV is separate
    std::optional<uint64_t> n_tensors_field;     // default: the number of tensors added
    std::optional<uint64_t> n_kv_field;          // default: the number of KV pairs added

    // Starts a KV pair and returns the buffer to write its value into.
    Bytes & kv(const std::string & key, gguf_type type) {
        ++n_kv_;
        return kvs_.str(key).u32((uint32_t) type);
    }
    // Counts one more KV pair and returns the buffer, for pairs written by hand.
    Bytes & kv_raw() {
        ++n_kv_;
        return kvs_;
    }
    // Where the KV pairs end (the tensor infos start), and where the tensor infos end.
    size_t kv_section_end() const { return 24 + kvs_.size(); }
    size_t tensor_infos_end() const {
        size_t end = kv_section_end();
        for (const auto & t : tensors_) end += 8 + t.name.size() + 4 + 8 * t.ne.size() + 4 + 8;
        return end;
    }

    void kv_u8(const std::string & k, uint8_t v) { kv(k, GGUF_TYPE_UINT8).u8(v); }
    void kv_i8(const std::string & k, int8_t v) { kv(k, GGUF_TYPE_INT8).u8((uint8_t) v); }
    void kv_u16(const std::string & k, uint16_t v) { kv(k, GGUF_TYPE_UINT16).raw(&v, 2); }
    void kv_i16(const std::string & k, int16_t v) { kv(k, GGUF_TYPE_INT16).raw(&v, 2); }
    void kv_u32(const std::string & k, uint32_t v) { kv(k, GGUF_TYPE_UINT32).u32(v); }
    void kv_i32(const std::string & k, int32_t v) { kv(k, GGUF_TYPE_INT32).u32((uint32_t) v); }
    void kv_u64(const std::string & k, uint64_t v) { kv(k, GGUF_TYPE_UINT64).u64(v); }
    void kv_i64(const std::string & k, int64_t v) { kv(k, GGUF_TYPE_INT64).i64(v); }
    void kv_f32(const std::string & k, float v) { kv(k, GGUF_TYPE_FLOAT32).f32(v); }
    void kv_f64(const std::string & k, double v) { kv(k, GGUF_TYPE_FLOAT64).f64(v); }
    void kv_bool(const std::string & k, bool v) { kv(k, GGUF_TYPE_BOOL).u8(v ? 1 : 0); }
    void kv_str(const std::string & k, const std::string & v) { kv(k, GGUF_TYPE_STRING).str(v); }
    void kv_arr_i32(const std::string & k, const std::vector<int32_t> & v) {
        Bytes & b = kv(k, GGUF_TYPE_ARRAY).u32(GGUF_TYPE_INT32).u64(v.size());
        for (int32_t x : v) b.u32((uint32_t) x);
    }
    void kv_arr_u32(const std::string & k, const std::vector<uint32_t> & v) {
        Bytes & b = kv(k, GGUF_TYPE_ARRAY).u32(GGUF_TYPE_UINT32).u64(v.size());
        for (uint32_t x : v) b.u32(x);
    }
    void kv_arr_u8(const std::string & k, const std::vector<uint8_t> & v) {
        kv(k, GGUF_TYPE_ARRAY).u32(GGUF_TYPE_UINT8).u64(v.size()).raw(v.data(), v.size());
    }
    void kv_arr_f32(const std::string & k, const std::vector<float> & v) {
        Bytes & b = kv(k, GGUF_TYPE_ARRAY).u32(GGUF_TYPE_FLOAT32).u64(v.size());
        for (float x : v) b.f32(x);
    }
    void kv_arr_str(const std::string & k, const std::vector<std::string> & v) {
        Bytes & b = kv(k, GGUF_TYPE_ARRAY).u32(GGUF_TYPE_STRING).u64(v.size());
        for (const auto & s : v) b.str(s);
    }

    // A tensor whose payload is `payload`, or (when empty) `nbytes` bytes of a counting pattern.
    void tensor(TensorSpec t) { tensors_.push_back(std::move(t)); }

    std::vector<uint8_t> bytes() const {
        Bytes out;
        out.raw("GGUF", 4).u32(version);
        out.u64(n_tensors_field.value_or(tensors_.size()));
        out.u64(n_kv_field.value_or(n_kv_));
        out.append(kvs_);
        std::vector<uint64_t> offsets;
        uint64_t next = 0;
        for (const auto & t : tensors_) {
            const uint64_t off = t.offset.value_or(next);
            offsets.push_back(off);
            next = pad(off + t.payload.size());
            out.str(t.name).u32((uint32_t) t.ne.size());
            for (int64_t n : t.ne) out.i64(n);
            out.u32(t.type).u64(off);
        }
        out.pad_to(alignment);
        const size_t data_start = out.size();
        for (size_t i = 0; i < tensors_.size(); ++i) {
            while (out.size() < data_start + offsets[i]) out.u8(0);
            out.raw(tensors_[i].payload.data(), tensors_[i].payload.size());
        }
        return out.data;
    }

private:
    uint64_t pad(uint64_t x) const { return (x + alignment - 1) / alignment * alignment; }

    Bytes              kvs_;
    uint64_t           n_kv_ = 0;
    std::vector<TensorSpec> tensors_;
};

// F32 values 0, 0.5, 1, ... as bytes: a payload whose contents the test can check.
inline std::vector<uint8_t> f32_payload(size_t n) {
    std::vector<uint8_t> out(n * 4);
    for (size_t i = 0; i < n; ++i) {
        const float v = 0.5f * (float) i;
        std::memcpy(out.data() + 4 * i, &v, 4);
    }
    return out;
}

// A directory under the system temp directory, removed with everything in it at exit.
class TempDir {
public:
    TempDir() {
        std::string tmpl = (std::filesystem::temp_directory_path() / "minicpm-test-XXXXXX").string();
        if (!mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp failed");
        path_ = tmpl;
    }
    ~TempDir() {
        std::error_code ec;
        std::filesystem::remove_all(path_, ec);
    }
    std::string file(const std::string & name) const { return (path_ / name).string(); }
    const std::filesystem::path & path() const { return path_; }

private:
    std::filesystem::path path_;
};

inline std::string write_file(const std::string & path, const std::vector<uint8_t> & bytes) {
    FILE * f = std::fopen(path.c_str(), "wb");
    if (!f) throw std::runtime_error("cannot write " + path);
    const size_t n = bytes.empty() ? 0 : std::fwrite(bytes.data(), 1, bytes.size(), f);
    std::fclose(f);
    if (n != bytes.size()) throw std::runtime_error("short write to " + path);
    return path;
}

} // namespace test_gguf
