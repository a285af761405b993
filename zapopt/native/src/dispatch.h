// Which instruction-set path runs: chosen at run time from cpuid, or forced with the
// environment variable ZAPOPT_KERNEL_PATH=avx512|avx2|portable.
#pragma once
#include <string>

#include "layout.h"
#include "microkernel.h"
#include "pointwise.h"

namespace zapopt {

enum class KernelPath { kPortable, kAvx2, kAvx512 };

const char* path_name(KernelPath path);
bool cpu_has(KernelPath path);

// The path a new kernel uses; on failure returns false and says why in *error.
bool select_path(KernelPath* path, std::string* error);

struct PathTraits {
  TransposeRowFn transpose_row;
  CompactFn compact;
  AccumulateFn accumulate;
  DenseAccumulateFn dense_accumulate;
  UnionAccumulateFn union_accumulate;
  int lanes;       // output channels per vector register
  int max_vectors; // accumulators per position (ocb <= lanes * max_vectors)
  WriteBackFn write_back;
  PointwiseFn pointwise;
};
PathTraits traits_of(KernelPath path);

// Which accumulation form the (tile, tap, chunk) steps run: chosen per step from its nonzero
// counts (kAuto), or forced for every step with the environment variable
// ZAPOPT_ACCUMULATION=lists|dense|union1|union2|union3|union4 (tests and measurements; unionR
// groups R positions).
struct AccumulationChoice {
  enum Form { kAuto, kLists, kDense, kUnion } form = kAuto;
  int rows = 0;  // positions per group of kUnion
};

// The choice a new kernel uses; on failure returns false and says why in *error.
bool select_accumulation(AccumulationChoice* choice, std::string* error);

}  // namespace zapopt
