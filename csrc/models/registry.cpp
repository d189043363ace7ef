// The components the library knows, in load order. A new component adds its ComponentType here
// (an explicit list: self-registering statics would be dropped from a static library).
#include "core/component.h"
#include "models/audio.h"
#include "models/causal_vocoder.h"
#include "models/hift.h"
#include "models/flow.h"
#include "models/llm.h"
#include "models/s3tok.h"
#include "models/tts.h"
#include "models/vision.h"

namespace minicpm {

const std::vector<ComponentType> & component_types() {
    static const std::vector<ComponentType> types = {kLlmComponent, kVisionComponent, kAudioComponent,
                                                        kS3TokComponent, kHiftComponent, kFlowComponent,
                                                        kTtsComponent, kCausalVocoderComponent};
    return types;
}

} // namespace minicpm
