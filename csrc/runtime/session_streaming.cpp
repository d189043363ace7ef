// Session::Impl's streaming paths: streaming audio input (begin_audio_stream, push_audio,
// end_audio_stream, the streamed answer) and the o4.5 simplex streaming of the reference
// (streaming_prefill, streaming_generate).
#include "session_impl.h"

namespace minicpm {

void Session::Impl::begin_audio_stream() {
    if (audio_groups_per_second(*model)) {
        fail(ErrorKind::Unsupported, "streaming audio input follows MiniCPM-o 4.5's streaming_prefill; MiniCPM-o 2.6 "
                                     "takes audio through chat()");
    }
    if (stream.active) fail(ErrorKind::InvalidArgument, "an audio stream is already open: end_audio_stream() first");
    AudioEncoder & enc = audio_encoder();
    drop_pending_terminator();
    // The turn's opening: streaming_prefill's prompt for the first piece of a user turn. After
    // a streamed answer it is "<|tts_eos|><|im_end|>\n<|im_start|>user\n" whatever ended the
    // answer: streaming_generate never sets llm_generate_completed, and never feeds the
    // terminator it stopped at.
    std::string open = "<|im_start|>user\n";
    if (stream.answered) open = "<|tts_eos|><|im_end|>\n" + open;
    prefill({PromptSegment{model->tokenize(open, true), nullptr}});
    // Every turn starts a new streaming processor and an empty encoder cache.
    stream.mel = std::make_unique<StreamingMel>(StreamingMelConfig{});
    enc.reset_stream();
    stream.pending.clear();
    stream.chunks = 0;
    stream.active = true;
}

void Session::Impl::drop_pending_terminator() {
    gen.end();
    const size_t n = ctx.size();
    if (n > ctx.n_eval() && n > 0) ctx.truncate(n - 1);
}

int Session::Impl::encode_stream_chunk(const float * pcm, size_t n, bool is_last) {
    AudioEncoder & enc = audio_encoder();
    const double t0 = now_ms();
    const MelFeatures mel = stream.mel->push(pcm, n, is_last);
    std::vector<float> emb;
    const int64_t c = mel.n_frames > 0 ? AudioHparams::encoder_frames(mel.n_frames) : 0;
    if (c >= enc.hparams().pool_step) emb = enc.encode_stream(mel.data.data(), mel.n_frames);
    // streaming_prefill drops the encoder cache after the first user piece of a session.
    if (!stream.any_chunk) enc.reset_stream();
    stream.any_chunk = true;
    stream.chunks += 1;
    timings.audio_ms += now_ms() - t0;
    if (emb.empty()) return 0;   // a tail too short for one audio token
    const int64_t meta[2] = {(int64_t) n, stream.chunks};
    const uint64_t hash = content_hash(meta, sizeof(meta), content_hash(emb.data(), emb.size() * sizeof(float)));
    auto chunk = audio_chunk(std::move(emb), n, hash, 0);
    timings.n_audio += 1;
    return prefill({PromptSegment{{}, chunk}});
}

int Session::Impl::push_audio(const float * pcm, size_t n) {
    if (!stream.active) fail(ErrorKind::InvalidArgument, "no audio stream is open: call begin_audio_stream() first");
    if (n > 0 && !pcm) fail(ErrorKind::InvalidArgument, "push_audio: null samples");
    for (size_t i = 0; i < n; ++i) {
        if (!std::isfinite(pcm[i])) {
            fail(ErrorKind::InvalidArgument, "push_audio: sample " + std::to_string(i) + " is not finite (NaN or inf)");
        }
    }
    stream.pending.insert(stream.pending.end(), pcm, pcm + n);
    int added = 0;
    size_t at = 0;
    for (;;) {
        const size_t need = stream.chunks == 0 ? kFirstChunk : kChunk;
        if (stream.pending.size() - at < need) break;
        added += encode_stream_chunk(stream.pending.data() + at, need, false);
        at += need;
    }
    stream.pending.erase(stream.pending.begin(), stream.pending.begin() + (std::ptrdiff_t) at);
    return added;
}

int Session::Impl::end_audio_stream() {
    if (!stream.active) fail(ErrorKind::InvalidArgument, "no audio stream is open");
    int added = 0;
    if (!stream.pending.empty() || stream.chunks == 0) {
        std::vector<float> last = std::move(stream.pending);
        // A first piece shorter than 1035 ms is left-padded with zeros (streaming_prefill).
        if (stream.chunks == 0 && last.size() < kFirstChunk) last.insert(last.begin(), kFirstChunk - last.size(), 0.0f);
        added = encode_stream_chunk(last.data(), last.size(), true);
    }
    stream.pending.clear();
    stream.active = false;
    return added;
}

std::vector<int32_t> Session::Impl::stream_forbidden_tokens() const {
    static const char * const kForbidden[] = {":", "\xef\xbc\x9a", "\xef\xbc\x9b", "#", "\xe2\x80\x9c",
                                              "\xe2\x80\x9d", "\xe2\x80\x98", "\xe2\x80\x99", "@", "*",
                                              "\xe3\x80\x90", "\xe3\x80\x91", "\xe3\x80\x8c", "\xe3\x80\x8d",
                                              "(", ")", "\xef\xbc\x88", "\xef\xbc\x89", "[", "]", "&", "/", "$"};
    const Tokenizer & tok = model->tokenizer();
    const int32_t unk = tok.find_token("<unk>");
    std::vector<int32_t> out = model->impl().bad_token_ids;
    for (const char * s : kForbidden) {
        const int32_t id = tok.find_token(s);
        if (id >= 0) out.push_back(id);
        else if (unk >= 0) out.push_back(unk);
    }
    return out;
}

void Session::Impl::begin_stream_response(GenerationParams p) {
    if (stream.active) end_audio_stream();
    // streaming_generate's bos_input.
    std::string bos = "<|im_end|>\n<|im_start|>assistant\n";
    const bool think = model->defaults().enable_thinking.value_or(false) || p.thinking;
    if (!think && model->info().arch == "qwen3") bos += "<think>\n\n</think>\n\n";
    bos += "<|tts_bos|>";
    prefill({PromptSegment{model->tokenize(bos, true), nullptr}});
    // streaming_generate's terminators: <|tts_eos|> and <|im_end|> ("</s>", the third, is not
    // in the vocabulary: <unk>, which is suppressed); <|endoftext|> is sampled as any token.
    const int32_t tts_eos = model->tokenizer().find_token("<|tts_eos|>");
    const int32_t im_end = model->tokenizer().find_token("<|im_end|>");
    if (tts_eos >= 0) p.stop_tokens.push_back(tts_eos);
    if (im_end >= 0) {
        p.stop_tokens.push_back(im_end);
        p.stop_at_end_of_turn = false;
    }
    const std::vector<int32_t> forbidden = stream_forbidden_tokens();
    p.suppress_tokens.insert(p.suppress_tokens.end(), forbidden.begin(), forbidden.end());
    begin_generation(p);
    stream.answered = true;
}

// ---- simplex streaming (streaming_prefill, streaming_generate) ----

void Session::Impl::check_image(const RgbImage & img, const std::string & what) const {
    if (img.width <= 0 || img.height <= 0 || img.pixels.size() != (size_t) img.width * (size_t) img.height * 3) {
        fail(ErrorKind::InvalidArgument, what + ": image of " + std::to_string(img.width) + "x" +
                                             std::to_string(img.height) + " has " + std::to_string(img.pixels.size()) +
                                             " bytes, expected width * height * 3");
    }
}

std::vector<int32_t> Session::Impl::stream_text_tokens(const std::string & text) const {
    std::vector<int32_t> ids = model->tokenize(text, true);
    const int32_t listen = model->tokenizer().find_token("<|listen|>");
    if (listen >= 0) ids.erase(std::remove(ids.begin(), ids.end(), listen), ids.end());
    return ids;
}

std::shared_ptr<const AudioChunk> Session::Impl::encode_system_audio(const float * pcm, size_t n) {
    const double t0 = now_ms();
    AudioEncoder & enc = audio_encoder();
    const MelFeatures mel = log_mel_clip(pcm, n, backends.n_threads());
    const int64_t meta[2] = {(int64_t) n, -1};
    auto chunk = audio_chunk(enc.encode(mel.data.data(), mel.n_frames, mel.n_frames, false), n,
                             content_hash(meta, sizeof(meta), content_hash(pcm, n * sizeof(float))), 0);
    timings.audio_ms += now_ms() - t0;
    timings.n_audio += 1;
    return chunk;
}

std::shared_ptr<const AudioChunk> Session::Impl::encode_user_chunk(const AudioPcm & in, bool is_last, bool is_first) {
    AudioEncoder & enc = audio_encoder();
    const AudioHparams & hp = enc.hparams();
    std::vector<float> pcm = in.samples;
    // streaming_prefill: the first audio chunk of a turn is left-padded to FIRST_CHUNK_MS.
    if (simplex.audio_chunk_idx == 0 && pcm.size() < kFirstChunk) pcm.insert(pcm.begin(), kFirstChunk - pcm.size(), 0.0f);
    const double t0 = now_ms();
    // get_audio_placeholder: the positions follow from the sample count; the rows from the
    // frames the streaming log-mel emits. The reference raises when they differ.
    const int64_t n_pos = hp.pooled(AudioHparams::encoder_frames(audio_mel_frames(pcm.size())));
    const StreamingMel before = *simplex.mel;
    const MelFeatures mel = simplex.mel->push(pcm.data(), pcm.size(), is_last);
    const int64_t n_enc = mel.n_frames > 0 ? AudioHparams::encoder_frames(mel.n_frames) : 0;
    const int64_t rows = hp.pooled(n_enc);
    if (rows < 1 || rows != n_pos) {
        *simplex.mel = before;
        fail(ErrorKind::InvalidArgument,
             "streaming_prefill: the audio chunk of " + std::to_string(pcm.size()) + " samples has " + std::to_string(n_pos) +
                 " audio positions, but the " + std::to_string(mel.n_frames) + " mel frames the stream emits for it give " +
                 std::to_string(rows) + " embeddings (the reference raises here): send 1 s chunks (16000 samples; "
                 "the first of a turn up to 16560), a shorter last one with is_last_chunk");
    }
    std::vector<float> emb = enc.encode_stream(mel.data.data(), mel.n_frames);
    // streaming_prefill drops the encoder cache after the first call of a session.
    if (is_first) enc.reset_stream();
    simplex.audio_chunk_idx += 1;
    timings.audio_ms += now_ms() - t0;
    timings.n_audio += 1;
    const int64_t meta[2] = {(int64_t) pcm.size(), simplex.audio_chunk_idx};
    const uint64_t hash = content_hash(meta, sizeof(meta), content_hash(emb.data(), emb.size() * sizeof(float)));
    return audio_chunk(std::move(emb), pcm.size(), hash, 0);
}

int Session::Impl::streaming_prefill(const Message & msg, const StreamingPrefillParams & p) {
    const std::string & role = msg.role;
    if (role != "system" && role != "user" && role != "assistant") {
        fail(ErrorKind::InvalidArgument, "streaming_prefill: the role must be \"system\", \"user\" or \"assistant\", got \"" + role + "\"");
    }
    if (stream.active) fail(ErrorKind::InvalidArgument, "streaming_prefill: an audio stream is open (end_audio_stream() first)");
    if (p.max_slice_nums < 1) {
        fail(ErrorKind::InvalidArgument, "streaming_prefill: max_slice_nums must be >= 1, got " + std::to_string(p.max_slice_nums));
    }
    const bool streamed = role != "system";   // the reference's is_not_system_prefill
    size_t n_audio = 0;
    for (size_t i = 0; i < msg.content.size(); ++i) {
        const ContentPart & part = msg.content[i];
        const std::string what = "streaming_prefill part " + std::to_string(i);
        switch (part.type) {
        case ContentPart::Type::Text: break;
        case ContentPart::Type::Image:
            if (!part.image) fail(ErrorKind::InvalidArgument, what + ": image part without an image");
            check_image(*part.image, what);
            need_vision(*model);
            break;
        case ContentPart::Type::Audio:
            if (!part.audio) fail(ErrorKind::InvalidArgument, what + ": audio part without audio");
            check_audio(*part.audio, what);
            need_audio(*model);
            if (audio_groups_per_second(*model)) {
                fail(ErrorKind::Unsupported, "streaming_prefill follows MiniCPM-o 4.5; MiniCPM-o 2.6 takes audio through chat()");
            }
            if (role == "assistant") fail(ErrorKind::InvalidArgument, what + ": audio in an assistant message is not supported");
            if (!streamed && part.audio->samples.size() > kAudioPieceSamples) {
                fail(ErrorKind::InvalidArgument, what + ": the system prompt's audio must be at most 30 s, got " +
                                                     std::to_string(part.audio->samples.size() / kAudioRate) + " s");
            }
            ++n_audio;
            break;
        case ContentPart::Type::Video:
            fail(ErrorKind::InvalidArgument, what + ": streaming_prefill takes text, image and audio parts "
                                                    "(send a video as its frames and 1 s audio chunks)");
        }
    }
    if (streamed && n_audio > 1) {
        fail(ErrorKind::InvalidArgument, "streaming_prefill: one audio chunk per call (the reference's streaming mode takes "
                                         "a single audio), got " + std::to_string(n_audio));
    }
    drop_pending_terminator();
    const bool is_first = !simplex.started;
    if (is_first || !simplex.mel) {
        // reset_session + init_streaming_processor
        simplex.mel = std::make_unique<StreamingMel>(StreamingMelConfig{});
        simplex.audio_chunk_idx = 0;
    }
    if ((is_first || role != "user") && audio) audio->reset_stream();
    ImageOptions io;
    io.max_slice_nums = p.max_slice_nums;
    io.use_image_id = false;
    std::vector<PromptSegment> segs;
    if (is_first && role != "user") {
        // a first system / assistant message: the chat template without generation prompt
        ChatParams cp;
        cp.omni_mode = p.omni_mode;
        cp.add_generation_prompt = false;
        cp.use_tts_template = p.use_tts_template;
        cp.enable_thinking = p.enable_thinking;
        cp.max_slice_nums = p.max_slice_nums;
        cp.use_image_id = false;
        ChatPrompt cpr = build_chat_prompt(
            *model, {msg}, cp,
            [&](const RgbImage & img, const ImageOptions &) { return encode_image(img.pixels.data(), img.width, img.height, io); },
            [&](const float * pcm, size_t n, int64_t) { return encode_system_audio(pcm, n); });
        segs = std::move(cpr.segments);
    } else {
        std::string text;
        if (is_first) {
            text = "<|im_start|>user\n";
        } else if (simplex.new_user_msg && role == "user") {
            text = !simplex.llm_generated           ? "<|im_start|>user\n"
                   : simplex.llm_generate_completed ? "<|im_end|>\n<|im_start|>user\n"
                                                    : "<|tts_eos|><|im_end|>\n<|im_start|>user\n";
        }
        auto flush_text = [&]() {
            if (!text.empty()) segs.push_back(PromptSegment{stream_text_tokens(text), nullptr});
            text.clear();
        };
        const std::string sep = p.omni_mode ? "" : "\n";
        for (size_t i = 0; i < msg.content.size(); ++i) {
            const ContentPart & part = msg.content[i];
            if (i > 0) text += sep;
            if (part.type == ContentPart::Type::Text) {
                text += part.text;
                continue;
            }
            flush_text();
            if (part.type == ContentPart::Type::Image) {
                segs.push_back(PromptSegment{{}, encode_image(part.image->pixels.data(), part.image->width, part.image->height, io)});
            } else if (streamed) {
                segs.push_back(PromptSegment{{}, encode_user_chunk(*part.audio, p.is_last_chunk, is_first)});
            } else {
                segs.push_back(PromptSegment{{}, encode_system_audio(part.audio->samples.data(), part.audio->samples.size())});
            }
        }
        flush_text();
    }
    if (is_first) {
        // reset_session: a new streaming session starts from an empty context
        ctx.clear();
        gen.end();
        simplex.llm_generated = false;
        simplex.llm_generate_completed = false;
        simplex.new_user_msg = true;
    }
    const int n = prefill(segs);
    simplex.started = true;
    if (role != "user") simplex.new_user_msg = true;
    else simplex.new_user_msg = false;
    return n;
}

void Session::Impl::begin_streaming_generate(const StreamingGenerateParams & p) {
    if (!simplex.started) {
        fail(ErrorKind::InvalidArgument, "streaming_generate: nothing was prefilled: call streaming_prefill first "
                                         "(a system prompt, the user's chunks)");
    }
    if (stream.active) fail(ErrorKind::InvalidArgument, "streaming_generate: an audio stream is open (end_audio_stream() first)");
    if (p.max_new_tokens < 1) {
        fail(ErrorKind::InvalidArgument, "streaming_generate: max_new_tokens must be >= 1, got " + std::to_string(p.max_new_tokens));
    }
    GenerationParams g;
    g.sampling.temperature = p.do_sample ? p.temperature : 0.0f;
    g.sampling.top_p = p.do_sample ? p.top_p : 1.0f;
    g.sampling.top_k = p.do_sample ? p.top_k : 0;
    g.sampling.min_p = 0.0f;
    g.sampling.presence_penalty = 0.0f;
    g.sampling.repeat_penalty = p.repetition_penalty;
    g.sampling.repeat_last_n = kStreamPenaltyWindow;
    validate_sampling(g.sampling.resolve(SamplerConfig{}));
    // ChunkPrefillChunkGenerate: ceil(max_new_tokens / 10) chunks, the first draws 11 tokens
    // and each later one 10; the last draw of the last chunk is never fed nor yielded.
    const int64_t chunks = ((int64_t) p.max_new_tokens + kStreamChunk - 1) / kStreamChunk;
    g.max_tokens = (int) std::min<int64_t>(1 + chunks * kStreamChunk, 1 << 30);
    g.answer_penalty_chunk = kStreamChunk;
    g.stop_at_end_of_turn = false;
    g.skip_special = false;
    // streaming_generate's terminators ("</s>" is not in the vocabulary: convert_tokens_to_ids
    // gives <unk>, which the decoder also suppresses).
    const Tokenizer & tok = model->tokenizer();
    for (const char * t : {"<|tts_eos|>", "<|im_end|>", "</s>"}) {
        int32_t id = tok.find_token(t);
        if (id < 0) id = tok.find_token("<unk>");
        if (id >= 0) g.stop_tokens.push_back(id);
    }
    g.suppress_tokens = stream_forbidden_tokens();
    std::string bos;
    if (p.bos_input) {
        bos = *p.bos_input;
    } else {
        bos = "<|im_end|>\n<|im_start|>assistant\n";
        if (!p.enable_thinking && model->info().arch == "qwen3") bos += "<think>\n\n</think>\n\n";
        if (p.use_tts_template) bos += "<|tts_bos|>";
    }
    const std::vector<int32_t> bos_ids = model->tokenize(bos, true);
    if (bos_ids.empty()) fail(ErrorKind::InvalidArgument, "streaming_generate: bos_input is empty");
    drop_pending_terminator();
    ctx.check_fits(bos_ids.size(), "streaming_generate's assistant prompt");
    // the reference's turn bookkeeping, then init_streaming_processor
    simplex.new_user_msg = true;
    simplex.llm_generated = true;
    simplex.llm_generate_completed = false;
    if (audio) audio->reset_stream();
    simplex.mel = std::make_unique<StreamingMel>(StreamingMelConfig{});
    simplex.audio_chunk_idx = 0;
    if (p.generate_audio) ctx.set_capture(true, ctx.capture_logits());
    prefill({PromptSegment{bos_ids, nullptr}});
    begin_generation(g);
}

} // namespace minicpm
