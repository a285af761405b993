// The pointwise path: a 1x1, unpadded, one-group conv is a matrix product on the NCHW planes
// themselves, Y[oc, p] = sum_c W[oc, c] X[c, p] (strided: on the kept pixels, gathered into
// planes of the output's size first), so it runs without the NHWC
// transpose, the nonzero lists and the transposing write-back of the general kernel. Used
// when the input is dense enough that the lists would not pay (sparse_conv.cc). Vectorized
// along positions: kRows output channels x 3 vectors of positions in registers; each input
// channel costs 3 loads of X, kRows broadcasts of W and 3 * kRows FMAs; zeros are multiplied
// like the dense form's. (A per-channel test for an all-zero tile cost a register, so GCC
// kept an accumulator on the stack: 2x slower at 30 % zeros, and on inputs this dense the
// test almost never fires.)
#pragma once
#include <cstdint>

namespace zapopt {

// Output channels per pointwise block (packed weights [block][channel][kPointwiseRows]).
constexpr int kPointwiseRows = 4;

struct PointwiseArgs {
  const float* x;         // input channel c's values at x + c * x_stride, positions [0, count)
  int64_t x_stride;
  int32_t k;              // input channels
  const float* weights;   // [k][kPointwiseRows] packed weights of this block (zero-padded rows)
  const float* bias;      // kPointwiseRows values (zero-padded)
  int32_t rows;           // output channels of this block that exist (1..kPointwiseRows)
  int64_t count;          // positions
  float* y;               // output channel r's values at y + r * y_stride
  const float* skip;      // nullable; laid out like y
  int64_t y_stride;
  bool relu;
  float clip_max;
};

using PointwiseFn = void (*)(const PointwiseArgs& args);

void pointwise_portable(const PointwiseArgs& args);
void pointwise_avx2(const PointwiseArgs& args);
void pointwise_avx512(const PointwiseArgs& args);

}  // namespace zapopt
