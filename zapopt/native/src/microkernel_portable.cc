// Plain C++ inner loops: any ocb, no intrinsics (the compiler may vectorize them).
#include <algorithm>

#include "microkernel.h"
#include "pointwise.h"

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
// others are multiplied at all of them (zeros included); a group whose union is too large for
// that to pay walks its positions' lists, like the vector versions (with their cost ratio).
void union_accumulate_portable(const UnionAccumulateArgs& a, int ocb, int rows) {
  constexpr float kUnionCost = 0.75f;
  float* acc[4];
  const float* in[4];
  int32_t index[4];
  int filled = 0;
  auto flush = [&]() {
    int32_t n = 0, own = 0;
    for (int32_t c = 0; c < a.k; ++c) {
      bool any = false;
      for (int r = 0; r < filled; ++r) any |= !(in[r][c] == 0.0f);
      n += any;
    }
    for (int r = 0; r < filled; ++r) own += a.counts[index[r]];
    if (static_cast<float>(n * filled) * kUnionCost > static_cast<float>(own)) {
      AccumulateArgs one;
      static_cast<TileTarget&>(one) = a;
      one.positions = 1;
      one.needed = nullptr;
      for (int r = 0; r < filled; ++r) {  // one position at a time: acc[r] are not evenly spaced
        one.acc = acc[r];
        one.channels = a.channels + index[r];
        one.values = a.values + index[r];
        one.counts = a.counts + index[r];
        accumulate_portable(one, ocb);
      }
      filled = 0;
      return;
    }
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
    index[filled] = t;
    if (++filled == group) flush();
  }
  if (filled > 0) flush();
}

void pointwise_portable(const PointwiseArgs& a) {
  for (int64_t p = 0; p < a.count; ++p) {
    float acc[kPointwiseRows] = {};
    for (int32_t ch = 0; ch < a.k; ++ch) {
      const float v = a.x[ch * a.x_stride + p];
      for (int r = 0; r < kPointwiseRows; ++r) acc[r] += a.weights[ch * kPointwiseRows + r] * v;
    }
    for (int r = 0; r < a.rows; ++r) {
      float v = acc[r] + a.bias[r];
      if (a.skip != nullptr) v += a.skip[r * a.y_stride + p];
      a.y[r * a.y_stride + p] = a.relu ? std::min(std::max(v, 0.0f), a.clip_max) : v;
    }
  }
}

}  // namespace zapopt
