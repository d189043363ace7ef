// The KV sliding window of one MiniCPM-o 4.5 duplex session, kept as the reference's
// StreamDecoder keeps it (MiniCPMO45/utils.py: register_system_prompt*, register_unit_start/end,
// enforce_window, enforce_window_with_context and the helpers they call), over a Session whose
// context holds exactly what the reference's decoder fed (the "cache length" is n_past()).
//
// Calling sequence (the reference's MiniCPMODuplex.prepare / streaming_prefill / streaming_generate):
//
//   DuplexWindow w(session, config);                 // after session.reset()
//   prepare():
//     prefill the system prefix (and the reference audio, if any)
//     when a prefix, a suffix or a reference audio was given:
//       mode "context": w.register_system_prompt_with_context(suffix_ids); then prefill the suffix
//       otherwise:      prefill the suffix; then w.register_system_prompt()
//   each unit (streaming_prefill + streaming_generate):
//     w.register_unit_start();                       // before <unit> is fed
//     ... feed <unit>, the unit's inputs, generate, feed </unit> ...
//     w.register_unit_end(type, tokens, is_listen, text);   // after </unit>
//     w.enforce();                                   // the window of config.mode ("off": nothing)
//   reset(): w.reset() after session.reset()
//
// register_unit_end's arguments are streaming_generate's: type "audio" / "video" / "omni" /
// "text" (the unit's mode, lower case), tokens = the generated ids it collects for the TTS
// (j >= 1, terminators left out), is_listen = the unit ended on <|listen|>, text = those tokens
// decoded with special tokens skipped.
//
// Cache edits (the reference's tensor slicing, as Session operations):
//   basic:   the oldest unit is dropped as the range [system, system + unit length) and the
//            positions after it are re-rotated to close the gap (Session::remove(.., true));
//   context: the dropped unit's generated tokens (special ids left out, non-listen units only) go
//            to the "previous" text after a "\n\nprevious: " marker (left-truncated to
//            context_previous_max_tokens); [prefix end, first kept unit) is replaced by
//            marker + previous + suffix, evaluated again, and the kept units re-rotated after it
//            (Session::replace). Until the first unit with text, only the gap is closed.
// After an edit the Session's logits are not those of the last position (evaluate something
// before sampling, as the reference does: its next unit computes fresh logits).
#pragma once

#include "minicpm/minicpm.h"

#include <cstdint>
#include <optional>
#include <set>
#include <string>
#include <vector>

namespace minicpm {

// MiniCPMODuplex's window settings (its constructor kwargs). The StreamDecoder's own dataclass
// DuplexWindowConfig has 8000 / 6000 for the basic window; the duplex class passes 4000 / 3500.
struct DuplexWindowConfig {
    std::string mode = "off";                 // "off" | "basic" | "context"
    int         basic_high_tokens = 4000;     // basic: the window slides when the cache is longer
    int         basic_low_tokens = 3500;      // basic: ... down to this length (or no unit left)
    int         context_max_units = 24;       // context: the window slides when more units are held
    int         context_previous_max_tokens = 500;   // context: tokens of previous text kept (marker not counted)
    std::string previous_marker = "\n\nprevious: ";
};

struct DuplexWindowUnit {
    int                  unit_id = 0;
    int                  length = 0;          // context entries from <unit> to </unit>
    std::string          type;                // "audio" / "video" / "omni" / "text"
    std::vector<int32_t> generated_tokens;
    std::string          generated_text;
    bool                 is_listen = false;
};

struct DuplexWindowStats {
    int sliding_events = 0;
    int dropped_tokens = 0;
    int dropped_units = 0;
};

class DuplexWindow {
public:
    // Throws Error(InvalidArgument) for an unknown mode or a negative / inverted limit.
    DuplexWindow(Session & session, const DuplexWindowConfig & config);

    void reset();

    void register_system_prompt();
    void register_system_prompt_with_context(const std::vector<int32_t> & suffix_ids);
    int  register_unit_start();
    void register_unit_end(const std::string & type, const std::vector<int32_t> & generated_tokens, bool is_listen,
                           const std::string & generated_text);
    // The window of config().mode after a unit; returns whether units were dropped.
    bool enforce();
    bool enforce_basic();     // StreamDecoder.enforce_window
    bool enforce_context();   // StreamDecoder.enforce_window_with_context

    const DuplexWindowConfig &            config() const { return cfg_; }
    bool                                  enabled() const { return cfg_.mode != "off"; }
    int                                   cache_length() const;
    int                                   system_length() const { return system_preserve_length_; }
    int                                   prefix_length() const { return preserve_prefix_length_; }
    const std::vector<DuplexWindowUnit> & units() const { return units_; }
    const std::string &                   previous_text() const { return previous_text_; }
    const std::vector<int32_t> &          previous_tokens() const { return previous_ids_; }   // marker included
    const std::vector<int32_t> &          marker_tokens() const { return marker_ids_; }
    const DuplexWindowStats &             stats() const { return stats_; }
    int                                   position_offset() const { return position_offset_; }
    // The ids left out of the previous text (the reference's tokenizer.all_special_ids plus its
    // list of duplex tokens). By default the file's minicpm.all_special_ids; for files without
    // it, the vocabulary's CONTROL tokens (HF's special added tokens): a superset of
    // all_special_ids by the eleven Qwen vision tokens (<|object_ref_start|> ... <|video_pad|>)
    // and <|turn_bos|> in MiniCPM-o 4.5's vocabulary.
    void                                  set_special_ids(const std::vector<int32_t> & ids);

private:
    bool drop_tokens(int length);
    bool drop_unit(int unit_id);
    bool drop_next_unit();
    bool drop_unit_with_context(int unit_id);
    bool drop_next_unit_with_context();
    void extract_generated(const std::vector<DuplexWindowUnit> & units, std::string & text, std::vector<int32_t> & ids) const;
    void update_previous(const std::string & text, const std::vector<int32_t> & ids);
    void rebuild_with_previous(const std::vector<int32_t> & previous_ids);

    Session &                     session_;
    DuplexWindowConfig            cfg_;
    std::set<int32_t>             special_ids_;
    std::vector<std::string>      special_texts_;

    std::vector<DuplexWindowUnit> units_;
    int                           next_unit_id_ = 0;
    std::optional<int>            pending_unit_id_;
    int                           pending_start_ = 0;
    int                           system_preserve_length_ = 0;
    int                           position_offset_ = 0;
    // context mode: [prefix] [marker + previous] [suffix] [units...]
    int                           preserve_prefix_length_ = 0;
    int                           previous_content_length_ = 0;
    std::vector<int32_t>          suffix_ids_;
    std::vector<int32_t>          marker_ids_;
    bool                          has_previous_ = false;
    std::string                   previous_text_;
    std::vector<int32_t>          previous_ids_;
    DuplexWindowStats             stats_;
};

} // namespace minicpm
