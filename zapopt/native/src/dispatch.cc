#include "dispatch.h"

#include <cstdlib>
#include <cstring>

namespace zapopt {

const char* path_name(KernelPath path) {
  switch (path) {
    case KernelPath::kAvx512: return "avx512";
    case KernelPath::kAvx2: return "avx2";
    default: return "portable";
  }
}

bool cpu_has(KernelPath path) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  switch (path) {
    case KernelPath::kAvx512:  // the AVX-512 path also uses the AVX2 transposes
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case KernelPath::kAvx2: return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    default: return true;
  }
#else
  return path == KernelPath::kPortable;
#endif
}

bool select_path(KernelPath* path, std::string* error) {
  const char* forced = std::getenv("ZAPOPT_KERNEL_PATH");
  if (forced == nullptr || forced[0] == '\0' || std::strcmp(forced, "auto") == 0) {
    *path = cpu_has(KernelPath::kAvx512) ? KernelPath::kAvx512
            : cpu_has(KernelPath::kAvx2) ? KernelPath::kAvx2
                                         : KernelPath::kPortable;
    return true;
  }
  for (KernelPath p : {KernelPath::kAvx512, KernelPath::kAvx2, KernelPath::kPortable}) {
    if (std::strcmp(forced, path_name(p)) == 0) {
      if (!cpu_has(p)) {
        *error = std::string("ZAPOPT_KERNEL_PATH=") + forced +
                 " but this CPU lacks that instruction set; unset it or choose one of the paths "
                 "zapopt_kernel_paths() lists";
        return false;
      }
      *path = p;
      return true;
    }
  }
  *error = std::string("ZAPOPT_KERNEL_PATH=") + forced + " is not one of avx512, avx2, portable, auto";
  return false;
}

PathTraits traits_of(KernelPath path) {
  switch (path) {
    case KernelPath::kAvx512: return {transpose_row_avx2, compact_avx512, accumulate_avx512, dense_accumulate_avx512, union_accumulate_avx512, 16, 4, write_back_avx2, pointwise_avx512};
    case KernelPath::kAvx2: return {transpose_row_avx2, compact_avx2, accumulate_avx2, dense_accumulate_avx2, union_accumulate_avx2, 8, 8, write_back_avx2, pointwise_avx2};
    default: return {transpose_row_portable, compact_portable, accumulate_portable, dense_accumulate_portable, union_accumulate_portable, 1, 32, write_back_portable, pointwise_portable};
  }
}

bool select_accumulation(AccumulationChoice* choice, std::string* error) {
  const char* forced = std::getenv("ZAPOPT_ACCUMULATION");
  *choice = AccumulationChoice{};
  if (forced == nullptr || forced[0] == '\0' || std::strcmp(forced, "auto") == 0) return true;
  if (std::strcmp(forced, "lists") == 0) {
    choice->form = AccumulationChoice::kLists;
    return true;
  }
  if (std::strcmp(forced, "dense") == 0) {
    choice->form = AccumulationChoice::kDense;
    return true;
  }
  if (std::strncmp(forced, "union", 5) == 0 && forced[5] >= '1' && forced[5] <= '4' && forced[6] == '\0') {
    choice->form = AccumulationChoice::kUnion;
    choice->rows = forced[5] - '0';
    return true;
  }
  *error = std::string("ZAPOPT_ACCUMULATION=") + forced +
           " is not one of auto, lists, dense, union1, union2, union3, union4";
  return false;
}

}  // namespace zapopt
