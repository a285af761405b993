// The native kernel's inner loops alone, everything in L1: how close each gets to the FMA
// peak of the CPU it runs on. Built and run by native_loop_ceiling.py (see there); compiled
// once per vector path: -DCEILING_AVX512 with -mavx512f, else AVX2 (-mavx2 -mfma).
//
// Prints one JSON object: vectors of fused multiply-adds per nanosecond for
//   peak            12 independent register-only FMA chains (the pipes' limit),
//   loads_only      8 FMAs per step with their weights from memory, nothing else (the load
//                   ports' limit for a list entry's weight row),
//   list_*          the list loop (accumulate_<path>) on one 4096-entry list, weights in L1,
//                   rows starting on a cache line or 16 bytes past one,
//   pointwise_*     the pointwise loop on a 128-channel panel of 192 positions.
#ifdef CEILING_AVX512
#include "microkernel_avx512.cc"
#define ACCUMULATE accumulate_avx512
#define POINTWISE pointwise_avx512
#else
#include "microkernel_avx2.cc"
#define ACCUMULATE accumulate_avx2
#define POINTWISE pointwise_avx2
#endif

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

using zapopt::AccumulateArgs;
using zapopt::PointwiseArgs;
using Vec = zapopt::Vec;

namespace {

template <class F>
double best_seconds(F&& f, int repeats) {
  double best = 1e30;
  for (int r = 0; r < repeats; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return best;
}

float* cache_line_floats(size_t n, size_t offset_floats, float value) {
  float* base = static_cast<float*>(std::aligned_alloc(64, ((n + offset_floats) * sizeof(float) + 63) / 64 * 64));
  std::fill(base + offset_floats, base + offset_floats + n, value);
  return base;
}

__attribute__((noinline)) float peak_chains(long steps) {
  Vec::Reg c[12];
  for (int i = 0; i < 12; ++i) c[i] = Vec::set1(static_cast<float>(i));
  const Vec::Reg a = Vec::set1(0.999f), b = Vec::set1(0.001f);
  for (long j = 0; j < steps; ++j) {
    #pragma GCC unroll 12
    for (int i = 0; i < 12; ++i) c[i] = Vec::fma(c[i], a, b);
  }
  float out[Vec::kLanes], sum = 0.0f;
  for (int i = 0; i < 12; ++i) {
    Vec::store(out, c[i]);
    sum += out[0];
  }
  return sum;
}

// 8 FMAs whose weight vectors come from memory (64 rows of 8 vectors, in L1), one fixed factor.
__attribute__((noinline)) float loads_only(const float* w, long steps) {
  Vec::Reg c[8];
  for (int i = 0; i < 8; ++i) c[i] = Vec::zero();
  const Vec::Reg x = Vec::set1(0.5f);
  for (long j = 0; j < steps; ++j) {
    const float* row = w + (j & 63) * 8 * Vec::kLanes;
    #pragma GCC unroll 8
    for (int i = 0; i < 8; ++i) c[i] = Vec::fma(x, Vec::load(row + i * Vec::kLanes), c[i]);
  }
  float out[Vec::kLanes], sum = 0.0f;
  for (int i = 0; i < 8; ++i) {
    Vec::store(out, c[i]);
    sum += out[0];
  }
  return sum;
}

double list_loop(int ocb, size_t offset_floats) {
  const int channels = 64, entries = 4096;
  float* w = cache_line_floats(static_cast<size_t>(channels) * ocb, offset_floats, 0.01f);
  std::vector<float> acc(static_cast<size_t>(ocb)), values(entries + zapopt::kCompactSlack, 1.0f);
  std::vector<int32_t> ks(entries + zapopt::kCompactSlack);
  for (int j = 0; j < entries; ++j) ks[j] = (j * 7) % channels;
  const int32_t* list = ks.data();
  const float* list_values = values.data();
  int32_t count = entries;
  AccumulateArgs a{};
  a.positions = 1;
  a.needed_stride = 1;
  a.weights = w + offset_floats;
  a.acc = acc.data();
  a.acc_stride = ocb;
  a.first = true;
  a.channels = &list;
  a.values = &list_values;
  a.counts = &count;
  const double s = best_seconds([&] { zapopt::ACCUMULATE(a, ocb); }, 2000);
  std::free(w);
  return static_cast<double>(entries) * ocb / Vec::kLanes / (s * 1e9);
}

double pointwise(int64_t plane_stride) {
  const int k = 128, count = 192;
  float* x = cache_line_floats(static_cast<size_t>(k) * plane_stride, 0, 0.5f);
  float* w = cache_line_floats(static_cast<size_t>(k) * zapopt::kPointwiseRows, 0, 0.01f);
  std::vector<float> bias(zapopt::kPointwiseRows, 0.0f), y(static_cast<size_t>(zapopt::kPointwiseRows) * plane_stride);
  PointwiseArgs a{};
  a.x = x;
  a.x_stride = plane_stride;
  a.k = k;
  a.weights = w;
  a.bias = bias.data();
  a.rows = zapopt::kPointwiseRows;
  a.count = count;
  a.y = y.data();
  a.skip = nullptr;
  a.y_stride = plane_stride;
  a.relu = true;
  a.clip_max = 3.0e38f;
  const double s = best_seconds([&] { zapopt::POINTWISE(a); }, 2000);
  std::free(x);
  std::free(w);
  return static_cast<double>(k) * zapopt::kPointwiseRows * count / Vec::kLanes / (s * 1e9);
}

}  // namespace

int main() {
  const long steps = 20000000;
  volatile float sink = 0.0f;
  const double peak_s = best_seconds([&] { sink = sink + peak_chains(steps); }, 3);
  float* w = cache_line_floats(64 * 8 * Vec::kLanes, 0, 0.01f);
  const long load_steps = 2000000;
  const double loads_s = best_seconds([&] { sink = sink + loads_only(w, load_steps); }, 5);
  std::free(w);
  std::printf("{\"lanes\": %d, \"peak\": %.3f, \"loads_only\": %.3f", Vec::kLanes, 12.0 * steps / (peak_s * 1e9),
              8.0 * load_steps / (loads_s * 1e9));
  for (int ocb : {32, 64}) {
    std::printf(", \"list_ocb%d_aligned\": %.3f, \"list_ocb%d_16B_off\": %.3f", ocb, list_loop(ocb, 0), ocb, list_loop(ocb, 4));
  }
  std::printf(", \"pointwise_planes_196\": %.3f, \"pointwise_planes_208\": %.3f}\n", pointwise(196), pointwise(208));
  return 0;
}
