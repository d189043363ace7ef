#include "weights.h"

#include "error.h"
#include "log.h"

#include <cstring>

namespace minicpm {

namespace {

// Types of the matrices of products and of get_rows tables: float types, and the quantized
// weight types for which ggml's CPU backend has a dot-product kernel (vec_dot) and get_rows a
// conversion. (ggml-cpu is loaded as a backend, not linked, so its type traits are not asked.)
constexpr ggml_type kWeightTypes[] = {
    GGML_TYPE_F32,     GGML_TYPE_F16,    GGML_TYPE_BF16,   GGML_TYPE_Q4_0,   GGML_TYPE_Q4_1,   GGML_TYPE_Q5_0,
    GGML_TYPE_Q5_1,    GGML_TYPE_Q8_0,   GGML_TYPE_Q2_K,   GGML_TYPE_Q3_K,   GGML_TYPE_Q4_K,   GGML_TYPE_Q5_K,
    GGML_TYPE_Q6_K,    GGML_TYPE_IQ2_XXS, GGML_TYPE_IQ2_XS, GGML_TYPE_IQ3_XXS, GGML_TYPE_IQ1_S, GGML_TYPE_IQ4_NL,
    GGML_TYPE_IQ3_S,   GGML_TYPE_IQ2_S,  GGML_TYPE_IQ4_XS, GGML_TYPE_IQ1_M,  GGML_TYPE_TQ1_0,  GGML_TYPE_TQ2_0,
    GGML_TYPE_MXFP4,
};
constexpr ggml_type kVectorTypes[] = {GGML_TYPE_F32, GGML_TYPE_F16, GGML_TYPE_BF16};

std::string type_name(ggml_type t) {
    if ((int) t < 0 || t >= GGML_TYPE_COUNT) return "type " + std::to_string((int) t);
    const char * n = ggml_type_name(t);
    return n && *n ? std::string(n) : "type " + std::to_string((int) t);
}

// A tensor of one row or one column, or no larger than one row: bias- or norm-like.
bool vector_like(const int64_t * ne) { return ne[1] * ne[2] * ne[3] == 1 || ne[0] == 1; }

} // namespace

bool tensor_type_ok(ggml_type type, TensorRole role) {
    if (role == TensorRole::Vector) {
        for (ggml_type t : kVectorTypes) if (t == type) return true;
        return false;
    }
    for (ggml_type t : kWeightTypes) if (t == type) return true;
    return false;
}

std::string allowed_types(TensorRole role) {
    std::string s;
    if (role == TensorRole::Vector) {
        for (ggml_type t : kVectorTypes) s += (s.empty() ? "" : ", ") + type_name(t);
    } else {
        for (ggml_type t : kWeightTypes) s += (s.empty() ? "" : ", ") + type_name(t);
    }
    return s;
}

WeightStore::WeightStore(const GgufFile & file, const Devices & devices, size_t max_tensors)
    : file_(file), devices_(devices) {
    ggml_init_params params = {ggml_tensor_overhead() * (max_tensors + 8), nullptr, /*no_alloc =*/true};
    ctx_main_  = ggml_init(params);
    ctx_host_  = ggml_init(params);
    ctx_fused_ = ggml_init(params);
    if (!ctx_main_ || !ctx_host_ || !ctx_fused_) {
        fail(ErrorKind::Internal, "ggml_init failed for the weight context");
    }
    if (devices_.main_is_cpu()) extra_bufts_ = devices_.cpu_extra_buffer_types();
}

// The first CPU extra buffer type whose kernels take `t` as the weight of a matrix product,
// asked the way the CPU backend itself decides: a mul_mat whose weight sits in a (zero-size)
// buffer of that type, through ggml_backend_dev_supports_op.
ggml_backend_buffer_type_t WeightStore::repack_type_for(ggml_tensor * t) const {
    if (extra_bufts_.empty() || t->ne[2] != 1 || t->ne[3] != 1) return nullptr;
    ggml_backend_dev_t cpu_dev = devices_.cpu();
    // three tensors per buffer type tried
    ggml_init_params   params  = {ggml_tensor_overhead() * (3 * extra_bufts_.size() + 1), nullptr, /*no_alloc =*/true};
    ggml_context *     ctx     = ggml_init(params);
    if (!ctx) return nullptr;
    ggml_backend_buffer_type_t found = nullptr;
    for (ggml_backend_buffer_type_t buft : extra_bufts_) {
        ggml_backend_buffer_t dummy = ggml_backend_buft_alloc_buffer(buft, 0);
        if (!dummy) continue;
        ggml_tensor * w = ggml_new_tensor_2d(ctx, t->type, t->ne[0], t->ne[1]);
        ggml_tensor * x = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, t->ne[0], 512);
        w->buffer       = dummy;
        ggml_tensor * y = ggml_mul_mat(ctx, w, x);
        const bool ok   = ggml_backend_dev_supports_op(cpu_dev, y);
        w->buffer       = nullptr;
        ggml_backend_buffer_free(dummy);
        if (ok) {
            found = buft;
            break;
        }
    }
    ggml_free(ctx);
    return found;
}

