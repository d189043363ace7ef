// A component of a model: one network with its hyperparameters and weights (the LLM, the vision
// tower with its resampler; later the audio encoder, the TTS talker, Token2Wav, the voice
// encoders). Components are read-only after load and shared by every session; what a session
// computes with them (runners, caches) lives in the session.
//
// Each component is found in a GGUF file by its metadata or tensors, declares its weights from
// names.def (under its own tensor-ID prefix) and builds its graph in one models/ file. A model
// may take its components from several files (llama.cpp's LLM + mmproj pair, llama.cpp-omni's
// per-component files). Adding a component is: a models/ file with a ComponentType, a row in
// models/registry.cpp, rows in names.def, and a converter module.
#pragma once

#include "core/backend.h"
#include "core/gguf_file.h"

#include <memory>
#include <string>
#include <vector>

namespace minicpm {

struct ModelParams;

class Component {
public:
    virtual ~Component() = default;
    virtual const char * kind() const = 0;      // "llm", "vision", ...
    virtual size_t       weight_bytes() const = 0;
    virtual size_t       repacked_bytes() const { return 0; }
    const std::string &  source() const { return source_; }   // the file it was loaded from
    void                 set_source(std::string path) { source_ = std::move(path); }

private:
    std::string source_;
};

// What a component's loader may use.
struct ComponentLoad {
    const GgufFile &    file;
    const Devices &     devices;
    const ModelParams & params;
};

struct ComponentType {
    const char * kind;
    // Whether `file` holds this component.
    bool (*present)(const GgufFile & file);
    // Validates hyperparameters and shapes, then loads the weights. Throws minicpm::Error.
    std::unique_ptr<Component> (*load)(const ComponentLoad & in);
};

// Every component the library knows, in load order (models/registry.cpp).
const std::vector<ComponentType> & component_types();

} // namespace minicpm
