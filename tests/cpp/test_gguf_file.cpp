// GgufFile: valid files written byte by byte load with the metadata and tensors written, and
// every kind of broken file gives a minicpm::Error of the right kind with a message naming the
// problem (never an abort, a crash or a file accepted with garbage).
#include "check.h"
#include "gguf_writer.h"

#include "core/gguf_file.h"

#include <cstring>
#include <filesystem>

using minicpm::ErrorKind;
using minicpm::GgufFile;
using minicpm::TensorInfo;
using namespace test_gguf;

namespace {

const TempDir & tmp() {
    static TempDir dir;
    return dir;
}

std::string save(const std::string & name, const std::vector<uint8_t> & bytes) {
    return write_file(tmp().file(name + ".gguf"), bytes);
}
std::string save(const std::string & name, const GgufWriter & w) { return save(name, w.bytes()); }

void open_gguf(const std::string & path) { GgufFile f(path); }

// A payload of n bytes that differs from every other tensor's (so a wrong offset shows).
std::vector<uint8_t> pattern(size_t n, uint8_t seed) {
    std::vector<uint8_t> out(n);
    for (size_t i = 0; i < n; ++i) out[i] = (uint8_t) (seed + 7 * i);
    return out;
}

bool data_equals(const GgufFile & f, const TensorInfo & t, const std::vector<uint8_t> & want) {
    return t.nbytes == want.size() && t.offset + t.nbytes <= f.mapping().size() &&
           std::memcmp(f.mapping().data() + t.offset, want.data(), want.size()) == 0;
}

// Two small F32 tensors: the base that the broken-file cases change one field of.
GgufWriter two_tensors() {
    GgufWriter w;
    w.kv_str("general.architecture", "test");
    w.tensor({"a", GGML_TYPE_F32, {5, 3}, std::nullopt, f32_payload(15)});
    w.tensor({"b", GGML_TYPE_F32, {4}, std::nullopt, f32_payload(4)});
    return w;
}

// Opening must fail with a Format error whose message contains `what`.
#define CHECK_BAD_FORMAT(name, bytes, what) \
    CHECK_THROWS_KIND_MSG(open_gguf(save(name, bytes)), ErrorKind::Format, what)

} // namespace

// ---------------------------------------------------------------------------------------------
// valid files

TEST(metadata_of_every_type) {
    GgufWriter w;
    w.kv_u8("t.u8", 200);
    w.kv_i8("t.i8", 7);
    w.kv_u16("t.u16", 60000);
    w.kv_i16("t.i16", 300);
    w.kv_u32("t.u32", 4000000000u);
    w.kv_i32("t.i32", 123456);
    w.kv_u64("t.u64", 0xffffffffull);
    w.kv_i64("t.i64", 77);
    w.kv_f32("t.f32", 0.25f);
    w.kv_f64("t.f64", 1.5e-6);
    w.kv_bool("t.true", true);
    w.kv_bool("t.false", false);
    w.kv_str("t.str", "h\xc3\xa9llo\nworld");
    w.kv_str("t.empty", "");
    w.kv_arr_i32("t.ai32", {1, -2, 2147483647});
    w.kv_arr_u8("t.au8", {0, 255});
    w.kv_arr_str("t.astr", {"a", "", "\xc4\xa0the"});
    GgufFile f(save("metadata", w));
    CHECK_EQ(gguf_get_n_kv(f.ctx()), 17);
    CHECK_EQ(f.get_u32("t.u8"), 200u);
    CHECK_EQ(f.get_u32("t.i8"), 7u);
    CHECK_EQ(f.get_u32("t.u16"), 60000u);
    CHECK_EQ(f.get_u32("t.i16"), 300u);
    CHECK_EQ(f.get_u32("t.u32"), 4000000000u);
    CHECK_EQ(f.get_u32("t.i32"), 123456u);
    CHECK_EQ(f.get_u32("t.u64"), 0xffffffffu);
    CHECK_EQ(f.get_u32("t.i64"), 77u);
    CHECK_EQ(f.get_f32("t.f32"), 0.25f);
    CHECK_EQ(f.get_f32("t.f64"), 1.5e-6f);
    CHECK_EQ(f.get_bool("t.true"), true);
    CHECK_EQ(f.get_bool("t.false"), false);
    CHECK_EQ(f.get_str("t.str"), std::string("h\xc3\xa9llo\nworld"));
    CHECK_EQ(f.get_str("t.empty"), std::string());
    CHECK(f.get_i32_array("t.ai32") == std::vector<int32_t>({1, -2, 2147483647}));
    CHECK(f.get_i32_array("t.au8") == std::vector<int32_t>({0, 255}));
    CHECK(f.get_str_array("t.astr") == std::vector<std::string>({"a", "", "\xc4\xa0the"}));
    CHECK(f.has_key("t.u8"));
    CHECK(!f.has_key("t.missing"));
    CHECK(f.opt_u32("t.u32") == std::optional<uint32_t>(4000000000u));
    CHECK(f.opt_str("t.str") == std::optional<std::string>("h\xc3\xa9llo\nworld"));
    CHECK(f.opt_f32("t.f32") == std::optional<float>(0.25f));
    CHECK(f.opt_bool("t.true") == std::optional<bool>(true));
    CHECK(!f.opt_u32("t.missing") && !f.opt_str("t.missing") && !f.opt_f32("t.missing") && !f.opt_bool("t.missing"));
    CHECK(f.tensors().empty());
}

