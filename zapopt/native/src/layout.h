// Layout changes between onnxruntime's NCHW tensors and the kernel's NHWC tiles, one
// implementation per instruction set (the multiply-add loops are in microkernel.h).
//
// Included by the AVX2 translation unit, compiled with extra -m flags: keep it free of inline
// functions and templates (one definition rule across instruction sets).
#pragma once
#include <cstdint>

namespace zapopt {

// One tile of accumulators back to NCHW, with bias, the optional Skip and the activation fused:
// for c < channels and t < positions,
//   v = acc[t * acc_stride + c] + bias[c] (+ skip[c * skip_channel_stride + t])
//   y[c * y_channel_stride + t] = relu ? min(max(v, 0), clip_max) : v
// The tile's positions are consecutive in y (and in skip): the unmasked, row-major case.
struct WriteBackArgs {
  const float* acc;
  int32_t acc_stride;
  int32_t positions;
  int32_t channels;
  const float* bias;                // [channels]
  const float* skip;                // nullable
  int64_t skip_channel_stride;      // 0: one Skip value per position for every channel
  bool relu;
  float clip_max;
  float* y;
  int64_t y_channel_stride;
};
using WriteBackFn = void (*)(const WriteBackArgs& args);

void write_back_portable(const WriteBackArgs& args);
void write_back_avx2(const WriteBackArgs& args);

}  // namespace zapopt
