#include "prompt.h"

#include "core/error.h"

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

namespace {

Message text_message(const char * role, std::string text) {
    Message m;
    m.role = role;
    m.content.push_back(ContentPart::make_text(std::move(text)));
    return m;
}

// How the reference shows an image in the prompt text (MiniCPM-V's chat() marker).
constexpr const char * kImageText = "(<image>./</image>)";

// A marker for image slots that no message contains, so that user text can never become an
// image slot (the reference's own "<image>./</image>" marker would).
std::string pick_marker(const std::vector<Message> & messages) {
    for (unsigned k = 0;; ++k) {
        const std::string m = "\x01minicpm-image-" + std::to_string(k) + "\x02";
        bool used = false;
        for (const auto & msg : messages) {
            for (const auto & part : msg.content) used = used || part.text.find(m) != std::string::npos;
            if (msg.reasoning_content) used = used || msg.reasoning_content->find(m) != std::string::npos;
        }
        if (!used) return m;
    }
}

struct Rendered {
    std::string                                  text;     // with markers
    std::string                                  marker;
    std::vector<std::shared_ptr<const RgbImage>> images;   // in order
    bool                                         thinking = false;
};

Rendered render(const Model & model, const std::vector<Message> & messages, const ChatParams & params) {
    if (messages.empty()) fail(ErrorKind::InvalidArgument, "chat: the message list is empty");
    Rendered r;
    r.marker = pick_marker(messages);
    std::vector<ChatMessage> msgs;
    for (size_t i = 0; i < messages.size(); ++i) {
        const Message & m = messages[i];
        ChatMessage cm;
        cm.role = m.role;
        cm.reasoning_content = m.reasoning_content;
        // The reference chat() joins the items of a content list with "\n".
        for (size_t j = 0; j < m.content.size(); ++j) {
            const ContentPart & part = m.content[j];
            if (j > 0) cm.content += '\n';
            if (part.type == ContentPart::Type::Text) {
                cm.content += part.text;
            } else if (part.type == ContentPart::Type::Image) {
                if (!part.image) {
                    fail(ErrorKind::InvalidArgument, "message " + std::to_string(i) + ", part " + std::to_string(j) +
                                                         ": image part without an image");
                }
                cm.content += r.marker;
                r.images.push_back(part.image);
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
    r.text = model.chat_template().render(msgs, o);
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
    return replace_all(r.text, r.marker, kImageText);
}

ChatPrompt build_chat_prompt(const Model & model, const std::vector<Message> & messages, const ChatParams & params,
                             const ImageEncodeFn & encode) {
    Rendered r = render(model, messages, params);
    if (!r.images.empty() && !model.has_vision()) {
        fail(ErrorKind::Unsupported, "model " + model.info().path + " has no vision encoder: convert the MiniCPM-V "
                                     "checkpoint with its vision tower, or load a separate mmproj file");
    }
    ChatPrompt out;
    out.thinking = r.thinking;
    out.text = replace_all(r.text, r.marker, kImageText);
    // V4.5's chat() returns "<think>\n" + the answer when its template opened a reasoning block.
    const std::string think_open = "<think>\n";
    if (params.add_generation_prompt && r.text.size() >= think_open.size() &&
        r.text.compare(r.text.size() - think_open.size(), think_open.size(), think_open) == 0) {
        out.answer_prefix = think_open;
    }
    size_t begin = 0, k = 0;
    for (;;) {
        const size_t at = r.text.find(r.marker, begin);
        const std::string piece = r.text.substr(begin, at == std::string::npos ? std::string::npos : at - begin);
        if (!piece.empty()) out.segments.push_back(PromptSegment{model.tokenize(piece, true), nullptr});
        if (at == std::string::npos) break;
        if (k >= r.images.size()) fail(ErrorKind::Internal, "chat template repeated an image slot");
        ImageOptions io;
        io.max_slice_nums = params.max_slice_nums;
        io.use_image_id = params.use_image_id;
        io.image_id = (int) k;
        out.segments.push_back(PromptSegment{{}, encode(*r.images[k], io)});
        ++k;
        begin = at + r.marker.size();
    }
    if (k != r.images.size()) {
        fail(ErrorKind::Internal, "chat template dropped " + std::to_string(r.images.size() - k) + " image(s)");
    }
    return out;
}

} // namespace minicpm
