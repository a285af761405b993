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

void dense_accumulate_portable(const DenseAccumulateArgs& a, int ocb) {
  for (int32_t t = 0; t < a.positions; ++t) {
    if (a.needed != nullptr && a.needed[t * a.needed_stride] == 0) continue;
    float* acc = a.acc + static_cast<int64_t>(t) * a.acc_stride;
    if (a.first) {
      for (int o = 0; o < ocb; ++o) acc[o] = 0.0f;
    }
    const float* in = a.inputs[t];
    for (int32_t c = 0; c < a.k; ++c) {
      const float v = in[c];
      if (v == 0.0f) continue;
      const float* w = a.weights + static_cast<int64_t>(c) * ocb;
      for (int o = 0; o < ocb; ++o) acc[o] += v * w[o];
    }
  }
}

// Groups of `rows` positions: a channel zero at every position of the group is skipped, the
// others are multiplied at all of them (zeros included), like the vector versions.
void union_accumulate_portable(const DenseAccumulateArgs& a, int ocb, int rows) {
  float* acc[4];
  const float* in[4];
  int filled = 0;
  auto flush = [&]() {
    for (int r = 0; r < filled; ++r) {
      if (a.first) {
        for (int o = 0; o < ocb; ++o) acc[r][o] = 0.0f;
      }
    }
    for (int32_t c = 0; c < a.k; ++c) {
      bool any = false;
      for (int r = 0; r < filled; ++r) any |= !(in[r][c] == 0.0f);
      if (!any) continue;
      const float* w = a.weights + static_cast<int64_t>(c) * ocb;
      for (int r = 0; r < filled; ++r) {
        const float v = in[r][c];
        for (int o = 0; o < ocb; ++o) acc[r][o] += v * w[o];
      }
    }
    filled = 0;
  };
  const int group = rows < 1 ? 1 : rows > 4 ? 4 : rows;
  for (int32_t t = 0; t < a.positions; ++t) {
    if (a.needed != nullptr && a.needed[t * a.needed_stride] == 0) continue;
    in[filled] = a.inputs[t];
    acc[filled] = a.acc + static_cast<int64_t>(t) * a.acc_stride;
    if (++filled == group) flush();
  }
  if (filled > 0) flush();
}

}  // namespace zapopt
