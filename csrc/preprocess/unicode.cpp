#include "unicode.h"

#include <algorithm>
#include <array>
#include <unordered_map>

namespace minicpm::unicode {

namespace {

struct ClassRange {
    uint32_t  first;
    uint32_t  last;
    CharClass cls;
};

struct CccRange {
    uint32_t first;
    uint32_t last;
    uint8_t  ccc;
};

// One level of a canonical decomposition: cp -> first [second]; second is 0 for singletons.
struct Decomposition {
    uint32_t cp;
    uint32_t first;
    uint32_t second;
    uint8_t  compose;  // 1: (first, second) composes back to cp in NFC
};

#include "unicode_data.inc"

// Hangul syllable arithmetic (Unicode 3.12).
constexpr uint32_t kSBase = 0xAC00, kLBase = 0x1100, kVBase = 0x1161, kTBase = 0x11A7;
constexpr uint32_t kLCount = 19, kVCount = 21, kTCount = 28;
constexpr uint32_t kNCount = kVCount * kTCount, kSCount = kLCount * kNCount;

enum class Utf8Status { Valid, Invalid, Truncated };

struct Utf8Unit {
    Utf8Status status;
    size_t     len;  // bytes consumed: the sequence, the maximal ill-formed subpart, or the rest
    uint32_t   cp;
};

// Reads one unit at s[i] (i < n) following table 3-7 of the Unicode standard.
Utf8Unit next_unit(const uint8_t * s, size_t n, size_t i) {
    const uint8_t b0 = s[i];
    if (b0 < 0x80) {
        return { Utf8Status::Valid, 1, b0 };
    }
    size_t   need;
    uint32_t cp;
    uint8_t  lo = 0x80, hi = 0xBF;  // allowed range of the second byte
    if (b0 >= 0xC2 && b0 <= 0xDF) {
        need = 1;
        cp   = b0 & 0x1F;
    } else if (b0 >= 0xE0 && b0 <= 0xEF) {
        need = 2;
        cp   = b0 & 0x0F;
        if (b0 == 0xE0) {
            lo = 0xA0;  // no overlong forms
        } else if (b0 == 0xED) {
            hi = 0x9F;  // no surrogates
        }
    } else if (b0 >= 0xF0 && b0 <= 0xF4) {
        need = 3;
        cp   = b0 & 0x07;
        if (b0 == 0xF0) {
            lo = 0x90;
        } else if (b0 == 0xF4) {
            hi = 0x8F;  // nothing above U+10FFFF
        }
    } else {
        return { Utf8Status::Invalid, 1, 0 };
    }
    for (size_t k = 1; k <= need; ++k) {
        if (i + k >= n) {
            return { Utf8Status::Truncated, k, 0 };
        }
        const uint8_t b = s[i + k];
        if (b < lo || b > hi) {
            return { Utf8Status::Invalid, k, 0 };
        }
        cp = (cp << 6) | (b & 0x3F);
        lo = 0x80;
        hi = 0xBF;
    }
    return { Utf8Status::Valid, need + 1, cp };
}

const Decomposition * find_decomposition(uint32_t cp) {
    const Decomposition * end = kDecompositions + sizeof(kDecompositions) / sizeof(kDecompositions[0]);
    const Decomposition * it  = std::lower_bound(kDecompositions, end, cp,
                                                 [](const Decomposition & d, uint32_t v) { return d.cp < v; });
    return (it != end && it->cp == cp) ? it : nullptr;
}

uint64_t pair_key(uint32_t a, uint32_t b) {
    return ((uint64_t) a << 32) | b;
}

struct NfcTables {
    std::unordered_map<uint64_t, uint32_t> compose;  // (first, second) -> primary composite
    std::vector<uint64_t>                  may_change;  // bitset: code points that NFC can alter

    NfcTables() : may_change(0x110000 / 64, 0) {
        auto mark = [&](uint32_t cp) { may_change[cp >> 6] |= (uint64_t) 1 << (cp & 63); };
        for (const Decomposition & d : kDecompositions) {
            if (d.compose) {
                compose.emplace(pair_key(d.first, d.second), d.cp);
                mark(d.second);
            } else {
                mark(d.cp);  // singleton or excluded composite: NFC replaces it
            }
        }
        for (const CccRange & r : kCccRanges) {
            for (uint32_t cp = r.first; cp <= r.last; ++cp) {
                mark(cp);
            }
        }
        // Conjoining jamo V and T compose with a preceding L or LV syllable.
        for (uint32_t cp = kVBase; cp < kVBase + kVCount; ++cp) {
            mark(cp);
        }
        for (uint32_t cp = kTBase + 1; cp < kTBase + kTCount; ++cp) {
            mark(cp);
        }
    }