TEST(tensors_offsets_and_data) {
    // Sizes in bytes: 60 (F32 5x3), 14 (F16 7), 204 (Q8_0: 34-byte blocks of 32, 2 per row x 3
    // rows), 24 (I32 2x1x3x1): unpadded sizes, so every offset after the first needs padding.
    const auto pa = f32_payload(15), pb = pattern(14, 1), pc = pattern(204, 2), pd = pattern(24, 3);
    GgufWriter w;
    w.kv_u32("t.n", 4);
    w.tensor({"a.f32", GGML_TYPE_F32, {5, 3}, std::nullopt, pa});
    w.tensor({"b.f16", GGML_TYPE_F16, {7}, std::nullopt, pb});
    w.tensor({"c.q8_0", GGML_TYPE_Q8_0, {64, 3}, std::nullopt, pc});
    w.tensor({"d.i32", GGML_TYPE_I32, {2, 1, 3, 1}, std::nullopt, pd});
    const std::string path = save("tensors", w);
    GgufFile f(path);
    const auto & ts = f.tensors();
    REQUIRE(ts.size() == 4);
    CHECK_EQ(ts[0].name, std::string("a.f32"));
    CHECK_EQ(ts[3].name, std::string("d.i32"));
    CHECK(ts[0].type == GGML_TYPE_F32 && ts[1].type == GGML_TYPE_F16);
    CHECK(ts[2].type == GGML_TYPE_Q8_0 && ts[3].type == GGML_TYPE_I32);
    CHECK(ts[0].ne[0] == 5 && ts[0].ne[1] == 3 && ts[0].ne[2] == 1 && ts[0].ne[3] == 1);
    CHECK(ts[3].ne[0] == 2 && ts[3].ne[1] == 1 && ts[3].ne[2] == 3 && ts[3].ne[3] == 1);
    CHECK_EQ(ts[0].n_dims, 2);
    CHECK_EQ(ts[1].n_dims, 1);
    CHECK_EQ(ts[3].n_dims, 3);   // trailing size-1 dimensions do not count
    CHECK_EQ(ts[0].nbytes, 60u);
    CHECK_EQ(ts[1].nbytes, 14u);
    CHECK_EQ(ts[2].nbytes, 204u);
    CHECK_EQ(ts[3].nbytes, 24u);
    for (const auto & t : ts) CHECK_EQ(t.offset % 32, 0u);
    CHECK(data_equals(f, ts[0], pa));
    CHECK(data_equals(f, ts[1], pb));
    CHECK(data_equals(f, ts[2], pc));
    CHECK(data_equals(f, ts[3], pd));
    CHECK_EQ(f.mapping().size(), (size_t) std::filesystem::file_size(path));
    REQUIRE(f.find_tensor("c.q8_0") != nullptr);
    CHECK_EQ(f.find_tensor("c.q8_0")->nbytes, 204u);
    CHECK(f.find_tensor("c") == nullptr);
    CHECK_EQ(f.get_u32("t.n"), 4u);
}

