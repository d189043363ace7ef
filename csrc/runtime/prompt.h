// Prompt assembly: chat messages with content parts -> the token runs and media chunks a session
// evaluates, as the reference chat() builds them (parts joined with "\n", each image replaced by
// its placeholder and numbered 0, 1, ... across the conversation, the model's chat template and
// the reference's defaults for enable_thinking).
#pragma once

#include "minicpm/minicpm.h"

#include <functional>
#include <string>
#include <memory>
#include <vector>

namespace minicpm {

using ImageEncodeFn = std::function<std::shared_ptr<const ImageChunk>(const RgbImage &, const ImageOptions &)>;
// One audio piece (<= 30 s of 16 kHz samples) of a chat whose longest piece has `batch_frames`
// mel frames (the reference encodes a chat's audio as one padded batch).
using AudioEncodeFn = std::function<std::shared_ptr<const AudioChunk>(const float * pcm, size_t n, int64_t batch_frames)>;

// A video with temporal ids: one image chunk per temporal group, in order.
using VideoEncodeFn = std::function<std::vector<std::shared_ptr<const ImageChunk>>(const VideoFrames &)>;

// Throws Error(InvalidArgument) for bad messages; images and audio pieces go through `encode` /
// `encode_audio` in order, videos with temporal ids through `encode_video` (frames without
// temporal ids are images for `encode`).
ChatPrompt build_chat_prompt(const Model & model, const std::vector<Message> & messages, const ChatParams & params,
                             const ImageEncodeFn & encode, const AudioEncodeFn & encode_audio = {},
                             const VideoEncodeFn & encode_video = {});

// 16 kHz samples per audio piece: the reference splits longer clips into 30 s pieces.
constexpr size_t kAudioPieceSamples = 30 * 16000;
// Checks a clip for the audio encoder (rate, length, finite samples); `what` names it in errors.
void check_audio(const AudioPcm & pcm, const std::string & what);
// Mel frames of n samples (ceil(n / 160)).
inline int64_t audio_mel_frames(size_t n) { return (int64_t) ((n + 159) / 160); }
// The placeholder tokens of one audio piece: <|audio_start|> <unk> x n_tokens <|audio_end|>, or
// with group > 0 one such group per `group` tokens (MiniCPM-o 2.6's chat() chunk_input: a group
// per second of audio, the last one shorter).
std::vector<int32_t> audio_placeholder_tokens(const Tokenizer & tok, int64_t n_tokens, std::vector<int32_t> * embed_pos,
                                              int64_t group = 0);
// Whether the model's chat() gives audio per-second placeholder groups (MiniCPM-o 2.6).
bool audio_groups_per_second(const Model & model);

// The rendered text only (images as "(<image>./</image>)"), without encoding anything.
std::string render_chat_text(const Model & model, const std::vector<Message> & messages, const ChatParams & params);

} // namespace minicpm
