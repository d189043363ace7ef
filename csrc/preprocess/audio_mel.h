// MiniCPM-o log-mel features of 16 kHz mono PCM, identical to the reference processor
// (processing_minicpmo.py: MiniCPMAAudioProcessor on WhisperFeatureExtractor's torch path,
// process_audio_batch / chunk_audio offline, StreamingMelProcessorExact streaming).
//
// One frame t covers samples [160 t - 200, 160 t + 200) under a periodic Hann window of 400
// (torch.stft center=True, reflect padding at the ends of the analysed signal); its 201-bin
// power spectrum goes through 80 Slaney mel filters, then log10(max(mel, 1e-10)). The clamp is
// max - 8 over every bin and frame of the analysed signal ("dynamic"), or none (the reference's
// fixed floor of -10 is already the 1e-10 floor); the result is (x + 4) / 4.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace minicpm {

constexpr int    kAudioSampleRate = 16000;
constexpr int    kMelBins         = 80;
constexpr int    kMelHop          = 160;
constexpr int    kMelFft          = 400;
constexpr int    kMelFreqBins     = kMelFft / 2 + 1;                 // 201
constexpr size_t kMelPieceSamples = 30 * (size_t) kAudioSampleRate;  // one 30 s piece, 3000 frames

// Features of kMelBins rows by n_frames columns: data[bin * n_frames + frame] (the
// reference's [80, T] tensor).
struct MelFeatures {
    int                n_frames = 0;
    std::vector<float> data;
};

// librosa.filters.mel(sr=16000, n_fft=400, n_mels=80) (Slaney scale and area norm, 0-8000 Hz),
// computed in double and rounded to float as torch uses it: [kMelBins][kMelFreqBins].
const std::vector<float> & mel_filter_bank();

// Offline (chat) features of one piece of 1..480000 samples: the piece is zero-padded to
// 30 s, featurised with the dynamic clamp over all 3000 frames, and trimmed to
// ceil(n / 160) frames. n_threads: 1 by default, 0 = from the core count.
// Throws Error(InvalidArgument) for an empty or longer piece or a NaN/inf sample.
MelFeatures log_mel_clip(const float * pcm, size_t n, int n_threads = 1);

// A clip of any length cut into consecutive 30 s pieces (the last one shorter), each
// featurised by log_mel_clip: the reference's chunk_audio + process_audio_batch.
std::vector<MelFeatures> log_mel_pieces(const float * pcm, size_t n, int n_threads = 1);

// The defaults are MiniCPMO.init_streaming_processor's (simplex); duplex uses
// cnn_redundancy_ms = 20 (2 frames of context on each side of a chunk).
struct StreamingMelConfig {
    int    chunk_ms          = 1000;   // frames per chunk = round(chunk_ms * 16) / 160
    int    first_chunk_ms    = 1035;   // next_chunk_samples() of the first push: hop-aligned, 16480
    int    cnn_redundancy_ms = 0;      // extra frames each side = int(ms * 16) / 160
    bool   sliding_window    = true;   // drop slide_stride_s from the left once the buffer reaches the trigger
    double slide_trigger_s   = 30.0;
    double slide_stride_s    = 10.0;
    // The callers' rule (MiniCPMO.streaming_prefill, the duplex prefill): a first push shorter
    // than first_chunk_ms (int(ms * 16) = 16560 samples) is left-padded with zeros to that
    // length. The duplex prefill pads its accumulated audio the same way but then feeds the
    // processor next_chunk_samples() at a time (16480, then 16000): to reproduce it exactly,
    // pad there, turn this off and push those sizes.
    bool   pad_first_chunk   = true;
};

