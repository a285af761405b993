// The zero-skipping direct convolution shared by ZeroSkipConv and ZapConv.
//
// Vectorized along output channels. Each input pixel's channel vector (per group, in chunks of
// `chunk` channels) is compacted into a list of its nonzero (channel, value) entries: once for
// the whole input when those lists are small, otherwise per job (a run of consecutive output
// positions) for the input rows it reads, so the lists are still in cache when read. Each output position then walks, tap by
// tap, the lists of the pixels under its receptive field; each entry costs one broadcast and
// ocb/lanes fused multiply-adds with the packed weight row W[(tap, channel), oc-block]. Zero
// inputs and padding are simply not in the lists. Weights are packed once, at kernel
// creation, as [group][oc-block][tap][channel][ocb].
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "aligned.h"
#include "dispatch.h"
#include "microkernel.h"
#include "pointwise.h"
#include "scratch.h"

namespace zapopt {

struct ConvGeometry {
  int64_t c_in = 0, c_out = 0, group = 1, kh = 1, kw = 1;
  int64_t stride_h = 1, stride_w = 1, dilation_h = 1, dilation_w = 1;
  int64_t pad_top = 0, pad_left = 0, pad_bottom = 0, pad_right = 0;

  int64_t cg_in() const { return c_in / group; }
  int64_t cg_out() const { return c_out / group; }
  int64_t k_size() const { return cg_in() * kh * kw; }
  // ONNX Conv output length; < 1 means the output would be empty.
  int64_t out_h(int64_t h) const;
  int64_t out_w(int64_t w) const;
};

// Runs body(i) for i in [0, total), possibly in parallel; false if the pool failed.
using ParallelFor = std::function<bool(size_t total, const std::function<void(size_t)>& body)>;

// What happens to each computed conv value v = acc + bias (+ Skip).
struct Epilogue {
  const float* skip = nullptr;      // broadcast through skip_strides ([N, C_out, H_out, W_out])
  int64_t skip_strides[4] = {0, 0, 0, 0};
  bool relu = true;                 // Full = min(max(v, 0), clip_max) if relu, else v
  float clip_max = 0.0f;            // +inf for plain ReLU
  float* y = nullptr;               // [N, C_out, H_out, W_out]: Full
};

class PackedConv {
 public:
  // Packs W [C_out, C_in/group, kH, kW] for path; B may be null. Returns null and sets *error
  // if the geometry is invalid.
  static std::unique_ptr<PackedConv> create(const ConvGeometry& geometry, const float* weights,
                                            const float* bias, KernelPath path, std::string* error);

  const ConvGeometry& geometry() const { return geometry_; }
  const char* path() const { return path_name(path_); }
  KernelPath kernel_path() const { return path_; }

  // Computes the output positions positions[n] (indices oh * W_out + ow, ascending) of every
  // batch item n of x [N, C_in, H, W] and hands them to the epilogue; its buffers come from
  // scratch. Returns false with *error set if the thread pool or an allocation failed.
  bool run(const float* x, int64_t n, int64_t h, int64_t w,
           const std::vector<const std::vector<int32_t>*>& positions, const Epilogue& epilogue,
           const ParallelFor& parallel_for, const Scratch& scratch, std::string* error) const;

 private:
  PackedConv() = default;
  struct Job;
  struct Band;
  // The list path for batch items [first_item, end_item).
  bool run_items(const float* x, int64_t first_item, int64_t end_item, int64_t h, int64_t w, int64_t ho, int64_t wo,
                 const std::vector<const std::vector<int32_t>*>& positions, bool share_lists, const Epilogue& epilogue,
                 const ParallelFor& parallel_for, const Scratch& scratch, std::string* error) const;
  // The nonzero lists of input rows [row_begin, row_end) of batch item n, group g: allocated,
  // compacted row piece by row piece (each piece on its own, so pieces can run in parallel),
  // then counted (the prefix sums of nonzeros per pixel).
  void compact_band(const float* x, int64_t n, int64_t g, int64_t h, int64_t w, int64_t row_begin, int64_t row_end,
                    const Scratch& scratch, Band* band) const;
  void allocate_band(int64_t w, int64_t row_begin, int64_t row_end, const Scratch& scratch, Band* band) const;
  int64_t rows_per_transpose(int64_t w) const;  // rows transposed per pass (kTransposeBytes)
  void compact_rows(const float* x, int64_t n, int64_t g, int64_t h, int64_t w, int64_t y_begin, int64_t y_end,
                    Band* band) const;
  void count_band(int64_t w, Band* band) const;
  void run_job(const Job& job, const float* x, int64_t h, int64_t w, int64_t ho, int64_t wo,
               const std::vector<const std::vector<int32_t>*>& positions, const Epilogue& epilogue,
               const Band* shared_band, const Scratch& scratch) const;

  // The pointwise path (pointwise.h) for x [N, C_in, H, W] when it applies: returns false
  // (and does nothing) if it does not, else sets *ok (false with *error on a pool failure).
  bool try_pointwise(const float* x, int64_t n, int64_t h, int64_t w,
                     const std::vector<const std::vector<int32_t>*>& positions, const Epilogue& epilogue,
                     const ParallelFor& parallel_for, const Scratch& scratch, std::string* error, bool* ok) const;

  // The accumulation form of one (tile, tap, chunk) step with `nonzeros` of its `slots` inputs
  // nonzero; dense_ok: the layer's weights are small enough for the dense form.
  AccumulationChoice choose_accumulation(int64_t nonzeros, int64_t slots, bool dense_ok) const;

  // Bias, Skip, activation and the transpose back to NCHW of one tile: vectorized through
  // write_back_ when the tile's positions are consecutive and nothing else is asked for,
  // otherwise finish_tile.
  void write_tile(const Job& job, const int32_t* pos, int32_t tile, const float* acc, int acc_stride, int64_t wo,
                  int64_t plane_out, const Epilogue& ep) const;
  // Not inlined into write_tile: on its own it keeps its loop state in registers.
  __attribute__((noinline)) void finish_tile(const Job& job, const int32_t* pos, int32_t tile, const float* acc,
                                             int acc_stride, int64_t wo, int64_t plane_out, const Epilogue& ep) const;

  ConvGeometry geometry_;
  KernelPath path_ = KernelPath::kPortable;
  TransposeRowFn transpose_row_ = nullptr;
  WriteBackFn write_back_ = nullptr;
  CompactFn compact_ = nullptr;
  AccumulateFn accumulate_ = nullptr;
  DenseAccumulateFn dense_accumulate_ = nullptr;
  UnionAccumulateFn union_accumulate_ = nullptr;
  AccumulationChoice accumulation_;  // forced form, or kAuto: per step from its nonzero counts
  int ocb_ = 1;        // output channels per block (a multiple of the path's lanes)
  int blocks_ = 1;     // blocks per group
  int chunk_ = 64;     // input channels per list (keeps one tap x chunk x ocb weight slab in L1)
  int chunks_ = 1;     // chunks per group
  bool prefetch_next_slab_ = false;  // large weights: prefetch each step's successor slab
  PointwiseFn pointwise_ = nullptr;   // set for 1x1, unpadded, one-group layers
  AlignedVector<float> pointwise_weights_;  // [block][C_in][kPointwiseRows], zero-padded rows
  std::vector<float> pointwise_bias_;     // [block][kPointwiseRows]
  AlignedVector<float> weights_;  // [group][block][K = (tap, c)][ocb], zero-padded channels
  std::vector<float> bias_;     // [C_out]
  AlignedVector<float> padded_bias_;  // [group][block][ocb], like the packed output channels
};

}  // namespace zapopt
