// Cache-line aligned storage for what the vector loops load whole vectors from.
//
// glibc's malloc aligns to 16 bytes only, so a std::vector<float> of packed weights started
// 16 bytes into a cache line and every other 32-byte load of a 256-byte weight row crossed a
// line: a split load costs about two. The list loop with everything in L1 (Zen 3, AVX2, 64
// output channels): 3.36 FMA vectors/ns with rows at 16 bytes past a line, 4.64 aligned
// (benchmarks/native_loop_ceiling.py).
#pragma once
#include <cstddef>
#include <new>
#include <vector>

namespace zapopt {

constexpr size_t kCacheLine = 64;

template <class T>
struct CacheLineAllocator {
  using value_type = T;
  CacheLineAllocator() = default;
  template <class U>
  CacheLineAllocator(const CacheLineAllocator<U>&) noexcept {}
  T* allocate(size_t n) { return static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t{kCacheLine})); }
  void deallocate(T* p, size_t) noexcept { ::operator delete(p, std::align_val_t{kCacheLine}); }
  template <class U>
  bool operator==(const CacheLineAllocator<U>&) const noexcept { return true; }
  template <class U>
  bool operator!=(const CacheLineAllocator<U>&) const noexcept { return false; }
};

// A std::vector whose data starts on a cache line.
template <class T>
using AlignedVector = std::vector<T, CacheLineAllocator<T>>;

}  // namespace zapopt
