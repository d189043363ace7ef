// Internals of minicpm::Model shared by the runtime (not part of the public API).
#pragma once

#include "minicpm/minicpm.h"

#include "core/backend.h"
#include "core/gguf_file.h"
#include "core/weights.h"
#include "models/llm.h"
#include "models/vision.h"
#include "preprocess/tokenizer.h"
#include "runtime/chat.h"

#include <memory>
#include <mutex>

namespace minicpm {

struct Model::Impl {
    ModelInfo                    info;
    std::unique_ptr<GgufFile>    file;
    std::unique_ptr<Backends>    backends;
    std::unique_ptr<WeightStore> store;
    LlmHparams                   hp;
    LlmWeights                   weights;
    std::unique_ptr<Tokenizer>   tokenizer;
    ChatTemplate                 chat;
    std::vector<int32_t>         end_of_turn;
    bool                         all_f32 = false;   // every weight matrix stored as F32

    // vision (optional): from the model file itself or from a separate mmproj file
    std::unique_ptr<GgufFile>      mmproj_file;
    std::unique_ptr<WeightStore>   vision_store;
    VisionHparams                  vhp;
    VisionWeights                  vw;
    std::unique_ptr<VisionEncoder> vision;
    mutable std::mutex             vision_mutex;   // one encode at a time per model
};

} // namespace minicpm
