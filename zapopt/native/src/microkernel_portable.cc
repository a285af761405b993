// Plain C++ inner loops: any ocb, no intrinsics (the compiler may vectorize them).
#include "microkernel.h"

namespace zapopt {

void transpose_row_portable(const float* in, int64_t channel_stride, int64_t c, int64_t w, float* out) {
  constexpr int64_t kBlock = 8;  // channels per pass: 8 sequential read streams, 32-byte writes
  for (int64_t c0 = 0; c0 < c; c0 += kBlock) {
    const int64_t c1 = c0 + kBlock < c ? c0 + kBlock : c;
    for (int64_t x = 0; x < w; ++x) {
      for (int64_t ch = c0; ch < c1; ++ch) out[x * c + ch] = in[ch * channel_stride + x];
    }
  }
}

int compact_portable(const float* x, int n, int32_t k0, int32_t* ks, float* values) {
  int count = 0;
  for (int i = 0; i < n; ++i) {  // branch-free append: always write, advance only on nonzero
    const float v = x[i];
    ks[count] = k0 + i;
    values[count] = v;
    count += (v != 0.0f);
  }
  return count;
}

void accumulate_portable(const AccumulateArgs& a, int ocb) {
  for (int32_t t = 0; t < a.positions; ++t) {
    if (a.needed != nullptr && a.needed[t * a.needed_stride] == 0) continue;
    float* acc = a.acc + static_cast<int64_t>(t) * a.acc_stride;
    if (a.first) {
      for (int o = 0; o < ocb; ++o) acc[o] = 0.0f;
    }
    const int32_t* ks = a.channels[t];
    const float* values = a.values[t];
    const int32_t n = a.counts[t];
    for (int32_t j = 0; j < n; ++j) {
      const float v = values[j];
      const float* w = a.weights + static_cast<int64_t>(ks[j]) * ocb;
      for (int o = 0; o < ocb; ++o) acc[o] += v * w[o];
    }
  }
}

}  // namespace zapopt
