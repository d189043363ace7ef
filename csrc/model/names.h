// Identifiers for every tensor name and metadata key, generated from names.def.
#pragma once

#include <string>

namespace minicpm {

enum class TensorName {
#define MINICPM_TENSOR(id, str) id,
#include "names.def"
};

enum class KeyName {
#define MINICPM_KEY(id, str) id,
#include "names.def"
};

// The name pattern as written in names.def ("blk.%d.attn_q.weight").
const char * tensor_pattern(TensorName t);
const char * key_pattern(KeyName k);

// Concrete names: layer index substituted for %d, architecture for %s.
std::string tensor_name(TensorName t, int layer = -1);
std::string key_name(KeyName k, const std::string & arch = "");

} // namespace minicpm