// StreamingMelProcessorExact computed incrementally: the reference re-featurises its whole
// buffer (up to 30 s) after every push; here the log-mel of each frame whose window lies
// inside the buffer is computed once and kept, and only the frames that reach a reflected
// edge of the buffer (two at each end) are recomputed. The clamp of every push takes the
// maximum over all frames of the current buffer, as the reference does, so the output is the
// reference's frame for frame.
//
// Per push: append (left-padding a short first push when configured), slide the window,
// then emit the chunk's frames [100 k - r, 100 (k + 1) + r) (global indices, clipped to the
// frames that exist) once the last of them is stable (its window ends inside the buffer), or
// unconditionally when is_last; otherwise nothing. The clamp is dynamic from 5 s of
// buffered audio on; before, none. The analysed signal is the first 30 s of the buffer
// (WhisperFeatureExtractor truncates; only reachable without the sliding window or with a
// push of more than 10 s). As in the reference, one push emits at most one chunk and moves
// the chunk pointer by one chunk: push chunk-sized pieces (next_chunk_samples()), since the
// frames of a longer push come out over later pushes or, once slid out, never.
//
// A stream is one object, used from one thread at a time.
class StreamingMel {
public:
    explicit StreamingMel(const StreamingMelConfig & cfg = {});   // throws Error(InvalidArgument)

    // Throws Error(InvalidArgument) for a NaN/inf sample (the stream is left unchanged).
    // While fewer than 400 samples are buffered, returns no frames (the reference raises).
    MelFeatures push(const float * pcm, size_t n, bool is_last = false);

    // The reference's flush(): every frame of the current buffer not emitted yet (the last
    // ones computed with reflect padding), without new audio.
    MelFeatures flush();

    void reset();

    // The reference's get_chunk_size(): the first chunk's hop-aligned length, then chunk_ms.
    size_t next_chunk_samples() const;

    const StreamingMelConfig & config() const { return cfg_; }
    int64_t frames_emitted() const { return next_core_; }   // global index of the next chunk's first frame
    size_t  buffered_samples() const { return buffer_.size(); }

private:
    void        append(const float * pcm, size_t n);   // pcm == nullptr: n zeros
    void        slide();
    void        update_cache();
    float       analyse();
    MelFeatures emit(int64_t begin, int64_t end, float threshold) const;   // local frame indices
    size_t      total_len() const { return buffer_.size() + n_unstored_; }
    int64_t     analysed_len() const { return (int64_t) std::min(buffer_.size(), kMelPieceSamples); }

    StreamingMelConfig cfg_;
    int64_t chunk_frames_        = 0;
    int64_t first_chunk_samples_ = 0;
    int64_t chunk_samples_       = 0;
    int64_t pad_target_          = 0;
    int64_t redundancy_          = 0;
    int64_t trigger_samples_     = 0;
    int64_t stride_samples_      = 0;

    // The reference's buffer (after slides). Without the sliding window only its first 30 s
    // are kept: WhisperFeatureExtractor truncates there, so later samples only count.
    std::vector<float> buffer_;
    size_t             n_unstored_ = 0;
    int64_t            base_       = 0;      // global index of the buffer's frame 0
    int64_t            next_core_  = 0;      // the reference's last_emitted_T
    bool               first_      = true;   // no push has been featurised since reset

    // log10 mel of global frames [cache_begin_, cache_begin_ + cache_max_.size()): the frames
    // whose window lies inside the analysed signal, [kMelBins] each, with their maxima.
    std::vector<float> cache_;
    std::vector<float> cache_max_;
    int64_t            cache_begin_ = 0;
    float              cache_peak_  = 0.0f;   // max of cache_max_ (when not empty)

    // The frames of the last analyse() that touch a reflected edge: local indices, log10 mel.
    std::vector<int64_t> edge_ids_;
    std::vector<float>   edges_;
};

// The FFT of this front end for other log-mel variants of 16 kHz audio (S3Tokenizer's 128-bin
// features, preprocess/s3_mel.h): the 201-bin power spectrum |X[k]|^2 of one 400-sample frame
// x (already windowed), in double; and the periodic Hann window of 400 taps as
// torch.hann_window gives it (float32 values held in double).
void power_spectrum_400(const double * x, double * power);
const double * hann_window_400();

} // namespace minicpm
