#include "zap_conv.h"

#include <algorithm>
#include <cmath>
#include <cstring>

namespace zapopt {
namespace {

// Tasks the predictor's (n, channel) planes are split into.
constexpr int64_t kPredictorTasks = 32;

// out = float(depthwise 3x3 (pad 1) of in with weights w[9] + bias), accumulated in double as
// the reference does. padded is scratch of (ho + 2) * (wo + 2) doubles: a zero border lets the
// inner loop run without bounds checks.
inline __attribute__((always_inline)) void depthwise3x3(const float* in, int64_t ho, int64_t wo, const float* w,
                                                       float bias, double* padded, float* out) {
  const int64_t pw = wo + 2;
  std::fill(padded, padded + pw, 0.0);  // the border only: the interior is overwritten
  std::fill(padded + (ho + 1) * pw, padded + (ho + 2) * pw, 0.0);
  for (int64_t i = 0; i < ho; ++i) {
    double* row = padded + (i + 1) * pw;
    row[0] = row[wo + 1] = 0.0;
    for (int64_t j = 0; j < wo; ++j) row[j + 1] = in[i * wo + j];
  }
  double k[9];
  for (int t = 0; t < 9; ++t) k[t] = w[t];
  for (int64_t i = 0; i < ho; ++i) {
    const double* r0 = padded + i * pw;
    const double* r1 = r0 + pw;
    const double* r2 = r1 + pw;
    for (int64_t j = 0; j < wo; ++j) {
      const double sum = r0[j] * k[0] + r0[j + 1] * k[1] + r0[j + 2] * k[2] + r1[j] * k[3] + r1[j + 1] * k[4] +
                         r1[j + 2] * k[5] + r2[j] * k[6] + r2[j + 1] * k[7] + r2[j + 2] * k[8];
      out[i * wo + j] = static_cast<float>(sum + static_cast<double>(bias));
    }
  }
}

// The predictor and the mask for one (n, channel) plane of V (in place in y: Full where
// computed, else 0). v first in std::max/std::min: a NaN passes through, as in the vector
// write-back. Branch-free loops, so that they vectorize.
struct PlaneBuffers {
  float* input;
  float* hidden;
  float* score;
  double* padded;
};

inline __attribute__((always_inline)) void predict_plane_body(float* v, uint8_t* computed, const uint8_t* pattern,
                                                              int64_t ho, int64_t wo, const ZapParams& params,
                                                              int64_t c, float low, float high,
                                                              const PlaneBuffers& b) {
  const int64_t plane = ho * wo;
  for (int64_t p = 0; p < plane; ++p) {
    const float full = std::min(std::max(v[p], low), high);
    b.input[p] = pattern[p] ? (params.preactivation ? v[p] : full) : 0.0f;
  }
  depthwise3x3(b.input, ho, wo, params.pw1.data() + c * 9, params.pb1[c], b.padded, b.hidden);
  for (int64_t p = 0; p < plane; ++p) b.hidden[p] = std::max(b.hidden[p], 0.0f);
  depthwise3x3(b.hidden, ho, wo, params.pw2.data() + c * 9, params.pb2[c], b.padded, b.score);
  const float threshold = params.threshold;
  for (int64_t p = 0; p < plane; ++p) {
    const uint8_t keep = pattern[p] | static_cast<uint8_t>(b.score[p] > threshold);
    computed[p] = keep;
    const float full = std::min(std::max(v[p], low), high);
    v[p] = keep ? full : 0.0f;
  }
}

void predict_plane(float* v, uint8_t* computed, const uint8_t* pattern, int64_t ho, int64_t wo,
                   const ZapParams& params, int64_t c, float low, float high, const PlaneBuffers& b) {
  predict_plane_body(v, computed, pattern, ho, wo, params, c, low, high, b);
}

// The same compiled for AVX2 and FMA (4 doubles a vector; called only when cpuid has them):
// the predictor's double-precision convs were the ZAP model's largest cost after the conv.
__attribute__((target("avx2,fma"))) void predict_plane_avx2(float* v, uint8_t* computed, const uint8_t* pattern,
                                                            int64_t ho, int64_t wo, const ZapParams& params,
                                                            int64_t c, float low, float high, const PlaneBuffers& b) {
  predict_plane_body(v, computed, pattern, ho, wo, params, c, low, high, b);
}

}  // namespace

bool run_zap_conv(const PackedConv& conv, const ZapParams& params, const float* x, int64_t n, int64_t h, int64_t w,
                  Epilogue ep, float* y, bool* computed_out, const ParallelFor& parallel_for, const Scratch& scratch,
                  std::string* error) {
  const ConvGeometry& geo = conv.geometry();
  const int64_t ho = geo.out_h(h), wo = geo.out_w(w), plane = ho * wo;
  const int64_t c_out = geo.c_out;
  const size_t total = static_cast<size_t>(n * c_out * plane);
  ep.y = y;  // every branch below writes every output

  std::vector<uint8_t> pattern(static_cast<size_t>(plane));
  std::vector<int32_t> pattern_positions, all_positions;
  for (int64_t i = 0; i < ho; ++i) {
    for (int64_t j = 0; j < wo; ++j) {
      const int32_t p = static_cast<int32_t>(i * wo + j);
      pattern[p] = params.tile[(i % params.tile_h) * params.tile_w + (j % params.tile_w)];
      if (pattern[p]) pattern_positions.push_back(p);
      all_positions.push_back(p);
    }
  }
  if (params.threshold == -INFINITY) {  // Z > -inf everywhere: the plain layer
    std::vector<const std::vector<int32_t>*> every(static_cast<size_t>(n), &all_positions);
    if (!conv.run(x, n, h, w, every, ep, parallel_for, scratch, error)) return false;
    if (computed_out != nullptr) std::fill(computed_out, computed_out + total, true);
    return true;
  }

  // A finite threshold: every position is computed in one pass, the predictor runs on the
  // pattern positions' values, and the outputs predicted zero are cleared. Output skipping in
  // the convolution itself would have to skip a (position, channel block) whose every channel
  // is predicted zero, which is rare at vector granularity (docs/native_kernel.md); doing the
  // pattern and the predicted positions as two passes instead cost more than it saved (two
  // compactions of the input, checkerboard tiles through the scalar write-back): on
  // OpenNSFW's ZapConv layers 1.6-2x the exact layer's time. Without a predictor (threshold
  // +inf) only the pattern positions are computed.
  const bool predict = params.threshold != INFINITY;
  ScratchArray<uint8_t> computed(scratch, total);  // every entry written below
  if (!predict) {  // the pattern positions, nothing else: the rest of Y is 0
    std::fill(y, y + total, 0.0f);
    std::vector<const std::vector<int32_t>*> at_pattern(static_cast<size_t>(n), &pattern_positions);
    if (!conv.run(x, n, h, w, at_pattern, ep, parallel_for, scratch, error)) return false;
    for (size_t plane_index = 0; plane_index < static_cast<size_t>(n * c_out); ++plane_index) {
      std::memcpy(computed.get() + plane_index * plane, pattern.data(), static_cast<size_t>(plane));
    }
  } else {
    // V = W * X + B (+ Skip) at every position, into Y; the activation comes after the predictor.
    Epilogue linear = ep;
    linear.relu = false;
    std::vector<const std::vector<int32_t>*> every(static_cast<size_t>(n), &all_positions);
    if (!conv.run(x, n, h, w, every, linear, parallel_for, scratch, error)) return false;
    // Per (n, channel) plane: the predictor's input P (V or Full at the pattern, 0 elsewhere),
    // Computed = S | (Z > threshold), then Y = Full where computed, else 0 (predict_plane), in
    // runs of planes with their buffers allocated once.
    const float low = ep.relu ? 0.0f : -INFINITY, high = ep.relu ? ep.clip_max : INFINITY;
    const int64_t planes = n * c_out, runs = std::min<int64_t>(planes, kPredictorTasks);
    const auto predict_fn = conv.kernel_path() == KernelPath::kPortable ? predict_plane : predict_plane_avx2;
    const bool ok = parallel_for(static_cast<size_t>(runs), [&](size_t run) {
      std::vector<float> buffer(static_cast<size_t>(3 * plane));
      std::vector<double> padded(static_cast<size_t>((ho + 2) * (wo + 2)));
      const PlaneBuffers buffers{buffer.data(), buffer.data() + plane, buffer.data() + 2 * plane, padded.data()};
      const int64_t first = planes * static_cast<int64_t>(run) / runs;
      const int64_t last = planes * (static_cast<int64_t>(run) + 1) / runs;
      for (int64_t index = first; index < last; ++index) {
        predict_fn(y + index * plane, computed.get() + index * plane, pattern.data(), ho, wo, params, index % c_out,
                   low, high, buffers);
      }
    });
    if (!ok) {
      *error = "onnxruntime's thread pool failed to run the predictor";
      return false;
    }
  }
  if (computed_out != nullptr) {
    for (size_t i = 0; i < total; ++i) computed_out[i] = computed[i] != 0;
  }
  return true;
}

}  // namespace zapopt
