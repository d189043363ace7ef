// Unicode support for the byte-level BPE tokenizer: UTF-8 decoding and encoding, the
// character classes of the pre-tokenizer regex, NFC normalisation and the GPT-2 byte-level
// alphabet. Data versions follow Hugging Face `tokenizers` (see unicode_data.inc).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace minicpm::unicode {

// A byte that does not start a well-formed UTF-8 sequence is decoded to kRawByte + byte. Such
// a value is no Unicode scalar: it has no class (Other), no decomposition, combining class 0,
// and encodes back to the same single byte, so arbitrary bytes survive a decode/encode trip.
constexpr uint32_t kRawByte = 0x110000;

// Decodes UTF-8 (well-formed per the Unicode standard, table 3-7); see kRawByte.
std::vector<uint32_t> decode_utf8(std::string_view text);

// Appends the UTF-8 form of `cp`, or the raw byte for kRawByte + byte.
void append_utf8(std::string & out, uint32_t cp);

std::string encode_utf8(const uint32_t * cps, size_t n);

// Classes of the regex engine of HF tokenizers (Oniguruma): \p{L}, \p{N}, \s. They do not
// overlap; everything else (marks, punctuation, symbols, controls, unassigned) is Other.
enum class CharClass : uint8_t { Other = 0, Letter = 1, Number = 2, Space = 3 };

CharClass char_class(uint32_t cp);

// Canonical combining class (the NFC data version).
uint8_t combining_class(uint32_t cp);

// Unicode normalisation form C in place: canonical decomposition, canonical ordering by
// combining class, canonical composition (composition exclusions, Hangul algorithmic).
void nfc_inplace(std::vector<uint32_t> & cps);

std::string nfc(std::string_view text);

// GPT-2 bytes_to_unicode: printable Latin-1 bytes map to themselves, the other 68 bytes to
// U+0100 and up in byte order.
uint32_t byte_to_cpt(uint8_t byte);

// Inverse of byte_to_cpt; -1 for a code point outside the alphabet.
int cpt_to_byte(uint32_t cp);

// Replaces every maximal ill-formed subsequence by U+FFFD, the Unicode "substitution of
// maximal subparts" practice, as Rust's String::from_utf8_lossy and Python's
// bytes.decode("utf-8", "replace") do. An incomplete sequence at the end becomes one U+FFFD.
std::string sanitize_utf8(std::string_view bytes);

// Length of the longest prefix of `bytes` after which the rest is an incomplete but so far
// well-formed sequence (that more bytes could complete); the rest is 0 to 3 bytes long.
size_t complete_utf8_prefix(std::string_view bytes);

} // namespace minicpm::unicode
