// minicpm.cpp public C++ API.
//
//   auto model = minicpm::Model::load("model.gguf", {});
//   minicpm::Session s(model, {});
//   std::string answer = s.chat({minicpm::Message::user("Hello")}, {});
//
// Thread safety. A Model is immutable after load() and may be shared by any number of
// sessions on any threads. Everything that changes while computing (KV cache, compute
// buffers, backend instances, encoder state, sampler and RNG) belongs to one Session (or one
// ImageEncoder): sessions on one model run at the same time, each from its own thread, with
// results identical to running them one after the other. One Session (or ImageEncoder) is used
// from one thread at a time: a call made while another thread is inside it throws
// Error(Busy) ("session is busy") and changes nothing. Image chunks (ImageChunk) are immutable
// and can be given to any session.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "minicpm/error.h"
#include "minicpm/chat.h"

namespace minicpm {

class Tokenizer;
struct DeviceInfo;
std::vector<DeviceInfo> list_devices();

// ---- debugging -----------------------------------------------------------------------------

// One named intermediate of a graph ("attn_norm-3", "vit_features"), as it was computed.
struct TensorDump {
    std::string          graph;   // "llm", "vision"
    std::string          name;
    std::vector<int64_t> shape;   // ggml order (fastest dimension first), trailing 1s dropped
    std::vector<float>   data;
};

struct DebugOptions {
    // Called with every named intermediate whose name contains tensor_filter ("" = all), as
    // llama.cpp's eval callback. Slow: the graph is evaluated node by node while it is set.
    std::function<void(const TensorDump &)> on_tensor;
    std::string                             tensor_filter;
    bool                                    profile_ops = false;   // per-op time table on stderr after each graph
};

// ---- model ---------------------------------------------------------------------------------

struct ModelParams {
    std::string              device    = "auto";  // "auto", "cpu", "gpu", "cuda", "metal", or a registry name ("CUDA1")
    int                      n_threads = 0;       // CPU threads of the model's sessions by default; 0 = from the core count
    std::string              mmproj;              // separate vision file (llama.cpp's mmproj layout)
    std::string              audio;               // separate audio encoder file (ours, or llama.cpp-omni's audio GGUF)
    std::vector<std::string> extra_files;         // more files with components (loaded as the mmproj is)
    bool                     cpu_repack = true;   // CPU: quantized matrices in ggml's repacked layout (a copy instead of
                                                  // the mapped file) for every type the CPU backend has kernels for
    std::optional<bool>      fuse_qkv;            // one Q|K|V product per layer; unset: on a GPU where the three share a type
    std::optional<bool>      audio_fold_norms;    // audio encoder: each LayerNorm's scale and shift folded into the
                                                  // product after it (fewer GPU kernels; float weights only, one
                                                  // more rounding of those matrices); unset: on GPUs
    std::optional<bool>      flow_lean;           // Token2Wav flow: the estimator graph with fewer, larger kernels (F32
                                                  // copies of its matrices, one Q|K|V product, flash attention); unset:
                                                  // on (the environment's MINICPM_FLOW_LEAN=0/1 sets the default)
    bool                     warmup = true;       // run the encoders once at load (page faults, buffer growth)
    std::string              vision_flash_attn = "auto";   // "auto" (where the backend supports it) | "on" | "off"
    std::optional<bool>      vision_pad_heads;    // pad attention heads to a fast-kernel size; unset: on GPUs
    std::optional<bool>      vision_fold_norms;   // ViT: each LayerNorm's scale and shift folded into the product
                                                  // after it, and padded heads stored in the Q|K|V and output
                                                  // matrices (float weights only, one more rounding); unset: on GPUs
    // Patches of one image piece (overview or slice) beyond which an image is refused: a normal
    // piece has ~(448 / 14)^2 = 1024, but the reference's arithmetic gives a 1 x 100000 image a
    // 14 x 141666 overview (10,119 patches, a 10k^2 attention per layer). 0 = no limit.
    int64_t                  max_image_patches = 4096;
    // Cross-session batching (SessionParams::batch): a key/value buffer of this many cells shared
    // by the batching sessions, each taking a range of n_ctx cells of it (a session that finds no
    // room keeps a cache of its own). Their decode steps and duplex units then run as one
    // sequence over the shared buffer, a graph that depends on the row count only (kept and
    // replayed whichever sessions it carries) instead of one attention per session. Allocated at
    // the first batching session; 0 = none (each session its own cache). Size it as sessions x n_ctx.
    int64_t                  batch_cache_cells = 0;
};

struct ImageOptions {
    int                 max_slice_nums = 0;   // 0 = the model's default (9); 1 = no slicing
    std::optional<bool> use_image_id;          // unset = the model's default
    int                 image_id = 0;          // N of <image_id>N</image_id>
};

// An image or an audio clip ready for the LLM: its placeholder tokens and the embeddings that
// replace the placeholder positions (images: overview first, then slices row-major, n_query
// rows each; audio: one row per audio token, 30 s pieces in order).
struct MediaChunk {
    enum class Kind { Image, Audio };
    Kind                 kind = Kind::Image;
    std::vector<int32_t> tokens;
    std::vector<int32_t> embed_pos;    // indices into tokens, one per embedding row
    std::vector<float>   embeddings;   // embed_pos.size() * n_embd
    int64_t              n_embd = 0;
    uint64_t             hash = 0;     // identifies the content, for context reuse
    // images
    int                  cols = 0, rows = 0;   // slice grid (0 x 0: not sliced)
    int                  n_slices = 0;         // encoded pieces, overview included
    // audio
    int                  n_pieces = 0;         // 30 s pieces, each with its own placeholder group
    int64_t              n_samples = 0;        // 16 kHz samples of the clip
};
using ImageChunk = MediaChunk;
using AudioChunk = MediaChunk;

// A piece of a prompt: text tokens, or an image / audio chunk.
struct PromptSegment {
    std::vector<int32_t>              tokens;
    std::shared_ptr<const MediaChunk> media;   // when set, tokens are ignored
};

struct ModelInfo {
    std::string path;
    std::string arch;         // "qwen3" | "qwen2"
    std::string model_type;   // minicpm.model_type, e.g. "minicpm-v-4.5"
    std::string name;
    std::string device;
    std::vector<std::string> components;   // "llm", "vision", ...
    int64_t     n_vocab = 0, n_embd = 0, n_layer = 0, n_head = 0, n_head_kv = 0, head_dim = 0, n_ff = 0;
    int64_t     n_ctx_train = 0;
    float       rope_base = 0, rms_eps = 0;
    size_t      weight_bytes = 0;
    size_t      repacked_bytes = 0;   // of those, kept in the CPU backend's repacked layout
    std::string weight_type;  // type of the attention weights of layer 0, e.g. "f16"
    std::string chat_template;
};

// Sampling with every value given (what the sampler runs with).
struct SamplerConfig {
    float temperature      = 1.0f;   // 0 = greedy
    int   top_k            = 0;      // 0 = off
    float top_p            = 1.0f;   // 1 = off
    float min_p            = 0.0f;   // 0 = off
    float repeat_penalty   = 1.0f;   // 1 = off; HF semantics: divide positive, multiply negative logits
    float presence_penalty = 0.0f;   // subtracted once from the logit of every seen token
    int   repeat_last_n    = -1;     // tokens looked back for penalties; -1 = whole context
};

// The model's own generation defaults: the reference chat()'s, as the converter recorded them
// (minicpm.chat.*), else llama.cpp's general.sampling.* keys, else the library's fallback
// (temperature 0.7, top-p 0.8, top-k 100, repetition penalty 1.05, 2048 new tokens: the
// values llama.cpp documents for MiniCPM-V). Read in one place (runtime/defaults.cpp).
struct GenerationDefaults {
    std::optional<bool> enable_thinking;   // unset: the chat template's own default
    SamplerConfig       sampling;          // without reasoning
    SamplerConfig       sampling_think;    // with reasoning enabled
    int                 max_tokens = 2048;
    std::string         source;            // where the values come from (for --help and logs)
};

class Model {
public:
    // Throws minicpm::Error with a message naming the file and what was wrong.
    static std::shared_ptr<Model> load(const std::string & path, const ModelParams & params);
    ~Model();

