// Plain C++ layout changes (layout.h), also the tails of the vectorized versions.
#include <algorithm>

#include "layout.h"

namespace zapopt {

void write_back_portable(const WriteBackArgs& a) {
  for (int32_t c = 0; c < a.channels; ++c) {
    const float bias = a.bias[c];
    float* y = a.y + c * a.y_channel_stride;
    const float* skip = a.skip != nullptr ? a.skip + c * a.skip_channel_stride : nullptr;
    for (int32_t t = 0; t < a.positions; ++t) {
      float v = a.acc[static_cast<int64_t>(t) * a.acc_stride + c] + bias;
      if (skip != nullptr) v += skip[t];
      y[t] = a.relu ? std::min(std::max(v, 0.0f), a.clip_max) : v;
    }
  }
}

}  // namespace zapopt
