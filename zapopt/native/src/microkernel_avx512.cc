// AVX-512F inner loops, mirroring the AVX2 ones. Compaction: compare 16 inputs with zero into
// a mask and compress values and indices with it (vcompressps). Accumulation: NV zmm
// accumulators (16 output channels each) per position. Dense accumulation: 6 positions x 48
// channels in registers, one weight load feeds 6 FMAs.
// Compiled with -mavx512f -mfma -mpopcnt; only called after cpuid says the CPU has AVX-512F.
#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "microkernel.h"
#include "pointwise.h"

namespace zapopt {
namespace {

// The dense path's registers: kRows positions x up to kVectors registers (48 output channels)
// = 18 accumulators, + 3 weight vectors + 1 broadcast of the 32 zmm registers.
struct Vec {
  using Reg = __m512;
  static constexpr int kLanes = 16;
  static constexpr int kRows = 6;
  static constexpr int kVectors = 3;
  static constexpr int kRegisters = 32;
  static Reg zero() { return _mm512_setzero_ps(); }
  static Reg load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, Reg v) { _mm512_storeu_ps(p, v); }
  static Reg broadcast(const float* p) { return _mm512_set1_ps(*p); }
  static unsigned nonzero_bits(const float* p) {
    return _mm512_cmp_ps_mask(_mm512_loadu_ps(p), _mm512_setzero_ps(), _CMP_NEQ_UQ);
  }
  static int compress_lanes(unsigned bits, int32_t base, int32_t* out) {
    const __m512i index = _mm512_add_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                           _mm512_set1_epi32(base));
    _mm512_storeu_si512(out, _mm512_maskz_compress_epi32(static_cast<__mmask16>(bits), index));
    return _mm_popcnt_u32(bits);
  }
  static void accumulate_lists(const AccumulateArgs& a, int ocb) { accumulate_avx512(a, ocb); }
  static Reg fma(Reg a, Reg b, Reg c) { return _mm512_fmadd_ps(a, b, c); }
  static Reg add(Reg a, Reg b) { return _mm512_add_ps(a, b); }
  static Reg max(Reg a, Reg b) { return _mm512_max_ps(a, b); }
  static Reg min(Reg a, Reg b) { return _mm512_min_ps(a, b); }
  static Reg set1(float v) { return _mm512_set1_ps(v); }
};

#include "dense_microkernel.h"
#include "list_microkernel.h"
#include "pointwise_microkernel.h"

}  // namespace

void dense_accumulate_avx512(const DenseAccumulateArgs& a, int ocb) { dense_accumulate<Vec>(a, ocb); }

void pointwise_avx512(const PointwiseArgs& a) { pointwise<Vec>(a); }

void union_accumulate_avx512(const UnionAccumulateArgs& a, int ocb, int rows) { union_accumulate<Vec>(a, ocb, rows); }

int compact_avx512(const float* x, int n, int32_t k0, int32_t* ks, float* values) {
  int count = 0, i = 0;
  const __m512 zero = _mm512_setzero_ps();
  const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  for (; i + 16 <= n; i += 16) {
    const __m512 v = _mm512_loadu_ps(x + i);
    const __mmask16 mask = _mm512_cmp_ps_mask(v, zero, _CMP_NEQ_UQ);
    _mm512_storeu_ps(values + count, _mm512_maskz_compress_ps(mask, v));
    const __m512i index = _mm512_add_epi32(lane, _mm512_set1_epi32(k0 + i));
    _mm512_storeu_si512(ks + count, _mm512_maskz_compress_epi32(mask, index));
    count += _mm_popcnt_u32(static_cast<unsigned>(mask));
  }
  return count + compact_portable(x + i, n - i, k0 + i, ks + count, values + count);
}

void accumulate_avx512(const AccumulateArgs& a, int ocb) {
  switch (ocb) {
    case 16: accumulate_lists_of<Vec, 1>(a); break;
    case 32: accumulate_lists_of<Vec, 2>(a); break;
    case 48: accumulate_lists_of<Vec, 3>(a); break;
    case 64: accumulate_lists_of<Vec, 4>(a); break;
    default: accumulate_portable(a, ocb); break;
  }
}

}  // namespace zapopt
