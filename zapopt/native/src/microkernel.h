// The two inner loops of the zero-skipping convolution, one implementation per instruction set:
// compacting the nonzero inputs of a receptive field, and accumulating them into the outputs.
//
// This header is included by the AVX2 and AVX-512 translation units, which are compiled with
// extra -m flags: it must stay free of inline functions and templates that other translation
// units also instantiate (one definition rule across instruction sets).
#pragma once
#include <cstdint>

namespace zapopt {

// Lists may be written up to this many entries past their final length (vector stores).
constexpr int kCompactSlack = 16;

// Appends the nonzero values of x[0..n) to values[] and their indices k0 + i to ks[] (the
// order is kept); returns how many. NaN counts as nonzero.
using CompactFn = int (*)(const float* x, int n, int32_t k0, int32_t* ks, float* values);

// Where one channel block of a tile of output positions accumulates, shared by the sparse
// (list) and dense accumulation forms.
struct TileTarget {
  int32_t positions;
  const uint8_t* needed;    // nullable; needed[t * needed_stride] == 0: skip position t
  int32_t needed_stride;
  const float* weights;     // [channel][ocb] packed weights of this tap, chunk and channel block
  float* acc;               // position t's ocb accumulators at acc + t * acc_stride
  int32_t acc_stride;
  bool first;               // start from zero instead of acc
  // Nullable: weights the next step reads (next_bytes of them), prefetched a few cache lines
  // per position while this step runs (the list loop reads a slab's rows in data order, which
  // the hardware prefetchers cannot follow).
  const float* next_weights = nullptr;
  int32_t next_bytes = 0;
};

// For a tile of output positions, the nonzero list each one reads for one (tap, channel chunk).
struct NonzeroLists {
  const int32_t* const* channels;  // position t's list: channels[t][j], values[t][j], j < counts[t]
  const float* const* values;
  const int32_t* counts;
};

struct AccumulateArgs : TileTarget, NonzeroLists {};

// acc[t][0..ocb) (+)= sum over position t's entries of value * weights[channel][0..ocb).
using AccumulateFn = void (*)(const AccumulateArgs& args, int ocb);

// For a tile of output positions, the dense input channel vector each one reads for one
// (tap, channel chunk) (an all-zero vector in the padding).
struct DenseAccumulateArgs : TileTarget {
  const float* const* inputs;  // position t's inputs[t][0..k)
  int32_t k;
};

// The register-blocked form of AccumulateFn for nearly dense tiles: several positions share
// each loaded weight row; zeros are multiplied like any other value (the portable version
// skips them).
using DenseAccumulateFn = void (*)(const DenseAccumulateArgs& args, int ocb);

// The most input channels (args.k) one union accumulation call takes.
constexpr int kMaxUnionChannels = 512;

// The dense inputs and the nonzero lists of a tile's positions.
struct UnionAccumulateArgs : DenseAccumulateArgs, NonzeroLists {};

// The union form for medium sparsity: groups of `rows` (1-4) positions share each loaded weight
// row, over the channels nonzero at one of the group's positions at least (the others skipped);
// a group whose nonzeros overlap too little for that to pay walks its positions' lists instead.
using UnionAccumulateFn = void (*)(const UnionAccumulateArgs& args, int ocb, int rows);

// One row of an NCHW tensor to NHWC: out[x][ch] = in[ch * channel_stride + x] for ch < c, x < w.
using TransposeRowFn = void (*)(const float* in, int64_t channel_stride, int64_t c, int64_t w, float* out);

void transpose_row_portable(const float* in, int64_t channel_stride, int64_t c, int64_t w, float* out);
void transpose_row_avx2(const float* in, int64_t channel_stride, int64_t c, int64_t w, float* out);

int compact_portable(const float* x, int n, int32_t k0, int32_t* ks, float* values);
int compact_avx2(const float* x, int n, int32_t k0, int32_t* ks, float* values);
int compact_avx512(const float* x, int n, int32_t k0, int32_t* ks, float* values);

void accumulate_portable(const AccumulateArgs& args, int ocb);
void accumulate_avx2(const AccumulateArgs& args, int ocb);    // ocb in {8, 16, ..., 64}
void accumulate_avx512(const AccumulateArgs& args, int ocb);  // ocb in {16, 32, 48, 64}

void dense_accumulate_portable(const DenseAccumulateArgs& args, int ocb);
void dense_accumulate_avx2(const DenseAccumulateArgs& args, int ocb);    // ocb a multiple of 8
void dense_accumulate_avx512(const DenseAccumulateArgs& args, int ocb);  // ocb a multiple of 16

void union_accumulate_portable(const UnionAccumulateArgs& args, int ocb, int rows);
void union_accumulate_avx2(const UnionAccumulateArgs& args, int ocb, int rows);    // ocb in {8, 16, ..., 64}
void union_accumulate_avx512(const UnionAccumulateArgs& args, int ocb, int rows);  // ocb in {16, 32, 48, 64}

}  // namespace zapopt