    const ModelInfo &          info() const;
    const Tokenizer &          tokenizer() const;
    const ChatTemplate &       chat_template() const;
    const GenerationDefaults & defaults() const;
    const ModelParams &        params() const;

    std::vector<int32_t> tokenize(const std::string & text, bool parse_special = true) const;
    std::string          detokenize(const std::vector<int32_t> & ids, bool skip_special = false) const;
    // Ids that end an assistant turn: eos, <|im_end|>, <|endoftext|> and minicpm.stop_tokens.
    const std::vector<int32_t> & end_of_turn_ids() const;
    bool is_end_of_turn(int32_t id) const;

    bool has_component(const std::string & kind) const;   // "llm", "vision", ...

    // The cross-session batcher (SessionParams::batch): what it has run so far, and how a
    // batch is gathered (a leader waits up to wait_ms for min_parts requests; default 1 and 0:
    // run at once with whatever is waiting).
    struct BatchStats {
        int64_t batches = 0, parts = 0, rows = 0, max_parts = 0;
        int64_t rebuilds = 0;                    // graphs built (the others reused the allocated one)
        int64_t shared_parts = 0;                // requests run as rows of the shared cache's sequence
        int64_t shared_cache_bytes = 0;          // the shared cache (ModelParams::batch_cache_cells)
        double  build_ms = 0.0, compute_ms = 0.0;
    };
    BatchStats batch_stats() const;
    void       set_batch_gather(int min_parts, double wait_ms);
    // Vision: present when the file (or the mmproj given at load) has a vision tower.
    bool has_vision() const { return has_component("vision"); }
    // Audio: present when the file (or the audio file given at load) has a MiniCPM-o audio encoder.
    bool has_audio() const { return has_component("audio"); }

