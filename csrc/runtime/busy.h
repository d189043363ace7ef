// One owner at a time: a Session (or ImageEncoder) entered from a second thread while another
// is inside it throws Error(Busy) instead of racing on its state.
#pragma once

#include "core/error.h"

#include <atomic>
#include <string>

namespace minicpm {

class BusyGuard {
public:
    BusyGuard(std::atomic<bool> & flag, const char * what) : flag_(flag) {
        if (flag_.exchange(true, std::memory_order_acquire)) {
            fail(ErrorKind::Busy, std::string(what) + " is busy: another thread is using it (use one " + what +
                                      " per thread; sessions on one model may run in parallel)");
        }
    }
    ~BusyGuard() { flag_.store(false, std::memory_order_release); }
    BusyGuard(const BusyGuard &) = delete;
    BusyGuard & operator=(const BusyGuard &) = delete;

private:
    std::atomic<bool> & flag_;
};

} // namespace minicpm
