// ZapConv on top of the zero-skipping convolution: compute every position (only the pattern
// positions when the threshold is +inf), run the predictor (two 3x3 depthwise convs) on the
// pattern positions' values, clear the outputs predicted zero (zap_conv.cc says why it does
// not skip them inside the convolution). Semantics: docs/zap_op.md.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "sparse_conv.h"

namespace zapopt {

struct ZapParams {
  std::vector<uint8_t> tile;  // pattern, row-major [tile_h][tile_w], 1 = computed up front
  int64_t tile_h = 1, tile_w = 1;
  float threshold = 0.0f;
  bool preactivation = false;  // the predictor reads V instead of Full
  std::vector<float> pw1, pb1, pw2, pb2;  // [C_out, 1, 3, 3] and [C_out]
};

// Writes Y [N, C_out, H_out, W_out] (and Computed, if not null) for x [N, C_in, H, W].
// epilogue carries Skip and clip_max; its y field is set here. Buffers come
// from scratch.
bool run_zap_conv(const PackedConv& conv, const ZapParams& params, const float* x, int64_t n, int64_t h, int64_t w,
                  Epilogue epilogue, float* y, bool* computed_out,
                  const ParallelFor& parallel_for, const Scratch& scratch, std::string* error);

}  // namespace zapopt