    struct Impl;
    Impl & impl() const { return *impl_; }

private:
    explicit Model(std::unique_ptr<Impl> impl);
    std::unique_ptr<Impl> impl_;
};

struct VideoFrames;

// The compute state of the vision encoder (backends, scheduler, buffers): one per thread.
// Sessions have their own; this one is for encoding images outside a session.
class ImageEncoder {
public:
    explicit ImageEncoder(std::shared_ptr<Model> model, int n_threads = 0, DebugOptions debug = {});
    ~ImageEncoder();
    ImageEncoder(const ImageEncoder &) = delete;
    ImageEncoder & operator=(const ImageEncoder &) = delete;

    // Preprocesses and encodes an RGB8 image (width*height*3 bytes). Throws Error(Unsupported)
    // without a vision tower, Error(InvalidArgument) for a bad image, Error(Busy) when another
    // thread is inside this encoder.
    std::shared_ptr<const ImageChunk> encode(const uint8_t * rgb, int width, int height, const ImageOptions & opts);
    // A video with temporal ids (MiniCPM-V 4.5's 3D resampler): one chunk per temporal group.
    std::vector<std::shared_ptr<const ImageChunk>> encode_video(const VideoFrames & video);

    struct Impl;

private:
    std::unique_ptr<Impl> impl_;
};

// ---- prompts -------------------------------------------------------------------------------

// An RGB8 image, row-major, width * height * 3 bytes.
struct RgbImage {
    int                  width = 0, height = 0;
    std::vector<uint8_t> pixels;
};

// A video as sampled frames (RGB8, in time order). With temporal_ids (MiniCPM-V 4.5's 3D
// resampler; the reference chat()'s temporal_ids argument): one list per group of consecutive
// frames, one id per frame (time in 0.1 s units, -1 for a still image), 1..6 frames a group;
// each group is one unsliced image placeholder without <image_id>. Without: each frame is a
// plain image (max_slice_nums, no <image_id>), as the reference recipes of the other models.
struct VideoFrames {
    std::vector<std::shared_ptr<const RgbImage>> frames;
    std::vector<std::vector<int>>                temporal_ids;
    int                                          max_slice_nums = 1;   // frames without temporal ids (1 with them)
};

// Mono float PCM. The audio encoder takes 16 kHz (what the reference feeds its feature
// extractor: librosa.load(sr=16000)); decoding and resampling media is the caller's job (the
// Python layer does it). Clips longer than kMaxAudioSeconds are refused.
struct AudioPcm {
    std::vector<float> samples;
    int                sample_rate = 16000;
};
constexpr int kAudioRate = 16000;
constexpr int kMaxAudioSeconds = 3600;

// One part of a message's content. Parts are joined as the reference chat() joins them
// (text with "\n" between parts; an image stands where it is, as its placeholder).
// Audio stands as its placeholder group(s): one per 30 s piece, each piece encoded as its own item.
struct ContentPart {
    enum class Type { Text, Image, Audio, Video };
    Type                            type = Type::Text;
    std::string                     text;
    std::shared_ptr<const RgbImage> image;
    std::shared_ptr<const AudioPcm> audio;
    std::shared_ptr<const VideoFrames> video;

