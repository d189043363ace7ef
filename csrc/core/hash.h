// A content hash for cache keys and context reuse tags (in-process only, never stored; not for
// security). Media are hashed whole (a 10-minute video's chosen frames are ~1.5 GB), so the hash
// must run at memory speed: four independent lanes of 8-byte words, each word folded into its
// lane by a 64x64->128-bit multiply whose halves are xored (a byte-at-a-time FNV-1a managed
// 0.7 GB/s, which cost seconds per video). Chaining: content_hash(b, nb, content_hash(a, na))
// hashes a then b.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace minicpm {

namespace hash_detail {

constexpr uint64_t kSeed = 0x6a09e667f3bcc908ull;
constexpr uint64_t kLane[4] = {0x9e3779b97f4a7c15ull, 0xc2b2ae3d27d4eb4full, 0x165667b19e3779f9ull,
                               0xd6e8feb86659fd93ull};
constexpr uint64_t kMul[4] = {0xa0761d6478bd642full, 0xe7037ed1a0b428dbull, 0x8ebc6af09c88c6e3ull,
                              0x589965cc75374cc3ull};

// The xor of the two halves of a * b, from 32-bit products (for compilers without 128-bit ints).
inline uint64_t fold_mul_portable(uint64_t a, uint64_t b) {
    const uint64_t a0 = a & 0xffffffffu, a1 = a >> 32, b0 = b & 0xffffffffu, b1 = b >> 32;
    const uint64_t p00 = a0 * b0, p01 = a0 * b1, p10 = a1 * b0, p11 = a1 * b1;
    const uint64_t mid = (p00 >> 32) + (p01 & 0xffffffffu) + (p10 & 0xffffffffu);
    const uint64_t lo = (mid << 32) | (p00 & 0xffffffffu);
    const uint64_t hi = p11 + (p01 >> 32) + (p10 >> 32) + (mid >> 32);
    return lo ^ hi;
}

// The xor of the two halves of a * b.
inline uint64_t fold_mul(uint64_t a, uint64_t b) {
#if defined(__SIZEOF_INT128__)
    const unsigned __int128 r = (unsigned __int128) a * b;
    return (uint64_t) r ^ (uint64_t) (r >> 64);
#else
    return fold_mul_portable(a, b);
#endif
}

inline uint64_t load64(const uint8_t * p) {
    uint64_t v;
    std::memcpy(&v, p, sizeof(v));
    return v;
}

} // namespace hash_detail

inline uint64_t content_hash(const void * data, size_t n, uint64_t seed = hash_detail::kSeed) {
    using namespace hash_detail;
    const auto * p = (const uint8_t *) data;
    uint64_t l0 = seed ^ kLane[0], l1 = seed ^ kLane[1], l2 = seed ^ kLane[2], l3 = seed ^ kLane[3];
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        l0 = fold_mul(l0 ^ load64(p + i), kMul[0]);
        l1 = fold_mul(l1 ^ load64(p + i + 8), kMul[1]);
        l2 = fold_mul(l2 ^ load64(p + i + 16), kMul[2]);
        l3 = fold_mul(l3 ^ load64(p + i + 24), kMul[3]);
    }
    for (; i + 8 <= n; i += 8) l0 = fold_mul(l0 ^ load64(p + i), kMul[1]);
    if (i < n) {
        uint64_t w = 0;
        std::memcpy(&w, p + i, n - i);
        l1 = fold_mul(l1 ^ w ^ ((uint64_t) (n - i) << 59), kMul[2]);
    }
    // Lanes enter in different roles (no two orders of the same words meet the same combination).
    uint64_t h = fold_mul(l0 ^ kMul[3], l1 ^ kLane[0]) ^ fold_mul(l2 ^ kMul[0], l3 ^ kLane[2]);
    h = fold_mul(h ^ (uint64_t) n, kMul[1]);
    return h ^ (h >> 31);
}

} // namespace minicpm
