// Token2Wav flow matching at run time: the encoder, the estimator and the Euler solver, offline
// (CausalMaskedDiffWithXvec.inference) and streaming (setup_cache / inference_chunk with
// Token2wav's cache cuts). The component itself (hyperparameters, weights, llama.cpp-omni's
// files) is flow.cpp; the graphs are flow_enc.cpp and flow_dit.cpp.
#include "flow.h"
#include "models/flow_graph.h"

#include "core/error.h"
#include "core/log.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <string>

namespace minicpm {

using namespace flow_graph;

namespace {

constexpr float kPi = 3.14159265358979323846f;   // torch.pi as float32

// splitmix64, for the default noise table.
uint64_t mix64(uint64_t z) {
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// t_span = 1 - cos(linspace(0, 1, n + 1) * pi / 2), float32 as torch.linspace computes it.
std::vector<float> time_span(int n_steps) {
    const int64_t n_pts = n_steps + 1;
    const float step = 1.0f / (float) n_steps;
    std::vector<float> span((size_t) n_pts);
    for (int64_t i = 0; i < n_pts; ++i) {
        const float lin = i < n_pts / 2 ? (float) i * step : 1.0f - (float) (n_pts - 1 - i) * step;
        span[(size_t) i] = 1.0f - std::cos(lin * 0.5f * kPi);
    }
    return span;
}

std::vector<float> noise_rows(int64_t M, int64_t first, int64_t n, uint64_t seed) {
    // Standard normal values (Box-Muller on two 53-bit uniforms) from a counter hash of (seed,
    // absolute frame, channel): the same frame always gets the same noise, whatever the chunking.
    std::vector<float> out((size_t) (n * M));
    for (int64_t f = 0; f < n; ++f) {
        for (int64_t c = 0; c < M; ++c) {
            const uint64_t key = mix64(seed ^ mix64((uint64_t) (first + f) * 0x100000001B3ull + (uint64_t) c));
            const double u1 = ((double) (mix64(key) >> 11) + 1.0) * 0x1.0p-53;   // (0, 1]
            const double u2 = (double) (mix64(key ^ 0x5851F42D4C957F2Dull) >> 11) * 0x1.0p-53;
            out[(size_t) (f * M + c)] = (float) (std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2));
        }
    }
    return out;
}

} // namespace

// ---- runtime ----------------------------------------------------------------------------------

struct FlowRunner::Impl {
    const FlowModel &   m;
    const FlowHparams & hp;
    GraphRunner         enc_runner;
    GraphRunner         dit_runner;
    EvalObserver        enc_observer;
    EvalObserver        dit_observer;
    EncIO               eio;
    DitIO               dio;
    // streaming (created at the first stream_start)
    // One encoder and one solver graph per chunk phase (prompt pass, first, second, later and
    // last windows): the cache lengths settle by the third window, so each phase's graph is
    // built once per voice prompt and kept across turns.
    static constexpr int kPhases = 5;
    struct Phase {
        std::unique_ptr<GraphRunner> enc, dit;
        EncChunkIO                   cio;
        DitSolveIO                   sio;
    };
    std::array<Phase, kPhases> phases;
    int phase(bool last) const { return last ? kPhases - 1 : std::min(st.chunks, kPhases - 2); }
    // the solver: several Euler steps per graph (offline; streaming on the estimator states)
    static constexpr int         kUnroll = 10;
    std::unique_ptr<GraphRunner> solve_runner, state_runner;   // state_runner: the estimator states only
    DitSolveIO          solve_io;
    int64_t             state_cap = 0;             // frames per estimator state slot
    int                 state_steps = 0;           // solver steps the states were made for
    struct Stream {
        bool                 active = false;
        int                  n_steps = 0;
        int64_t              prompt_frames = 0;    // mel frames of the prompt
        int64_t              past = 0;             // token frames in the conformer caches
        std::vector<float>   cnn1, cnn2;           // [2][E], [2 stride][E]
        std::vector<std::vector<float>> enc_k, enc_v;   // per layer [len][E]
        int                  chunks = 0;           // chunks through the estimator (the prompt pass first)
        int64_t              dit_len = 0;          // frames in each estimator cache (in the runner's states)
        std::vector<float>   spk80, spk_in;       // projected / as given
        std::vector<float>   noise;                // injected table [frames][n_mel], or empty
        uint64_t             seed = 0;
    } st;