WeightStore::~WeightStore() {
    for (auto b : buffers_) ggml_backend_buffer_free(b);
    if (ctx_main_) ggml_free(ctx_main_);
    if (ctx_host_) ggml_free(ctx_host_);
    if (ctx_fused_) ggml_free(ctx_fused_);
}

ggml_tensor * WeightStore::optional(const std::string & name, std::vector<int64_t> shape, Placement p,
                                    TensorRole role) {
    const TensorInfo * info = file_.find_tensor(name);
    if (!info) {
        return nullptr;
    }
    int64_t want[GGML_MAX_DIMS] = {1, 1, 1, 1};
    for (size_t i = 0; i < shape.size() && i < GGML_MAX_DIMS; ++i) want[i] = shape[i];
    bool ok = true;
    for (int d = 0; d < GGML_MAX_DIMS; ++d) ok = ok && want[d] == info->ne[d];
    if (!ok) {
        fail(ErrorKind::Format, "tensor " + name + ": expected shape " + shape_str(want, (int) shape.size()) +
                                    ", got " + shape_str(info->ne, info->n_dims) + " in " + file_.path());
    }
    if ((int) info->type < 0 || info->type >= GGML_TYPE_COUNT || ggml_type_size(info->type) == 0) {
        fail(ErrorKind::Unsupported, "tensor " + name + " has an unsupported type in " + file_.path());
    }
    if (role == TensorRole::Auto) {
        role = p == Placement::Matrix || !vector_like(info->ne) ? TensorRole::Weight : TensorRole::Vector;
    }
    if (!tensor_type_ok(info->type, role)) {
        fail(ErrorKind::Format, "tensor " + name + " in " + file_.path() + " has type " + type_name(info->type) +
                                    "; allowed for " + (role == TensorRole::Vector ? "a norm, bias, table or kernel" : "a weight matrix") +
                                    ": " + allowed_types(role));
    }
    ggml_context * ctx = (p == Placement::Host || devices_.main_is_cpu()) ? ctx_host_ : ctx_main_;
    ggml_tensor * t = ggml_new_tensor(ctx, info->type, GGML_MAX_DIMS, info->ne);
    ggml_set_name(t, name.c_str());
    // On the CPU the matrices of products (Placement::Matrix) may go to a repacked layout.
    const bool matmul_on_cpu = p == Placement::Matrix && devices_.main_is_cpu();
    entries_.push_back({t, info, (ctx == ctx_host_) ? Placement::Host : Placement::Main, matmul_on_cpu, nullptr});
    return t;
}

ggml_tensor * WeightStore::require(const std::string & name, std::vector<int64_t> shape, Placement p,
                                   TensorRole role) {
    ggml_tensor * t = optional(name, shape, p, role);
    if (!t) {
        fail(ErrorKind::Format, "tensor " + name + " not found in " + file_.path());
    }
    return t;
}

WeightStore::Entry * WeightStore::find_entry(const ggml_tensor * t) {
    for (auto & e : entries_) {
        if (e.tensor == t) return &e;
    }
    return nullptr;
}

const void * WeightStore::mapped_data(const ggml_tensor * t) const {
    const Entry * e = const_cast<WeightStore *>(this)->find_entry(t);
    if (!e) fail(ErrorKind::Internal, std::string("tensor ") + ggml_get_name(t) + " was not declared in this store");
    return file_.mapping().data() + e->info->offset;
}

ggml_tensor * WeightStore::fuse_rows(const std::vector<ggml_tensor *> & parts, const std::string & name,
                                     bool on_cpu_too) {
    if (parts.empty() || (devices_.main_is_cpu() && !on_cpu_too)) return nullptr;
    std::vector<Entry *> es;
    int64_t rows = 0;
    for (ggml_tensor * t : parts) {
        Entry * found = find_entry(t);
        if (!found || found->fused || t->type != parts[0]->type || t->ne[0] != parts[0]->ne[0] || t->ne[2] != 1 ||
            t->ne[3] != 1) {
            return nullptr;
        }
        es.push_back(found);
        rows += t->ne[1];
    }
    ggml_tensor * f = ggml_new_tensor_2d(ctx_fused_, parts[0]->type, parts[0]->ne[0], rows);
    ggml_set_name(f, name.c_str());
    size_t offs = 0;
    for (Entry * e : es) {
        e->fused      = f;
        e->fused_offs = offs;
        e->cpu_matmul = false;
        offs += ggml_nbytes(e->tensor);
    }
    return f;
}

