// AVX-512F accumulation: the AVX2 kernel's structure with zmm registers (16 output
// channels each), NV = 1..4 accumulators per position.
// Compiled with -mavx512f -mfma; only called after cpuid says the CPU has AVX-512F.
#include <immintrin.h>

#include "microkernel.h"

namespace zapopt {
namespace {

template <int NV>
void run(const AccumulateArgs& a) {
  constexpr int kOcb = NV * 16;
  for (int32_t t = 0; t < a.positions; ++t) {
    if (a.needed != nullptr && a.needed[t * a.needed_stride] == 0) continue;
    float* acc = a.acc + static_cast<int64_t>(t) * a.acc_stride;
    __m512 c[NV];
    for (int i = 0; i < NV; ++i) c[i] = a.first ? _mm512_setzero_ps() : _mm512_loadu_ps(acc + 16 * i);
    const Entry* e = a.entries + static_cast<int64_t>(t) * a.entry_stride;
    const int32_t n = a.counts[t];
    for (int32_t j = 0; j < n; ++j) {
      const __m512 x = _mm512_set1_ps(e[j].value);
      const float* w = a.weights + static_cast<int64_t>(e[j].k) * kOcb;
      for (int i = 0; i < NV; ++i) c[i] = _mm512_fmadd_ps(x, _mm512_loadu_ps(w + 16 * i), c[i]);
    }
    for (int i = 0; i < NV; ++i) _mm512_storeu_ps(acc + 16 * i, c[i]);
  }
}

}  // namespace

void accumulate_avx512(const AccumulateArgs& a, int ocb) {
  switch (ocb) {
    case 16: run<1>(a); break;
    case 32: run<2>(a); break;
    case 48: run<3>(a); break;
    case 64: run<4>(a); break;
    default: accumulate_portable(a, ocb); break;
  }
}

}  // namespace zapopt