    bool changes(uint32_t cp) const {
        return cp < 0x110000 && ((may_change[cp >> 6] >> (cp & 63)) & 1);
    }
};

const NfcTables & nfc_tables() {
    static const NfcTables tables;
    return tables;
}

void decompose(uint32_t cp, std::vector<uint32_t> & out) {
    if (cp >= kSBase && cp < kSBase + kSCount) {
        const uint32_t s = cp - kSBase;
        out.push_back(kLBase + s / kNCount);
        out.push_back(kVBase + (s % kNCount) / kTCount);
        if (s % kTCount != 0) {
            out.push_back(kTBase + s % kTCount);
        }
        return;
    }
    const Decomposition * d = cp < 0xC0 ? nullptr : find_decomposition(cp);
    if (d == nullptr) {
        out.push_back(cp);
        return;
    }
    decompose(d->first, out);
    if (d->second != 0) {
        decompose(d->second, out);
    }
}

// Primary composite of (a, b), or 0.
uint32_t compose_pair(const NfcTables & t, uint32_t a, uint32_t b) {
    if (a >= kLBase && a < kLBase + kLCount && b >= kVBase && b < kVBase + kVCount) {
        return kSBase + ((a - kLBase) * kVCount + (b - kVBase)) * kTCount;
    }
    if (a >= kSBase && a < kSBase + kSCount && (a - kSBase) % kTCount == 0 && b > kTBase &&
        b < kTBase + kTCount) {
        return a + (b - kTBase);
    }
    auto it = t.compose.find(pair_key(a, b));
    return it == t.compose.end() ? 0 : it->second;
}

struct ByteTables {
    std::array<uint32_t, 256> to_cpt{};
    std::array<int16_t, 0x144> from_cpt{};  // the alphabet ends at U+0143

