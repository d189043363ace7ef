// minicpm.cpp public C++ API.
//
//   auto model = minicpm::Model::load("model.gguf", {});
//   minicpm::Session s(model, {});
//   s.prefill(model->tokenize("Hello"));
//   s.begin_generation({});
//   for (;;) { auto step = s.next(); std::cout << step.text; if (step.done) break; }
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "minicpm/error.h"
#include "runtime/chat.h"

namespace minicpm {

class Tokenizer;
struct DeviceInfo;
std::vector<DeviceInfo> list_devices();

struct ModelParams {
    std::string device    = "auto";   // "auto", "cpu", "gpu", "cuda", "metal", or a registry name ("CUDA1")
    int         n_threads = 0;        // CPU threads; 0 = pick from the core count
    std::string mmproj;               // optional separate vision file (llama.cpp's mmproj layout)
    int         cpu_repack = -1;      // CPU only: keep quantized matrices in ggml's repacked layout (a
                                      // copy instead of the mapped file): -1 default (= 1), 0 never,
                                      // 1 every type the CPU backend has repacked kernels for
    int         fuse_qkv = -1;        // one Q|K|V product per layer: -1 auto (on a GPU, when the three
                                      // share a type), 0 off, 1 also on the CPU (copies them)
};

struct ImageOptions {
    int                 max_slice_nums = 0;   // 0 = the model's default (9); 1 = no slicing
    std::optional<bool> use_image_id;          // unset = the model's default
    int                 image_id = 0;          // N of <image_id>N</image_id>
};

// An image ready for the LLM: its placeholder tokens and the embeddings that replace the
// placeholder positions (overview first, then slices row-major; n_query rows each).
struct ImageChunk {
    std::vector<int32_t> tokens;
    std::vector<int32_t> embed_pos;    // indices into tokens, one per embedding row
    std::vector<float>   embeddings;   // embed_pos.size() * n_embd
    int64_t              n_embd = 0;
    uint64_t             hash = 0;     // identifies the content, for context reuse
    int                  cols = 0, rows = 0;   // slice grid (0 x 0: not sliced)
    int                  n_slices = 0;         // encoded pieces, overview included
};

// A piece of a prompt: text tokens, or an image.
struct PromptSegment {
    std::vector<int32_t>              tokens;
    std::shared_ptr<const ImageChunk> image;   // when set, tokens are ignored
};

struct ModelInfo {
    std::string path;
    std::string arch;         // "qwen3" | "qwen2"
    std::string model_type;   // minicpm.model_type, e.g. "minicpm-v-4.5"
    std::string name;
    std::string device;
    int64_t     n_vocab = 0, n_embd = 0, n_layer = 0, n_head = 0, n_head_kv = 0, head_dim = 0, n_ff = 0;
    int64_t     n_ctx_train = 0;
    float       rope_base = 0, rms_eps = 0;
    size_t      weight_bytes = 0;
    size_t      repacked_bytes = 0;   // of those, kept in the CPU backend's repacked layout
    std::string weight_type;  // type of the attention weights of layer 0, e.g. "f16"
    std::string chat_template;
};

class Model {
public:
    // Throws minicpm::Error with a message naming the file and what was wrong.
    static std::shared_ptr<Model> load(const std::string & path, const ModelParams & params);
    ~Model();

    const ModelInfo &  info() const;
    const Tokenizer &  tokenizer() const;
    const ChatTemplate & chat_template() const;

    std::vector<int32_t> tokenize(const std::string & text, bool parse_special = true) const;
    std::string          detokenize(const std::vector<int32_t> & ids, bool skip_special = false) const;
    // Ids that end an assistant turn: eos, <|im_end|>, <|endoftext|> and minicpm.stop_tokens.
    const std::vector<int32_t> & end_of_turn_ids() const;
    bool is_end_of_turn(int32_t id) const;

    // Vision: present when the file (or the mmproj given at load) has a vision tower.
    bool has_vision() const;
    // Preprocesses and encodes an RGB8 image (width*height*3 bytes). Thread-safe; throws
    // Error(Unsupported) without a vision tower, Error(InvalidArgument) for a bad image.
    std::shared_ptr<const ImageChunk> encode_image(const uint8_t * rgb, int width, int height,
                                                   const ImageOptions & opts) const;

    struct Impl;
    Impl & impl() const { return *impl_; }

private:
    explicit Model(std::unique_ptr<Impl> impl);
    std::unique_ptr<Impl> impl_;
};

struct SessionParams {
    int         n_ctx    = 4096;
    int         n_batch  = 512;      // prefill micro-batch
    std::optional<uint64_t> seed;    // unset = random
    std::string kv_type  = "auto";   // "auto" (f32 for all-F32 models, else f16), "f16", "f32"
    std::string flash_attn = "auto"; // "auto" | "on" | "off"
};

struct SamplingParams {
    float temperature      = 0.7f;   // 0 = greedy
    int   top_k            = 100;    // 0 = off
    float top_p            = 0.8f;   // 1 = off
    float min_p            = 0.0f;   // 0 = off
    float repeat_penalty   = 1.05f;  // 1 = off; HF semantics: divide positive, multiply negative logits
    float presence_penalty = 0.0f;   // subtracted once from the logit of every seen token
    int   repeat_last_n    = -1;     // tokens looked back for penalties; -1 = whole context
};

struct GenerationParams {
    int                      max_tokens = 256;   // < 0: until end of turn or context full
    SamplingParams           sampling;
    std::vector<std::string> stop;               // stop strings (not included in the output)
    bool                     stop_at_end_of_turn = true;
    bool                     skip_special = true; // leave special tokens out of the text
};

enum class StopReason { None, EndOfTurn, StopString, MaxTokens, ContextFull };
const char * stop_reason_name(StopReason r);

struct GenerationStep {
    std::string text;        // new text since the previous step (may be empty)
    int32_t     token = -1;  // the sampled token (-1 when nothing was sampled)
    bool        done = false;
    StopReason  reason = StopReason::None;
};

struct Timings {
    double  prefill_ms = 0, decode_ms = 0, sample_ms = 0;
    int64_t n_prefill = 0, n_decode = 0;
};

class Session {
public:
    Session(std::shared_ptr<Model> model, const SessionParams & params);
    ~Session();
    Session(const Session &) = delete;
    Session & operator=(const Session &) = delete;

    // Appends tokens to the context and evaluates them; returns the number added.
    // Throws Error(ContextFull) if they do not fit (the session is left unchanged).
    int prefill(const std::vector<int32_t> & tokens);
    // Makes the context equal `tokens`, reusing the longest common prefix already evaluated.
    // Returns the number of tokens evaluated.
    int sync(const std::vector<int32_t> & tokens);
    // Same, for prompts with images.
    int prefill(const std::vector<PromptSegment> & segments);
    int sync(const std::vector<PromptSegment> & segments);

    // Logits of the last evaluated position (n_vocab floats). Throws if nothing was evaluated.
    const std::vector<float> & logits();

    int32_t sample(const SamplingParams & params);

    void           begin_generation(const GenerationParams & params);
    GenerationStep next();

    void reset();
    int  n_past() const;       // tokens in the context (evaluated or pending)
    int  n_ctx() const;
    const std::vector<int32_t> & tokens() const;
    const Timings & timings() const;
    void reset_timings();
    const std::shared_ptr<Model> & model() const;

    struct Impl;

private:
    std::unique_ptr<Impl> impl_;
};

} // namespace minicpm
