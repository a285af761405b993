// Plain C++ accumulation: any ocb, no intrinsics (the compiler may vectorize it).
#include "microkernel.h"

namespace zapopt {

void accumulate_portable(const AccumulateArgs& a, int ocb) {
  for (int32_t t = 0; t < a.positions; ++t) {
    if (a.needed != nullptr && a.needed[t * a.needed_stride] == 0) continue;
    float* acc = a.acc + static_cast<int64_t>(t) * a.acc_stride;
    if (a.first) {
      for (int o = 0; o < ocb; ++o) acc[o] = 0.0f;
    }
    const Entry* e = a.entries + static_cast<int64_t>(t) * a.entry_stride;
    const int32_t n = a.counts[t];
    for (int32_t j = 0; j < n; ++j) {
      const float v = e[j].value;
      const float* w = a.weights + static_cast<int64_t>(e[j].k) * ocb;
      for (int o = 0; o < ocb; ++o) acc[o] += v * w[o];
    }
  }
}

}  // namespace zapopt