    static ContentPart make_text(std::string t);
    static ContentPart make_image(std::shared_ptr<const RgbImage> img);
    static ContentPart make_audio(std::shared_ptr<const AudioPcm> pcm);
    static ContentPart make_video(std::shared_ptr<const VideoFrames> video);
};

struct Message {
    std::string                role;      // "system" | "user" | "assistant" | "tool"
    std::vector<ContentPart>   content;
    std::optional<std::string> reasoning_content;

    static Message system(std::string text);
    static Message user(std::string text);
    static Message assistant(std::string text);
};

// ---- generation ----------------------------------------------------------------------------

// Sampling overrides: unset fields take the model's defaults (Model::defaults(), the
// reasoning set when reasoning is enabled).
struct SamplingParams {
    std::optional<float> temperature, top_p, min_p, repeat_penalty, presence_penalty;
    std::optional<int>   top_k, repeat_last_n;

    SamplerConfig resolve(const SamplerConfig & defaults) const;
};

struct GenerationParams {
    std::optional<int>       max_tokens;          // unset: the model's default; < 0: until end of turn or context full
    SamplingParams           sampling;
    std::vector<std::string> stop;                // stop strings (not included in the output)
    std::vector<int32_t>     stop_tokens;         // more tokens that end the answer (not included), e.g. <|tts_eos|>
    std::vector<int32_t>     suppress_tokens;     // never sampled (their logits are set to -inf first)
    bool                     stop_at_end_of_turn = true;
    bool                     skip_special = true; // leave special tokens out of the text
    bool                     thinking = false;    // sample with the reasoning defaults (chat() sets it)
    // > 0: the penalties look at the answer only, as streaming_generate's decoder
    // (ChunkPrefillChunkGenerate) does: the answer is drawn in chunks of this many tokens (the first
    // one token longer), and each draw sees the last repeat_last_n answer tokens before its chunk
    // plus the chunk's own earlier ones. 0: the last repeat_last_n tokens of the context.
    int                      answer_penalty_chunk = 0;
};

struct ChatParams {
    std::optional<bool> enable_thinking;   // unset: the model's default (the reference chat()'s)
    bool                add_generation_prompt = true;
    int                 max_slice_nums = 0;   // 0 = the model's default
    std::optional<bool> use_image_id;          // unset = the model's default
    // The speech template (o4.5: "<|tts_bos|>" after the generation prompt, the answer cut at
    // <|tts_eos|>). Unset: on when a message holds audio, as the reference chat() switches it.
    std::optional<bool> use_tts_template;
    bool                omni_mode = false;     // join content parts with "" instead of "\n" (reference omni_mode)
    // An answer to be spoken (MiniCPM-o 4.5), decoded as the reference's streaming_generate
    // decodes the text it hands to the TTS: the speech template on, <|tts_eos|> and <|im_end|>
    // end it, its forbidden punctuation and the tokenizer's bad_token_ids are never sampled, and
    // the last-layer hidden state of every answer token is captured (hidden_states()).
    bool                speech = false;
    GenerationParams    generation;
};

// A chat prompt ready for a session.
struct ChatPrompt {
    std::vector<PromptSegment> segments;
    std::string                text;             // the rendered prompt, images as "(<image>./</image>)"
    bool                       thinking = false; // reasoning enabled (after defaults)
    std::string                answer_prefix;    // what the reference puts before the returned answer
                                                 // ("<think>\n" when the prompt opened a reasoning block)
    bool                       tts = false;      // rendered with the speech template
    std::vector<int32_t>       stop_tokens;      // what ends the answer besides end of turn (<|tts_eos|> with tts)
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
    double  prefill_ms = 0, decode_ms = 0, sample_ms = 0, encode_ms = 0;
    double  audio_ms = 0;    // log-mel + audio encoder
    int64_t n_prefill = 0, n_decode = 0, n_images = 0, n_audio = 0;
};

struct SessionParams {
    int         n_ctx    = 4096;
    int         n_batch  = 512;      // prefill micro-batch
    int         n_threads = 0;       // CPU threads; 0 = the model's
    std::optional<uint64_t> seed;    // unset = random
    std::string kv_type  = "auto";   // "auto" (f32 for all-F32 models, else f16), "f16", "f32"
    std::string flash_attn = "auto"; // "auto" | "on" | "off"
    // Cross-session batching: evaluate through the model's shared batcher, so that the LLM
    // steps of every joined session waiting at the same moment run as one graph (the weights
    // are read once for all of them). For many concurrent sessions; one alone gains nothing.
    bool        batch = false;
    DebugOptions debug;
};

// Simplex streaming input, MiniCPM-o 4.5's MiniCPMO.streaming_prefill (see Session::streaming_prefill).
struct StreamingPrefillParams {
    bool omni_mode = true;          // content parts joined with "" (false: "\n")
    bool is_last_chunk = false;     // the last audio chunk of the user turn: the streaming log-mel emits its rest
    int  max_slice_nums = 1;        // image slicing of frames (the reference's None means 1)
    bool use_tts_template = true;   // chat template options of a first system / assistant message
    bool enable_thinking = false;
};

struct SpeechParams;
struct SpeechCallbacks;
struct SpeechResult;
struct SpeechState;
struct StreamingGenerateParams;

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