    ByteTables() {
        from_cpt.fill(-1);
        uint32_t next = 0x100;
        for (int b = 0; b < 256; ++b) {
            const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
            to_cpt[b]            = printable ? (uint32_t) b : next++;
            from_cpt[to_cpt[b]]  = (int16_t) b;
        }
    }
};

const ByteTables & byte_tables() {
    static const ByteTables tables;
    return tables;
}

} // namespace

std::vector<uint32_t> decode_utf8(std::string_view text) {
    std::vector<uint32_t> out;
    out.reserve(text.size());
    const auto * s = (const uint8_t *) text.data();
    const size_t n = text.size();
    for (size_t i = 0; i < n;) {
        if (s[i] < 0x80) {
            out.push_back(s[i++]);
            continue;
        }
        const Utf8Unit u = next_unit(s, n, i);
        if (u.status == Utf8Status::Valid) {
            out.push_back(u.cp);
            i += u.len;
        } else {
            out.push_back(kRawByte + s[i]);  // the following bytes are examined on their own
            i += 1;
        }
    }
    return out;
}

void append_utf8(std::string & out, uint32_t cp) {
    if (cp < 0x80) {
        out.push_back((char) cp);
    } else if (cp < 0x800) {
        out.push_back((char) (0xC0 | (cp >> 6)));
        out.push_back((char) (0x80 | (cp & 0x3F)));
    } else if (cp < 0x10000) {
        out.push_back((char) (0xE0 | (cp >> 12)));
        out.push_back((char) (0x80 | ((cp >> 6) & 0x3F)));
        out.push_back((char) (0x80 | (cp & 0x3F)));
    } else if (cp < kRawByte) {
        out.push_back((char) (0xF0 | (cp >> 18)));
        out.push_back((char) (0x80 | ((cp >> 12) & 0x3F)));
        out.push_back((char) (0x80 | ((cp >> 6) & 0x3F)));
        out.push_back((char) (0x80 | (cp & 0x3F)));
    } else {
        out.push_back((char) (uint8_t) (cp - kRawByte));
    }
}

std::string encode_utf8(const uint32_t * cps, size_t n) {
    std::string out;
    out.reserve(n);
    for (size_t i = 0; i < n; ++i) {
        append_utf8(out, cps[i]);
    }
    return out;
}

CharClass char_class(uint32_t cp) {
    static const std::array<CharClass, 128> ascii = [] {
        std::array<CharClass, 128> t{};
        for (const ClassRange & r : kClassRanges) {
            for (uint32_t c = r.first; c <= r.last && c < 128; ++c) {
                t[c] = r.cls;
            }
        }
        return t;
    }();
    if (cp < 128) {
        return ascii[cp];
    }
    const ClassRange * end = kClassRanges + sizeof(kClassRanges) / sizeof(kClassRanges[0]);
    const ClassRange * it  = std::upper_bound(kClassRanges, end, cp,
                                              [](uint32_t v, const ClassRange & r) { return v < r.first; });
    if (it == kClassRanges) {
        return CharClass::Other;
    }
    --it;
    return cp <= it->last ? it->cls : CharClass::Other;
}

uint8_t combining_class(uint32_t cp) {
    if (cp < 0x300) {
        return 0;
    }
    const CccRange * end = kCccRanges + sizeof(kCccRanges) / sizeof(kCccRanges[0]);
    const CccRange * it  = std::upper_bound(kCccRanges, end, cp,
                                            [](uint32_t v, const CccRange & r) { return v < r.first; });
    if (it == kCccRanges) {
        return 0;
    }
    --it;
    return cp <= it->last ? it->ccc : 0;
}

void nfc_inplace(std::vector<uint32_t> & cps) {
    const NfcTables & t = nfc_tables();
    if (std::none_of(cps.begin(), cps.end(), [&](uint32_t cp) { return t.changes(cp); })) {
        return;  // quick check: nothing to decompose, reorder or compose
    }

    // 1. full canonical decomposition
    std::vector<uint32_t> buf;
    buf.reserve(cps.size() + cps.size() / 2);
    for (uint32_t cp : cps) {
        decompose(cp, buf);
    }

    // 2. canonical ordering: stable sort of each run of non-starters by combining class
    std::vector<uint8_t> ccc(buf.size());
    for (size_t i = 0; i < buf.size(); ++i) {
        ccc[i] = combining_class(buf[i]);
    }
    for (size_t i = 1; i < buf.size(); ++i) {
        if (ccc[i] == 0) {
            continue;
        }
        for (size_t j = i; j > 0 && ccc[j - 1] > ccc[j]; --j) {  // insertion sort, stable
            std::swap(ccc[j - 1], ccc[j]);
            std::swap(buf[j - 1], buf[j]);
        }
    }

    // 3. canonical composition. A character composes with the last starter unless blocked by
    // a character in between whose class is 0 or not lower than its own.
    size_t w       = 0;
    size_t starter = SIZE_MAX;
    int    last    = -1;  // class of the last character kept after the starter; -1: none
    for (size_t r = 0; r < buf.size(); ++r) {
        const uint32_t cp = buf[r];
        const int      c  = ccc[r];
        if (starter != SIZE_MAX && (last == -1 || last < c)) {
            const uint32_t comp = compose_pair(t, buf[starter], cp);
            if (comp != 0) {
                buf[starter] = comp;
                continue;
            }
        }
        if (c == 0) {
            starter = w;
            last    = -1;
        } else {
            last = c;
        }
        buf[w++] = cp;
    }
    buf.resize(w);
    cps.swap(buf);
}

std::string nfc(std::string_view text) {
    std::vector<uint32_t> cps = decode_utf8(text);
    nfc_inplace(cps);
    return encode_utf8(cps.data(), cps.size());
}

uint32_t byte_to_cpt(uint8_t byte) {
    return byte_tables().to_cpt[byte];
}

int cpt_to_byte(uint32_t cp) {
    const ByteTables & t = byte_tables();
    return cp < t.from_cpt.size() ? t.from_cpt[cp] : -1;
}

std::string sanitize_utf8(std::string_view bytes) {
    std::string out;
    out.reserve(bytes.size());
    const auto * s = (const uint8_t *) bytes.data();
    const size_t n = bytes.size();
    for (size_t i = 0; i < n;) {
        if (s[i] < 0x80) {
            out.push_back((char) s[i++]);
            continue;
        }
        const Utf8Unit u = next_unit(s, n, i);
        if (u.status == Utf8Status::Valid) {
            out.append(bytes.substr(i, u.len));
        } else {
            out.append("\xEF\xBF\xBD");  // U+FFFD
        }
        i += u.len;
    }
    return out;
}

size_t complete_utf8_prefix(std::string_view bytes) {
    const auto * s = (const uint8_t *) bytes.data();
    const size_t n = bytes.size();
    // Only the last three bytes can hold an incomplete sequence; units are found from the
    // start of the last lead byte (or of the ill-formed data) within them.
    size_t i = n > 4 ? n - 4 : 0;
    while (i > 0 && (s[i] & 0xC0) == 0x80) {
        --i;  // step back to a byte that is not a continuation byte
    }
    while (i < n) {
        const Utf8Unit u = next_unit(s, n, i);
        if (u.status == Utf8Status::Truncated) {
            return i;
        }
        i += u.len;
    }
    return n;
}

} // namespace minicpm::unicode
