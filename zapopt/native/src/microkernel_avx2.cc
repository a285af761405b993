// AVX2+FMA accumulation: NV ymm accumulators (8 output channels each) per position; every
// nonzero input costs one broadcast and NV fused multiply-adds with the packed weight row.
// Compiled with -mavx2 -mfma; only called after cpuid says the CPU has both.
#include <immintrin.h>

#include "microkernel.h"

namespace zapopt {
namespace {

template <int NV>
void run(const AccumulateArgs& a) {
  constexpr int kOcb = NV * 8;
  for (int32_t t = 0; t < a.positions; ++t) {
    if (a.needed != nullptr && a.needed[t * a.needed_stride] == 0) continue;
    float* acc = a.acc + static_cast<int64_t>(t) * a.acc_stride;
    __m256 c[NV];
    for (int i = 0; i < NV; ++i) c[i] = a.first ? _mm256_setzero_ps() : _mm256_loadu_ps(acc + 8 * i);
    const Entry* e = a.entries + static_cast<int64_t>(t) * a.entry_stride;
    const int32_t n = a.counts[t];
    for (int32_t j = 0; j < n; ++j) {
      const __m256 x = _mm256_broadcast_ss(&e[j].value);
      const float* w = a.weights + static_cast<int64_t>(e[j].k) * kOcb;
      for (int i = 0; i < NV; ++i) c[i] = _mm256_fmadd_ps(x, _mm256_loadu_ps(w + 8 * i), c[i]);
    }
    for (int i = 0; i < NV; ++i) _mm256_storeu_ps(acc + 8 * i, c[i]);
  }
}

}  // namespace

void accumulate_avx2(const AccumulateArgs& a, int ocb) {
  switch (ocb) {
    case 8: run<1>(a); break;
    case 16: run<2>(a); break;
    case 24: run<3>(a); break;
    case 32: run<4>(a); break;
    case 40: run<5>(a); break;
    case 48: run<6>(a); break;
    case 56: run<7>(a); break;
    case 64: run<8>(a); break;
    default: accumulate_portable(a, ocb); break;
  }
}

}  // namespace zapopt