TEST(custom_alignment) {
    GgufWriter w;
    w.alignment = 64;
    w.kv_u32("general.alignment", 64);
    const auto pa = pattern(12, 5), pb = pattern(20, 6);
    w.tensor({"a", GGML_TYPE_F32, {3}, std::nullopt, pa});
    w.tensor({"b", GGML_TYPE_F32, {5}, std::nullopt, pb});
    GgufFile f(save("align64", w));
    REQUIRE(f.tensors().size() == 2);
    CHECK_EQ(f.tensors()[0].offset % 64, 0u);
    CHECK_EQ(f.tensors()[1].offset - f.tensors()[0].offset, 64u);
    CHECK(data_equals(f, f.tensors()[0], pa));
    CHECK(data_equals(f, f.tensors()[1], pb));
}

TEST(header_only_file) {
    GgufWriter w;
    GgufFile f(save("header_only", w));
    CHECK(f.tensors().empty());
    CHECK_EQ(gguf_get_n_kv(f.ctx()), 0);
}

// ---------------------------------------------------------------------------------------------
// typed getters

TEST(getters_reject_wrong_types) {
    GgufWriter w;
    w.kv_str("t.str", "12");
    w.kv_u32("t.u32", 5);
    w.kv_u8("t.u8", 1);
    w.kv_f32("t.f32", 1.0f);
    w.kv_arr_i32("t.ai32", {1});
    w.kv_arr_str("t.astr", {"x"});
    w.kv_arr_f32("t.af32", {1.0f});
    GgufFile f(save("getters", w));
    CHECK_THROWS_KIND_MSG(f.get_u32("t.str"), ErrorKind::Format, "t.str");
    CHECK_THROWS_KIND_MSG(f.get_u32("t.str"), ErrorKind::Format, "expected an integer, got ");
    CHECK_THROWS_KIND_MSG(f.get_u32("t.f32"), ErrorKind::Format, "expected an integer");
    CHECK_THROWS_KIND_MSG(f.get_u32("t.ai32"), ErrorKind::Format, "expected an integer");
    CHECK_THROWS_KIND_MSG(f.get_str("t.u32"), ErrorKind::Format, "expected string");
    CHECK_THROWS_KIND_MSG(f.get_f32("t.str"), ErrorKind::Format, "expected a float");
    CHECK_THROWS_KIND_MSG(f.get_bool("t.u8"), ErrorKind::Format, "expected bool");
    CHECK_THROWS_KIND_MSG(f.get_str_array("t.ai32"), ErrorKind::Format, "expected an array of strings");
    CHECK_THROWS_KIND_MSG(f.get_str_array("t.str"), ErrorKind::Format, "expected an array of strings");
    CHECK_THROWS_KIND_MSG(f.get_i32_array("t.astr"), ErrorKind::Format, "expected an array of int32");
    CHECK_THROWS_KIND_MSG(f.get_i32_array("t.af32"), ErrorKind::Format, "expected an array of int32");
    CHECK_THROWS_KIND_MSG(f.get_i32_array("t.u32"), ErrorKind::Format, "expected an array of integers");
    CHECK_THROWS_KIND_MSG(f.opt_u32("t.str"), ErrorKind::Format, "t.str");   // present but mistyped
    CHECK_THROWS_KIND_MSG(f.get_u32("t.missing"), ErrorKind::Format, "missing metadata key t.missing");
    CHECK_THROWS_KIND_MSG(f.get_str("t.missing"), ErrorKind::Format, "missing metadata key t.missing");
}

TEST(get_i32_array_range) {
    GgufWriter w;
    w.kv_arr_u32("t.ok", {0, 2147483647u});
    w.kv_arr_u32("t.big", {1, 2147483648u});
    GgufFile f(save("i32_range", w));
    CHECK(f.get_i32_array("t.ok") == std::vector<int32_t>({0, 2147483647}));
    CHECK_THROWS_KIND_MSG(f.get_i32_array("t.big"), ErrorKind::Format, "element 1 = 2147483648 out of int32 range");
}

