// Internals of minicpm::Model shared by the runtime (not part of the public API).
#pragma once

#include "minicpm/minicpm.h"

#include "core/backend.h"
#include "core/component.h"
#include "core/gguf_file.h"
#include "models/audio.h"
#include "models/llm.h"
#include "models/vision.h"
#include "preprocess/tokenizer.h"
#include "runtime/llm_batch.h"
#include "minicpm/chat.h"

#include <map>
#include <memory>
#include <mutex>
#include <string>

namespace minicpm {

// Immutable after Model::load: sessions on any thread read it without locks.
struct Model::Impl {
    ModelParams                          params;
    ModelInfo                            info;
    std::vector<std::unique_ptr<GgufFile>> files;   // the model file first, then mmproj / extra files
    std::unique_ptr<Devices>             devices;
    std::map<std::string, std::unique_ptr<Component>> components;
    std::unique_ptr<Tokenizer>           tokenizer;
    ChatTemplate                         chat;
    GenerationDefaults                   defaults;
    std::vector<int32_t>                 end_of_turn;
    std::vector<int32_t>                 bad_token_ids;   // minicpm.bad_token_ids (empty when absent)
    std::vector<int32_t>                 all_special_ids; // minicpm.all_special_ids (empty when absent)

    const LlmModel &    llm() const { return static_cast<const LlmModel &>(*components.at("llm")); }

    // The cross-session LLM batcher, made at its first use (its own lock; the rest stays immutable).
    LlmBatcher & llm_batcher() const {
        std::call_once(batcher_once, [&] { batcher = std::make_unique<LlmBatcher>(llm(), *devices, params.n_threads, params.batch_cache_cells); });
        return *batcher;
    }
    mutable std::once_flag              batcher_once;
    mutable std::unique_ptr<LlmBatcher> batcher;
    const VisionModel * vision() const {
        auto it = components.find("vision");
        return it == components.end() ? nullptr : static_cast<const VisionModel *>(it->second.get());
    }
    const AudioModel * audio() const {
        auto it = components.find("audio");
        return it == components.end() ? nullptr : static_cast<const AudioModel *>(it->second.get());
    }
};

} // namespace minicpm
