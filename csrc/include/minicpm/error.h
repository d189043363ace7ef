// The library's one error type. Messages say what, where, and expected vs got:
//   "tensor blk.3.attn_q.weight: expected shape [64, 64], got [64, 32] (model.gguf)"
#pragma once

#include <stdexcept>
#include <string>

namespace minicpm {

enum class ErrorKind {
    File,             // missing / unreadable file
    Format,           // not a GGUF, truncated, missing or malformed tensor/metadata
    Unsupported,      // valid file, but an architecture/type we do not run
    InvalidArgument,  // bad parameter from the caller
    ContextFull,      // prompt or generation does not fit the context
    Backend,          // device / backend failure
    Busy,             // a session (or encoder) used from two threads at once
    Internal,
};

class Error : public std::runtime_error {
public:
    Error(ErrorKind kind, const std::string & msg) : std::runtime_error(msg), kind_(kind) {}
    ErrorKind kind() const { return kind_; }

private:
    ErrorKind kind_;
};

[[noreturn]] inline void fail(ErrorKind kind, const std::string & msg) {
    throw Error(kind, msg);
}

} // namespace minicpm
