// Chat prompt rendering for the ChatML family (Qwen2, Qwen2.5, Qwen3, MiniCPM-V/o), equal to
// the checkpoint's own Jinja chat template for plain-text conversations.
#pragma once

#include <optional>
#include <string>
#include <vector>

namespace minicpm {

struct ChatMessage {
    std::string                role;     // "system" | "user" | "assistant" | "tool"
    std::string                content;
    std::optional<std::string> reasoning_content;
};

struct ChatOptions {
    bool                add_generation_prompt = true;
    std::optional<bool> enable_thinking;   // unset = template default
};

class ChatTemplate {
public:
    // Recognises the template family from its Jinja source (tokenizer.chat_template);
    // an empty or unrecognised source gives plain ChatML without a default system turn.
    static ChatTemplate from_source(const std::string & jinja_source);

    // Throws Error(InvalidArgument) for an unknown role or an empty message list.
    std::string render(const std::vector<ChatMessage> & messages, const ChatOptions & opts) const;

    // "qwen3", "qwen2.5", "chatml", ...: for logs and tests.
    const std::string & family() const { return family_; }

    // What the speech template (use_tts_template) adds after the generation prompt: MiniCPM-o
    // 2.6's speech prefix for that model type, else the template's own text for the switch
    // (o4.5: "<|tts_bos|>"), else "".
    std::string tts_prefix(const std::string & model_type) const;

private:
    // What the generation prompt opens with after "<|im_start|>assistant\n" in thinking mode.
    enum class ThinkOpener { Never, UnlessOff, Always };

    std::string         family_ = "chatml";
    std::string         default_system_;               // injected when the first message is not a system one
    bool                has_default_system_ = false;
    bool                thinking_ = false;             // Qwen3-style reasoning handling and enable_thinking switch
    bool                tool_as_user_ = false;         // tool results as <tool_response> blocks in a user turn
    std::optional<bool> thinking_default_;             // template's own default for enable_thinking, if any
    bool                empty_think_when_off_ = false; // "<think>\n\n</think>\n\n" when thinking is off
    ThinkOpener         think_opener_ = ThinkOpener::Never;
    std::string         tts_text_;                     // output of the template's use_tts_template branch
};

} // namespace minicpm
