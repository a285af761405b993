// Scratch memory for one kernel run.
//
// The per-run buffers (the transposed input, its nonzero lists, ZapConv's partial output and
// mask) are megabytes on 56x56 layers. With new[]/delete[] glibc returned them to the system
// after every run and the next run page-faulted them in again: ~360 faults and ~1 ms of a
// 2.5 ms run of a 32->32 3x3 56x56 conv. onnxruntime's allocator (its CPU arena, unless the
// session turns the arena off) hands the same blocks back instead.
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <new>
#include <type_traits>

#include "aligned.h"

namespace zapopt {

// Where one run's scratch memory comes from; allocate throws std::bad_alloc on failure.
// Thread-safe: the jobs of one run allocate from several pool threads at once.
class Scratch {
 public:
  virtual void* allocate(size_t bytes) const = 0;
  virtual void release(void* p) const noexcept = 0;

 protected:
  ~Scratch() = default;
};

// The plain heap, for callers without an onnxruntime allocator.
class HeapScratch final : public Scratch {
 public:
  void* allocate(size_t bytes) const override { return ::operator new(bytes); }
  void release(void* p) const noexcept override { ::operator delete(p); }
};

// An uninitialized array of trivial values in scratch memory, released when it goes out of scope.
template <class T>
class ScratchArray {
  static_assert(std::is_trivially_copyable<T>::value && std::is_trivially_destructible<T>::value,
                "scratch arrays hold plain values only");

 public:
  ScratchArray() = default;
  // The data starts on a cache line whatever the allocator's alignment (aligned.h: whole-vector
  // loads must not straddle lines).
  ScratchArray(const Scratch& scratch, size_t count)
      : scratch_(&scratch), raw_(scratch.allocate(std::max<size_t>(1, count) * sizeof(T) + kCacheLine)) {
    const uintptr_t address = reinterpret_cast<uintptr_t>(raw_);
    data_ = reinterpret_cast<T*>((address + kCacheLine - 1) / kCacheLine * kCacheLine);
  }
  ScratchArray(const ScratchArray&) = delete;
  ScratchArray& operator=(const ScratchArray&) = delete;
  ScratchArray(ScratchArray&& other) noexcept : scratch_(other.scratch_), raw_(other.raw_), data_(other.data_) {
    other.raw_ = nullptr;
    other.data_ = nullptr;
  }
  ScratchArray& operator=(ScratchArray&& other) noexcept {
    if (this != &other) {
      reset();
      scratch_ = other.scratch_;
      raw_ = other.raw_;
      data_ = other.data_;
      other.raw_ = nullptr;
      other.data_ = nullptr;
    }
    return *this;
  }
  ~ScratchArray() { reset(); }

  T* get() const { return data_; }
  T& operator[](size_t i) const { return data_[i]; }

 private:
  void reset() {
    if (raw_ != nullptr) scratch_->release(raw_);
    raw_ = nullptr;
    data_ = nullptr;
  }
  const Scratch* scratch_ = nullptr;
  void* raw_ = nullptr;  // what the allocator returned (data_ is raw_ rounded up to a line)
  T* data_ = nullptr;
};

}  // namespace zapopt