TEST(get_u32_range) {
    GgufWriter w;
    w.kv_i8("t.i8", -1);
    w.kv_i32("t.i32", -5);
    w.kv_i64("t.i64", -1);
    w.kv_u64("t.u64", 1ull << 32);
    w.kv_i64("t.i64big", (int64_t) 1 << 40);
    GgufFile f(save("ranges", w));
    CHECK_THROWS_KIND_MSG(f.get_u32("t.i8"), ErrorKind::Format, "out of range");
    CHECK_THROWS_KIND_MSG(f.get_u32("t.i32"), ErrorKind::Format, "value -5 out of range");
    CHECK_THROWS_KIND_MSG(f.get_u32("t.i64"), ErrorKind::Format, "out of range");
    CHECK_THROWS_KIND_MSG(f.get_u32("t.u64"), ErrorKind::Format, "out of range");
    CHECK_THROWS_KIND_MSG(f.get_u32("t.i64big"), ErrorKind::Format, "out of range");
}

// ---------------------------------------------------------------------------------------------
// not a GGUF file at all

TEST(missing_file) {
    CHECK_THROWS_KIND_MSG(open_gguf(tmp().file("does-not-exist.gguf")), ErrorKind::File, "not found");
}

TEST(directory_instead_of_file) {
    std::filesystem::create_directories(tmp().path() / "dir.gguf");
    CHECK_THROWS_KIND_MSG(open_gguf(tmp().file("dir.gguf")), ErrorKind::File, "is a directory");
}

TEST(empty_file) {
    CHECK_BAD_FORMAT("empty", std::vector<uint8_t>(), "not a GGUF file");
}

TEST(bad_magic) {
    auto bytes = two_tensors().bytes();
    bytes[3] = 'X';   // "GGUX"
    CHECK_BAD_FORMAT("bad_magic", bytes, "not a GGUF file (bad magic)");
    CHECK_BAD_FORMAT("short_magic", std::vector<uint8_t>({'G', 'G'}), "bad magic");
}

TEST(unsupported_version) {
    for (uint32_t version : {0u, 1u, 4u, 0xffffffffu}) {
        GgufWriter w = two_tensors();
        w.version = version;
        CHECK_BAD_FORMAT("v" + std::to_string(version), w, "version");
    }
}

// ---------------------------------------------------------------------------------------------
// truncated files and absurd sizes

TEST(truncated_header) {
    const auto full = two_tensors().bytes();
    for (size_t keep : {4, 6, 8, 12, 20, 23}) {
        std::vector<uint8_t> cut(full.begin(), full.begin() + keep);
        CHECK_BAD_FORMAT("header_cut" + std::to_string(keep), cut, "not a valid GGUF file");
    }
}

TEST(truncated_kv_section_and_tensor_infos) {
    GgufWriter w = two_tensors();
    w.kv_u32("t.u32", 1);
    w.kv_arr_str("t.astr", {"abc", "def"});
    const auto full = w.bytes();
    // Every cut after the 24-byte header, inside the KV pairs or the tensor infos.
    REQUIRE(w.kv_section_end() < w.tensor_infos_end() && w.tensor_infos_end() < full.size());
    for (size_t keep = 24; keep < w.tensor_infos_end(); ++keep) {
        std::vector<uint8_t> cut(full.begin(), full.begin() + keep);
        CHECK_BAD_FORMAT("meta_cut" + std::to_string(keep), cut, "not a valid GGUF file");
    }
    GgufWriter more = two_tensors();
    more.n_kv_field = 5;   // 1 written
    CHECK_BAD_FORMAT("kv_count_too_big", more, "not a valid GGUF file");
}

TEST(absurd_counts) {
    GgufWriter t = two_tensors();
    t.n_tensors_field = 1ull << 60;
    CHECK_BAD_FORMAT("n_tensors_huge", t, "not a valid GGUF file");
    GgufWriter k = two_tensors();
    k.n_kv_field = 1ull << 60;
    CHECK_BAD_FORMAT("n_kv_huge", k, "not a valid GGUF file");
    GgufWriter both = two_tensors();
    both.n_tensors_field = ~0ull;
    both.n_kv_field = ~0ull;
    CHECK_BAD_FORMAT("counts_max", both, "not a valid GGUF file");
}

