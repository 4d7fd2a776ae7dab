// runner's bridge to oneDNN (the library PyTorch itself uses for CPU convolution): 2-D
// convolution (dense, grouped, depthwise) forward, backward-data and backward-weights on runner's plain NCHW / OIHW f32
// buffers. Built by build.rs only when the `onednn` feature is on and dnnl.hpp is found; the
// Rust side (src/nn/onednn.rs) falls back to runner's own kernels otherwise.
//
// Why plain in, plain out: runner's tensors are candle tensors in NCHW. oneDNN's fast kernels
// want blocked layouts (nChw16c), so each call reorders into them and back; benchmarks/onednn
// measured that this "plain" use still beats runner's im2col + gemm by about 2x per call.
//
// Primitives are expensive to create (oneDNN JIT-compiles them), so they are cached per
// (pass, geometry) for the life of the process. Their buffers (blocked copies, scratchpads) come
// from one pool of four growing buffers shared by all geometries: kept per geometry they would
// hold a copy of every distinct activation shape of the network for good (gigabytes at
// ProxylessNAS's study shape), and allocated per call they cost page faults every time (5-10x
// slower on the 1x1 and depthwise shapes, measured).
// All calls are serialised by one mutex: the cache and the stream are shared. Every primitive
// gets its own scratchpad (scratchpad_mode::user): oneDNN 2.x's default keeps a primitive's
// scratchpad in the creating thread's storage, which dies with that thread, while runner's
// cached primitives run on whichever thread calls (a use-after-free seen in the tests).
#include <oneapi/dnnl/dnnl.hpp>
#include <omp.h>

#include <array>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>

namespace {

using namespace dnnl;
using tag = memory::format_tag;
using dt = memory::data_type;

// n, ci, co, h, w, k, stride, padding, dilation (runner's convention: 1 = no dilation), groups.
using Geom = std::array<int64_t, 10>;

enum Pass : int { FWD = 0, BWD_DATA = 1, BWD_WEIGHTS = 2 };

// One operand of a cached primitive: the caller's plain layout and, when the primitive wants
// another one, that layout plus the reorder between them.
struct Operand {
  memory::desc plain, inner;
  primitive reorder;  // plain -> inner for inputs, inner -> plain for the output
  memory::desc reorder_scratch;
  bool reordered = false;
};

primitive_attr user_scratchpad() {
  primitive_attr attr;
  attr.set_scratchpad_mode(scratchpad_mode::user);
  return attr;
}

// Growing 64-byte-aligned buffers, reused call after call (calls are serialised).
class Pool {
 public:
  enum Slot { A = 0, B = 1, OUT = 2, SCRATCH = 3 };
  void *get(Slot slot, size_t bytes) {
    Buf &b = bufs_[slot];
    if (b.cap < bytes) {
      std::free(b.ptr);
      size_t cap = (bytes + 63) / 64 * 64;
      b.ptr = std::aligned_alloc(64, cap);
      if (!b.ptr) {
        b.cap = 0;
        throw std::bad_alloc();
      }
      b.cap = cap;
    }
    return b.ptr;
  }

