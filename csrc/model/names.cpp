#include "names.h"

#include <cstdio>

namespace minicpm {

const char * tensor_pattern(TensorName t) {
    switch (t) {
#define MINICPM_TENSOR(id, str) case TensorName::id: return str;
#include "names.def"
    }
    return "";
}

const char * key_pattern(KeyName k) {
    switch (k) {
#define MINICPM_KEY(id, str) case KeyName::id: return str;
#include "names.def"
    }
    return "";
}

std::string tensor_name(TensorName t, int layer) {
    std::string pat = tensor_pattern(t);
    auto pos = pat.find("%d");
    if (pos == std::string::npos) {
        return pat;
    }
    return pat.substr(0, pos) + std::to_string(layer) + pat.substr(pos + 2);
}

std::string key_name(KeyName k, const std::string & arch) {
    std::string pat = key_pattern(k);
    auto pos = pat.find("%s");
    if (pos == std::string::npos) {
        return pat;
    }
    return pat.substr(0, pos) + arch + pat.substr(pos + 2);
}

} // namespace minicpm
