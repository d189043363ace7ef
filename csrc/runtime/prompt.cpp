#include "prompt.h"

#include "core/error.h"
#include "models/vision.h"
#include "preprocess/tokenizer.h"
#include "runtime/model_impl.h"

#include <algorithm>
#include <cmath>
#include <string>

namespace minicpm {

ContentPart ContentPart::make_text(std::string t) {
    ContentPart p;
    p.type = Type::Text;
    p.text = std::move(t);
    return p;
}

ContentPart ContentPart::make_image(std::shared_ptr<const RgbImage> img) {
    ContentPart p;
    p.type = Type::Image;
    p.image = std::move(img);
    return p;
}

ContentPart ContentPart::make_video(std::shared_ptr<const VideoFrames> video) {
    ContentPart p;
    p.type = Type::Video;
    p.video = std::move(video);
    return p;
}

ContentPart ContentPart::make_audio(std::shared_ptr<const AudioPcm> pcm) {
    ContentPart p;
    p.type = Type::Audio;
    p.audio = std::move(pcm);
    return p;
}

void check_audio(const AudioPcm & pcm, const std::string & what) {
    if (pcm.sample_rate != kAudioRate) {
        fail(ErrorKind::InvalidArgument, what + ": sample rate " + std::to_string(pcm.sample_rate) +
                                             " Hz; the audio encoder takes 16000 Hz mono PCM (resample first)");
    }
    if (pcm.samples.empty()) fail(ErrorKind::InvalidArgument, what + ": the audio is empty (0 samples)");
    if (pcm.samples.size() > (size_t) kMaxAudioSeconds * kAudioRate) {
        fail(ErrorKind::InvalidArgument, what + ": " + std::to_string(pcm.samples.size() / kAudioRate) +
                                             " s of audio is over the limit of " + std::to_string(kMaxAudioSeconds) + " s");
    }
    for (size_t i = 0; i < pcm.samples.size(); ++i) {
        if (!std::isfinite(pcm.samples[i])) {
            fail(ErrorKind::InvalidArgument, what + ": sample " + std::to_string(i) + " is not finite (NaN or inf)");
        }
    }
}

bool audio_groups_per_second(const Model & model) { return model.info().model_type == "minicpm-o-2.6"; }

std::vector<int32_t> audio_placeholder_tokens(const Tokenizer & tok, int64_t n_tokens, std::vector<int32_t> * embed_pos,
                                              int64_t group) {
    const int32_t start = tok.find_token("<|audio_start|>");
    const int32_t unk = tok.find_token("<unk>");
    const int32_t end = tok.find_token("<|audio_end|>");
    if (start < 0 || unk < 0 || end < 0) {
        fail(ErrorKind::Unsupported, "the vocabulary lacks <|audio_start|>, <unk> or <|audio_end|>: not a MiniCPM-o "
                                     "tokenizer");
    }
    if (group <= 0) group = std::max<int64_t>(n_tokens, 1);
    std::vector<int32_t> ids;
    ids.reserve((size_t) n_tokens + 2 * (size_t) (n_tokens / group + 1));
    int64_t done = 0;
    do {
        const int64_t k = std::min(group, n_tokens - done);
        ids.push_back(start);
        for (int64_t i = 0; i < k; ++i) {
            if (embed_pos) embed_pos->push_back((int32_t) ids.size());
            ids.push_back(unk);
        }
        ids.push_back(end);
        done += k;
    } while (done < n_tokens);
    return ids;
}

namespace {

Message text_message(const char * role, std::string text) {
    Message m;
    m.role = role;
    m.content.push_back(ContentPart::make_text(std::move(text)));
    return m;
}

// How the reference shows an image in the prompt text (MiniCPM-V's chat() marker).
constexpr const char * kImageText = "(<image>./</image>)";

// How the reference shows audio in the prompt text (MiniCPM-o's chat() marker).
constexpr const char * kAudioText = "(<audio>./</audio>)";

// A marker for media slots that no message contains, so that user text can never become a
// media slot (the reference's own "<image>./</image>" marker would).
std::string pick_marker(const std::vector<Message> & messages, const char * kind) {
    for (unsigned k = 0;; ++k) {
        const std::string m = std::string("\x01minicpm-") + kind + "-" + std::to_string(k) + "\x02";
        bool used = false;
        for (const auto & msg : messages) {
            for (const auto & part : msg.content) used = used || part.text.find(m) != std::string::npos;
            if (msg.reasoning_content) used = used || msg.reasoning_content->find(m) != std::string::npos;
        }
        if (!used) return m;
    }
}

// One audio piece: samples [begin, begin + n) of a clip.
struct AudioPiece {
    std::shared_ptr<const AudioPcm> clip;
    size_t                          begin = 0, n = 0;
};

// One temporal group of a video with temporal ids.
struct VideoGroup {
    std::shared_ptr<const VideoFrames> video;
    size_t                             group = 0;
};

struct Rendered {
    std::string                                  text;     // with markers
    std::string                                  marker, audio_marker, video_marker;
    std::vector<std::shared_ptr<const RgbImage>> images;   // in order
    // Per image: the reference's image index (every image and video frame counts), and for video
    // frames without temporal ids their slicing (no <image_id>); 0 = the chat's settings.
    std::vector<int>                             image_index, image_video_slices;
    std::vector<VideoGroup>                      video_groups;   // in order
    std::vector<AudioPiece>                      audio;    // in order
    bool                                         thinking = false;
    bool                                         tts = false;
};

Rendered render(const Model & model, const std::vector<Message> & messages, const ChatParams & params) {
    if (messages.empty()) fail(ErrorKind::InvalidArgument, "chat: the message list is empty");
    Rendered r;
    r.marker = pick_marker(messages, "image");
    r.audio_marker = pick_marker(messages, "audio");
    r.video_marker = pick_marker(messages, "video");
    int n_index = 0;   // the reference numbers every image placeholder, video frames included
    // The reference chat() joins the items of a content list with "\n" ("" in omni mode).
    const std::string sep = params.omni_mode ? "" : "\n";
    std::vector<ChatMessage> msgs;
    for (size_t i = 0; i < messages.size(); ++i) {
        const Message & m = messages[i];
        ChatMessage cm;
        cm.role = m.role;
        cm.reasoning_content = m.reasoning_content;
        for (size_t j = 0; j < m.content.size(); ++j) {
            const ContentPart & part = m.content[j];
            if (j > 0) cm.content += sep;
            if (part.type == ContentPart::Type::Audio) {
                const std::string what = "message " + std::to_string(i) + ", part " + std::to_string(j);
                if (!part.audio) fail(ErrorKind::InvalidArgument, what + ": audio part without audio");
                check_audio(*part.audio, what);
                // Clips over 30 s: each 30 s piece is its own audio item (own placeholder group),
                // joined as items are. (The reference encodes the pieces separately but gives the
                // clip one placeholder group, and raises on the mismatch.)
                const size_t n = part.audio->samples.size();
                for (size_t b = 0; b < n; b += kAudioPieceSamples) {
                    if (b > 0) cm.content += sep;
                    cm.content += r.audio_marker;
                    r.audio.push_back(AudioPiece{part.audio, b, std::min(kAudioPieceSamples, n - b)});
                }
                r.tts = true;
            } else if (part.type == ContentPart::Type::Text) {
                cm.content += part.text;
            } else if (part.type == ContentPart::Type::Image) {
                if (!part.image) {
                    fail(ErrorKind::InvalidArgument, "message " + std::to_string(i) + ", part " + std::to_string(j) +
                                                         ": image part without an image");
                }
                cm.content += r.marker;
                r.images.push_back(part.image);
                r.image_index.push_back(n_index++);
                r.image_video_slices.push_back(0);
            } else if (part.type == ContentPart::Type::Video) {
                const std::string what = "message " + std::to_string(i) + ", part " + std::to_string(j);
                if (!part.video) fail(ErrorKind::InvalidArgument, what + ": video part without frames");
                try {
                    check_video_frames(*part.video);
                } catch (const Error & e) {
                    fail(e.kind(), what + ": " + e.what());
                }
                const VideoFrames & v = *part.video;
                if (v.temporal_ids.empty()) {
                    // The reference recipe of models without temporal ids: every frame an image.
                    for (size_t f = 0; f < v.frames.size(); ++f) {
                        if (f > 0) cm.content += sep;
                        cm.content += r.marker;
                        r.images.push_back(v.frames[f]);
                        r.image_index.push_back(n_index++);
                        r.image_video_slices.push_back(v.max_slice_nums);
                    }
                } else {
                    // One placeholder per group: the reference skips the group's later frames and
                    // strips the "\n" before them.
                    for (size_t g = 0; g < v.temporal_ids.size(); ++g) {
                        if (g > 0) cm.content += sep;
                        cm.content += r.video_marker;
                        r.video_groups.push_back(VideoGroup{part.video, g});
                    }
                    n_index += (int) v.frames.size();
                }
            } else {
                fail(ErrorKind::Unsupported, "message " + std::to_string(i) + ": unsupported content part");
            }
        }
        msgs.push_back(std::move(cm));
    }
    ChatOptions o;
    o.add_generation_prompt = params.add_generation_prompt;
    o.enable_thinking = params.enable_thinking ? params.enable_thinking : model.defaults().enable_thinking;
    r.thinking = o.enable_thinking.value_or(false);
    if (params.use_tts_template) r.tts = *params.use_tts_template;
    const bool o26 = model.info().model_type == "minicpm-o-2.6";
    // MiniCPM-o 2.6's chat() renders speech prompts with its default_tts_chat_template: plain
    // ChatML turns (no default system turn) and its own generation prefix.
    r.text = (r.tts && o26) ? ChatTemplate().render(msgs, ChatOptions{false, std::nullopt}) : model.chat_template().render(msgs, o);
    if (r.tts && params.add_generation_prompt) {
        if (o26) r.text += "<|im_start|>assistant\n";
        r.text += model.chat_template().tts_prefix(model.info().model_type);
    }
    return r;
}

std::string replace_all(std::string s, const std::string & from, const std::string & to) {
    for (size_t p = s.find(from); p != std::string::npos; p = s.find(from, p + to.size())) s.replace(p, from.size(), to);
    return s;
}

} // namespace

Message Message::system(std::string text) { return text_message("system", std::move(text)); }
Message Message::user(std::string text) { return text_message("user", std::move(text)); }
Message Message::assistant(std::string text) { return text_message("assistant", std::move(text)); }

std::string render_chat_text(const Model & model, const std::vector<Message> & messages, const ChatParams & params) {
    Rendered r = render(model, messages, params);
    return replace_all(replace_all(replace_all(r.text, r.marker, kImageText), r.audio_marker, kAudioText), r.video_marker,
                       kImageText);
}

ChatPrompt build_chat_prompt(const Model & model, const std::vector<Message> & messages, const ChatParams & params,
                             const ImageEncodeFn & encode, const AudioEncodeFn & encode_audio,
                             const VideoEncodeFn & encode_video) {
    Rendered r = render(model, messages, params);
    if ((!r.images.empty() || !r.video_groups.empty()) && !model.has_vision()) {
        fail(ErrorKind::Unsupported, "model " + model.info().path + " has no vision encoder: convert the MiniCPM-V "
                                     "checkpoint with its vision tower, or load a separate mmproj file");
    }
    if (!r.audio.empty() && !model.has_audio()) {
        fail(ErrorKind::Unsupported, "model " + model.info().path + " has no audio encoder: convert a MiniCPM-o "
                                     "checkpoint with its audio encoder, or load a separate audio file");
    }
    if (!r.video_groups.empty()) {
        const VisionModel * vm = model.impl().vision();
        if (vm && !vm->hp.temporal) {
            fail(ErrorKind::Unsupported, "model " + model.info().path + " has no 3D resampler (temporal ids are "
                                         "MiniCPM-V 4.5's): pass the video frames without temporal_ids");
        }
        if (!encode_video) fail(ErrorKind::Unsupported, "messages with video: build the prompt with a Session");
    }
    if (!r.audio.empty() && !encode_audio) {
        fail(ErrorKind::Unsupported, "messages with audio: build the prompt with a Session (it owns the audio encoder)");
    }
    ChatPrompt out;
    out.thinking = r.thinking;
    out.tts = r.tts;
    out.text = replace_all(replace_all(replace_all(r.text, r.marker, kImageText), r.audio_marker, kAudioText),
                           r.video_marker, kImageText);
    // o4.5's chat() cuts the answer at the first <|tts_eos|>; o2.6's removes every one (a special
    // token, which the streamed text leaves out anyway).
    if (r.tts && model.info().model_type != "minicpm-o-2.6") {
        const int32_t tts_eos = model.tokenizer().find_token("<|tts_eos|>");
        if (tts_eos >= 0) out.stop_tokens.push_back(tts_eos);
    }
    // V4.5's chat() returns "<think>\n" + the answer when its template opened a reasoning block.
    const std::string think_open = "<think>\n";
    if (params.add_generation_prompt && r.text.size() >= think_open.size() &&
        r.text.compare(r.text.size() - think_open.size(), think_open.size(), think_open) == 0) {
        out.answer_prefix = think_open;
    }
    // The reference pads every audio piece of the chat to the longest one.
    int64_t batch_frames = 0;
    for (const auto & a : r.audio) batch_frames = std::max(batch_frames, audio_mel_frames(a.n));
    // o4.5's processor deletes every <|listen|> id from the tokenised prompt (MiniCPMOProcessor._convert).
    const int32_t listen = model.info().model_type == "minicpm-o-4.5" ? model.tokenizer().find_token("<|listen|>") : -1;
    auto text_tokens = [&](const std::string & piece) {
        std::vector<int32_t> ids = model.tokenize(piece, true);
        if (listen >= 0) ids.erase(std::remove(ids.begin(), ids.end(), listen), ids.end());
        return ids;
    };
    size_t begin = 0, k_img = 0, k_aud = 0, k_vid = 0;
    std::vector<std::shared_ptr<const ImageChunk>> video_chunks;   // of the current video
    for (;;) {
        const size_t at_img = r.text.find(r.marker, begin);
        const size_t at_aud = r.text.find(r.audio_marker, begin);
        const size_t at_vid = r.text.find(r.video_marker, begin);
        const size_t at = std::min({at_img, at_aud, at_vid});
        const std::string piece = r.text.substr(begin, at == std::string::npos ? std::string::npos : at - begin);
        if (!piece.empty()) out.segments.push_back(PromptSegment{text_tokens(piece), nullptr});
        if (at == std::string::npos) break;
        if (at == at_img) {
            if (k_img >= r.images.size()) fail(ErrorKind::Format, "the model's chat template repeated an image slot");
            ImageOptions io;
            io.max_slice_nums = params.max_slice_nums;
            io.use_image_id = params.use_image_id;
            io.image_id = r.image_index[k_img];
            if (r.image_video_slices[k_img] > 0) {
                io.max_slice_nums = r.image_video_slices[k_img];
                io.use_image_id = false;
            }
            out.segments.push_back(PromptSegment{{}, encode(*r.images[k_img], io)});
            ++k_img;
            begin = at + r.marker.size();
        } else if (at == at_vid) {
            if (k_vid >= r.video_groups.size()) fail(ErrorKind::Format, "the model's chat template repeated a video slot");
            const VideoGroup & vg = r.video_groups[k_vid];
            if (vg.group == 0) {
                video_chunks = encode_video(*vg.video);
                if (video_chunks.size() != vg.video->temporal_ids.size()) {
                    fail(ErrorKind::Internal, "video encoder returned " + std::to_string(video_chunks.size()) +
                                                  " chunks for " + std::to_string(vg.video->temporal_ids.size()) + " groups");
                }
            }
            if (vg.group >= video_chunks.size()) fail(ErrorKind::Format, "the model's chat template reordered a video");
            out.segments.push_back(PromptSegment{{}, video_chunks[vg.group]});
            ++k_vid;
            begin = at + r.video_marker.size();
        } else {
            if (k_aud >= r.audio.size()) fail(ErrorKind::Format, "the model's chat template repeated an audio slot");
            const AudioPiece & a = r.audio[k_aud];
            out.segments.push_back(PromptSegment{{}, encode_audio(a.clip->samples.data() + a.begin, a.n, batch_frames)});
            ++k_aud;
            begin = at + r.audio_marker.size();
        }
    }
    if (k_img != r.images.size() || k_aud != r.audio.size() || k_vid != r.video_groups.size()) {
        fail(ErrorKind::Format, "the model's chat template dropped a media slot");
    }
    return out;
}

} // namespace minicpm