TEST(string_length_past_end) {
    for (uint64_t len : {uint64_t(100), uint64_t(1) << 32, uint64_t(1) << 60, ~uint64_t(0)}) {
        GgufWriter value;   // a string value longer than the rest of the file
        value.kv("t.s", GGUF_TYPE_STRING).u64(len).raw("abc", 3);
        CHECK_BAD_FORMAT("str_value_len", value, "not a valid GGUF file");
        GgufWriter key;     // a key longer than the rest of the file
        key.kv_u32("t.a", 1);
        key.kv_raw().u64(len).raw("key", 3);
        CHECK_BAD_FORMAT("str_key_len", key, "not a valid GGUF file");
    }
}

TEST(array_with_huge_count) {
    const gguf_type types[] = {GGUF_TYPE_UINT8, GGUF_TYPE_INT32, GGUF_TYPE_FLOAT64, GGUF_TYPE_STRING};
    for (gguf_type type : types) {
        for (uint64_t n : {uint64_t(1) << 36, uint64_t(1) << 60, ~uint64_t(0)}) {
            GgufWriter w;
            w.kv("t.arr", GGUF_TYPE_ARRAY).u32(type).u64(n).u64(0);
            CHECK_BAD_FORMAT(std::string("arr_") + gguf_type_name(type), w, "not a valid GGUF file");
        }
    }
}

TEST(tensor_data_past_end) {
    auto bytes = two_tensors().bytes();
    bytes.resize(bytes.size() - 4);   // the last tensor ("b", 16 bytes) loses its last value
    CHECK_BAD_FORMAT("data_cut", bytes, "truncated: tensor b needs bytes up to");
    GgufWriter w = two_tensors();   // infos complete, data section missing altogether
    auto infos_only = w.bytes();
    infos_only.resize(infos_only.size() - 64 - 16);
    CHECK_BAD_FORMAT("no_data", infos_only, "truncated: tensor a");
}

// ---------------------------------------------------------------------------------------------
// bad tensor infos

TEST(unknown_tensor_type) {
    for (uint32_t type : {4u, (uint32_t) GGML_TYPE_COUNT, 1000u, 0xffffffffu}) {
        GgufWriter w;
        w.tensor({"a", type, {32}, std::nullopt, pattern(128, 1)});
        CHECK_BAD_FORMAT("type" + std::to_string(type), w, "not a valid GGUF file");
    }
}

TEST(too_many_dims) {
    GgufWriter w;
    w.tensor({"a", GGML_TYPE_F32, {1, 1, 1, 1, 1}, std::nullopt, pattern(4, 1)});
    CHECK_BAD_FORMAT("dims5", w, "not a valid GGUF file");
    GgufWriter huge;
    huge.tensor({"a", GGML_TYPE_F32, {}, std::nullopt, {}});
    auto bytes = huge.bytes();
    // n_dims is the u32 after the name: header 24 + name length 8 + "a" 1.
    bytes[24 + 9] = 0xff, bytes[24 + 10] = 0xff, bytes[24 + 11] = 0xff, bytes[24 + 12] = 0x7f;
    CHECK_BAD_FORMAT("dims_huge", bytes, "not a valid GGUF file");
}

TEST(negative_shape) {
    for (const std::vector<int64_t> & ne : {std::vector<int64_t>{-1, 3}, {4, -4}, {4, 1, 1, INT64_MIN}}) {
        GgufWriter w;
        w.tensor({"a", GGML_TYPE_F32, ne, std::nullopt, pattern(64, 1)});
        CHECK_BAD_FORMAT("negative", w, "invalid number of elements");
    }
}