ggml_tensor * WeightStore::derived(const std::string & name, ggml_type type, std::vector<int64_t> shape,
                                   std::function<void(uint8_t * dst)> fill) {
    int64_t ne[GGML_MAX_DIMS] = {1, 1, 1, 1};
    for (size_t i = 0; i < shape.size() && i < GGML_MAX_DIMS; ++i) ne[i] = shape[i];
    ggml_tensor * t = ggml_new_tensor(ctx_fused_, type, GGML_MAX_DIMS, ne);
    if (!t) fail(ErrorKind::Internal, "no room for derived tensor " + name);
    ggml_set_name(t, name.c_str());
    derived_.push_back({t, std::move(fill)});
    return t;
}

void WeightStore::drop(ggml_tensor * t) {
    Entry * e = find_entry(t);
    if (!e || e->fused) fail(ErrorKind::Internal, std::string("cannot drop tensor ") + ggml_get_name(t));
    e->dropped    = true;
    e->cpu_matmul = false;
}

std::vector<float> WeightStore::read_f32(const ggml_tensor * t) const {
    const uint8_t * src = (const uint8_t *) mapped_data(t);
    const int64_t   n   = ggml_nelements(t);
    std::vector<float> out((size_t) n);
    switch (t->type) {
        case GGML_TYPE_F32: std::memcpy(out.data(), src, (size_t) n * sizeof(float)); break;
        case GGML_TYPE_F16: ggml_fp16_to_fp32_row((const ggml_fp16_t *) src, out.data(), n); break;
        case GGML_TYPE_BF16: ggml_bf16_to_fp32_row((const ggml_bf16_t *) src, out.data(), n); break;
        default:
            fail(ErrorKind::Format, std::string("tensor ") + ggml_get_name(t) + " must be F32, F16 or BF16, not " +
                                        ggml_type_name(t->type));
    }
    return out;
}

