// Chat prompt rendering for the ChatML family. Each family reproduces, byte for byte, what
// the checkpoint's Jinja template produces for plain-text conversations (no tool definitions)
// when rendered the way transformers does (trim_blocks, lstrip_blocks).
//
// Families and the template behaviour they reproduce:
//   qwen3   (Qwen3, MiniCPM-o 4.5, MiniCPM-V 4.5): optional leading system turn; assistant
//           turns split into reasoning / answer at "</think>" (or taken from the
//           reasoning_content field); only assistant turns after the last real user query keep
//           their reasoning as "<think>\n...\n</think>\n\n"; tool results are gathered into one
//           user turn of <tool_response> blocks; the generation prompt closes an empty think
//           block when enable_thinking is false.
//   qwen2.5 default system turn when the first message is not a system one (text taken from
//           the template); assistant content verbatim; tool results as in qwen3.
//   qwen2   default system turn as qwen2.5, every role rendered as its own ChatML turn.
//   chatml  "<|im_start|>{role}\n{content}<|im_end|>\n" per message, no default system.
#include "minicpm/chat.h"

#include "core/error.h"

#include <cstddef>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace minicpm {

namespace {

constexpr std::string_view kImStart = "<|im_start|>";
constexpr std::string_view kImEnd   = "<|im_end|>";

bool contains(std::string_view s, std::string_view part) {
    return s.find(part) != std::string_view::npos;
}

bool starts_with(std::string_view s, std::string_view prefix) {
    return s.size() >= prefix.size() && s.compare(0, prefix.size(), prefix) == 0;
}

bool ends_with(std::string_view s, std::string_view suffix) {
    return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Python's str.lstrip('\n') / rstrip('\n') / strip('\n').
std::string_view lstrip_nl(std::string_view s) {
    size_t b = 0;
    while (b < s.size() && s[b] == '\n') {
        ++b;
    }
    return s.substr(b);
}

std::string_view rstrip_nl(std::string_view s) {
    size_t e = s.size();
    while (e > 0 && s[e - 1] == '\n') {
        --e;
    }
    return s.substr(0, e);
}

std::string_view strip_nl(std::string_view s) {
    return rstrip_nl(lstrip_nl(s));
}

// Python's s.split(sep)[0] and s.split(sep)[-1].
std::string_view before_first(std::string_view s, std::string_view sep) {
    const size_t p = s.find(sep);
    return p == std::string_view::npos ? s : s.substr(0, p);
}

std::string_view after_last(std::string_view s, std::string_view sep) {
    const size_t p = s.rfind(sep);
    return p == std::string_view::npos ? s : s.substr(p + sep.size());
}

enum class Role { System, User, Assistant, Tool };

Role parse_role(const std::string & role, size_t index) {
    if (role == "system") {
        return Role::System;
    }
    if (role == "user") {
        return Role::User;
    }
    if (role == "assistant") {
        return Role::Assistant;
    }
    if (role == "tool") {
        return Role::Tool;
    }
    fail(ErrorKind::InvalidArgument, "chat message " + std::to_string(index) + ": unknown role \"" + role +
                                         "\" (expected system, user, assistant or tool)");
}

// One piece of a Jinja source: the value of a string literal inside a {{ }} / {% %} tag, or
// a run of raw template text outside the tags. `offset` is where the piece starts in the
// source, so that pieces can be limited to a region of it.
struct SourcePiece {
    std::string text;
    size_t      offset  = 0;
    bool        literal = false;
};

// Decodes the escapes Jinja (Python) string literals use in chat templates.
char unescape_char(char c) {
    switch (c) {
        case 'n': return '\n';
        case 't': return '\t';
        case 'r': return '\r';
        case '0': return '\0';
        default: return c;  // \\ \' \" and anything else: the character itself
    }
}

// Splits a template source into string literals (inside tags) and raw text (outside tags).
// Comments {# #} are dropped. This is a lexer only: it does not evaluate anything.
std::vector<SourcePiece> scan_source(const std::string & src) {
    std::vector<SourcePiece> pieces;
    size_t       i = 0;
    const size_t n = src.size();
    while (i < n) {
        const size_t open = src.find('{', i);
        size_t       tag  = std::string::npos;
        for (size_t p = open; p != std::string::npos && p + 1 < n; p = src.find('{', p + 1)) {
            const char c = src[p + 1];
            if (c == '{' || c == '%' || c == '#') {
                tag = p;
                break;
            }
        }
        const size_t raw_end = tag == std::string::npos ? n : tag;
        if (raw_end > i) {
            pieces.push_back({src.substr(i, raw_end - i), i, false});
        }
        if (tag == std::string::npos) {
            break;
        }
        const char kind = src[tag + 1];
        if (kind == '#') {
            const size_t close = src.find("#}", tag + 2);
            i = close == std::string::npos ? n : close + 2;
            continue;
        }
        const char closer = kind == '{' ? '}' : '%';
        size_t     p      = tag + 2;
        while (p < n) {
            const char c = src[p];
            if (c == '\'' || c == '"') {
                SourcePiece lit;
                lit.offset  = p;
                lit.literal = true;
                ++p;
                while (p < n && src[p] != c) {
                    if (src[p] == '\\' && p + 1 < n) {
                        lit.text.push_back(unescape_char(src[p + 1]));
                        p += 2;
                    } else {
                        lit.text.push_back(src[p]);
                        ++p;
                    }
                }
                ++p;  // closing quote
                pieces.push_back(std::move(lit));
                continue;
            }
            if (c == closer && p + 1 < n && src[p + 1] == '}') {
                p += 2;
                break;
            }
            ++p;
        }
        i = p;
    }
    return pieces;
}

// The default system prompt of a Qwen2-style template: the text of a literal (or raw text)
// "<|im_start|>system\n{text}<|im_end|>" written out in full, as in the branch taken when
// the first message is not a system one. Pieces that only open the system turn (the
// "messages[0].content" branch) have nothing before <|im_end|> and do not count.
bool find_default_system(const std::vector<SourcePiece> & pieces, std::string & out) {
    const std::string head = std::string(kImStart) + "system\n";
    for (const SourcePiece & piece : pieces) {
        const size_t h = piece.text.find(head);
        if (h == std::string::npos) {
            continue;
        }
        const size_t body = h + head.size();
        const size_t end  = piece.text.find(kImEnd, body);
        if (end == std::string::npos || end == body) {
            continue;
        }
        out = piece.text.substr(body, end - body);
        return true;
    }
    return false;
}

bool is_ident_char(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
}

// A template-level default for enable_thinking, as in
//   {%- set enable_thinking = enable_thinking | default(false) %}
// Returns 1 / 0 for a true / false default, -1 when the template sets none.
int find_thinking_default(const std::string & src) {
    const std::string name = "enable_thinking";
    for (size_t p = src.find(name); p != std::string::npos; p = src.find(name, p + 1)) {
        if (p > 0 && is_ident_char(src[p - 1])) {
            continue;
        }
        size_t q = p + name.size();
        if (q < src.size() && is_ident_char(src[q])) {
            continue;
        }
        auto skip_ws = [&]() {
            while (q < src.size() && (src[q] == ' ' || src[q] == '\t' || src[q] == '\n' || src[q] == '\r')) {
                ++q;
            }
        };
        skip_ws();
        if (q >= src.size() || src[q] != '|' || (q + 1 < src.size() && src[q + 1] == '|')) {
            continue;
        }
        ++q;
        skip_ws();
        const std::string filters[] = {"default", "d"};
        bool matched = false;
        for (const std::string & f : filters) {
            if (src.compare(q, f.size(), f) == 0 && q + f.size() < src.size() && !is_ident_char(src[q + f.size()])) {
                q += f.size();
                matched = true;
                break;
            }
        }
        if (!matched) {
            continue;
        }
        skip_ws();
        if (q >= src.size() || src[q] != '(') {
            continue;
        }
        ++q;
        skip_ws();
        auto word_at = [&](const char * w) {
            const std::string ws(w);
            return src.compare(q, ws.size(), ws) == 0 && (q + ws.size() >= src.size() || !is_ident_char(src[q + ws.size()]));
        };
        if (word_at("false") || word_at("False")) {
            return 0;
        }
        if (word_at("true") || word_at("True")) {
            return 1;
        }
    }
    return -1;
}

}  // namespace

ChatTemplate ChatTemplate::from_source(const std::string & jinja_source) {
    ChatTemplate t;
    const std::string & src = jinja_source;
    if (!contains(src, kImStart) || !contains(src, kImEnd)) {
        return t;  // empty or not a ChatML template: plain ChatML
    }

    const std::vector<SourcePiece> pieces = scan_source(src);

    const bool tool_response = contains(src, "<tool_response>");
    const bool reasoning =
        contains(src, "</think>") && (contains(src, "reasoning_content") || contains(src, "enable_thinking"));

    std::string default_system;
    const bool  has_default = find_default_system(pieces, default_system);

    if (reasoning) {
        t.family_   = "qwen3";
        t.thinking_ = true;
    } else if (tool_response) {
        t.family_ = "qwen2.5";
    } else if (has_default) {
        t.family_ = "qwen2";
    } else {
        return t;
    }
    // use_tts_template (MiniCPM-o 4.5): the first literal after the test is what it adds.
    const size_t tts_at = src.find("use_tts_template");
    if (tts_at != std::string::npos) {
        for (const SourcePiece & piece : pieces) {
            if (piece.offset > tts_at && piece.literal && !piece.text.empty()) {
                t.tts_text_ = piece.text;
                break;
            }
        }
    }
    t.tool_as_user_       = tool_response;
    t.has_default_system_ = has_default;
    t.default_system_     = has_default ? default_system : std::string();

    if (t.thinking_) {
        const int def = find_thinking_default(src);
        if (def >= 0) {
            t.thinking_default_ = def == 1;
        }
        // The generation prompt is what follows the last test of add_generation_prompt.
        const size_t tail = src.rfind("add_generation_prompt");
        bool         empty_block = false;
        bool         opener      = false;
        if (tail != std::string::npos) {
            for (const SourcePiece & piece : pieces) {
                if (piece.offset < tail) {
                    continue;
                }
                if (contains(piece.text, "<think>\n\n</think>\n\n")) {
                    empty_block = true;
                } else if (ends_with(piece.text, "<think>\n")) {
                    opener = true;
                }
            }
        }
        t.empty_think_when_off_ = empty_block;
        if (!opener) {
            t.think_opener_ = ThinkOpener::Never;
        } else {
            t.think_opener_ = empty_block ? ThinkOpener::UnlessOff : ThinkOpener::Always;
        }
    }
    return t;
}

std::string ChatTemplate::tts_prefix(const std::string & model_type) const {
    // MiniCPM-o 2.6's generation prefix for speech: <|spk_bos|><|spk|><|spk_eos|><|tts_bos|>
    // (its default_tts_chat_template).
    if (model_type == "minicpm-o-2.6") return "<|spk_bos|><|spk|><|spk_eos|><|tts_bos|>";
    return tts_text_;
}

std::string ChatTemplate::render(const std::vector<ChatMessage> & messages, const ChatOptions & opts) const {
    if (messages.empty()) {
        fail(ErrorKind::InvalidArgument, "chat template: the message list is empty");
    }
    std::vector<Role> roles;
    roles.reserve(messages.size());
    size_t total = 64;
    for (size_t i = 0; i < messages.size(); ++i) {
        roles.push_back(parse_role(messages[i].role, i));
        total += messages[i].content.size() + 32;
        if (messages[i].reasoning_content) {
            total += messages[i].reasoning_content->size() + 32;
        }
    }
    const size_t n = messages.size();

    std::string out;
    out.reserve(total + default_system_.size());
    auto turn = [&out](std::string_view role, std::string_view content) {
        out += kImStart;
        out += role;
        out += '\n';
        out += content;
        out += kImEnd;
        out += '\n';
    };

    if (roles[0] != Role::System && has_default_system_) {
        turn("system", default_system_);
    }

    // Index of the last real user query: the last user message that is not a tool result
    // passed back as a whole <tool_response> block; the last message when there is none.
    size_t last_query = n - 1;
    if (thinking_) {
        for (size_t k = n; k-- > 0;) {
            if (roles[k] != Role::User) {
                continue;
            }
            const std::string & c = messages[k].content;
            if (starts_with(c, "<tool_response>") && ends_with(c, "</tool_response>")) {
                continue;
            }
            last_query = k;
            break;
        }
    }

    for (size_t i = 0; i < n; ++i) {
        const ChatMessage & m    = messages[i];
        const Role          role = roles[i];
        const bool          last = i + 1 == n;

        if (role == Role::Tool && tool_as_user_) {
            if (i == 0 || roles[i - 1] != Role::Tool) {
                out += kImStart;
                out += "user";
            }
            out += "\n<tool_response>\n";
            out += m.content;
            out += "\n</tool_response>";
            if (last || roles[i + 1] != Role::Tool) {
                out += kImEnd;
                out += '\n';
            }
            continue;
        }

        if (role == Role::Assistant && thinking_) {
            std::string_view content = m.content;
            std::string_view reasoning;
            if (m.reasoning_content) {
                reasoning = *m.reasoning_content;
            } else if (contains(content, "</think>")) {
                reasoning = lstrip_nl(after_last(rstrip_nl(before_first(content, "</think>")), "<think>"));
                content   = lstrip_nl(after_last(content, "</think>"));
            }
            out += kImStart;
            out += "assistant\n";
            if (i > last_query && (last || !reasoning.empty())) {
                out += "<think>\n";
                out += strip_nl(reasoning);
                out += "\n</think>\n\n";
                out += lstrip_nl(content);
            } else {
                out += content;
            }
            out += kImEnd;
            out += '\n';
            continue;
        }

        turn(m.role, m.content);
    }

    if (opts.add_generation_prompt) {
        out += kImStart;
        out += "assistant\n";
        if (thinking_) {
            std::optional<bool> enabled = opts.enable_thinking;
            if (!enabled) {
                enabled = thinking_default_;
            }
            const bool off = enabled.has_value() && !*enabled;
            if (off && empty_think_when_off_) {
                out += "<think>\n\n</think>\n\n";
            } else if (think_opener_ == ThinkOpener::Always ||
                       (think_opener_ == ThinkOpener::UnlessOff && !off)) {
                out += "<think>\n";
            }
        }
    }
    return out;
}

}  // namespace minicpm
