#include "runtime/duplex_window.h"

#include "core/error.h"
#include "preprocess/tokenizer.h"
#include "runtime/model_impl.h"

#include <algorithm>
#include <numeric>

namespace minicpm {

namespace {

// The duplex tokens StreamDecoder adds to the tokenizer's special tokens (custom_special_tokens).
const char * const kDuplexSpecial[] = {"<unit>",          "</unit>",         "<image>",         "</image>",
                                       "<slice>",         "</slice>",        "<|listen|>",      "<|speak|>",
                                       "<|tts_bos|>",     "<|tts_eos|>",     "<|audio_start|>", "<|audio_end|>",
                                       "<|chunk_eos|>",   "<|chunk_tts_eos|>", "<|turn_eos|>"};

const DuplexWindowConfig & checked(const DuplexWindowConfig & c) {
    if (c.mode != "off" && c.mode != "basic" && c.mode != "context") {
        fail(ErrorKind::InvalidArgument, "window mode must be 'off', 'basic' or 'context', got '" + c.mode + "'");
    }
    if (c.basic_high_tokens < 0 || c.basic_low_tokens < 0 || c.basic_low_tokens > c.basic_high_tokens) {
        fail(ErrorKind::InvalidArgument, "window tokens need 0 <= target (" + std::to_string(c.basic_low_tokens) +
                                             ") <= max (" + std::to_string(c.basic_high_tokens) + ")");
    }
    if (c.context_max_units < 0) {
        fail(ErrorKind::InvalidArgument, "context_max_units must be >= 0, got " + std::to_string(c.context_max_units));
    }
    if (c.context_previous_max_tokens < 0) {
        fail(ErrorKind::InvalidArgument,
             "max_previous_tokens must be >= 0, got " + std::to_string(c.context_previous_max_tokens));
    }
    return c;
}

int total_length(const std::vector<DuplexWindowUnit> & units) {
    return std::accumulate(units.begin(), units.end(), 0, [](int a, const DuplexWindowUnit & u) { return a + u.length; });
}

// Python's str.isspace() for one code point.
bool is_space(uint32_t c) {
    return (c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x20) || c == 0x85 || c == 0xa0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 || c == 0x202f || c == 0x205f || c == 0x3000;
}

// `not s.strip()`: empty or white space only (UTF-8; a malformed byte counts as text).
bool is_blank(const std::string & s) {
    for (size_t i = 0; i < s.size();) {
        const auto b = (unsigned char) s[i];
        const int n = b < 0x80 ? 1 : (b >> 5) == 0x6 ? 2 : (b >> 4) == 0xe ? 3 : (b >> 3) == 0x1e ? 4 : 0;
        if (n == 0 || i + (size_t) n > s.size()) return false;
        uint32_t c = n == 1 ? b : (uint32_t) (b & (0x7f >> n));
        for (int k = 1; k < n; ++k) c = (c << 6) | ((unsigned char) s[i + (size_t) k] & 0x3f);
        if (!is_space(c)) return false;
        i += (size_t) n;
    }
    return true;
}

} // namespace

DuplexWindow::DuplexWindow(Session & session, const DuplexWindowConfig & config)
    : session_(session), cfg_(checked(config)) {
    const Tokenizer & tok = session_.model()->tokenizer();
    // The tokenizer's all_special_ids as the converter recorded them; older files: the CONTROL
    // tokens (a superset).
    std::vector<int32_t> ids = session_.model()->impl().all_special_ids;
    if (ids.empty()) {
        for (int32_t id = 0; id < tok.n_tokens(); ++id) {
            if (tok.token_type(id) == TOKEN_TYPE_CONTROL) ids.push_back(id);
        }
    }
    set_special_ids(ids);
    reset();
}

void DuplexWindow::set_special_ids(const std::vector<int32_t> & ids) {
    const Tokenizer & tok = session_.model()->tokenizer();
    special_ids_.clear();
    special_texts_.clear();
    for (int32_t id : ids) {
        if (id < 0 || id >= tok.n_tokens()) {
            fail(ErrorKind::InvalidArgument, "special token id " + std::to_string(id) + " is outside the vocabulary");
        }
        special_ids_.insert(id);
        special_texts_.push_back(tok.token_bytes(id));
    }
    for (const char * t : kDuplexSpecial) {
        const int32_t id = tok.find_token(t);
        if (id >= 0) special_ids_.insert(id);
        special_texts_.emplace_back(t);
    }
}

void DuplexWindow::reset() {
    units_.clear();
    next_unit_id_ = 0;
    pending_unit_id_.reset();
    pending_start_ = 0;
    system_preserve_length_ = 0;
    position_offset_ = 0;
    preserve_prefix_length_ = 0;
    previous_content_length_ = 0;
    suffix_ids_.clear();
    marker_ids_.clear();
    has_previous_ = false;
    previous_text_.clear();
    previous_ids_.clear();
    stats_ = DuplexWindowStats{};
}

int DuplexWindow::cache_length() const { return session_.n_past(); }

void DuplexWindow::register_system_prompt() { system_preserve_length_ = cache_length(); }

void DuplexWindow::register_system_prompt_with_context(const std::vector<int32_t> & suffix_ids) {
    preserve_prefix_length_ = cache_length();
    previous_content_length_ = 0;
    suffix_ids_ = suffix_ids;
    system_preserve_length_ = preserve_prefix_length_ + (int) suffix_ids_.size();
    marker_ids_ = session_.model()->tokenize(cfg_.previous_marker, true);
    has_previous_ = false;
    previous_text_.clear();
    previous_ids_.clear();
}

int DuplexWindow::register_unit_start() {
    pending_unit_id_ = next_unit_id_;
    pending_start_ = cache_length();
    return *pending_unit_id_;
}

void DuplexWindow::register_unit_end(const std::string & type, const std::vector<int32_t> & generated_tokens,
                                     bool is_listen, const std::string & generated_text) {
    if (!pending_unit_id_) return;   // the reference logs a warning and does nothing
    const int len = cache_length() - pending_start_;
    if (len > 0) units_.push_back({*pending_unit_id_, len, type, generated_tokens, generated_text, is_listen});
    pending_unit_id_.reset();
    pending_start_ = 0;
    next_unit_id_ += 1;
}

bool DuplexWindow::enforce() {
    if (cfg_.mode == "context") return enforce_context();
    if (cfg_.mode == "basic") return enforce_basic();
    return false;
}

// ---- basic: drop whole units by cache length -------------------------------------------------

// drop_tokens_from_cache: entries [preserve, preserve + length) go, the rest is re-rotated.
bool DuplexWindow::drop_tokens(int length) {
    if (length <= 0) return false;
    const int total = cache_length();
    if (total <= 0) return false;
    const int preserve = std::min(system_preserve_length_, total);
    if (total - preserve < length) return false;
    session_.remove(preserve, preserve + length, true);
    position_offset_ += length;
    return true;
}

bool DuplexWindow::drop_unit(int unit_id) {
    int len = 0;
    bool found = false;
    for (const auto & u : units_) {
        if (u.unit_id == unit_id) {
            len += u.length;
            found = true;
        }
    }
    if (!found) return false;
    auto erase = [&] {
        units_.erase(std::remove_if(units_.begin(), units_.end(), [&](const DuplexWindowUnit & u) { return u.unit_id == unit_id; }),
                     units_.end());
    };
    if (len <= 0) {
        erase();
        return false;
    }
    if (!drop_tokens(len)) return false;
    erase();
    return true;
}

bool DuplexWindow::drop_next_unit() {
    // A copy of the ids: drop_unit edits units_.
    std::vector<std::pair<int, std::string>> order;
    for (const auto & u : units_) order.emplace_back(u.unit_id, u.type);
    for (const auto & [id, type] : order) {
        if (type == "system") continue;
        if (drop_unit(id)) return true;
    }
    return false;
}

bool DuplexWindow::enforce_basic() {
    if (!enabled()) return false;
    const int before = cache_length();
    if (before <= cfg_.basic_high_tokens) return false;
    int dropped = 0, len = before;
    while (len > cfg_.basic_low_tokens) {
        if (!drop_next_unit()) break;
        dropped += 1;
        len = cache_length();
    }
    if (dropped > 0) {
        stats_.sliding_events += 1;
        stats_.dropped_tokens += before - len;
        stats_.dropped_units += dropped;
    }
    return dropped > 0;
}

// ---- context: drop units by count, keep their text -------------------------------------------

void DuplexWindow::extract_generated(const std::vector<DuplexWindowUnit> & units, std::string & text,
                                     std::vector<int32_t> & ids) const {
    text.clear();
    ids.clear();
    for (const auto & u : units) {
        if (u.is_listen) continue;
        if (!u.generated_text.empty()) {
            std::string clean = u.generated_text;
            for (const auto & st : special_texts_) {
                if (st.empty()) continue;
                for (size_t at = clean.find(st); at != std::string::npos; at = clean.find(st, at)) clean.erase(at, st.size());
            }
            if (!is_blank(clean)) text += clean;
        }
        for (int32_t t : u.generated_tokens) {
            if (!special_ids_.count(t)) ids.push_back(t);
        }
    }
}

// _rebuild_cache_with_previous: [prefix] [old previous] [suffix] [dropped] [kept units] becomes
// [prefix] [new previous] [suffix] [kept units], the kept units re-rotated, not evaluated again.
void DuplexWindow::rebuild_with_previous(const std::vector<int32_t> & previous_ids) {
    const int old_len = previous_content_length_;
    const int new_len = (int) previous_ids.size();
    const int suffix_len = (int) suffix_ids_.size();
    const int total = cache_length();
    const int keep = total_length(units_);

    if (new_len == 0 && old_len == 0) {
        // Nothing to evaluate: [prefix + suffix] and the kept units, the gap closed.
        const int preserve = preserve_prefix_length_ + suffix_len;
        if (keep > 0) session_.remove(preserve, total - keep, true);
        else session_.remove(preserve, total, false);
        return;
    }
    // The previous text and the suffix are evaluated again after the prefix (at the positions
    // prefix + position_offset: the offset moves in the basic window only, 0 here).
    std::vector<int32_t> prev_suffix = previous_ids;
    prev_suffix.insert(prev_suffix.end(), suffix_ids_.begin(), suffix_ids_.end());
    session_.replace(preserve_prefix_length_, total - keep, prev_suffix);
    previous_content_length_ = new_len;
    system_preserve_length_ = preserve_prefix_length_ + new_len + suffix_len;
}

void DuplexWindow::update_previous(const std::string & text, const std::vector<int32_t> & ids) {
    const size_t marker_len = marker_ids_.size();
    if (ids.empty() && text.empty()) {
        rebuild_with_previous(previous_ids_);   // a unit went: the gap still closes
        return;
    }
    if (!has_previous_) {
        previous_text_ = text;
        previous_ids_ = marker_ids_;
        previous_ids_.insert(previous_ids_.end(), ids.begin(), ids.end());
        has_previous_ = true;
    } else {
        previous_text_ += text;
        previous_ids_.insert(previous_ids_.end(), ids.begin(), ids.end());
    }
    const int content = (int) (previous_ids_.size() - marker_len);
    if (content > cfg_.context_previous_max_tokens) {
        // Keep the marker and the last max tokens of the content.
        const size_t drop = (size_t) (content - cfg_.context_previous_max_tokens);
        std::vector<int32_t> kept(previous_ids_.begin() + (std::ptrdiff_t) (marker_len + drop), previous_ids_.end());
        previous_ids_ = marker_ids_;
        previous_ids_.insert(previous_ids_.end(), kept.begin(), kept.end());
        previous_text_ = session_.model()->detokenize(kept, true);
    }
    rebuild_with_previous(previous_ids_);
}

bool DuplexWindow::drop_unit_with_context(int unit_id) {
    std::vector<DuplexWindowUnit> entries;
    for (const auto & u : units_) {
        if (u.unit_id == unit_id) entries.push_back(u);
    }
    if (entries.empty()) return false;
    std::string text;
    std::vector<int32_t> ids;
    extract_generated(entries, text, ids);
    units_.erase(std::remove_if(units_.begin(), units_.end(), [&](const DuplexWindowUnit & u) { return u.unit_id == unit_id; }),
                 units_.end());
    if (total_length(entries) <= 0) return false;
    update_previous(text, ids);
    return true;
}

bool DuplexWindow::drop_next_unit_with_context() {
    std::vector<std::pair<int, std::string>> order;
    for (const auto & u : units_) order.emplace_back(u.unit_id, u.type);
    for (const auto & [id, type] : order) {
        if (type == "system") continue;
        if (drop_unit_with_context(id)) return true;
    }
    return false;
}

bool DuplexWindow::enforce_context() {
    if (!enabled()) return false;
    if (cfg_.mode != "context") return enforce_basic();
    const int before = cache_length();
    if ((int) units_.size() <= cfg_.context_max_units) return false;
    int dropped = 0;
    while ((int) units_.size() > cfg_.context_max_units) {
        if (!drop_next_unit_with_context()) break;
        dropped += 1;
    }
    if (dropped > 0) {
        stats_.sliding_events += 1;
        stats_.dropped_tokens += before - cache_length();
        stats_.dropped_units += dropped;
    }
    return dropped > 0;
}

} // namespace minicpm
