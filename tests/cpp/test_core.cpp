// Host-side helpers of csrc/core: the content hash (cache keys of media) and parallel_for.
#include "check.h"

#include "core/hash.h"
#include "core/parallel.h"

#include <atomic>
#include <cstdint>
#include <numeric>
#include <random>
#include <set>
#include <stdexcept>
#include <vector>

using minicpm::content_hash;

TEST(content_hash_separates_near_inputs) {
    std::vector<uint8_t> buf(100);
    for (size_t i = 0; i < buf.size(); ++i) buf[i] = (uint8_t) (i * 37 + 11);
    const uint64_t base = content_hash(buf.data(), buf.size());
    CHECK_EQ(content_hash(buf.data(), buf.size()), base);
    // every single-bit flip (lanes, the 8-byte tail words and the last partial word)
    std::set<uint64_t> seen = {base};
    for (size_t i = 0; i < buf.size(); ++i) {
        for (int b = 0; b < 8; ++b) {
            buf[i] ^= (uint8_t) (1u << b);
            seen.insert(content_hash(buf.data(), buf.size()));
            buf[i] ^= (uint8_t) (1u << b);
        }
    }
    CHECK_EQ(seen.size(), (size_t) 801);
    // every length of an all-zero buffer (the length and the tail enter)
    std::vector<uint8_t> zeros(200, 0);
    std::set<uint64_t> lens;
    for (size_t n = 0; n <= zeros.size(); ++n) lens.insert(content_hash(zeros.data(), n));
    CHECK_EQ(lens.size(), zeros.size() + 1);
}

TEST(content_hash_order_seed_and_alignment) {
    std::vector<uint8_t> a(96);
    std::iota(a.begin(), a.end(), (uint8_t) 1);
    const uint64_t h = content_hash(a.data(), a.size());
    // two words of one lane swapped; two 32-byte blocks swapped; two lanes' words swapped
    auto swapped = [&](size_t i, size_t j, size_t len) {
        std::vector<uint8_t> b = a;
        for (size_t k = 0; k < len; ++k) std::swap(b[i + k], b[j + k]);
        return content_hash(b.data(), b.size());
    };
    CHECK(swapped(0, 32, 8) != h);
    CHECK(swapped(0, 32, 32) != h);
    CHECK(swapped(0, 8, 8) != h);
    // seeds and chaining
    CHECK(content_hash(a.data(), a.size(), 1) != h);
    CHECK(content_hash(a.data(), a.size(), 1) != content_hash(a.data(), a.size(), 2));
    const uint64_t ab = content_hash(a.data() + 48, 48, content_hash(a.data(), 48));
    const uint64_t ba = content_hash(a.data(), 48, content_hash(a.data() + 48, 48));
    CHECK(ab != ba);
    CHECK(content_hash(nullptr, 0) != content_hash(nullptr, 0, 7));
    // an unaligned copy hashes the same
    std::vector<uint8_t> shifted(a.size() + 3);
    std::copy(a.begin(), a.end(), shifted.begin() + 3);
    CHECK_EQ(content_hash(shifted.data() + 3, a.size()), h);
}

TEST(fold_mul_portable_matches) {
    std::mt19937_64 rng(5);
    const uint64_t edge[] = {0, 1, 0xffffffffull, 0x100000000ull, ~0ull, 0x8000000000000000ull};
    for (uint64_t x : edge) {
        for (uint64_t y : edge) CHECK_EQ(minicpm::hash_detail::fold_mul_portable(x, y), minicpm::hash_detail::fold_mul(x, y));
    }
    for (int i = 0; i < 10000; ++i) {
        const uint64_t x = rng(), y = rng();
        if (minicpm::hash_detail::fold_mul_portable(x, y) != minicpm::hash_detail::fold_mul(x, y)) {
            CHECK_EQ(minicpm::hash_detail::fold_mul_portable(x, y), minicpm::hash_detail::fold_mul(x, y));
            break;
        }
    }
}

TEST(parallel_for_runs_every_item_once) {
    for (int threads : {1, 2, 3, 8}) {
        for (size_t n : {(size_t) 0, (size_t) 1, (size_t) 7, (size_t) 1000}) {
            std::vector<std::atomic<int>> hits(n);
            for (auto & x : hits) x = 0;
            std::atomic<int> on_worker{0};
            minicpm::parallel_for(n, threads, [&](size_t i) {
                hits[i]++;
                if (minicpm::in_parallel_worker()) on_worker++;
            });
            bool once = true;
            for (auto & x : hits) once = once && x == 1;
            CHECK(once);
            // items run on workers (flagged) whenever there is more than one thread
            CHECK_EQ(on_worker.load(), (threads > 1 && n > 1) ? (int) n : 0);
        }
    }
    CHECK(!minicpm::in_parallel_worker());
}

TEST(parallel_for_rethrows_after_all_items) {
    std::atomic<int> ran{0};
    bool thrown = false;
    try {
        minicpm::parallel_for(50, 4, [&](size_t i) {
            ran++;
            if (i == 3 || i == 20) throw std::runtime_error("item failed");
        });
    } catch (const std::runtime_error &) {
        thrown = true;
    }
    CHECK(thrown);
    CHECK_EQ(ran.load(), 50);
    CHECK(!minicpm::in_parallel_worker());
}

CHECK_MAIN()
