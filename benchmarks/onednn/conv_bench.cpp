// oneDNN (the library PyTorch uses for CPU convolution) timed directly on the convolution shapes
// of runner's `bench_conv` test (src/nn/conv.rs), to choose runner's CPU engine by measurement.
// Build and run: benchmarks/onednn/run.sh (needs Debian's libdnnl-dev; never needed by tests).
//
// Two variants per shape and pass:
//   plain   - NCHW activations and OIHW weights in and out, as runner's tensors are: oneDNN
//             picks its best (blocked) layouts and the reorders to and from them are timed too
//             (what an FFI engine inside runner would pay, and what PyTorch pays on NCHW tensors);
//   blocked - the primitive alone on tensors already in its preferred layouts (the upper bound
//             of oneDNN's speed, reachable only if a whole network stayed in blocked layouts).
#include <oneapi/dnnl/dnnl.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <functional>
#include <vector>

using namespace dnnl;
using tag = memory::format_tag;
using dt = memory::data_type;

struct Shape { const char *name; int n, ci, co, hw, k, s, p, d, g; };

static double cpu_ms() {
  timespec t; clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

// (median wall ms, mean CPU ms / threads) per call after one warm-up.
static std::pair<double, double> time_it(const std::function<void()> &f, int threads) {
  f();
  const int reps = 20;
  std::vector<double> ts;
  double c0 = cpu_ms();
  for (int i = 0; i < reps; i++) {
    auto t = std::chrono::steady_clock::now();
    f();
    ts.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t).count());
  }
  double cpu = (cpu_ms() - c0) / reps / threads;
  std::sort(ts.begin(), ts.end());
  return {ts[ts.size() / 2], cpu};
}

static memory filled(const memory::desc &md, engine &eng, float v) {
  memory m(md, eng);
  float *p = static_cast<float *>(m.get_data_handle());
  size_t n = md.get_size() / sizeof(float);
  for (size_t i = 0; i < n; i++) p[i] = v * (float)((i % 97) - 48) / 48.f;
  return m;
}

