// The one graph runner: every compute graph of the library (the LLM decoder, the vision encoder,
// and each later component) runs through a GraphRunner, and nothing else creates a scheduler or
// a ggml context for compute.
//
// A runner belongs to one session (its compute state is never shared) and owns:
//   - a backend scheduler over that session's backends, reserved once with the worst case the
//     caller declares (the buffer sizes are logged);
//   - the metadata arena the graphs are built in, sized for `max_nodes`;
//   - the last graph, kept allocated while the caller's reuse key stays the same, so repeated
//     evaluations of one shape (decode steps, images of one size) only refresh their inputs;
//   - optionally a few more small graphs, each kept allocated in a scheduler and compute buffer of
//     its own (set_graph_cache): a loop that cycles through a few shapes (a duplex unit's prefill,
//     decode and terminator steps; the talker's condition and code steps) then switches between
//     built graphs instead of rebuilding one. On CUDA each keeps its own captured CUDA graph, since
//     ggml-cuda keys those by the graph's first node, which lives in the graph's own arena;
//   - state tensors: named tensors in their own device buffer that survive every compute (KV
//     caches, encoder streaming caches), declared before allocate_state();
//   - an optional eval callback for debugging (named intermediates, op profiles; core/debug.h).
//
// Per call: prepare(key, build) [rebuilds only when the key changed] -> set inputs -> compute().
// Imitates whisper.cpp's whisper_sched and stable-diffusion.cpp's GGMLRunner.
#pragma once

#include "core/backend.h"

#include "ggml-backend.h"
#include "ggml.h"

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

namespace minicpm {

// What identifies a graph's shape: two builds with equal keys must give the same graph.
using GraphKey = std::vector<int64_t>;

// Builds a graph into `gf`. Tensors made in `ctx` live until the next rebuild, so the builder
// may store input/output tensor pointers for the caller.
using GraphBuilder = std::function<void(ggml_context * ctx, ggml_cgraph * gf)>;

class GraphRunner {
public:
    // name: for logs and errors ("llm", "vision"). max_nodes: an upper bound on the nodes of any
    // graph this runner builds (the arena and the scheduler are sized for it).
    GraphRunner(std::string name, const ComputeBackends & backends, size_t max_nodes);
    ~GraphRunner();
    GraphRunner(const GraphRunner &) = delete;
    GraphRunner & operator=(const GraphRunner &) = delete;

    // Reserves compute memory for the worst-case graph `build` makes (it is not kept) and logs
    // the buffer size per backend. Throws Error(Backend) with `what_if_fails` when it does not fit.
    void reserve(const GraphBuilder & build, const std::string & what_if_fails = "");

    // Makes the current graph the one for `key`: rebuilt (and allocated) only when no kept graph
    // has `key`. Returns true when it was built; the caller then takes the input tensors the
    // builder stored, and keeps them under slot() when it uses the graph cache. `cacheable`
    // graphs go to the cache slots (when set_graph_cache gave some), all others to slot 0.
    // Throws Error(Backend) when allocation fails.
    bool prepare(const GraphKey & key, const GraphBuilder & build, bool cacheable = false);
    // Computes the current graph. Throws Error(Backend) on failure (the graph is dropped).
    void compute();
    // Drops every kept graph (the next prepare() rebuilds).
    void invalidate();
    ggml_cgraph * graph() const { return slots_[cur_].graph; }

    // Up to `n` cacheable graphs are kept besides slot 0, least recently used replaced first.
    // The environment variable MINICPM_GRAPH_CACHE=<n> overrides every runner's count (0: off).
    void   set_graph_cache(size_t n);
    size_t n_slots() const { return slots_.size(); }   // 1 + the cache size
    size_t slot() const { return cur_; }               // the current graph's slot

    // State tensors: declared, then allocated together on the main device (zero-filled).
    ggml_tensor * add_state(const std::string & name, ggml_type type, const std::vector<int64_t> & shape);
    void          allocate_state();
    ggml_tensor * state(const std::string & name) const;   // nullptr when not declared
    size_t        state_bytes() const;
    void          clear_state();                          // zero-fills every state tensor

    // Debugging: called for every node the scheduler evaluates (ggml's eval callback
    // semantics: ask, then observe). Set before compute; nullptr removes it.
    void set_eval_callback(ggml_backend_sched_eval_callback cb, void * user);

    const std::string &     name() const { return name_; }
    const ComputeBackends & backends() const { return backends_; }
    size_t                  compute_buffer_size() const;   // summed over backends

private:
    // One kept graph: its metadata arena, its scheduler (slot 0's is reserved for the caller's
    // worst case; the cache slots' grow to their own graph) and its key.
    struct Slot {
        ggml_backend_sched_t sched = nullptr;
        std::vector<uint8_t> meta;
        ggml_context *       ctx = nullptr;
        ggml_cgraph *        graph = nullptr;
        GraphKey             key;
        uint64_t             used = 0;   // last use, for the replacement order
    };
    ggml_backend_sched_t new_sched() const;
    ggml_context *       new_graph_ctx(Slot & s);
    void                 drop_graph(Slot & s);
    void                 free_slot(Slot & s);
    bool                 build_into(Slot & s, const GraphKey & key, const GraphBuilder & build);

    std::string             name_;
    const ComputeBackends & backends_;
    size_t                  max_nodes_;
    std::vector<Slot>       slots_;   // [0]: the main graph; then the cache
    size_t                  cur_ = 0;
    uint64_t                tick_ = 0;
    int                     cache_override_ = -1;   // MINICPM_GRAPH_CACHE, -1 when unset
    ggml_backend_sched_eval_callback eval_cb_ = nullptr;
    void *                           eval_user_ = nullptr;
    // state tensors
    ggml_context *                         state_ctx_ = nullptr;
    ggml_backend_buffer_t                  state_buf_ = nullptr;
    std::map<std::string, ggml_tensor *>   state_;
};

// Each kept graph's input / output tensors, by runner slot. The builder writes the caller's `io`
// (the current graph's); prepare() keeps them under the graph's slot when it was built and
// puts the slot's back into `io` when a kept graph is taken.
template <class IO>
class GraphSlots {
public:
    bool prepare(GraphRunner & r, const GraphKey & key, const GraphBuilder & build, bool cacheable, IO & io) {
        if (slots_.size() != r.n_slots()) slots_.assign(r.n_slots(), IO{});
        const bool built = r.prepare(key, build, cacheable);
        if (built) {
            slots_[r.slot()] = io;
        } else {
            io = slots_[r.slot()];
        }
        return built;
    }

private:
    std::vector<IO> slots_;
};

} // namespace minicpm