void WeightStore::load() {
    const uint8_t * base = file_.mapping().data();
    // Fused tensors first (on the compute device, or in CPU memory for a CPU model); their
    // parts become views, so the allocations below skip them.
    if (ggml_get_first_tensor(ctx_fused_)) {
        ggml_backend_buffer_type_t buft = devices_.main_is_cpu() ? ggml_backend_cpu_buffer_type()
                                                                 : devices_.main_buffer_type();
        ggml_backend_buffer_t buf = ggml_backend_alloc_ctx_tensors_from_buft(ctx_fused_, buft);
        if (!buf) fail(ErrorKind::Backend, "cannot allocate " + devices_.main_name() + " memory for fused weights");
        ggml_backend_buffer_set_usage(buf, GGML_BACKEND_BUFFER_USAGE_WEIGHTS);
        buffers_.push_back(buf);
        for (const Derived & d : derived_) {
            std::vector<uint8_t> bytes(ggml_nbytes(d.tensor), 0);
            d.fill(bytes.data());
            ggml_backend_tensor_set(d.tensor, bytes.data(), 0, bytes.size());
            if (devices_.main_is_cpu()) bytes_host_ += bytes.size();
            else bytes_main_ += bytes.size();
        }
        for (auto & e : entries_) {
            if (!e.fused) continue;
            e.tensor->view_src  = e.fused;
            e.tensor->view_offs = e.fused_offs;
            if (ggml_backend_view_init(e.tensor) != GGML_STATUS_SUCCESS) {
                fail(ErrorKind::Backend, "cannot place tensor " + e.info->name + " in its fused weight");
            }
            ggml_backend_tensor_set(e.tensor, base + e.info->offset, 0, e.info->nbytes);
            if (devices_.main_is_cpu()) bytes_host_ += e.info->nbytes;
            else bytes_main_ += e.info->nbytes;
        }
    }
    // Repacked CPU matrices: one buffer per extra buffer type, filled through set_tensor
    // (which converts to the interleaved layout).
    if (cpu_repack_) {
        for (auto & e : entries_) {
            if (e.cpu_matmul) e.buft = repack_type_for(e.tensor);
        }
        for (ggml_backend_buffer_type_t buft : extra_bufts_) {
            size_t total = 0;
            const size_t align = ggml_backend_buft_get_alignment(buft);
            for (auto & e : entries_) {
                if (e.buft == buft) total += GGML_PAD(ggml_backend_buft_get_alloc_size(buft, e.tensor), align);
            }
            if (total == 0) continue;
            ggml_backend_buffer_t buf = ggml_backend_buft_alloc_buffer(buft, total);
            if (!buf) fail(ErrorKind::Backend, "cannot allocate host memory for the repacked weights");
            ggml_backend_buffer_set_usage(buf, GGML_BACKEND_BUFFER_USAGE_WEIGHTS);
            buffers_.push_back(buf);
            uint8_t * addr = (uint8_t *) ggml_backend_buffer_get_base(buf);
            for (auto & e : entries_) {
                if (e.buft != buft) continue;
                if (ggml_backend_tensor_alloc(buf, e.tensor, addr) != GGML_STATUS_SUCCESS) {
                    fail(ErrorKind::Backend, "cannot place tensor " + e.info->name + " in the repacked buffer");
                }
                ggml_backend_tensor_set(e.tensor, base + e.info->offset, 0, e.info->nbytes);
                addr += GGML_PAD(ggml_backend_buft_get_alloc_size(buft, e.tensor), align);
                bytes_repack_ += e.info->nbytes;
            }
            MINICPM_LOG_DEBUG("%s: %.1f MiB of weights", ggml_backend_buft_name(buft), total / 1048576.0);
        }
    }
    // Host tensors: use the mapped file in place.
    bool have_host = false;
    for (auto & e : entries_) have_host = have_host || (e.placement == Placement::Host && !e.buft && !e.fused && !e.dropped);
    if (have_host) {
        ggml_backend_buffer_t buf = ggml_backend_dev_buffer_from_host_ptr(
            devices_.cpu(), (void *) base, file_.mapping().size(), file_.mapping().size());
        if (!buf) {
            // Fallback: copy into an ordinary CPU buffer.
            buf = ggml_backend_alloc_ctx_tensors_from_buft(ctx_host_, ggml_backend_cpu_buffer_type());
            if (!buf) fail(ErrorKind::Backend, "cannot allocate host memory for the weights");
            for (auto & e : entries_) {
                if (e.placement != Placement::Host || e.buft || e.fused || e.dropped) continue;
                ggml_backend_tensor_set(e.tensor, base + e.info->offset, 0, e.info->nbytes);
                bytes_host_ += e.info->nbytes;
            }
        } else {
            for (auto & e : entries_) {
                if (e.placement != Placement::Host || e.buft || e.fused || e.dropped) continue;
                if (ggml_backend_tensor_alloc(buf, e.tensor, (void *) (base + e.info->offset)) != GGML_STATUS_SUCCESS) {
                    fail(ErrorKind::Backend, "cannot place tensor " + e.info->name + " in host memory");
                }
                bytes_host_ += e.info->nbytes;
            }
        }
        ggml_backend_buffer_set_usage(buf, GGML_BACKEND_BUFFER_USAGE_WEIGHTS);
        buffers_.push_back(buf);
    }
    bool have_main = false;
    for (auto & e : entries_) have_main = have_main || (e.placement == Placement::Main && !e.fused && !e.dropped);
    if (have_main) {
        // Buffers for the tensors that are loaded (fused parts are views, dropped ones unused),
        // each at most the buffer type's maximum size (Metal limits one buffer).
        ggml_backend_buffer_type_t buft     = devices_.main_buffer_type();
        const size_t               align    = ggml_backend_buft_get_alignment(buft);
        const size_t               max_size = ggml_backend_buft_get_max_size(buft);
        std::vector<std::pair<std::vector<Entry *>, size_t>> groups(1);
        for (auto & e : entries_) {
            if (e.placement != Placement::Main || e.fused || e.dropped) continue;
            const size_t sz = GGML_PAD(ggml_backend_buft_get_alloc_size(buft, e.tensor), align);
            if (!groups.back().first.empty() && groups.back().second + sz > max_size) groups.emplace_back();
            groups.back().first.push_back(&e);
            groups.back().second += sz;
        }
        for (auto & [group, total] : groups) {
            ggml_backend_buffer_t buf = ggml_backend_buft_alloc_buffer(buft, total);
            if (!buf) {
                fail(ErrorKind::Backend, "cannot allocate " + devices_.main_name() + " memory for the weights of " +
                                             file_.path());
            }
            ggml_backend_buffer_set_usage(buf, GGML_BACKEND_BUFFER_USAGE_WEIGHTS);
            buffers_.push_back(buf);
            uint8_t * addr = (uint8_t *) ggml_backend_buffer_get_base(buf);
            for (Entry * e : group) {
                if (ggml_backend_tensor_alloc(buf, e->tensor, addr) != GGML_STATUS_SUCCESS) {
                    fail(ErrorKind::Backend, "cannot place tensor " + e->info->name + " in " + devices_.main_name() +
                                                 " memory");
                }
                addr += GGML_PAD(ggml_backend_buft_get_alloc_size(buft, e->tensor), align);
                ggml_backend_tensor_set(e->tensor, e->info->offset + base, 0, e->info->nbytes);
                bytes_main_ += e->info->nbytes;
            }
        }
    }
}

} // namespace minicpm
