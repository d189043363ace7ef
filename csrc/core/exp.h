// Float32 exponentials for softmax numerators over a whole vocabulary: e^(x - max) for every
// logit, several times faster than a loop over the C library's expf, with the same values to
// within 1 ulp (tests/cpp/test_blocks.cpp sweeps the floats of [-87.3, 0]).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace minicpm {

// e^v for v <= 0 in float32 (Cephes' expf: a degree-6 polynomial after the ln 2 range
// reduction; within 1 ulp of the C library's expf, equal to it for 99% of inputs): 0 below
// -87.33654 (where expf is denormal or 0) and for -inf, NaN for NaN. The scalar and the vector
// form below compute the same operations, so every platform gets the same values.
inline float exp_nonpositive(float v) {
    constexpr float lo = -87.33654f;
    if (!(v >= lo)) return v != v ? v : 0.0f;
    const float nf = (v * 1.44269504088896341f + 12582912.0f) - 12582912.0f;   // round(v / ln 2)
    float r = v - nf * 0.693359375f;
    r = r - nf * -2.12194440e-4f;
    float p = r * 1.9875691500e-4f + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * (r * r) + r + 1.0f;
    const uint32_t bits = (uint32_t) ((int32_t) nf + 127) << 23;   // 2^nf
    float s;
    std::memcpy(&s, &bits, sizeof s);
    return p * s;
}

// y[i] = e^(x[i] - shift) for x[i] <= shift (the softmax numerators over a whole vocabulary,
// four at a time where the compiler has vector extensions).
inline void exp_shifted(const float * x, float * y, size_t n, float shift) {
    size_t i = 0;
#if defined(__GNUC__) || defined(__clang__)
    typedef float   v4f __attribute__((vector_size(16)));
    typedef int32_t v4i __attribute__((vector_size(16)));
    const v4f lo = {-87.33654f, -87.33654f, -87.33654f, -87.33654f};
    for (; i + 4 <= n; i += 4) {
        v4f v0;
        std::memcpy(&v0, x + i, sizeof v0);
        v0 -= shift;
        const v4i below = v0 < lo;   // also -inf; NaN is not below and stays NaN
        const v4f v = (v4f) (((v4i) v0 & ~below) | ((v4i) lo & below));
        const v4f nf = (v * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
        v4f r = v - nf * 0.693359375f;
        r = r - nf * -2.12194440e-4f;
        v4f p = r * 1.9875691500e-4f + 1.3981999507e-3f;
        p = p * r + 8.3334519073e-3f;
        p = p * r + 4.1665795894e-2f;
        p = p * r + 1.6666665459e-1f;
        p = p * r + 5.0000001201e-1f;
        p = p * (r * r) + r + 1.0f;
        const v4i bits = (__builtin_convertvector(nf, v4i) + 127) << 23;
        const v4f e = (v4f) ((v4i) (p * (v4f) bits) & ~below);
        std::memcpy(y + i, &e, sizeof e);
    }
#endif
    for (; i < n; ++i) y[i] = exp_nonpositive(x[i] - shift);
}

} // namespace minicpm