int main(int argc, char **argv) {
  int threads = argc > 1 ? atoi(argv[1]) : 2;
  engine eng(engine::kind::cpu, 0);
  stream st(eng);
  Shape shapes[] = {
      {"3x3 16->16 64x16x32x32", 64, 16, 16, 32, 3, 1, 1, 1, 1},
      {"3x3 32->32 64x32x16x16", 64, 32, 32, 16, 3, 1, 1, 1, 1},
      {"1x1 16->16 64x16x32x32", 64, 16, 16, 32, 1, 1, 0, 1, 1},
      {"3x3 s2 16->32 64x16x32x32", 64, 16, 32, 32, 3, 2, 1, 1, 1},
      {"dw3x3 64x32x32x32", 64, 32, 32, 32, 3, 1, 1, 1, 32},
      {"dw5x5 d2 64x32x32x32", 64, 32, 32, 32, 5, 1, 4, 2, 32},
      {"dw3x3 s2 64x32x32x32", 64, 32, 32, 32, 3, 2, 1, 1, 32},
  };
  printf("oneDNN %d.%d.%d, %d threads; ms per call: median wall | mean CPU per thread\n",
         dnnl_version()->major, dnnl_version()->minor, dnnl_version()->patch, threads);
  for (auto &s : shapes) {
    int ho = (s.hw + 2 * s.p - s.d * (s.k - 1) - 1) / s.s + 1;
    memory::dims src = {s.n, s.ci, s.hw, s.hw}, dst = {s.n, s.co, ho, ho};
    memory::dims wei = s.g > 1 ? memory::dims{s.g, s.co / s.g, s.ci / s.g, s.k, s.k}
                               : memory::dims{s.co, s.ci, s.k, s.k};
    tag wtag = s.g > 1 ? tag::goihw : tag::oihw;
    memory::dims strides = {s.s, s.s}, dil = {s.d - 1, s.d - 1}, pad = {s.p, s.p};
    auto any = [](const memory::dims &d) { return memory::desc(d, dt::f32, tag::any); };
    auto fwd_d = convolution_forward::desc(prop_kind::forward_training, algorithm::convolution_direct,
                                           any(src), any(wei), any(dst), strides, dil, pad, pad);
    auto fwd_pd = convolution_forward::primitive_desc(fwd_d, eng);
    auto bd_d = convolution_backward_data::desc(algorithm::convolution_direct, any(src), any(wei),
                                                any(dst), strides, dil, pad, pad);
    auto bd_pd = convolution_backward_data::primitive_desc(bd_d, eng, fwd_pd);
    auto bw_d = convolution_backward_weights::desc(algorithm::convolution_direct, any(src), any(wei),
                                                   any(dst), strides, dil, pad, pad);
    auto bw_pd = convolution_backward_weights::primitive_desc(bw_d, eng, fwd_pd);

    // Plain tensors (runner's layouts).
    memory x = filled({src, dt::f32, tag::nchw}, eng, 1.f), w = filled({wei, dt::f32, wtag}, eng, .1f);
    memory y = filled({dst, dt::f32, tag::nchw}, eng, 0.f), gy = filled({dst, dt::f32, tag::nchw}, eng, 1.f);
    memory gx = filled({src, dt::f32, tag::nchw}, eng, 0.f), gw = filled({wei, dt::f32, wtag}, eng, 0.f);
    // Blocked tensors (the primitives' own layouts).
    memory bx = filled(fwd_pd.src_desc(), eng, 1.f), bw = filled(fwd_pd.weights_desc(), eng, .1f);
    memory by(fwd_pd.dst_desc(), eng), bgy = filled(bd_pd.diff_dst_desc(), eng, 1.f);
    memory bgx(bd_pd.diff_src_desc(), eng), bgw(bw_pd.diff_weights_desc(), eng);
    memory bx2 = filled(bw_pd.src_desc(), eng, 1.f), bgy2 = filled(bw_pd.diff_dst_desc(), eng, 1.f);
    memory bw_bd = filled(bd_pd.weights_desc(), eng, .1f);
    convolution_forward fwd(fwd_pd);
    convolution_backward_data bd(bd_pd);
    convolution_backward_weights bwp(bw_pd);
    auto reorder_to = [&](memory &from, memory &to) { reorder(from, to).execute(st, from, to); };

    auto f_blocked = [&] { fwd.execute(st, {{DNNL_ARG_SRC, bx}, {DNNL_ARG_WEIGHTS, bw}, {DNNL_ARG_DST, by}}); st.wait(); };
    auto d_blocked = [&] { bd.execute(st, {{DNNL_ARG_DIFF_DST, bgy}, {DNNL_ARG_WEIGHTS, bw_bd}, {DNNL_ARG_DIFF_SRC, bgx}}); st.wait(); };
    auto w_blocked = [&] { bwp.execute(st, {{DNNL_ARG_SRC, bx2}, {DNNL_ARG_DIFF_DST, bgy2}, {DNNL_ARG_DIFF_WEIGHTS, bgw}}); st.wait(); };
    auto f_plain = [&] { reorder_to(x, bx); reorder_to(w, bw); f_blocked(); reorder_to(by, y); st.wait(); };
    auto d_plain = [&] { reorder_to(gy, bgy); reorder_to(w, bw_bd); d_blocked(); reorder_to(bgx, gx); st.wait(); };
    auto w_plain = [&] { reorder_to(x, bx2); reorder_to(gy, bgy2); w_blocked(); reorder_to(bgw, gw); st.wait(); };

    auto pf = time_it(f_plain, threads), pd = time_it(d_plain, threads), pw = time_it(w_plain, threads);
    auto bf = time_it(f_blocked, threads), bdd = time_it(d_blocked, threads), bww = time_it(w_blocked, threads);
    printf("%-26s plain   fwd %6.2f dx %6.2f dw %6.2f | cpu %6.2f %6.2f %6.2f\n", s.name, pf.first,
           pd.first, pw.first, pf.second, pd.second, pw.second);
    printf("%-26s blocked fwd %6.2f dx %6.2f dw %6.2f | cpu %6.2f %6.2f %6.2f   (%s)\n", "", bf.first,
           bdd.first, bww.first, bf.second, bdd.second, bww.second, fwd_pd.impl_info_str());
  }
  return 0;
}
