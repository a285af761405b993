// AVX2 layout changes: NCHW rows to NHWC pixels (compaction's input) and NHWC accumulator
// tiles back to NCHW (the write-back), both through 8x8 register transposes.
// Compiled with -mavx2 -mfma; only called after cpuid says the CPU has AVX2 and FMA (the
// AVX-512 path uses these too).
#include <immintrin.h>

#include <cstdint>

#include "layout.h"
#include "microkernel.h"

namespace zapopt {
namespace {

// r[i][j] -> r[j][i] for an 8x8 block of floats held in 8 registers.
inline __attribute__((always_inline)) void transpose8x8(__m256 r[8]) {
  const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
  const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
  const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
  const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
  const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
  const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  const __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
  const __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  r[0] = _mm256_permute2f128_ps(u0, u4, 0x20), r[1] = _mm256_permute2f128_ps(u1, u5, 0x20);
  r[2] = _mm256_permute2f128_ps(u2, u6, 0x20), r[3] = _mm256_permute2f128_ps(u3, u7, 0x20);
  r[4] = _mm256_permute2f128_ps(u0, u4, 0x31), r[5] = _mm256_permute2f128_ps(u1, u5, 0x31);
  r[6] = _mm256_permute2f128_ps(u2, u6, 0x31), r[7] = _mm256_permute2f128_ps(u3, u7, 0x31);
}

// The part of a write-back starting at channel c0 and position t0.
WriteBackArgs sub_tile(const WriteBackArgs& a, int32_t c0, int32_t t0) {
  WriteBackArgs s = a;
  s.acc = a.acc + static_cast<int64_t>(t0) * a.acc_stride + c0;
  s.positions = a.positions - t0;
  s.channels = a.channels - c0;
  s.bias = a.bias + c0;
  if (a.skip != nullptr) s.skip = a.skip + c0 * a.skip_channel_stride + t0;
  s.y = a.y + c0 * a.y_channel_stride + t0;
  return s;
}

}  // namespace

void transpose_row_avx2(const float* in, int64_t channel_stride, int64_t c, int64_t w, float* out) {
  int64_t c0 = 0;
  for (; c0 + 8 <= c; c0 += 8) {
    int64_t x = 0;
    for (; x + 8 <= w; x += 8) {  // 8 channels x 8 columns, transposed in registers
      if (c0 + 16 <= c) {  // the next 8 planes, one block ahead: wide layers read too many for the prefetchers
        for (int i = 0; i < 8; ++i) {
          _mm_prefetch(reinterpret_cast<const char*>(in + (c0 + 8 + i) * channel_stride + x), _MM_HINT_T0);
        }
      }
      __m256 r[8];
      for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(in + (c0 + i) * channel_stride + x);
      transpose8x8(r);
      for (int i = 0; i < 8; ++i) _mm256_storeu_ps(out + (x + i) * c + c0, r[i]);
    }
    for (; x < w; ++x) {
      for (int64_t ch = c0; ch < c0 + 8; ++ch) out[x * c + ch] = in[ch * channel_stride + x];
    }
  }
  for (int64_t x = 0; c0 < c && x < w; ++x) {  // the last c % 8 channels
    for (int64_t ch = c0; ch < c; ++ch) out[x * c + ch] = in[ch * channel_stride + x];
  }
}

// 8 positions x 8 channels at a time: bias added along the channels (before the transpose),
// Skip and the activation along the positions (after it); same operations in the same order as
// write_back_portable, so the results are identical.
void write_back_avx2(const WriteBackArgs& a) {
  // Locals, not a's fields: the stores to y could alias a, which would reload them every time.
  const float* const skip = a.skip;
  float* const y = a.y;
  const int64_t y_stride = a.y_channel_stride, skip_stride = a.skip_channel_stride, acc_stride = a.acc_stride;
  const bool relu = a.relu;
  const __m256 zero = _mm256_setzero_ps(), clip = _mm256_set1_ps(a.clip_max);
  const int32_t full_t = a.positions / 8 * 8;
  int32_t c0 = 0;
  for (; c0 + 8 <= a.channels; c0 += 8) {
    const __m256 bias = _mm256_loadu_ps(a.bias + c0);
    for (int32_t t0 = 0; t0 < full_t; t0 += 8) {
      __m256 r[8];
      const float* acc = a.acc + t0 * acc_stride + c0;
      for (int i = 0; i < 8; ++i) r[i] = _mm256_add_ps(_mm256_loadu_ps(acc + i * acc_stride), bias);
      transpose8x8(r);  // r[i]: channel c0 + i at positions t0 .. t0 + 7
      for (int i = 0; i < 8; ++i) {
        __m256 v = r[i];
        if (skip != nullptr) v = _mm256_add_ps(v, _mm256_loadu_ps(skip + (c0 + i) * skip_stride + t0));
        if (relu) v = _mm256_min_ps(clip, _mm256_max_ps(zero, v));  // NaN passes, like std::min/max
        _mm256_storeu_ps(y + (c0 + i) * y_stride + t0, v);
      }
    }
    if (full_t < a.positions) {
      WriteBackArgs tail = sub_tile(a, c0, full_t);
      tail.channels = 8;
      write_back_portable(tail);
    }
  }
  if (c0 < a.channels) write_back_portable(sub_tile(a, c0, 0));
}

}  // namespace zapopt