    // The state right after the last prompt pass, to start the next stream with the same prompt,
    // steps and seed without running the pass again (a turn's first audio waits for it): the
    // host part and a device copy of the estimator states. Restoring gives the same bytes as
    // the pass would.
    struct PromptSnapshot {
        bool                         valid = false;
        std::vector<int32_t>         tokens;
        std::vector<float>           mel, spk;
        int                          n_steps = 0;
        uint64_t                     seed = 0;
        Stream                       st;
        std::unique_ptr<GraphRunner> states;
    } snap;

    static constexpr const char * kStateNames[4] = {"dit_k", "dit_v", "dit_c1", "dit_c2"};

    bool snapshot_matches(const FlowPrompt & prompt, int n_steps, uint64_t seed) const {
        return snap.valid && state_runner && snap.states && snap.n_steps == n_steps && snap.seed == seed &&
               state_steps == n_steps && snap.tokens == prompt.tokens && snap.mel == prompt.mel && snap.spk == prompt.spk;
    }

    void copy_states(GraphRunner & from, GraphRunner & to) {
        for (const char * n : kStateNames) ggml_backend_tensor_copy(from.state(n), to.state(n));
    }

    void save_snapshot(const FlowPrompt & prompt, int n_steps, uint64_t seed) {
        snap.valid = false;
        if (!snap.states || !same_shapes(*snap.states, *state_runner)) {
            snap.states.reset();
            auto r = std::make_unique<GraphRunner>("flow-dit-prompt-snapshot", dit_runner.backends(), 16);
            for (const char * n : kStateNames) {
                const ggml_tensor * t = state_runner->state(n);
                r->add_state(n, t->type, {t->ne[0], t->ne[1], t->ne[2], t->ne[3]});
            }
            r->allocate_state();
            snap.states = std::move(r);
        }
        copy_states(*state_runner, *snap.states);
        snap.tokens = prompt.tokens;
        snap.mel = prompt.mel;
        snap.spk = prompt.spk;
        snap.n_steps = n_steps;
        snap.seed = seed;
        snap.st = st;
        snap.valid = true;
    }

    static bool same_shapes(GraphRunner & a, GraphRunner & b) {
        for (const char * n : kStateNames) {
            if (!ggml_are_same_shape(a.state(n), b.state(n)) || a.state(n)->type != b.state(n)->type) return false;
        }
        return true;
    }

    Impl(const FlowModel & model, const ComputeBackends & b, const DebugOptions & d)
        : m(model), hp(model.hp), enc_runner("flow-encoder", b, enc_nodes(model.hp)),
          dit_runner("flow-dit", b, dit_nodes(model.hp)), enc_observer("flow-encoder", d), dit_observer("flow-dit", d) {
        // 10 s of speech (250 tokens, 500 mel frames); longer inputs grow the buffers.
        enc_runner.reserve([&](ggml_context * ctx, ggml_cgraph * gf) { build_encoder(ctx, gf, m, eio, 250); },
                           "token2wav flow encoder compute buffers");
        dit_runner.reserve([&](ggml_context * ctx, ggml_cgraph * gf) { build_dit(ctx, gf, m, dio, 500); },
                           "token2wav flow estimator compute buffers");
        enc_observer.attach(enc_runner);
        dit_observer.attach(dit_runner);
    }

    // The sinusoid of TimestepEmbedder.timestep_embedding(t * scale): [cos | sin], float32.
    std::vector<float> t_freq(float t) const {
        const int64_t half = hp.t_freq / 2;
        const float ts = t * hp.t_scale;
        const float a = (float) -std::log((double) hp.t_max_period);
        std::vector<float> out((size_t) hp.t_freq);
        for (int64_t i = 0; i < half; ++i) {
            const float f = std::exp((float) i * a / (float) half);
            const float arg = ts * f;
            out[(size_t) i] = std::cos(arg);
            out[(size_t) (half + i)] = std::sin(arg);
        }
        return out;
    }

