// Byte-level BPE tokenizer (GPT-2 / Qwen2 family) built from GGUF vocabulary metadata.
// Mirrors Hugging Face `tokenizers` for Qwen2TokenizerFast: NFC normalisation, added
// tokens matched before pre-tokenisation, Qwen2 pre-tokenizer split regex, byte-level
// mapping, BPE by merge rank.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

struct gguf_context;

namespace minicpm {

// llama.cpp's token types (tokenizer.ggml.token_type).
enum TokenType : int32_t {
    TOKEN_TYPE_UNDEFINED    = 0,
    TOKEN_TYPE_NORMAL       = 1,
    TOKEN_TYPE_UNKNOWN      = 2,
    TOKEN_TYPE_CONTROL      = 3,
    TOKEN_TYPE_USER_DEFINED = 4,
    TOKEN_TYPE_UNUSED       = 5,
    TOKEN_TYPE_BYTE         = 6,
};

struct VocabData {
    std::vector<std::string> tokens;       // as stored in tokenizer.ggml.tokens (byte-level encoded: "Ġthe")
    std::vector<int32_t>     token_types;  // same length as tokens
    std::vector<std::string> merges;       // "Ġ t" pairs, rank = index
    std::string              pre = "qwen2";  // tokenizer.ggml.pre
};

class Tokenizer {
public:
    // Throws minicpm::Error (Format) on malformed data (sizes differ, merge of unknown token, ...).
    explicit Tokenizer(VocabData data);

    // Reads tokenizer.ggml.{model,pre,tokens,token_type,merges}; `where` names the file in errors.
    // Throws Error(Unsupported) for a tokenizer model other than "gpt2" or an unknown pre-tokenizer.
    static Tokenizer from_gguf(const gguf_context * ctx, const std::string & where);

    // parse_special: match added tokens (CONTROL and USER_DEFINED) in the text before BPE,
    // as HF does with split_special_tokens=False. Without it CONTROL tokens stay text while
    // USER_DEFINED ones (<think>, ...) are still matched, as HF split_special_tokens=True and
    // llama.cpp do. No BOS is added.
    std::vector<int32_t> encode(std::string_view text, bool parse_special = true) const;

    // Concatenated raw bytes of the tokens (added tokens give their text). May end inside a
    // UTF-8 sequence; invalid UTF-8 is replaced by U+FFFD like HF decode(errors="replace").
    // skip_special drops CONTROL tokens (HF's special added tokens); UNUSED ids give nothing.
    std::string decode(const std::vector<int32_t> & ids, bool skip_special = false) const;

    // Raw bytes of one token, not UTF-8 validated. Throws Error(InvalidArgument) for a bad id.
    std::string token_bytes(int32_t id) const;

    // Id of the token whose text is exactly `text` (e.g. "<|im_end|>"), or -1.
    int32_t find_token(std::string_view text) const;

    int32_t n_tokens() const { return (int32_t) tokens_.size(); }
    int32_t token_type(int32_t id) const;
    bool    is_special(int32_t id) const;  // CONTROL or USER_DEFINED

private:
    struct MergeSlot {
        uint64_t key;   // left id << 32 | right id; kNoMerge for an empty slot
        int32_t  rank;
        int32_t  id;    // the merged token
    };
    static constexpr uint64_t kNoMerge = ~(uint64_t) 0;

    // Merge of the pair (left, right), or nullptr.
    const MergeSlot * find_merge(int32_t left, int32_t right) const;
    void              add_merge(int32_t left, int32_t right, int32_t rank, int32_t id);

    struct BpeScratch;  // buffers reused across the pieces of one encode() call

    // Encodes text that holds no added token: NFC, pre-tokenizer split, BPE per piece.
    void encode_text(std::string_view text, BpeScratch & scratch, std::vector<int32_t> & out) const;
    // BPE of one pre-tokenized piece, given as raw bytes.
    void encode_piece(std::string_view bytes, BpeScratch & scratch, std::vector<int32_t> & out) const;

    std::vector<std::string> tokens_;        // decoded raw bytes per id
    std::vector<int32_t>     types_;
    std::unordered_map<std::string, int32_t> token_to_id_;  // raw bytes -> id, added tokens first
    std::vector<MergeSlot>   merge_slots_;   // open-addressing hash table, linear probing
    int                      merge_shift_ = 64;  // hash = (key * golden) >> shift
    std::array<int32_t, 256> byte_ids_{};    // id of the one-byte symbol of each byte, -1 if none
    std::vector<std::vector<int32_t>> added_by_byte_;  // first byte -> CONTROL/USER_DEFINED ids, longest text first
    std::string              pre_;
};

// Incremental detokenizer for streaming: push() returns the text that became complete UTF-8,
// holding back a trailing partial sequence; flush() returns what is left (invalid bytes -> U+FFFD).
class StreamDecoder {
public:
    explicit StreamDecoder(const Tokenizer & tok, bool skip_special = false) : tok_(tok), skip_special_(skip_special) {}
    std::string push(int32_t id);
    std::string flush();
    void        reset() { pending_.clear(); }

private:
    const Tokenizer & tok_;
    bool              skip_special_;
    std::string       pending_;
};

} // namespace minicpm