 private:
  struct Buf {
    void *ptr = nullptr;
    size_t cap = 0;
  };
  Buf bufs_[4];
};

// Runs `p`, with its scratchpad from the pool when it needs one.
void execute(primitive &p, engine &eng, stream &st, Pool &pool,
             std::unordered_map<int, memory> args, const memory::desc &scratch) {
  if (scratch.get_size() > 0) {
    args.insert({DNNL_ARG_SCRATCHPAD,
                 memory(scratch, eng, pool.get(Pool::SCRATCH, scratch.get_size()))});
  }
  p.execute(st, args);
  st.wait();
}

struct Entry {
  primitive prim;
  memory::desc scratch;
  Operand a, b, out;  // FWD: x, w -> y; BWD_DATA: dy, w -> dx; BWD_WEIGHTS: x, dy -> dw
  int arg_a = 0, arg_b = 0, arg_out = 0;
};

struct State {
  engine eng{engine::kind::cpu, 0};
  stream st{eng};
  std::map<std::pair<int, Geom>, std::unique_ptr<Entry>> cache;
  Pool pool;
  std::mutex mu;
};

State &state() {
  static State s;
  return s;
}

Operand operand(engine &eng, const memory::desc &plain, const memory::desc &want, bool input) {
  Operand o;
  o.plain = plain;
  o.inner = want;
  if (want != plain) {
    auto pd = input ? reorder::primitive_desc(eng, plain, eng, want, user_scratchpad())
                    : reorder::primitive_desc(eng, want, eng, plain, user_scratchpad());
    o.reorder = reorder(pd);
    o.reorder_scratch = pd.scratchpad_desc();
    o.reordered = true;
  }
  return o;
}

std::unique_ptr<Entry> build(engine &eng, int pass, const Geom &g) {
  const int64_t n = g[0], ci = g[1], co = g[2], h = g[3], w = g[4], k = g[5], s = g[6], p = g[7],
                d = g[8], grp = g[9];
  const int64_t span = d * (k - 1) + 1;
  const int64_t ho = (h + 2 * p - span) / s + 1, wo = (w + 2 * p - span) / s + 1;
  // A grouped weight (C_out, C_in / G, K, K) in OIHW is the same memory as (G, C_out / G,
  // C_in / G, K, K) in GOIHW, the form oneDNN takes groups in.
  const memory::dims src = {n, ci, h, w}, dst = {n, co, ho, wo};
  const memory::dims wei = grp > 1 ? memory::dims{grp, co / grp, ci / grp, k, k}
                                   : memory::dims{co, ci, k, k};
  const memory::dims strides = {s, s}, dil = {d - 1, d - 1}, pad = {p, p};
  auto any = [](const memory::dims &dims) { return memory::desc(dims, dt::f32, tag::any); };
  const memory::desc x_md(src, dt::f32, tag::nchw), w_md(wei, dt::f32, grp > 1 ? tag::goihw : tag::oihw),
      y_md(dst, dt::f32, tag::nchw);

  auto fwd_pd = convolution_forward::primitive_desc(
      convolution_forward::desc(prop_kind::forward_training, algorithm::convolution_direct,
                                any(src), any(wei), any(dst), strides, dil, pad, pad),
      user_scratchpad(), eng);
  auto e = std::make_unique<Entry>();
  if (pass == FWD) {
    e->prim = convolution_forward(fwd_pd);
    e->scratch = fwd_pd.scratchpad_desc();
    e->a = operand(eng, x_md, fwd_pd.src_desc(), true);
    e->b = operand(eng, w_md, fwd_pd.weights_desc(), true);
    e->out = operand(eng, y_md, fwd_pd.dst_desc(), false);
    e->arg_a = DNNL_ARG_SRC;
    e->arg_b = DNNL_ARG_WEIGHTS;
    e->arg_out = DNNL_ARG_DST;
  } else if (pass == BWD_DATA) {
    auto pd = convolution_backward_data::primitive_desc(
        convolution_backward_data::desc(algorithm::convolution_direct, any(src), any(wei),
                                        any(dst), strides, dil, pad, pad),
        user_scratchpad(), eng, fwd_pd);
    e->prim = convolution_backward_data(pd);
    e->scratch = pd.scratchpad_desc();
    e->a = operand(eng, y_md, pd.diff_dst_desc(), true);
    e->b = operand(eng, w_md, pd.weights_desc(), true);
    e->out = operand(eng, x_md, pd.diff_src_desc(), false);
    e->arg_a = DNNL_ARG_DIFF_DST;
    e->arg_b = DNNL_ARG_WEIGHTS;
    e->arg_out = DNNL_ARG_DIFF_SRC;
  } else {
    auto pd = convolution_backward_weights::primitive_desc(
        convolution_backward_weights::desc(algorithm::convolution_direct, any(src), any(wei),
                                           any(dst), strides, dil, pad, pad),
        user_scratchpad(), eng, fwd_pd);
    e->prim = convolution_backward_weights(pd);
    e->scratch = pd.scratchpad_desc();
    e->a = operand(eng, x_md, pd.src_desc(), true);
    e->b = operand(eng, y_md, pd.diff_dst_desc(), true);
    e->out = operand(eng, w_md, pd.diff_weights_desc(), false);
    e->arg_a = DNNL_ARG_SRC;
    e->arg_b = DNNL_ARG_DIFF_DST;
    e->arg_out = DNNL_ARG_DIFF_WEIGHTS;
  }
  return e;
}

void put_err(char *err, size_t len, const char *msg) {
  if (err && len) {
    std::snprintf(err, len, "%s", msg);
  }
}

}  // namespace