    // The estimator input [2][N][dit_in]: x | mu | spk | cond, then x | 0 | 0 | 0.
    std::vector<float> dit_input(const std::vector<float> & x, const std::vector<float> & mu,
                                 const std::vector<float> & spk, const std::vector<float> & cond, int64_t N) const {
        const int64_t M = hp.n_mel, C = hp.dit_in;
        std::vector<float> in((size_t) (2 * N * C), 0.0f);
        for (int64_t t = 0; t < N; ++t) {
            float * r0 = in.data() + t * C;
            float * r1 = in.data() + (N + t) * C;
            std::memcpy(r0, x.data() + t * M, (size_t) M * sizeof(float));
            std::memcpy(r0 + M, mu.data() + t * M, (size_t) M * sizeof(float));
            std::memcpy(r0 + 2 * M, spk.data(), (size_t) M * sizeof(float));
            std::memcpy(r0 + 3 * M, cond.data() + t * M, (size_t) M * sizeof(float));
            std::memcpy(r1, x.data() + t * M, (size_t) M * sizeof(float));
        }
        return in;
    }

    // The estimator inputs besides x, [2][N][dit_in - n_mel]: mu | spk | cond, then zeros.
    std::vector<float> solve_rest(const std::vector<float> & mu, const std::vector<float> & spk,
                                  const std::vector<float> & cond, int64_t N) const {
        const int64_t M = hp.n_mel, C = hp.dit_in - M;
        std::vector<float> in((size_t) (2 * N * C), 0.0f);
        for (int64_t t = 0; t < N; ++t) {
            float * r0 = in.data() + t * C;
            std::memcpy(r0, mu.data() + t * M, (size_t) M * sizeof(float));
            std::memcpy(r0 + M, spk.data(), (size_t) M * sizeof(float));
            std::memcpy(r0 + 2 * M, cond.data() + t * M, (size_t) M * sizeof(float));
        }
        return in;
    }

    // solve_euler over x [N][n_mel] (in place), kUnroll steps per graph; on the estimator
    // states (Lc frames in them) when streaming.
    void run_solve(GraphRunner & r, DitSolveIO & io, std::vector<float> & x, const std::vector<float> & rest, int64_t N,
                   int n_steps, const GraphRunner * states, int64_t Lc) {
        const bool stream = states != nullptr;
        const std::vector<float> span = time_span(n_steps);
        std::vector<float> ts, dts;   // t and dt of each step, accumulated as solve_euler does
        float t = span[0], dt = span[1] - span[0];
        for (int stp = 1; stp <= n_steps; ++stp) {
            ts.push_back(t);
            dts.push_back(dt);
            t = t + dt;
            if (stp < n_steps) dt = span[(size_t) stp + 1] - t;
        }
        for (int s0 = 0; s0 < n_steps; s0 += kUnroll) {
            const int u = std::min(kUnroll, n_steps - s0);
            DitStreamPlan plan;
            if (stream) {
                plan.k = states->state("dit_k");
                plan.v = states->state("dit_v");
                plan.c1 = states->state("dit_c1");
                plan.c2 = states->state("dit_c2");
                plan.first = s0;
                plan.Lc = Lc;
                plan.keep_head = st.prompt_frames;
                plan.keep_tail = hp.stream_history;
            }
            r.prepare({N, u, stream ? s0 : -1, stream ? Lc : -1, plan.keep_head},
                      [&](ggml_context * ctx, ggml_cgraph * gf) {
                          build_dit_solve(ctx, gf, m, io, N, u, stream ? &plan : nullptr);
                      });
            std::vector<float> tf;
            for (int i = 0; i < u; ++i) {
                const std::vector<float> f = t_freq(ts[(size_t) (s0 + i)]);
                tf.insert(tf.end(), f.begin(), f.end());
            }
            ggml_backend_tensor_set(io.x0, x.data(), 0, x.size() * sizeof(float));
            ggml_backend_tensor_set(io.rest, rest.data(), 0, rest.size() * sizeof(float));
            ggml_backend_tensor_set(io.t_freq, tf.data(), 0, tf.size() * sizeof(float));
            ggml_backend_tensor_set(io.dt, dts.data() + s0, 0, (size_t) u * sizeof(float));
            r.compute();
            ggml_backend_tensor_get(io.x, x.data(), 0, x.size() * sizeof(float));
        }
    }