    // Encodes an image with this session's vision encoder (see ImageEncoder::encode).
    std::shared_ptr<const ImageChunk> encode_image(const uint8_t * rgb, int width, int height, const ImageOptions & opts);
    // Encodes a 16 kHz mono clip as chat() does (log-mel, Whisper encoder with the 1 s block
    // mask, projector, pooling): one chunk per 30 s piece. Throws Error(Unsupported) without an
    // audio encoder, Error(InvalidArgument) for empty, non-finite, too long or not-16 kHz audio.
    std::vector<std::shared_ptr<const AudioChunk>> encode_audio(const AudioPcm & pcm);
    // Streaming audio input, as the reference's simplex streaming (streaming_prefill): a user
    // turn whose 16 kHz audio arrives in pieces of any size. The session cuts it into the
    // reference's chunks (1035 ms first, then 1000 ms), runs the streaming log-mel and the
    // encoder with its cache of the turn's earlier chunks, and prefills each chunk as
    // <|audio_start|><unk>x10<|audio_end|> (o4.5), the turn opened with "<|im_start|>user\n"
    // (after a streamed answer: "<|tts_eos|><|im_end|>\n<|im_start|>user\n"). end_audio_stream() encodes
    // the ragged rest (a stream shorter than the first chunk is left-padded with zeros, as the
    // reference pads it); begin_stream_response() adds the assistant prompt of
    // streaming_generate and starts generation (stopping at <|tts_eos|> or <|im_end|>; its forbidden
    // punctuation and the tokenizer's bad_token_ids are never sampled). Each returns the tokens
    // added.
    void begin_audio_stream();
    int  push_audio(const float * pcm, size_t n);
    int  end_audio_stream();
    void begin_stream_response(const GenerationParams & params);
    bool audio_stream_active() const;

    // Simplex streaming (MiniCPM-o 4.5), as the reference's streaming_prefill: one message per
    // call, role "system", "user" or "assistant", its parts (text, images, one audio chunk of
    // about 1 s) joined as omni_mode joins them; the caller sends each frame and 1 s audio chunk
    // of a user turn in order (StreamingTurn, minicpm/speech.h, answers). The first call starts a
    // new streaming session (the context is cleared, as reset_session): a system or assistant
    // message is rendered with the chat template (no generation prompt), a user message opens
    // with "<|im_start|>user\n". Later: the first user message of a turn opens with
    // "<|im_start|>user\n", after a streamed answer with "<|tts_eos|><|im_end|>\n<|im_start|>user\n"
    // (the reference's llm_generate_completed is never set); other messages add their content
    // only. Audio in a system message (the reference voice of get_sys_prompt) is encoded whole,
    // full attention, one placeholder group (at most 30 s). User audio goes through the streaming
    // log-mel and the encoder's cache, the first chunk of a turn left-padded to 1035 ms; its
    // placeholder has as many positions as its sample count gives (get_audio_placeholder), and a
    // chunk whose emitted frames give another count is refused, as the reference raises (give
    // 1 s chunks; the stream is left as it was). Images are unsliced placeholders without
    // <image_id>. Returns the positions added. Errors: Error(InvalidArgument) for a bad role,
    // part, image or audio (the session unchanged), Error(Unsupported) for an image or audio the
    // model has no encoder for.
    int  streaming_prefill(const Message & msg, const StreamingPrefillParams & params = {});
    bool streaming_started() const;   // a streaming_prefill since the session began (or reset())