extern "C" {

// The library's version as major * 10000 + minor * 100 + patch.
int runner_dnnl_version() {
  const dnnl_version_t *v = dnnl_version();
  return v->major * 10000 + v->minor * 100 + v->patch;
}

// Runs one pass on plain buffers. `geom` holds the 10 values of `Geom`; `a`, `b` and `out` are
// as listed in `Entry`. Returns 0, or 1 with a message in `err`.
int runner_dnnl_conv(int pass, const int64_t *geom, const float *a, const float *b, float *out,
                     int threads, char *err, size_t err_len) {
  if (pass < FWD || pass > BWD_WEIGHTS) {
    put_err(err, err_len, "unknown convolution pass");
    return 1;
  }
  State &s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  try {
    Geom g;
    std::memcpy(g.data(), geom, sizeof(g));
    auto key = std::make_pair(pass, g);
    auto it = s.cache.find(key);
    if (it == s.cache.end()) {
      it = s.cache.emplace(key, build(s.eng, pass, g)).first;
    }
    Entry &e = *it->second;
    // oneDNN sizes its OpenMP teams from the calling thread's setting.
    omp_set_num_threads(threads > 0 ? threads : 1);
    // The caller's plain buffers, and blocked copies where the primitive wants them.
    memory a_user(e.a.plain, s.eng, const_cast<float *>(a));
    memory b_user(e.b.plain, s.eng, const_cast<float *>(b));
    memory out_user(e.out.plain, s.eng, out);
    auto staged = [&](Operand &o, memory &user, Pool::Slot slot) {
      return o.reordered ? memory(o.inner, s.eng, s.pool.get(slot, o.inner.get_size())) : user;
    };
    memory a_in = staged(e.a, a_user, Pool::A), b_in = staged(e.b, b_user, Pool::B),
           out_in = staged(e.out, out_user, Pool::OUT);
    if (e.a.reordered) {
      execute(e.a.reorder, s.eng, s.st, s.pool, {{DNNL_ARG_FROM, a_user}, {DNNL_ARG_TO, a_in}},
              e.a.reorder_scratch);
    }
    if (e.b.reordered) {
      execute(e.b.reorder, s.eng, s.st, s.pool, {{DNNL_ARG_FROM, b_user}, {DNNL_ARG_TO, b_in}},
              e.b.reorder_scratch);
    }
    execute(e.prim, s.eng, s.st, s.pool, {{e.arg_a, a_in}, {e.arg_b, b_in}, {e.arg_out, out_in}},
            e.scratch);
    if (e.out.reordered) {
      execute(e.out.reorder, s.eng, s.st, s.pool, {{DNNL_ARG_FROM, out_in}, {DNNL_ARG_TO, out_user}},
              e.out.reorder_scratch);
    }
    s.st.wait();
    return 0;
  } catch (const dnnl::error &ex) {
    put_err(err, err_len, ex.what());
  } catch (const std::exception &ex) {
    put_err(err, err_len, ex.what());
  }
  return 1;
}

}  // extern "C"