    // The streaming solver's runner with estimator states for n_steps and `cap` frames.
    void stream_states(int n_steps, int64_t cap) {
        if (state_runner && state_steps == n_steps && state_cap == cap) return;
        for (Phase & p : phases) p.dit.reset();   // their graphs view the old states
        state_runner.reset();
        const int64_t inner = hp.dit_head * hp.dit_head_dim, km1 = hp.conv_kernel - 1;
        const int64_t slots = (int64_t) n_steps * hp.dit_depth;
        auto r = std::make_unique<GraphRunner>("flow-dit-states", dit_runner.backends(), 16);
        r->add_state("dit_k", GGML_TYPE_F32, {inner, cap, 2, slots});
        r->add_state("dit_v", GGML_TYPE_F32, {inner, cap, 2, slots});
        r->add_state("dit_c1", GGML_TYPE_F32, {hp.dit_embd, km1, 2, slots});
        r->add_state("dit_c2", GGML_TYPE_F32, {hp.dit_embd, km1, 2, slots});
        r->allocate_state();
        MINICPM_LOG_INFO("token2wav flow: streaming estimator cache %.1f MiB (%d steps, %lld frames)",
                         r->state_bytes() / 1048576.0, n_steps, (long long) cap);
        state_runner = std::move(r);
        state_steps = n_steps;
        state_cap = cap;
    }

    void run_dit(const std::vector<float> & in, int64_t N, float t, float dt) {
        dit_runner.prepare({N}, [&](ggml_context * ctx, ggml_cgraph * gf) { build_dit(ctx, gf, m, dio, N); });
        ggml_backend_tensor_set(dio.x, in.data(), 0, in.size() * sizeof(float));
        const std::vector<float> tf = t_freq(t);
        ggml_backend_tensor_set(dio.t_freq, tf.data(), 0, tf.size() * sizeof(float));
        ggml_backend_tensor_set(dio.dt, &dt, 0, sizeof(float));
        dit_runner.compute();
        dit_observer.finish();
    }

    std::vector<float> enc_chunk(const std::vector<int32_t> & tokens, bool last, const std::vector<float> & spk);
    std::vector<float> dit_chunk(const std::vector<float> & mu, const std::vector<float> & cond, bool last);
    void               trim();