TEST(overflowing_shape) {
    const std::vector<std::vector<int64_t>> shapes = {
        {INT64_MAX},                               // elements past int64
        {(int64_t) 1 << 32, (int64_t) 1 << 32},    // 2^64 elements: the count wraps to 0
        {(int64_t) 1 << 31, (int64_t) 1 << 31, 4},
        {(int64_t) 1 << 16, (int64_t) 1 << 16, (int64_t) 1 << 16, (int64_t) 1 << 16},
        {(int64_t) 1 << 62},                       // 2^62 elements fit int64, 2^64 bytes do not
        {(int64_t) 1 << 61, 2},
    };
    for (size_t i = 0; i < shapes.size(); ++i) {
        GgufWriter w;
        w.tensor({"a", GGML_TYPE_F32, shapes[i], std::nullopt, pattern(64, 1)});
        // ggml's message or ours, depending on which check sees it first
        CHECK_THROWS_KIND(open_gguf(save("shape" + std::to_string(i), w)), ErrorKind::Format);
    }
    GgufWriter w;   // our check, for a shape ggml lets through (its byte size wraps to 0)
    w.tensor({"a", GGML_TYPE_F32, {(int64_t) 1 << 32, (int64_t) 1 << 32}, std::nullopt, pattern(64, 1)});
    CHECK_BAD_FORMAT("shape_wraps", w, "tensor a has shape [4294967296, 4294967296] of type f32, whose size");
}

TEST(block_size_mismatch) {
    GgufWriter w;   // Q8_0 rows are whole blocks of 32 values
    w.tensor({"a", GGML_TYPE_Q8_0, {33, 2}, std::nullopt, pattern(136, 1)});
    CHECK_BAD_FORMAT("q8_0_33", w, "not a valid GGUF file");
}

TEST(duplicate_names) {
    GgufWriter w;
    w.tensor({"a", GGML_TYPE_F32, {4}, std::nullopt, pattern(16, 1)});
    w.tensor({"a", GGML_TYPE_F32, {4}, std::nullopt, pattern(16, 2)});
    CHECK_BAD_FORMAT("dup_tensor", w, "duplicate");
    GgufWriter k;
    k.kv_u32("t.x", 1);
    k.kv_u32("t.x", 2);
    CHECK_BAD_FORMAT("dup_key", k, "duplicate");
}

TEST(long_tensor_name) {
    GgufWriter w;   // ggml keeps names in a GGML_MAX_NAME (64) byte buffer
    w.tensor({std::string(GGML_MAX_NAME, 'x'), GGML_TYPE_F32, {4}, std::nullopt, pattern(16, 1)});
    CHECK_BAD_FORMAT("long_name", w, "not a valid GGUF file");
}

TEST(misaligned_or_wrong_offsets) {
    const uint64_t offsets[] = {4, 16, 96, 0};   // b follows a (60 bytes) at 64
    for (uint64_t off : offsets) {
        GgufWriter w;
        w.tensor({"a", GGML_TYPE_F32, {15}, std::nullopt, pattern(60, 1)});
        w.tensor({"b", GGML_TYPE_F32, {4}, off, pattern(16, 2)});
        CHECK_BAD_FORMAT("off" + std::to_string(off), w, "offset");
    }
}

TEST(bad_alignment) {
    for (uint32_t align : {0u, 3u, 48u}) {
        GgufWriter w = two_tensors();
        w.kv_u32("general.alignment", align);
        CHECK_BAD_FORMAT("align" + std::to_string(align), w, "alignment");
    }
    GgufWriter s = two_tensors();
    s.kv_str("general.alignment", "32");
    CHECK_BAD_FORMAT("align_str", s, "alignment");
}

TEST(bad_kv_types) {
    GgufWriter w;
    w.kv("t.x", (gguf_type) 99).u32(0);
    CHECK_BAD_FORMAT("kv_type99", w, "not a valid GGUF file");
    GgufWriter nested;   // arrays of arrays are not part of GGUF
    nested.kv("t.x", GGUF_TYPE_ARRAY).u32(GGUF_TYPE_ARRAY).u64(1).u32(GGUF_TYPE_UINT8).u64(1).u8(0);
    CHECK_BAD_FORMAT("kv_nested", nested, "not a valid GGUF file");
    GgufWriter arr_type;
    arr_type.kv("t.x", GGUF_TYPE_ARRAY).u32(77).u64(1).u32(0);
    CHECK_BAD_FORMAT("kv_arr_type77", arr_type, "not a valid GGUF file");
}

CHECK_MAIN()
