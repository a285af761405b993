// AVX2+FMA inner loops. Compaction: compare 8 inputs with zero, look the lane order of the
// nonzeros up in a 256-entry table and permute values and indices with it (SparseTrain's
// idea). Accumulation: NV ymm accumulators (8 output channels each) per position; each
// nonzero costs one broadcast and NV fused multiply-adds with its packed weight row. Dense
// accumulation: 4 positions x 24 channels in registers, one weight load feeds 4 FMAs.
// Compiled with -mavx2 -mfma -mpopcnt; only called after cpuid says the CPU has AVX2 and FMA.
#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "microkernel.h"
#include "pointwise.h"

namespace zapopt {
namespace {

// kLaneOrder[mask]: byte i = the lane of the i-th set bit of mask (the rest 0).
struct LaneTable {
  uint64_t entry[256];
  constexpr LaneTable() : entry() {
    for (int mask = 0; mask < 256; ++mask) {
      uint64_t packed = 0;
      int out = 0;
      for (int lane = 0; lane < 8; ++lane) {
        if (mask & (1 << lane)) packed |= static_cast<uint64_t>(lane) << (8 * out++);
      }
      entry[mask] = packed;
    }
  }
};
constexpr LaneTable kLaneOrder;

// The dense path's registers: kRows positions x up to kVectors registers (24 output channels)
// = 12 accumulators, + 3 weight vectors + 1 broadcast of the 16 ymm registers.
struct Vec {
  using Reg = __m256;
  static constexpr int kLanes = 8;
  static constexpr int kRows = 4;
  static constexpr int kVectors = 3;
  static constexpr int kRegisters = 16;
  static Reg zero() { return _mm256_setzero_ps(); }
  static Reg load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, Reg v) { _mm256_storeu_ps(p, v); }
  static Reg broadcast(const float* p) { return _mm256_broadcast_ss(p); }
  static unsigned nonzero_bits(const float* p) {
    return static_cast<unsigned>(_mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(p), _mm256_setzero_ps(), _CMP_NEQ_UQ)));
  }
  static int compress_lanes(unsigned bits, int32_t base, int32_t* out) {
    const __m256i lanes = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(static_cast<long long>(kLaneOrder.entry[bits])));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), _mm256_add_epi32(lanes, _mm256_set1_epi32(base)));
    return _mm_popcnt_u32(bits);
  }
  static void accumulate_lists(const AccumulateArgs& a, int ocb) { accumulate_avx2(a, ocb); }
  static Reg fma(Reg a, Reg b, Reg c) { return _mm256_fmadd_ps(a, b, c); }
  static Reg add(Reg a, Reg b) { return _mm256_add_ps(a, b); }
  static Reg max(Reg a, Reg b) { return _mm256_max_ps(a, b); }
  static Reg min(Reg a, Reg b) { return _mm256_min_ps(a, b); }
  static Reg set1(float v) { return _mm256_set1_ps(v); }
};

#include "dense_microkernel.h"
#include "list_microkernel.h"
#include "pointwise_microkernel.h"

}  // namespace

void dense_accumulate_avx2(const DenseAccumulateArgs& a, int ocb) { dense_accumulate<Vec>(a, ocb); }

void pointwise_avx2(const PointwiseArgs& a) { pointwise<Vec>(a); }

void union_accumulate_avx2(const UnionAccumulateArgs& a, int ocb, int rows) { union_accumulate<Vec>(a, ocb, rows); }

int compact_avx2(const float* x, int n, int32_t k0, int32_t* ks, float* values) {
  int count = 0, i = 0;
  const __m256 zero = _mm256_setzero_ps();
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    const int mask = _mm256_movemask_ps(_mm256_cmp_ps(v, zero, _CMP_NEQ_UQ));
    const __m256i lanes = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(static_cast<long long>(kLaneOrder.entry[mask])));
    _mm256_storeu_ps(values + count, _mm256_permutevar8x32_ps(v, lanes));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(ks + count), _mm256_add_epi32(lanes, _mm256_set1_epi32(k0 + i)));
    count += _mm_popcnt_u32(static_cast<unsigned>(mask));
  }
  return count + compact_portable(x + i, n - i, k0 + i, ks + count, values + count);
}

void accumulate_avx2(const AccumulateArgs& a, int ocb) {
  switch (ocb) {
    case 8: accumulate_lists_of<Vec, 1>(a); break;
    case 16: accumulate_lists_of<Vec, 2>(a); break;
    case 24: accumulate_lists_of<Vec, 3>(a); break;
    case 32: accumulate_lists_of<Vec, 4>(a); break;
    case 40: accumulate_lists_of<Vec, 5>(a); break;
    case 48: accumulate_lists_of<Vec, 6>(a); break;
    case 56: accumulate_lists_of<Vec, 7>(a); break;
    case 64: accumulate_lists_of<Vec, 8>(a); break;
    default: accumulate_portable(a, ocb); break;
  }
}

}  // namespace zapopt