    void check_frames(const std::vector<float> & v, int64_t N, const char * what) const {
        if ((int64_t) v.size() != N * hp.n_mel) {
            fail(ErrorKind::InvalidArgument, std::string("token2wav flow: ") + what + " must hold " +
                                                 std::to_string(N) + " frames of " + std::to_string(hp.n_mel) +
                                                 " values, got " + std::to_string(v.size()) + " values");
        }
    }
};

// ---- streaming (CausalMaskedDiffWithXvec.setup_cache / inference_chunk, Token2wav.stream) -------

namespace {

void set_input(ggml_tensor * t, const std::vector<float> & v) {
    if (t) ggml_backend_tensor_set(t, v.data(), 0, v.size() * sizeof(float));
}

std::vector<float> get_output(const ggml_tensor * t) {
    std::vector<float> v((size_t) ggml_nelements(t));
    ggml_backend_tensor_get(t, v.data(), 0, v.size() * sizeof(float));
    return v;
}

// Frames [0, keep_head) and [len - keep_tail, len) of each of `batch` blocks of [len][width].
std::vector<float> keep_ends(const std::vector<float> & v, int64_t batch, int64_t len, int64_t width, int64_t head,
                             int64_t tail) {
    std::vector<float> out;
    out.reserve((size_t) (batch * (head + tail) * width));
    for (int64_t b = 0; b < batch; ++b) {
        const float * base = v.data() + b * len * width;
        out.insert(out.end(), base, base + head * width);
        out.insert(out.end(), base + (len - tail) * width, base + len * width);
    }
    return out;
}

} // namespace

std::vector<float> FlowRunner::Impl::enc_chunk(const std::vector<int32_t> & tokens, bool last,
                                               const std::vector<float> & spk) {
    const int64_t n_in = (int64_t) tokens.size(), past = st.past;
    const int64_t T1 = last ? n_in : n_in - hp.lookahead, L1 = past + T1;
    Phase & ph = phases[(size_t) phase(last)];
    if (!ph.enc) ph.enc = std::make_unique<GraphRunner>("flow-encoder-stream", dit_runner.backends(), enc_nodes(hp) * 2);
    EncChunkIO & cio = ph.cio;
    ph.enc->prepare({n_in, last ? 1 : 0, past}, [&](ggml_context * ctx, ggml_cgraph * gf) {
        build_encoder_chunk(ctx, gf, m, cio, n_in, last, past);
    });
    ggml_backend_tensor_set(cio.tokens, tokens.data(), 0, tokens.size() * sizeof(int32_t));
    set_input(cio.pos1, rel_pos_table(hp, L1));
    set_input(cio.pos2, rel_pos_table(hp, hp.up_stride * L1));
    set_input(cio.spk, spk);
    if (past > 0) {
        set_input(cio.cnn1, st.cnn1);
        set_input(cio.cnn2, st.cnn2);
        for (size_t il = 0; il < cio.layers.size(); ++il) {
            set_input(cio.layers[il].kc, st.enc_k[il]);
            set_input(cio.layers[il].vc, st.enc_v[il]);
        }
    }
    ph.enc->compute();
    st.spk80 = get_output(cio.spk_out);
    if (cio.cnn1_out) st.cnn1 = get_output(cio.cnn1_out);
    st.cnn2 = get_output(cio.cnn2_out);
    st.enc_k.resize(cio.layers.size());
    st.enc_v.resize(cio.layers.size());
    for (size_t il = 0; il < cio.layers.size(); ++il) {
        st.enc_k[il] = get_output(cio.layers[il].k);
        st.enc_v[il] = get_output(cio.layers[il].v);
    }
    st.past = L1;
    return get_output(cio.mu);
}

std::vector<float> FlowRunner::Impl::dit_chunk(const std::vector<float> & mu, const std::vector<float> & cond, bool last) {
    const int64_t M = hp.n_mel, N = (int64_t) (mu.size() / (size_t) M), Lc = st.dit_len;
    // CausalConditionalCFM.forward_chunk: noise from the frame offset = the cache length
    std::vector<float> z;
    if (!st.noise.empty()) {
        if ((int64_t) (st.noise.size() / (size_t) M) < Lc + N) {
            fail(ErrorKind::InvalidArgument, "token2wav flow stream: the noise table has " +
                                                 std::to_string(st.noise.size() / (size_t) M) + " frames, this chunk needs " +
                                                 std::to_string(Lc + N));
        }
        z.assign(st.noise.begin() + Lc * M, st.noise.begin() + (Lc + N) * M);
    } else {
        z = noise_rows(M, Lc, N, st.seed);
    }
    std::vector<float> x(z.size());
    for (size_t i = 0; i < x.size(); ++i) x[i] = z[i] * hp.temperature;
    Phase & ph = phases[(size_t) phase(last)];
    if (!ph.dit) ph.dit = std::make_unique<GraphRunner>("flow-dit-stream", dit_runner.backends(), solve_nodes(hp, kUnroll));
    run_solve(*ph.dit, ph.sio, x, solve_rest(mu, st.spk80, cond, N), N, st.n_steps, state_runner.get(), Lc);
    ++st.chunks;
    // the states now hold the chunk's frames and the cached ones, cut as _trim_estimator_cache
    st.dit_len = std::min(Lc + N, st.prompt_frames + hp.stream_history);
    return x;
}

// Token2wav._trim_estimator_cache / _trim_conformer_cache: past prompt + history frames, keep
// the prompt's count of leading frames and the last `history` (the estimator's cache is in the
// reference's order, newest chunk first, and is cut the same way).
void FlowRunner::Impl::trim() {
    const int64_t P = st.prompt_frames, Hh = hp.stream_history;
    const int64_t E = hp.n_embd, s = hp.up_stride;
    if (s * st.past > P + Hh) {
        const int64_t head1 = P / s, tail1 = Hh / s;
        for (size_t il = 0; il < st.enc_k.size(); ++il) {
            const bool token_rate = (int64_t) il < hp.n_blocks;
            const int64_t len = token_rate ? st.past : s * st.past;
            const int64_t head = token_rate ? head1 : P, tail = token_rate ? tail1 : Hh;
            st.enc_k[il] = keep_ends(st.enc_k[il], 1, len, E, head, tail);
            st.enc_v[il] = keep_ends(st.enc_v[il], 1, len, E, head, tail);
        }
        st.past = head1 + tail1;
    }
}

FlowRunner::FlowRunner(const FlowModel & model, const ComputeBackends & backends, const DebugOptions & debug)
    : impl_(std::make_unique<Impl>(model, backends, debug)) {}

FlowRunner::~FlowRunner() = default;

const FlowHparams & FlowRunner::hparams() const { return impl_->hp; }

std::vector<float> FlowRunner::encode(const std::vector<int32_t> & tokens, const std::vector<float> & spk,
                                      std::vector<float> * spk_out) {
    Impl & s = *impl_;
    const FlowHparams & hp = s.hp;
    const int64_t n = (int64_t) tokens.size();
    if (n == 0) fail(ErrorKind::InvalidArgument, "token2wav flow: no speech tokens");
    if (n * hp.up_stride > hp.max_frames) {
        fail(ErrorKind::InvalidArgument, "token2wav flow: " + std::to_string(n) + " speech tokens give more than " +
                                             std::to_string(hp.max_frames) + " mel frames (the reference's limit)");
    }
    for (size_t i = 0; i < tokens.size(); ++i) {
        if (tokens[i] < 0 || tokens[i] >= hp.n_vocab) {
            fail(ErrorKind::InvalidArgument, "token2wav flow: speech token " + std::to_string(tokens[i]) + " at " +
                                                 std::to_string(i) + " is out of range [0, " +
                                                 std::to_string(hp.n_vocab - 1) + "]");
        }
    }
    std::vector<float> spk_in = spk;
    if (spk_in.empty()) spk_in.assign((size_t) hp.n_spk, 0.0f);
    if ((int64_t) spk_in.size() != hp.n_spk) {
        fail(ErrorKind::InvalidArgument, "token2wav flow: the speaker vector must have " + std::to_string(hp.n_spk) +
                                             " values, got " + std::to_string(spk_in.size()));
    }
    for (float v : spk_in) {
        if (!std::isfinite(v)) fail(ErrorKind::InvalidArgument, "token2wav flow: the speaker vector is not finite");
    }
    s.enc_runner.prepare({n}, [&](ggml_context * ctx, ggml_cgraph * gf) { build_encoder(ctx, gf, s.m, s.eio, n); });
    ggml_backend_tensor_set(s.eio.tokens, tokens.data(), 0, tokens.size() * sizeof(int32_t));
    const std::vector<float> p1 = rel_pos_table(hp, n), p2 = rel_pos_table(hp, hp.up_stride * n);
    ggml_backend_tensor_set(s.eio.pos1, p1.data(), 0, p1.size() * sizeof(float));
    ggml_backend_tensor_set(s.eio.pos2, p2.data(), 0, p2.size() * sizeof(float));
    ggml_backend_tensor_set(s.eio.spk, spk_in.data(), 0, spk_in.size() * sizeof(float));
    s.enc_runner.compute();
    s.enc_observer.finish();
    std::vector<float> mu((size_t) (hp.n_mel * hp.up_stride * n));
    ggml_backend_tensor_get(s.eio.mu, mu.data(), 0, mu.size() * sizeof(float));
    if (spk_out) {
        spk_out->resize((size_t) hp.n_mel);
        ggml_backend_tensor_get(s.eio.spk_out, spk_out->data(), 0, spk_out->size() * sizeof(float));
    }
    return mu;
}

std::vector<float> FlowRunner::dit(const std::vector<float> & x, const std::vector<float> & mu,
                                   const std::vector<float> & spk, const std::vector<float> & cond, float t) {
    Impl & s = *impl_;
    const int64_t N = (int64_t) (x.size() / (size_t) s.hp.n_mel);
    if (N <= 0) fail(ErrorKind::InvalidArgument, "token2wav flow: no frames");
    if (N > s.hp.max_frames) fail(ErrorKind::InvalidArgument, "token2wav flow: more frames than the model's limit");
    s.check_frames(x, N, "x");
    s.check_frames(mu, N, "mu");
    s.check_frames(cond, N, "cond");
    s.check_frames(spk, 1, "spk");
    if (!std::isfinite(t)) fail(ErrorKind::InvalidArgument, "token2wav flow: t is not finite");
    s.run_dit(s.dit_input(x, mu, spk, cond, N), N, t, 0.0f);
    std::vector<float> out((size_t) (2 * N * s.hp.n_mel));
    ggml_backend_tensor_get(s.dio.v, out.data(), 0, out.size() * sizeof(float));
    return out;
}

std::vector<float> FlowRunner::solve(const std::vector<float> & noise, const std::vector<float> & mu,
                                     const std::vector<float> & spk, const std::vector<float> & cond, int n_steps) {
    Impl & s = *impl_;
    const FlowHparams & hp = s.hp;
    if (n_steps <= 0 || n_steps > 1000) {
        fail(ErrorKind::InvalidArgument, "token2wav flow: n_timesteps must be in [1, 1000], got " + std::to_string(n_steps));
    }
    const int64_t N = (int64_t) (mu.size() / (size_t) hp.n_mel);
    if (N <= 0) fail(ErrorKind::InvalidArgument, "token2wav flow: no frames");
    if (N > hp.max_frames) fail(ErrorKind::InvalidArgument, "token2wav flow: more frames than the model's limit");
    s.check_frames(mu, N, "mu");
    s.check_frames(noise, N, "noise");
    s.check_frames(cond, N, "cond");
    s.check_frames(spk, 1, "spk");
    std::vector<float> x(noise.size());
    for (size_t i = 0; i < x.size(); ++i) x[i] = noise[i] * hp.temperature;
    if (!s.solve_runner) {
        s.solve_runner = std::make_unique<GraphRunner>("flow-solve", s.dit_runner.backends(),
                                                       solve_nodes(hp, Impl::kUnroll));
    }
    s.run_solve(*s.solve_runner, s.solve_io, x, s.solve_rest(mu, spk, cond, N), N, n_steps, nullptr, 0);
    return x;
}

void FlowRunner::stream_start(const FlowPrompt & prompt, int n_steps, const std::vector<float> * noise, uint64_t seed) {
    Impl & s = *impl_;
    const FlowHparams & hp = s.hp;
    const int64_t M = hp.n_mel, la = hp.lookahead, Tp = (int64_t) prompt.tokens.size();
    if (n_steps <= 0 || n_steps > 1000) {
        fail(ErrorKind::InvalidArgument, "token2wav flow: n_timesteps must be in [1, 1000], got " + std::to_string(n_steps));
    }
    if (Tp < la) {
        fail(ErrorKind::InvalidArgument, "token2wav flow stream: the prompt needs at least " + std::to_string(la) +
                                             " speech tokens (its first ones are the look-ahead of the prompt pass)");
    }
    if ((int64_t) prompt.mel.size() != hp.up_stride * Tp * M) {
        fail(ErrorKind::InvalidArgument, "token2wav flow stream: the prompt mel must have " +
                                             std::to_string(hp.up_stride * Tp) + " frames (" +
                                             std::to_string(hp.up_stride) + " per prompt token), got " +
                                             std::to_string(prompt.mel.size() / (size_t) M));
    }
    for (float v : prompt.mel) {
        if (!std::isfinite(v)) fail(ErrorKind::InvalidArgument, "token2wav flow: the prompt mel is not finite");
    }
    if (noise && (noise->empty() || noise->size() % (size_t) M)) {
        fail(ErrorKind::InvalidArgument, "token2wav flow stream: the noise must be [frames][" + std::to_string(M) + "]");
    }
    std::vector<int32_t> tokens = prompt.tokens;
    tokens.insert(tokens.end(), prompt.tokens.begin(), prompt.tokens.begin() + la);
    for (int32_t t : tokens) {
        if (t < 0 || t >= hp.n_vocab) fail(ErrorKind::InvalidArgument, "token2wav flow: prompt speech token out of range");
    }
    std::vector<float> spk = prompt.spk;
    if ((int64_t) spk.size() != hp.n_spk) {
        fail(ErrorKind::InvalidArgument, "token2wav flow: the speaker vector must have " + std::to_string(hp.n_spk) + " values");
    }
    if (!noise && s.snapshot_matches(prompt, n_steps, seed) && s.state_cap == hp.up_stride * Tp + hp.stream_history) {
        s.copy_states(*s.snap.states, *s.state_runner);
        s.st = s.snap.st;
        return;
    }
    s.st = Impl::Stream{};
    s.st.n_steps = n_steps;
    s.st.seed = seed;
    if (noise) s.st.noise = *noise;
    s.st.prompt_frames = hp.up_stride * Tp;
    try {
        s.stream_states(n_steps, s.st.prompt_frames + hp.stream_history);
        const std::vector<float> mu = s.enc_chunk(tokens, /*last=*/false, spk);
        s.dit_chunk(mu, prompt.mel, /*last=*/false);
    } catch (...) {
        s.st = Impl::Stream{};
        throw;
    }
    s.st.spk_in = spk;
    s.st.active = true;
    if (!noise) s.save_snapshot(prompt, n_steps, seed);
}

std::vector<float> FlowRunner::stream_push(const std::vector<int32_t> & tokens, bool last) {
    Impl & s = *impl_;
    const FlowHparams & hp = s.hp;
    if (!s.st.active) fail(ErrorKind::InvalidArgument, "token2wav flow stream: call stream_start (set_prompt) first");
    const int64_t n = (int64_t) tokens.size();
    if (n == 0 && last) return {};
    if (!last && n < hp.lookahead + 2) {
        fail(ErrorKind::InvalidArgument, "token2wav flow stream: a chunk that is not the last needs at least 2 new tokens "
                                         "plus " + std::to_string(hp.lookahead) + " look-ahead tokens, got " + std::to_string(n));
    }
    if (n > hp.max_frames / hp.up_stride) fail(ErrorKind::InvalidArgument, "token2wav flow stream: chunk too long");
    for (size_t i = 0; i < tokens.size(); ++i) {
        if (tokens[i] < 0 || tokens[i] >= hp.n_vocab) {
            fail(ErrorKind::InvalidArgument, "token2wav flow: speech token " + std::to_string(tokens[i]) +
                                                 " is out of range [0, " + std::to_string(hp.n_vocab - 1) + "]");
        }
    }
    const int64_t N = hp.up_stride * (last ? n : n - hp.lookahead);
    if (!s.st.noise.empty() && (int64_t) (s.st.noise.size() / (size_t) hp.n_mel) < s.st.dit_len + N) {
        fail(ErrorKind::InvalidArgument, "token2wav flow stream: the noise table has " +
                                             std::to_string(s.st.noise.size() / (size_t) hp.n_mel) +
                                             " frames, this chunk needs " + std::to_string(s.st.dit_len + N));
    }
    const std::vector<float> mu = s.enc_chunk(tokens, last, s.st.spk_in);
    const std::vector<float> cond(mu.size(), 0.0f);
    std::vector<float> x = s.dit_chunk(mu, cond, last);
    s.trim();
    return x;
}

std::pair<int64_t, int64_t> FlowRunner::stream_frames() const {
    return impl_->st.active ? std::make_pair(impl_->st.past, impl_->st.dit_len) : std::make_pair<int64_t, int64_t>(0, 0);
}

std::vector<float> FlowRunner::default_noise(int64_t first, int64_t n, uint64_t seed) const {
    return noise_rows(impl_->hp.n_mel, first, n, seed);
}

std::vector<float> FlowRunner::flow_mel(const std::vector<int32_t> & tokens, const FlowPrompt & prompt, int n_steps,
                                        const std::vector<float> * noise, uint64_t seed) {
    const FlowHparams & hp = impl_->hp;
    const int64_t M = hp.n_mel;
    if (tokens.empty()) fail(ErrorKind::InvalidArgument, "token2wav flow: no speech tokens to synthesise");
    if (n_steps <= 0 || n_steps > 1000) {
        fail(ErrorKind::InvalidArgument, "token2wav flow: n_timesteps must be in [1, 1000], got " + std::to_string(n_steps));
    }
    if (prompt.mel.size() % (size_t) M) {
        fail(ErrorKind::InvalidArgument, "token2wav flow: the prompt mel must be [frames][" + std::to_string(M) + "]");
    }
    std::vector<int32_t> all = prompt.tokens;
    all.insert(all.end(), tokens.begin(), tokens.end());
    const int64_t N = hp.up_stride * (int64_t) all.size();
    const int64_t n_pm = (int64_t) (prompt.mel.size() / (size_t) M);
    if (n_pm > N) {
        fail(ErrorKind::InvalidArgument, "token2wav flow: the prompt mel has " + std::to_string(n_pm) +
                                             " frames, more than the " + std::to_string(N) + " of all tokens");
    }
    for (float v : prompt.mel) {
        if (!std::isfinite(v)) fail(ErrorKind::InvalidArgument, "token2wav flow: the prompt mel is not finite");
    }
    std::vector<float> spk80;
    const std::vector<float> mu = encode(all, prompt.spk, &spk80);
    std::vector<float> cond((size_t) (N * M), 0.0f);
    std::copy(prompt.mel.begin(), prompt.mel.end(), cond.begin());
    std::vector<float> z;
    if (noise) {
        if ((int64_t) noise->size() < N * M || noise->size() % (size_t) M) {
            fail(ErrorKind::InvalidArgument, "token2wav flow: the noise must be [>= " + std::to_string(N) + "][" +
                                                 std::to_string(M) + "] (total frames), got " +
                                                 std::to_string(noise->size()) + " values");
        }
        z.assign(noise->begin(), noise->begin() + N * M);
    } else {
        z = default_noise(0, N, seed);
    }
    std::vector<float> x = solve(z, mu, spk80, cond, n_steps);
    return std::vector<float>(x.begin() + n_pm * M, x.end());
}

} // namespace minicpm
