#include "zap_conv.h"

#include <algorithm>
#include <cmath>
#include <cstring>

namespace zapopt {
namespace {

// out = float(depthwise 3x3 (pad 1) of in with weights w[9] + bias), accumulated in double as
// the reference does. padded is scratch of (ho + 2) * (wo + 2) doubles: a zero border lets the
// inner loop run without bounds checks.
void depthwise3x3(const float* in, int64_t ho, int64_t wo, const float* w, float bias, double* padded,
                  float* out) {
  const int64_t pw = wo + 2;
  std::fill(padded, padded + (ho + 2) * pw, 0.0);
  for (int64_t i = 0; i < ho; ++i) {
    for (int64_t j = 0; j < wo; ++j) padded[(i + 1) * pw + j + 1] = in[i * wo + j];
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

}  // namespace

bool run_zap_conv(const PackedConv& conv, const ZapParams& params, const float* x, int64_t n, int64_t h, int64_t w,
                  Epilogue ep, float* y, bool* computed_out, const ParallelFor& parallel_for, const Scratch& scratch,
                  std::string* error) {
  const ConvGeometry& geo = conv.geometry();
  const int64_t ho = geo.out_h(h), wo = geo.out_w(w), plane = ho * wo;
  const int64_t c_out = geo.c_out;
  const size_t total = static_cast<size_t>(n * c_out * plane);
  std::fill(y, y + total, 0.0f);
  ep.y = y;
  ep.aux = nullptr;
  ep.computed = nullptr;

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

  // Phase 1: the pattern positions, every channel; P = V or Full there, 0 elsewhere (only
  // needed when the predictor runs).
  const bool predict = params.threshold != INFINITY;
  ScratchArray<float> partial(scratch, predict ? total : 0);
  if (predict) std::fill(partial.get(), partial.get() + total, 0.0f);
  ep.aux = predict ? partial.get() : nullptr;
  ep.aux_preactivation = params.preactivation;
  std::vector<const std::vector<int32_t>*> at_pattern(static_cast<size_t>(n), &pattern_positions);
  if (!conv.run(x, n, h, w, at_pattern, ep, parallel_for, scratch, error)) return false;
  ep.aux = nullptr;

  // Phase 2: the predictor, one (n, channel) plane per task. Computed = S | (Z > threshold).
  ScratchArray<uint8_t> computed(scratch, total);  // every entry written below
  if (!predict) {  // nothing beyond the pattern
    for (size_t plane_index = 0; plane_index < static_cast<size_t>(n * c_out); ++plane_index) {
      std::memcpy(computed.get() + plane_index * plane, pattern.data(), static_cast<size_t>(plane));
    }
  } else {
    const bool ok = parallel_for(static_cast<size_t>(n * c_out), [&](size_t index) {
      const int64_t c = static_cast<int64_t>(index) % c_out;
      std::vector<float> hidden(static_cast<size_t>(plane)), score(static_cast<size_t>(plane));
      std::vector<double> padded(static_cast<size_t>((ho + 2) * (wo + 2)));
      depthwise3x3(partial.get() + index * plane, ho, wo, params.pw1.data() + c * 9, params.pb1[c], padded.data(),
                   hidden.data());
      for (float& v : hidden) v = std::max(v, 0.0f);
      depthwise3x3(hidden.data(), ho, wo, params.pw2.data() + c * 9, params.pb2[c], padded.data(), score.data());
      uint8_t* out = computed.get() + index * plane;
      for (int64_t p = 0; p < plane; ++p) out[p] = pattern[p] | static_cast<uint8_t>(score[p] > params.threshold);
    });
    if (!ok) {
      *error = "onnxruntime's thread pool failed to run the predictor";
      return false;
    }
    // Phase 3: positions outside the pattern with at least one channel predicted nonzero.
    std::vector<std::vector<int32_t>> predicted(static_cast<size_t>(n));
    std::vector<const std::vector<int32_t>*> at_predicted(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t p = 0; p < plane; ++p) {
        if (pattern[p]) continue;
        const uint8_t* m = computed.get() + i * c_out * plane + p;
        for (int64_t c = 0; c < c_out; ++c) {
          if (m[c * plane]) {
            predicted[i].push_back(static_cast<int32_t>(p));
            break;
          }
        }
      }
      at_predicted[i] = &predicted[i];
    }
    ep.computed = computed.get();
    if (!conv.run(x, n, h, w, at_predicted, ep, parallel_for, scratch, error)) return false;
  }
  if (computed_out != nullptr) {
    for (size_t i = 0; i < total; ++i) computed_out[i] = computed[i] != 0;
  }
  return true;
}

}  // namespace zapopt
