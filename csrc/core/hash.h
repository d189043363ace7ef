// FNV-1a: a content hash for cache keys and context reuse tags (not for security).
#pragma once

#include <cstddef>
#include <cstdint>

namespace minicpm {

inline uint64_t fnv1a(const void * data, size_t n, uint64_t h = 1469598103934665603ull) {
    const auto * p = (const uint8_t *) data;
    for (size_t i = 0; i < n; ++i) {
        h ^= p[i];
        h *= 1099511628211ull;
    }
    return h;
}

} // namespace minicpm
