#include "debug.h"

#include "core/runner.h"

#include "ggml-backend.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <vector>

namespace minicpm {

EvalObserver::EvalObserver(std::string graph, DebugOptions opts) : graph_(std::move(graph)), opts_(std::move(opts)) {}

void EvalObserver::attach(GraphRunner & runner) {
    if (active()) runner.set_eval_callback(&EvalObserver::callback, this);
}

bool EvalObserver::wants(const ggml_tensor * t) const {
    if (!opts_.on_tensor) return false;
    const char * name = ggml_get_name(t);
    if (!name || !name[0]) return false;
    // Names the library gives; not the ones ggml derives ("x (view)") or the scheduler's copies ("x#CPU#0").
    if (std::strstr(name, " (") || std::strchr(name, '#')) return false;
    return opts_.tensor_filter.empty() || std::strstr(name, opts_.tensor_filter.c_str()) != nullptr;
}

bool EvalObserver::callback(ggml_tensor * t, bool ask, void * user) {
    auto * self = (EvalObserver *) user;
    if (ask) {
        // Profiling stops after every node, so the time between two calls is one node's.
        if (self->opts_.profile_ops) {
            if (!self->started_) {
                self->last_ = clock::now();
                self->started_ = true;
            }
            return true;
        }
        return self->wants(t);
    }
    if (self->opts_.profile_ops) {
        const auto now = clock::now();
        const double ms = std::chrono::duration<double, std::milli>(now - self->last_).count();
        self->last_ = now;
        std::string key = ggml_op_desc(t);
        if (t->op == GGML_OP_MUL_MAT || t->op == GGML_OP_FLASH_ATTN_EXT || t->op == GGML_OP_CPY) {
            key += std::string(" ") + ggml_type_name(t->src[0]->type) + "/" +
                   ggml_type_name(t->src[1] ? t->src[1]->type : t->type) + " [" + std::to_string(t->ne[0]) + "," +
                   std::to_string(t->ne[1]) + "," + std::to_string(t->ne[2]) + "]";
        }
        auto & e = self->by_op_[key];
        e.first += ms;
        e.second += 1;
        self->total_ms_ += ms;
    }
    if (self->wants(t)) self->dump(t);
    return true;
}

void EvalObserver::dump(const ggml_tensor * t) const {
    TensorDump d;
    d.graph = graph_;
    d.name = ggml_get_name(t);
    for (int i = 0; i < GGML_MAX_DIMS; ++i) d.shape.push_back(t->ne[i]);
    while (d.shape.size() > 1 && d.shape.back() == 1) d.shape.pop_back();
    d.data = tensor_to_floats(t);
    if (!d.data.empty()) opts_.on_tensor(d);
}

void EvalObserver::finish() {
    started_ = false;
    if (!opts_.profile_ops || by_op_.empty()) return;
    std::vector<std::pair<std::string, std::pair<double, int>>> v(by_op_.begin(), by_op_.end());
    std::sort(v.begin(), v.end(), [](const auto & a, const auto & b) { return a.second.first > b.second.first; });
    std::fprintf(stderr, "%s op profile: %.1f ms in nodes\n", graph_.c_str(), total_ms_);
    for (const auto & [k, e] : v) {
        if (e.first < 0.005 * total_ms_) continue;
        std::fprintf(stderr, "  %9.2f ms %5.1f%% %5d x  %s\n", e.first, 100.0 * e.first / total_ms_, e.second, k.c_str());
    }
    by_op_.clear();
    total_ms_ = 0;
}

std::vector<float> tensor_to_floats(const ggml_tensor * t) {
    const ggml_type type = t->type;
    if (type != GGML_TYPE_F32 && type != GGML_TYPE_F16 && type != GGML_TYPE_BF16 && type != GGML_TYPE_I32) return {};
    if (!t->buffer && !(t->view_src && t->view_src->buffer)) return {};
    // Read the bytes the tensor spans, then gather its elements through its strides.
    const size_t span = ggml_nbytes(t);
    std::vector<uint8_t> raw(span);
    ggml_backend_tensor_get(t, raw.data(), 0, span);
    const int64_t n = ggml_nelements(t);
    std::vector<float> out((size_t) n);
    size_t k = 0;
    for (int64_t i3 = 0; i3 < t->ne[3]; ++i3) {
        for (int64_t i2 = 0; i2 < t->ne[2]; ++i2) {
            for (int64_t i1 = 0; i1 < t->ne[1]; ++i1) {
                for (int64_t i0 = 0; i0 < t->ne[0]; ++i0) {
                    const uint8_t * p = raw.data() + i3 * t->nb[3] + i2 * t->nb[2] + i1 * t->nb[1] + i0 * t->nb[0];
                    float v = 0;
                    switch (type) {
                        case GGML_TYPE_F32: std::memcpy(&v, p, 4); break;
                        case GGML_TYPE_F16: v = ggml_fp16_to_fp32(*(const ggml_fp16_t *) p); break;
                        case GGML_TYPE_BF16: v = ggml_bf16_to_fp32(*(const ggml_bf16_t *) p); break;
                        default: { int32_t x; std::memcpy(&x, p, 4); v = (float) x; }
                    }
                    out[k++] = v;
                }
            }
        }
    }
    return out;
}

} // namespace minicpm
