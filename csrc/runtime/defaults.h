// The one place that reads a model's generation defaults (see GenerationDefaults in
// minicpm.h): the reference chat()'s values the converter recorded, llama.cpp's
// general.sampling.* keys, then the library's documented fallback.
#pragma once

#include "minicpm/minicpm.h"

#include "core/gguf_file.h"

namespace minicpm {

// The fallback for files that carry no defaults: the values llama.cpp's MiniCPM-V docs use
// (temperature 0.7, top-p 0.8, top-k 100, repetition penalty 1.05), 2048 new tokens.
GenerationDefaults fallback_generation_defaults();

// Reads and validates the defaults of `f`; throws Error(Format) naming a key with a bad value.
GenerationDefaults read_generation_defaults(const GgufFile & f);

} // namespace minicpm