    // Renders `messages` with the chat template and builds the prompt (images encoded here).
    ChatPrompt chat_prompt(const std::vector<Message> & messages, const ChatParams & params);
    // chat_prompt + sync + begin_generation: then call next() until done.
    ChatPrompt begin_chat(const std::vector<Message> & messages, const ChatParams & params);
    // The whole answer, as the reference chat() returns it (answer_prefix included).
    // on_text, when given, receives the pieces as they are generated.
    std::string chat(const std::vector<Message> & messages, const ChatParams & params,
                     const std::function<void(const std::string &)> & on_text = {});

    // Logits of the last evaluated position (n_vocab floats). Throws if nothing was evaluated.
    const std::vector<float> & logits();

    // Outputs kept per evaluated position from now on: the last-layer hidden state (after the
    // final norm, as transformers' hidden_states[-1]) and/or the logits. Off by default.
    void set_capture(bool hidden, bool logits);
    // [n, n_embd] / [n, n_vocab] row-major for context positions [first, first + n); each must
    // have been evaluated while capture was on (else Error(InvalidArgument)).
    std::vector<float> hidden_states(int first, int n) const;
    std::vector<float> position_logits(int first, int n) const;

    // Removes context positions [first, last): their cache cells are freed and the tokens after
    // them keep their positions (RoPE phases), as in a windowed cache. Generation state is reset.
    void remove(int first, int last);
    // With realign, the gap is closed instead: the positions after the range move back to
    // follow the one before it, and their cached keys are re-rotated by the change (RoPE
    // composes), nothing being evaluated again, as the MiniCPM-o 4.5 duplex window's
    // drop_tokens_from_cache / realign_rotary_suffix do. Pending positions are evaluated first.
    void remove(int first, int last, bool realign);
    // Replaces context positions [first, last) with text tokens: they take the positions after
    // first - 1 and are evaluated now, attending what comes before them only; the positions after
    // the range are kept (not evaluated again) and re-rotated to follow them contiguously (the
    // duplex window's _rebuild_cache_with_previous). Returns the tokens evaluated. The logits are
    // then valid only when nothing follows the new tokens. Throws Error(ContextFull) when the
    // result does not fit (nothing changed); on a compute failure the new tokens are left out.
    int replace(int first, int last, const std::vector<int32_t> & tokens);

    int32_t sample(const SamplingParams & params);

    void           begin_generation(const GenerationParams & params);
    GenerationStep next();

    void reset();
    int  n_past() const;       // tokens in the context (evaluated or pending)
    int  n_ctx() const;
    const std::vector<int32_t> & tokens() const;
    std::vector<int32_t>         positions() const;   // RoPE position of each context entry
    const Timings & timings() const;
    void reset_timings();
    const std::shared_ptr<Model> & model() const;

    // A spoken answer (MiniCPM-o 4.5, see minicpm/speech.h): the chat answer decoded with the
    // speech template, the talker and Token2Wav; on_text / on_audio get the text pieces and the
    // 24 kHz PCM chunks as they are ready. Returns the text, the codes and the whole audio.
    SpeechResult speak(const std::vector<Message> & messages, const ChatParams & params, const SpeechParams & speech,
                       const SpeechCallbacks & callbacks);
    SpeechResult speak(const std::vector<Message> & messages, const ChatParams & params, const SpeechParams & speech);
    // A simplex streamed answer (see StreamingTurn, minicpm/speech.h) with callbacks: text pieces
    // and 24 kHz PCM chunks as the reference's streaming_generate yields them.
    SpeechResult streaming_generate(const StreamingGenerateParams & params, const SpeechCallbacks & callbacks);
    SpeechResult streaming_generate(const StreamingGenerateParams & params);

    struct Impl;

private:
    // streaming_generate's bookkeeping and assistant prompt, then the generation (StreamingTurn).
    void begin_streaming_generate(const StreamingGenerateParams & params);

    std::unique_ptr<Impl> impl_;
    std::shared_ptr<SpeechState> speech_;   // the talker / Token2Wav states of spoken turns (speech.cpp)
    friend class SpeechTurn;
    friend class StreamingTurn;
};

} // namespace minicpm

#include "minicpm/speech.h"
