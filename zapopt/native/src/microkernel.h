// The innermost loop of the zero-skipping convolution, one implementation per instruction set.
//
// This header is included by the AVX2 and AVX-512 translation units, which are compiled with
// extra -m flags: it must stay free of inline functions and templates that other translation
// units also instantiate (one definition rule across instruction sets).
#pragma once
#include <cstdint>

namespace zapopt {

// One nonzero input of a receptive field: its index k = (c, kh, kw) into the packed weights
// of the layer's group, and its value.
struct Entry {
  int32_t k;
  float value;
};

// The nonzero lists of a tile of output positions for one block of K, and where to add them.
struct AccumulateArgs {
  const Entry* entries;     // position t's list starts at entries + t * entry_stride
  const int32_t* counts;    // counts[t] = length of position t's list
  int32_t entry_stride;
  int32_t positions;
  const uint8_t* needed;    // nullable; needed[t * needed_stride] == 0: skip position t
  int32_t needed_stride;
  const float* weights;     // [K][ocb] packed weights of one output-channel block
  float* acc;               // position t's ocb accumulators at acc + t * acc_stride
  int32_t acc_stride;
  bool first;               // start from zero instead of acc
};

// acc[t][0..ocb) (+)= sum over position t's entries of value * weights[k][0..ocb).
using AccumulateFn = void (*)(const AccumulateArgs& args, int ocb);

void accumulate_portable(const AccumulateArgs& args, int ocb);
void accumulate_avx2(const AccumulateArgs& args, int ocb);    // ocb in {8, 16, ..., 64}
void accumulate_avx512(const AccumulateArgs& args, int ocb);  // ocb in {16, 32, 48, 64}

}  // namespace zapopt
