// Types shared by the binding files (_core.cpp, _bind_*.cpp). Declared outside any anonymous
// namespace so that every translation unit names the same C++ type, which pybind11 needs to
// pass one binding's objects to another's functions.
#pragma once

#include "core/gguf_file.h"
#include "preprocess/tokenizer.h"

#include <memory>
#include <string>

namespace minicpm_py {

// A tokenizer loaded from any GGUF (vocab-only files included), without weights.
struct PyTokenizer {
    std::unique_ptr<minicpm::GgufFile>  file;
    std::unique_ptr<minicpm::Tokenizer> tok;
    explicit PyTokenizer(const std::string & path) {
        file = std::make_unique<minicpm::GgufFile>(path);
        tok  = std::make_unique<minicpm::Tokenizer>(minicpm::Tokenizer::from_gguf(file->ctx(), path));
    }
};

} // namespace minicpm_py
