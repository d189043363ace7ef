// Types shared by the binding files (_core.cpp, _bind_*.cpp). Declared outside any anonymous
// namespace so that every translation unit names the same C++ type, which pybind11 needs to
// pass one binding's objects to another's functions.
#pragma once

#include "core/gguf_file.h"
#include "preprocess/tokenizer.h"

#include <pybind11/pybind11.h>

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

// Text from the core as a Python str (invalid UTF-8 replaced, never an exception).
inline pybind11::str utf8(const std::string & s) {
    PyObject * o = PyUnicode_DecodeUTF8(s.data(), (Py_ssize_t) s.size(), "replace");
    if (!o) throw pybind11::error_already_set();
    return pybind11::reinterpret_steal<pybind11::str>(o);
}

} // namespace minicpm_py
