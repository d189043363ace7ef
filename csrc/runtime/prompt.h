// Prompt assembly: chat messages with content parts -> the token runs and media chunks a session
// evaluates, as the reference chat() builds them (parts joined with "\n", each image replaced by
// its placeholder and numbered 0, 1, ... across the conversation, the model's chat template and
// the reference's defaults for enable_thinking).
#pragma once

#include "minicpm/minicpm.h"

#include <functional>
#include <memory>
#include <vector>

namespace minicpm {

using ImageEncodeFn = std::function<std::shared_ptr<const ImageChunk>(const RgbImage &, const ImageOptions &)>;

// Throws Error(InvalidArgument) for bad messages; images go through `encode` in order.
ChatPrompt build_chat_prompt(const Model & model, const std::vector<Message> & messages, const ChatParams & params,
                             const ImageEncodeFn & encode);

// The rendered text only (images as "(<image>./</image>)"), without encoding anything.
std::string render_chat_text(const Model & model, const std::vector<Message> & messages, const ChatParams & params);

} // namespace minicpm
