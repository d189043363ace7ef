// Byte-level BPE tokenizer equal to Hugging Face `tokenizers` as configured for
// Qwen2TokenizerFast:
//   added tokens (matched first, leftmost-longest, on the raw text)
//   -> NFC normalizer -> Split(Qwen2 regex, Isolated) -> ByteLevel -> BPE (merge ranks)
// and decoding by the ByteLevel decoder (bytes, then lossy UTF-8).
#include "tokenizer.h"

#include "core/error.h"
#include "model/names.h"
#include "unicode.h"

#include <gguf.h>

#include <algorithm>

namespace minicpm {

namespace {

using unicode::CharClass;

bool is_added_type(int32_t type) {
    return type == TOKEN_TYPE_CONTROL || type == TOKEN_TYPE_USER_DEFINED;
}

// Pre-tokenizers whose split regex is the Qwen2 one (llama.cpp names).
bool is_qwen2_pre(const std::string & pre) {
    return pre == "qwen2" || pre == "deepseek-r1-qwen";
}

// The letters of the contraction alternative, folded as Oniguruma's case-insensitive match
// folds them: ASCII case, and U+017F LATIN SMALL LETTER LONG S folds to 's' (checked against
// tokenizers for every code point: no other character folds to s, t, r, e, v, m, l or d).
uint32_t fold_letter(uint32_t cp) {
    if (cp >= 'A' && cp <= 'Z') {
        return cp + ('a' - 'A');
    }
    return cp == 0x17F ? 's' : cp;
}

bool is_crlf(uint32_t cp) {
    return cp == '\r' || cp == '\n';
}

// End of the match that starts at i (i < n) of the Qwen2 pre-tokenizer regex
//   (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|
//   \s*[\r\n]+|\s+(?!\S)|\s+
// with the leftmost-first alternation and backtracking of a regex engine. Every character
// starts some alternative, so the matches tile the text and Isolated splitting leaves no gaps.
size_t qwen2_match(const uint32_t * c, const CharClass * k, size_t n, size_t i) {
    // (?i:'s|'t|'re|'ve|'m|'ll|'d)
    if (c[i] == '\'' && i + 1 < n) {
        const uint32_t a = fold_letter(c[i + 1]);
        if (a == 's' || a == 't' || a == 'm' || a == 'd') {
            return i + 2;
        }
        if (i + 2 < n) {
            const uint32_t b = fold_letter(c[i + 2]);
            if (((a == 'r' || a == 'v') && b == 'e') || (a == 'l' && b == 'l')) {
                return i + 3;
            }
        }
    }
    // [^\r\n\p{L}\p{N}]?\p{L}+  (the optional character cannot be a letter, so a letter at i
    // starts the run; otherwise the run must start at i + 1)
    size_t j = n;
    if (k[i] == CharClass::Letter) {
        j = i;
    } else if (k[i] != CharClass::Number && !is_crlf(c[i]) && i + 1 < n && k[i + 1] == CharClass::Letter) {
        j = i + 1;
    }
    if (j < n) {
        while (j < n && k[j] == CharClass::Letter) {
            ++j;
        }
        return j;
    }
    // \p{N}
    if (k[i] == CharClass::Number) {
        return i + 1;
    }
    // ' ?[^\s\p{L}\p{N}]+[\r\n]*'
    j = (c[i] == ' ' && i + 1 < n && k[i + 1] == CharClass::Other) ? i + 1 : i;
    if (k[j] == CharClass::Other) {
        while (j < n && k[j] == CharClass::Other) {
            ++j;
        }
        while (j < n && is_crlf(c[j])) {
            ++j;
        }
        return j;
    }
    // Only whitespace is left at i. Let [i, j) be the whole whitespace run.
    size_t last_nl = n;
    for (j = i; j < n && k[j] == CharClass::Space; ++j) {
        if (is_crlf(c[j])) {
            last_nl = j;
        }
    }
    // \s*[\r\n]+ : backtracking ends the match after the last line break of the run
    if (last_nl < n) {
        return last_nl + 1;
    }
    // \s+(?!\S) : the run up to the end of the text, or all of it but its last character
    if (j == n) {
        return n;
    }
    if (j - 1 > i) {
        return j - 1;
    }
    // \s+
    return j;
}

// Reads an array of strings at `key`; false if the key is absent.
bool read_str_array(const gguf_context * ctx, const std::string & key, const std::string & where,
                    std::vector<std::string> & out) {
    const int64_t id = gguf_find_key(ctx, key.c_str());
    if (id < 0) {
        return false;
    }
    if (gguf_get_kv_type(ctx, id) != GGUF_TYPE_ARRAY || gguf_get_arr_type(ctx, id) != GGUF_TYPE_STRING) {
        const enum gguf_type t = gguf_get_kv_type(ctx, id);
        const std::string    got = t == GGUF_TYPE_ARRAY
                                       ? std::string("array of ") + gguf_type_name(gguf_get_arr_type(ctx, id))
                                       : std::string(gguf_type_name(t));
        fail(ErrorKind::Format, key + ": expected an array of strings, got " + got + " (" + where + ")");
    }
    const size_t n = gguf_get_arr_n(ctx, id);
    out.clear();
    out.reserve(n);
    for (size_t i = 0; i < n; ++i) {
        out.emplace_back(gguf_get_arr_str(ctx, id, i));
    }
    return true;
}

// Reads a string at `key`; false if the key is absent.
bool read_str(const gguf_context * ctx, const std::string & key, const std::string & where, std::string & out) {
    const int64_t id = gguf_find_key(ctx, key.c_str());
    if (id < 0) {
        return false;
    }
    const enum gguf_type t = gguf_get_kv_type(ctx, id);
    if (t != GGUF_TYPE_STRING) {
        fail(ErrorKind::Format,
             key + ": expected a string, got " + gguf_type_name(t) + " (" + where + ")");
    }
    out = gguf_get_val_str(ctx, id);
    return true;
}

std::string quoted(std::string_view s) {
    return "'" + std::string(s) + "'";
}

} // namespace

Tokenizer::Tokenizer(VocabData data) {
    pre_ = data.pre;
    if (!is_qwen2_pre(pre_)) {
        fail(ErrorKind::Unsupported,
             "tokenizer pre-tokenizer: expected \"qwen2\", got " + quoted(pre_));
    }
    const size_t n = data.tokens.size();
    if (n == 0) {
        fail(ErrorKind::Format, "tokenizer: the vocabulary is empty");
    }
    if (n > (size_t) INT32_MAX) {
        fail(ErrorKind::Format, "tokenizer: vocabulary of " + std::to_string(n) + " tokens is too large");
    }
    if (data.token_types.empty()) {
        data.token_types.assign(n, TOKEN_TYPE_NORMAL);
    }
    if (data.token_types.size() != n) {
        fail(ErrorKind::Format, "tokenizer: expected " + std::to_string(n) + " token types (one per token), got " +
                                    std::to_string(data.token_types.size()));
    }
    for (size_t i = 0; i < n; ++i) {
        const int32_t t = data.token_types[i];
        if (t < TOKEN_TYPE_UNDEFINED || t > TOKEN_TYPE_BYTE) {
            fail(ErrorKind::Format, "tokenizer: token type " + std::to_string(t) + " of token " + std::to_string(i) +
                                        " is not one of llama.cpp's token types (0-6)");
        }
    }
    types_ = std::move(data.token_types);

    // Raw bytes of each token. Added tokens are stored as their text; the others in the
    // byte-level alphabet, which the ByteLevel decoder maps back to bytes (a token with a
    // character outside the alphabet decodes to its own UTF-8 text, as in HF).
    tokens_.resize(n);
    std::unordered_map<std::string_view, int32_t> symbol_to_id;  // byte-level form -> id
    symbol_to_id.reserve(n);
    for (size_t id = 0; id < n; ++id) {
        const std::string & text = data.tokens[id];
        symbol_to_id.emplace(text, (int32_t) id);
        if (is_added_type(types_[id])) {
            tokens_[id] = text;
            continue;
        }
        std::string raw;
        raw.reserve(text.size());
        bool mapped = true;
        for (uint32_t cp : unicode::decode_utf8(text)) {
            const int b = unicode::cpt_to_byte(cp);
            if (b < 0) {
                mapped = false;
                break;
            }
            raw.push_back((char) b);
        }
        tokens_[id] = mapped ? std::move(raw) : text;
    }

    for (int b = 0; b < 256; ++b) {
        std::string sym;
        unicode::append_utf8(sym, unicode::byte_to_cpt((uint8_t) b));
        auto it      = symbol_to_id.find(sym);
        byte_ids_[b] = it == symbol_to_id.end() ? -1 : it->second;
    }

    // Hash table of at least twice as many slots as merges.
    size_t slots = 16;
    merge_shift_ = 64 - 4;
    while (slots < 2 * data.merges.size()) {
        slots *= 2;
        merge_shift_ -= 1;
    }
    merge_slots_.assign(slots, MergeSlot{ kNoMerge, 0, 0 });
    std::string joined;
    for (size_t rank = 0; rank < data.merges.size(); ++rank) {
        const std::string & m   = data.merges[rank];
        const size_t        pos = m.find(' ', 1);
        if (pos == std::string::npos) {
            fail(ErrorKind::Format, "tokenizer merge " + std::to_string(rank) + ": expected \"left right\", got " +
                                        quoted(m));
        }
        const std::string_view left(m.data(), pos);
        const std::string_view right(m.data() + pos + 1, m.size() - pos - 1);
        joined.assign(left);
        joined.append(right);
        auto il = symbol_to_id.find(left);
        auto ir = symbol_to_id.find(right);
        auto ij = symbol_to_id.find(joined);
        if (il == symbol_to_id.end() || ir == symbol_to_id.end() || ij == symbol_to_id.end()) {
            const std::string_view missing = il == symbol_to_id.end() ? left
                                           : ir == symbol_to_id.end() ? right
                                                                      : std::string_view(joined);
            fail(ErrorKind::Format, "tokenizer merge " + std::to_string(rank) + " " + quoted(m) + ": token " +
                                        quoted(missing) + " is not in the vocabulary");
        }
        add_merge(il->second, ir->second, (int32_t) rank, ij->second);
    }

    // Text lookup (find_token): added tokens take precedence, then the lowest id.
    token_to_id_.reserve(n);
    for (size_t id = 0; id < n; ++id) {
        if (is_added_type(types_[id])) {
            token_to_id_.emplace(tokens_[id], (int32_t) id);
        }
    }
    for (size_t id = 0; id < n; ++id) {
        if (types_[id] != TOKEN_TYPE_UNUSED) {
            token_to_id_.emplace(tokens_[id], (int32_t) id);
        }
    }

    // Added tokens indexed by first byte, longest first: the first hit at a position is the
    // leftmost-longest match that HF's added-vocabulary automaton finds.
    added_by_byte_.assign(256, {});
    for (size_t id = 0; id < n; ++id) {
        if (is_added_type(types_[id]) && !tokens_[id].empty()) {
            added_by_byte_[(uint8_t) tokens_[id][0]].push_back((int32_t) id);
        }
    }
    for (auto & ids : added_by_byte_) {
        std::stable_sort(ids.begin(), ids.end(),
                         [&](int32_t a, int32_t b) { return tokens_[a].size() > tokens_[b].size(); });
    }
}

namespace {

uint64_t pair_key(int32_t left, int32_t right) {
    return ((uint64_t) (uint32_t) left << 32) | (uint32_t) right;
}

} // namespace

const Tokenizer::MergeSlot * Tokenizer::find_merge(int32_t left, int32_t right) const {
    const uint64_t key  = pair_key(left, right);
    const size_t   mask = merge_slots_.size() - 1;
    for (size_t i = (size_t) ((key * 0x9E3779B97F4A7C15ull) >> merge_shift_);; i = (i + 1) & mask) {
        const MergeSlot & s = merge_slots_[i];
        if (s.key == key) {
            return &s;
        }
        if (s.key == kNoMerge) {
            return nullptr;
        }
    }
}

void Tokenizer::add_merge(int32_t left, int32_t right, int32_t rank, int32_t id) {
    const uint64_t key  = pair_key(left, right);
    const size_t   mask = merge_slots_.size() - 1;
    for (size_t i = (size_t) ((key * 0x9E3779B97F4A7C15ull) >> merge_shift_);; i = (i + 1) & mask) {
        MergeSlot & s = merge_slots_[i];
        if (s.key == kNoMerge || s.key == key) {
            s = MergeSlot{ key, rank, id };  // a repeated pair keeps its last rank, as in HF
            return;
        }
    }
}

Tokenizer Tokenizer::from_gguf(const gguf_context * ctx, const std::string & where) {
    const std::string model_key = key_name(KeyName::TOKENIZER_MODEL);
    const std::string pre_key   = key_name(KeyName::TOKENIZER_PRE);
    const std::string tok_key   = key_name(KeyName::TOKENIZER_TOKENS);
    const std::string type_key  = key_name(KeyName::TOKENIZER_TOKEN_TYPE);
    const std::string merge_key = key_name(KeyName::TOKENIZER_MERGES);

    std::string model;
    if (!read_str(ctx, model_key, where, model)) {
        fail(ErrorKind::Format, "missing " + model_key + ": the file has no tokenizer (" + where + ")");
    }
    if (model != "gpt2") {
        fail(ErrorKind::Unsupported,
             model_key + ": expected \"gpt2\" (byte-level BPE), got " + quoted(model) + " (" + where + ")");
    }

    VocabData data;
    if (!read_str(ctx, pre_key, where, data.pre)) {
        fail(ErrorKind::Unsupported, "missing " + pre_key + ": expected the \"qwen2\" pre-tokenizer (" + where + ")");
    }
    if (!is_qwen2_pre(data.pre)) {
        fail(ErrorKind::Unsupported,
             pre_key + ": expected \"qwen2\", got " + quoted(data.pre) + " (" + where + ")");
    }
    if (!read_str_array(ctx, tok_key, where, data.tokens)) {
        fail(ErrorKind::Format, "missing " + tok_key + " (" + where + ")");
    }
    if (!read_str_array(ctx, merge_key, where, data.merges)) {
        fail(ErrorKind::Format, "missing " + merge_key + " (" + where + ")");
    }

    const int64_t type_id = gguf_find_key(ctx, type_key.c_str());
    if (type_id >= 0) {
        if (gguf_get_kv_type(ctx, type_id) != GGUF_TYPE_ARRAY || gguf_get_arr_type(ctx, type_id) != GGUF_TYPE_INT32) {
            const enum gguf_type t = gguf_get_kv_type(ctx, type_id);
            const std::string    got = t == GGUF_TYPE_ARRAY
                                           ? std::string("array of ") + gguf_type_name(gguf_get_arr_type(ctx, type_id))
                                           : std::string(gguf_type_name(t));
            fail(ErrorKind::Format, type_key + ": expected an array of int32, got " + got + " (" + where + ")");
        }
        const size_t n = gguf_get_arr_n(ctx, type_id);
        if (n != data.tokens.size()) {
            fail(ErrorKind::Format, type_key + ": expected " + std::to_string(data.tokens.size()) +
                                        " entries (one per token), got " + std::to_string(n) + " (" + where + ")");
        }
        const auto * p = (const int32_t *) gguf_get_arr_data(ctx, type_id);
        data.token_types.assign(p, p + n);
    } else {
        data.token_types.assign(data.tokens.size(), TOKEN_TYPE_NORMAL);
    }

    try {
        return Tokenizer(std::move(data));
    } catch (const Error & e) {
        throw Error(e.kind(), std::string(e.what()) + " (" + where + ")");
    }
}

namespace {

struct BpeSymbol {
    int32_t id;    // -1 once merged into its left neighbour
    int32_t prev;  // symbol index, -1 at the start
    int32_t next;  // symbol index, -1 at the end
};

// A queued merge of the adjacent symbols left and right; ordered so that std::push_heap /
// pop_heap give the lowest rank first and, among equal ranks, the leftmost pair (HF's order).
struct BpeCandidate {
    int32_t rank;
    int32_t left;
    int32_t right;
    int32_t left_id;
    int32_t right_id;
    int32_t merged;
};

bool bpe_later(const BpeCandidate & a, const BpeCandidate & b) {
    return a.rank != b.rank ? a.rank > b.rank : a.left > b.left;
}

} // namespace

struct Tokenizer::BpeScratch {
    std::vector<BpeSymbol>    sym;
    std::vector<BpeCandidate> heap;
    std::vector<uint32_t>     cps;
    std::vector<CharClass>    cls;
    std::string               bytes;
};

void Tokenizer::encode_piece(std::string_view bytes, BpeScratch & scratch, std::vector<int32_t> & out) const {
    // HF BPE::merge_word: one symbol per byte (a byte without a symbol is dropped: the model
    // has no unknown token), then merges by lowest rank, ties to the leftmost pair.
    std::vector<BpeSymbol> & sym = scratch.sym;
    sym.clear();
    for (unsigned char b : bytes) {
        const int32_t id = byte_ids_[b];
        if (id >= 0) {
            const int32_t i = (int32_t) sym.size();
            sym.push_back({ id, i - 1, i + 1 });
        }
    }
    if (sym.empty()) {
        return;
    }
    sym.back().next = -1;
    if (sym.size() == 1) {
        out.push_back(sym[0].id);
        return;
    }

    std::vector<BpeCandidate> & heap = scratch.heap;
    heap.clear();
    auto consider = [&](int32_t left, int32_t right) {
        const MergeSlot * m = find_merge(sym[left].id, sym[right].id);
        if (m != nullptr) {
            heap.push_back({ m->rank, left, right, sym[left].id, sym[right].id, m->id });
            std::push_heap(heap.begin(), heap.end(), bpe_later);
        }
    };
    for (int32_t i = 0; i + 1 < (int32_t) sym.size(); ++i) {
        consider(i, i + 1);
    }
    while (!heap.empty()) {
        std::pop_heap(heap.begin(), heap.end(), bpe_later);
        const BpeCandidate c = heap.back();
        heap.pop_back();
        BpeSymbol & l = sym[c.left];
        // Stale candidate: the pair changed since it was queued (a merge always changes the
        // left symbol's id, so equal ids at the same adjacent positions mean the same pair).
        if (l.id != c.left_id || l.next != c.right || sym[c.right].id != c.right_id) {
            continue;
        }
        BpeSymbol & r = sym[c.right];
        l.id          = c.merged;
        l.next        = r.next;
        r.id          = -1;
        if (r.next >= 0) {
            sym[r.next].prev = c.left;
        }
        if (l.prev >= 0) {
            consider(l.prev, c.left);
        }
        if (l.next >= 0) {
            consider(c.left, l.next);
        }
    }
    for (int32_t i = 0; i >= 0; i = sym[i].next) {
        out.push_back(sym[i].id);
    }
}

void Tokenizer::encode_text(std::string_view text, BpeScratch & scratch, std::vector<int32_t> & out) const {
    if (text.empty()) {
        return;
    }
    std::vector<uint32_t> & cps = scratch.cps;
    cps                         = unicode::decode_utf8(text);
    unicode::nfc_inplace(cps);
    const size_t             n   = cps.size();
    std::vector<CharClass> & cls = scratch.cls;
    cls.resize(n);
    for (size_t i = 0; i < n; ++i) {
        cls[i] = unicode::char_class(cps[i]);
    }
    std::string & bytes = scratch.bytes;
    for (size_t i = 0; i < n;) {
        const size_t end = qwen2_match(cps.data(), cls.data(), n, i);
        bytes.clear();
        for (size_t j = i; j < end; ++j) {
            unicode::append_utf8(bytes, cps[j]);
        }
        encode_piece(bytes, scratch, out);
        i = end;
    }
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool parse_special) const {
    // Added tokens split the text first (HF AddedVocabulary: leftmost-longest, non-overlapping
    // matches; all tokens unnormalized and without lstrip/rstrip/single_word, as in the Qwen2
    // and MiniCPM vocabularies). Without parse_special a CONTROL match stays text for BPE while
    // USER_DEFINED tokens are still extracted, as HF's split_special_tokens=True does (it drops
    // special matches after the search, so their span is not searched again) and as llama.cpp's
    // parse_special=false does.
    std::vector<int32_t> out;
    out.reserve(text.size() / 3 + 4);
    BpeScratch scratch;
    size_t     seg = 0;
    for (size_t i = 0; i < text.size();) {
        const auto & cands = added_by_byte_[(uint8_t) text[i]];
        int32_t      hit   = -1;
        for (int32_t id : cands) {
            const std::string & t = tokens_[id];
            if (text.compare(i, t.size(), t) == 0) {
                hit = id;
                break;
            }
        }
        if (hit < 0) {
            ++i;
            continue;
        }
        if (!parse_special && types_[hit] == TOKEN_TYPE_CONTROL) {
            i += tokens_[hit].size();
            continue;
        }
        encode_text(text.substr(seg, i - seg), scratch, out);
        out.push_back(hit);
        i += tokens_[hit].size();
        seg = i;
    }
    encode_text(text.substr(seg), scratch, out);
    return out;
}

std::string Tokenizer::decode(const std::vector<int32_t> & ids, bool skip_special) const {
    // HF: ids with no token (UNUSED padding rows) give nothing; skip_special skips the special
    // added tokens (CONTROL), not the others (USER_DEFINED such as <think>).
    std::string raw;
    for (int32_t id : ids) {
        const int32_t type = token_type(id);
        if (type == TOKEN_TYPE_UNUSED || (skip_special && type == TOKEN_TYPE_CONTROL)) {
            continue;
        }
        raw += tokens_[id];
    }
    return unicode::sanitize_utf8(raw);
}

std::string Tokenizer::token_bytes(int32_t id) const {
    token_type(id);  // range check
    return tokens_[id];
}

int32_t Tokenizer::find_token(std::string_view text) const {
    auto it = token_to_id_.find(std::string(text));
    return it == token_to_id_.end() ? -1 : it->second;
}

int32_t Tokenizer::token_type(int32_t id) const {
    if (id < 0 || id >= n_tokens()) {
        fail(ErrorKind::InvalidArgument,
             "token id " + std::to_string(id) + ": expected 0 <= id < " + std::to_string(n_tokens()));
    }
    return types_[id];
}

bool Tokenizer::is_special(int32_t id) const {
    return is_added_type(token_type(id));
}

std::string StreamDecoder::push(int32_t id) {
    const int32_t type = tok_.token_type(id);
    if (type == TOKEN_TYPE_UNUSED || (skip_special_ && type == TOKEN_TYPE_CONTROL)) {
        return {};
    }
    pending_ += tok_.token_bytes(id);
    // Emit everything up to a trailing incomplete sequence. Lossy UTF-8 conversion of a prefix
    // that ends on a unit boundary equals the start of the conversion of the whole, so the
    // pieces add up to decode() of all ids.
    const size_t complete = unicode::complete_utf8_prefix(pending_);
    std::string  out      = unicode::sanitize_utf8(std::string_view(pending_).substr(0, complete));
    pending_.erase(0, complete);
    return out;
}

std::string StreamDecoder::flush() {
    std::string out = unicode::sanitize_utf8(pending_);
    pending_.clear();
    return out;
}

} // namespace minicpm
