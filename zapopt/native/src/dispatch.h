// Which instruction-set path runs: chosen at run time from cpuid, or forced with the
// environment variable ZAPOPT_KERNEL_PATH=avx512|avx2|portable.
#pragma once
#include <string>

#include "layout.h"
#include "microkernel.h"

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
  int lanes;       // output channels per vector register
  int max_vectors; // accumulators per position (ocb <= lanes * max_vectors)
  WriteBackFn write_back;
};
PathTraits traits_of(KernelPath path);

}  // namespace zapopt
