// Work split over a few host threads: per-item host work on media (hashing and preprocessing
// the frames of a video) next to the backends' own thread pools.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace minicpm {

// Threads for host-side media work: the machine's, at most 8.
inline int media_threads() {
    return (int) std::min(8u, std::max(1u, std::thread::hardware_concurrency()));
}

// True on a parallel_for worker (its items run there single-threaded: nested splits such as
// the image resizer's bands stay on the calling thread).
inline bool &in_parallel_worker() {
    static thread_local bool flag = false;
    return flag;
}

// fn(i) for every i in [0, n), on up to n_threads threads (the calling one included), items
// taken in order as threads free up. Every item runs even when one throws; the first exception
// is rethrown after all threads joined.
template <typename Fn> void parallel_for(size_t n, int n_threads, Fn && fn) {
    const size_t t = std::min<size_t>(n, (size_t) std::max(1, n_threads));
    if (t <= 1) {
        for (size_t i = 0; i < n; ++i) fn(i);
        return;
    }
    std::atomic<size_t> next{0};
    std::exception_ptr  error;
    std::mutex          error_mutex;
    auto work = [&] {
        bool & flag = in_parallel_worker();
        const bool saved = flag;
        flag = true;
        for (size_t i = next++; i < n; i = next++) {
            try {
                fn(i);
            } catch (...) {
                std::lock_guard<std::mutex> lock(error_mutex);
                if (!error) error = std::current_exception();
            }
        }
        flag = saved;
    };
    std::vector<std::thread> pool;
    pool.reserve(t - 1);
    for (size_t k = 1; k < t; ++k) pool.emplace_back(work);
    work();
    for (auto & th : pool) th.join();
    if (error) std::rethrow_exception(error);
}

} // namespace minicpm
