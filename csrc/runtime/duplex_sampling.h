// The duplex decoder's token choice (StreamDecoder.decode in the reference's utils.py), a pure
// function over one row of logits.
#pragma once

#include "models/tts.h"   // TtsRng: the seeded generator shared with the talker

#include <cstdint>
#include <vector>

namespace minicpm {

struct DuplexSampling {
    float   temperature = 0.7f;
    int     top_k = 20;                // 0: off
    float   top_p = 0.8f;              // 0: off (top_k_top_p_filtering's rule)
    float   repetition_penalty = 1.05f;
    int     repetition_window = 512;
    float   length_penalty = 1.1f;     // on turn_eos
    bool    greedy = false;
    int32_t chunk_eos = -1, turn_eos = -1;
    const std::vector<int32_t> * forbidden = nullptr;   // chunk_eos included
};

// 1. a raw draw from softmax(logits) (argmax when greedy); <|chunk_eos|> is taken as is;
// 2. else: forbidden ids to -inf, each distinct id of the last repetition_window generated ids
//    divided by the penalty (the reference divides whatever the sign), <|turn_eos|> divided
//    (positive) or multiplied (else) by the length penalty, then argmax (greedy) or
//    temperature, top-k, top-p and a multinomial draw. The chosen id (not a raw <|chunk_eos|>)
//    is appended to `generated`. `logits` is the row with any bias already added (n_vocab).
int32_t duplex_decode(const std::vector<float> & logits, const DuplexSampling & s, std::vector<int32_t> & generated,
                      TtsRng & rng);

} // namespace minicpm
