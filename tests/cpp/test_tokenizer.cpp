// Tokenizer against llama.cpp's test vectors for its vocab-only Qwen2 GGUF
// (tests/assets/vocab/ggml-vocab-qwen2.gguf{,.inp,.out}, read as tests/test_tokenizer.py and
// llama.cpp's test-tokenizer-0 read them): every case encodes to the expected ids, and the
// expected ids decode back to the text.
#include "check.h"

#include "core/gguf_file.h"
#include "preprocess/tokenizer.h"

#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

using minicpm::ErrorKind;
using minicpm::Tokenizer;

namespace {

const std::string kVocabBase = std::string(MINICPM_TEST_ASSETS) + "/vocab/ggml-vocab-qwen2.gguf";
const std::string kSeparator = "\n__ggml_vocab_test__\n";

struct VocabCase {
    std::string          text;
    std::vector<int32_t> ids;
};

std::string read_bytes(const std::string & path) {
    std::ifstream f(path, std::ios::binary);
    if (!f) throw std::runtime_error("cannot read " + path);
    std::ostringstream ss;
    ss << f.rdbuf();
    return ss.str();
}

// Python's str.split(sep): the pieces between non-overlapping matches, left to right.
std::vector<std::string> split(const std::string & s, const std::string & sep) {
    std::vector<std::string> out;
    size_t start = 0;
    for (size_t at; (at = s.find(sep, start)) != std::string::npos; start = at + sep.size()) {
        out.push_back(s.substr(start, at - start));
    }
    out.push_back(s.substr(start));
    return out;
}

// The .inp holds the text written before each separator (so the last piece is empty), the
// .out one line of space-separated ids per case (the file ends with a newline).
std::vector<VocabCase> load_cases() {
    std::vector<std::string> texts = split(read_bytes(kVocabBase + ".inp"), kSeparator);
    std::vector<std::string> lines = split(read_bytes(kVocabBase + ".out"), "\n");
    REQUIRE(!texts.empty() && texts.back().empty());
    REQUIRE(!lines.empty() && lines.back().empty());
    texts.pop_back();
    lines.pop_back();
    REQUIRE(texts.size() == lines.size());
    std::vector<VocabCase> cases;
    for (size_t i = 0; i < texts.size(); ++i) {
        VocabCase c{texts[i], {}};
        std::istringstream ids(lines[i]);
        for (int32_t id; ids >> id;) c.ids.push_back(id);
        cases.push_back(std::move(c));
    }
    return cases;
}

const Tokenizer & qwen2() {
    static const std::unique_ptr<Tokenizer> tok = [] {
        minicpm::GgufFile f(kVocabBase);
        return std::make_unique<Tokenizer>(Tokenizer::from_gguf(f.ctx(), f.path()));
    }();
    return *tok;
}

std::string ids_str(const std::vector<int32_t> & ids) {
    std::string s;
    for (int32_t id : ids) s += (s.empty() ? "" : " ") + std::to_string(id);
    return s;
}

// "\xc3\xa4 \n" -> "\"\\xc3\\xa4 \\n\"": a case in a failure message, whitespace and all.
std::string quoted(const std::string & text) {
    std::string s = "\"";
    for (unsigned char c : text) {
        if (c == '\n') s += "\\n";
        else if (c == '\t') s += "\\t";
        else if (c < 0x20 || c >= 0x7f) {
            char buf[8];
            std::snprintf(buf, sizeof buf, "\\x%02x", c);
            s += buf;
        } else s += (char) c;
    }
    return s + "\"";
}

} // namespace

TEST(vector_files_are_complete) {
    // As the Python test: llama.cpp's set has 40+ cases, the empty text among them.
    const auto cases = load_cases();
    CHECK(cases.size() >= 40);
    bool has_empty = false;
    for (const auto & c : cases) has_empty |= c.text.empty() && c.ids.empty();
    CHECK(has_empty);
}

TEST(encode_matches_llama_cpp_vectors) {
    const Tokenizer & tok = qwen2();
    int n_failed = 0;
    for (const auto & c : load_cases()) {
        const std::vector<int32_t> got = tok.encode(c.text);
        if (got != c.ids) {
            ++n_failed;
            check::report(__FILE__, __LINE__, "encode " + quoted(c.text) + ": got [" + ids_str(got) +
                                                  "], expected [" + ids_str(c.ids) + "]");
        }
    }
    CHECK_EQ(n_failed, 0);
}

TEST(decode_round_trips) {
    const Tokenizer & tok = qwen2();
    for (const auto & c : load_cases()) {
        const std::string got = tok.decode(c.ids);
        if (got != c.text) {
            check::report(__FILE__, __LINE__, "decode [" + ids_str(c.ids) + "]: got " + quoted(got) + ", expected " +
                                                  quoted(c.text));
        }
    }
}

TEST(stream_decoder_adds_up_to_decode) {
    // Feeding ids one at a time must give the same text as decode(), even where a token ends
    // inside a UTF-8 character (the vectors have CJK, emoji and combining marks).
    const Tokenizer & tok = qwen2();
    for (const auto & c : load_cases()) {
        minicpm::StreamDecoder sd(tok);
        std::string acc;
        for (int32_t id : c.ids) acc += sd.push(id);
        acc += sd.flush();
        if (acc != c.text) check::report(__FILE__, __LINE__, "stream decode of " + quoted(c.text) + ": " + quoted(acc));
    }
}

TEST(nfc_before_bpe) {
    // Qwen2's normalizer is NFC: "A" + U+0308 (combining diaeresis) encodes as the precomposed
    // "\xc3\x84" does in the vectors ("\xc3\x84pfel" is one of the cases).
    const Tokenizer & tok = qwen2();
    const std::string precomposed = "\xc3\x84pfel", decomposed = "A\xcc\x88pfel";
    for (const auto & c : load_cases()) {
        if (c.text == precomposed) {
            CHECK(tok.encode(decomposed) == c.ids);
            return;
        }
    }
    check::report(__FILE__, __LINE__, "the vectors have no case " + quoted(precomposed));
}

TEST(special_tokens) {
    // Known ids of Qwen2's vocabulary: <|endoftext|> 151643, <|im_start|> 151644.
    const Tokenizer & tok = qwen2();
    CHECK_EQ(tok.find_token("<|endoftext|>"), 151643);
    CHECK_EQ(tok.find_token("<|im_start|>"), 151644);
    CHECK_EQ(tok.find_token("no such token text"), -1);
    CHECK(tok.encode("<|im_start|>user") == std::vector<int32_t>({151644, 872}));
    // parse_special = false: the control token's text is ordinary text
    const std::vector<int32_t> as_text = tok.encode("<|im_start|>", false);
    CHECK(as_text.size() > 1);
    CHECK_EQ(tok.decode(as_text), std::string("<|im_start|>"));
    CHECK_EQ(tok.decode({151644, 872}, /*skip_special =*/true), std::string("user"));
    CHECK_THROWS_KIND(tok.token_bytes(-1), ErrorKind::InvalidArgument);
    CHECK_THROWS_KIND(tok.token_bytes(tok.n_tokens()), ErrorKind::InvalidArgument);
}

CHECK_MAIN()
