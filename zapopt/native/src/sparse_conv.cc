#include "sparse_conv.h"

#include <algorithm>
#include <cmath>

namespace zapopt {
namespace {

// Output positions sharing one weight slab. 64 rather than 16: layers with few positions and
// large weights (512->512 3x3 7x7, 9.4 MB) stream their weights from L3/memory once per tile;
// 1 thread, CPU-time ratio stock/native at 0 % zeros 0.54 -> 0.79 (256->256 3x3 14x14 and the
// 56x56 layers unchanged within noise).
constexpr int kTilePositions = 64;
constexpr int kWeightSlabBytes = 16384;  // one K block x one channel block, kept in L1 (32 KiB)
constexpr size_t kMinJobs = 16;        // enough jobs to keep a few threads busy
constexpr size_t kTasks = 32;          // tasks handed to the thread pool per run
// Inputs whose nonzero lists fit in this many bytes (per batch item and group) are compacted
// once and shared by all jobs; larger ones are compacted band by band inside each job, so the
// lists are still in cache when they are read (halo rows are compacted twice).
constexpr int64_t kSharedListBytes = int64_t{4} << 20;
// A (tile, tap, chunk) step whose inputs are at least this share nonzero (padding counts as
// zero) runs the register-blocked dense path (one weight load per channel feeds several
// positions); sparser ones walk the per-position nonzero lists. Measured on Zen 3, 1 thread,
// CPU-time ratio stock/native, lists vs dense (64-position tiles): at 0 % input zeros
// 0.57/0.72 (64->64 3x3 56x56), 0.68/0.74 (256->256 3x3 14x14), 0.48/0.56 (1024->256 1x1
// 14x14); at 5 % zeros 0.64/0.79, 0.59/0.58, 0.55/0.69; at 20 % zeros even (0.64/0.65,
// 0.64/0.66, 0.50/0.53); at 30 % the lists win (0.65/0.59, 0.66/0.54 with 16-position tiles).
// Single ratios move by +-15 % on the shared machine; the break-even is about 80 % nonzero.
constexpr float kDenseCutover = 0.85f;
// 1x1 convs break even much lower: at 50 % scattered zeros, 1 thread, stock/native lists vs
// dense 0.75/0.76 (256->64 56x56), 0.50/0.68 (1024->256 14x14), real OpenNSFW input (45 %
// zeros) 0.58/0.66; at 70 % zeros the lists win (1.02/0.80, 0.66/0.66; real 61 %: 0.87/0.74).
constexpr float kDenseCutoverPointwise = 0.5f;
// The union form (groups of positions sharing each weight row over the union of their nonzero
// channels, dense_microkernel.h) is not chosen automatically: on Zen 3 (1 thread, CPU-time
// ratio stock/native, rotated runs, 50 % scattered zeros / real OpenNSFW inputs) it lost to the
// lists on every ResNet-50 layer shape, e.g. 64->64 3x3: lists 0.91 / 0.87, union of 3
// positions 0.68 / 0.75; 256->256 3x3: 0.76 / 1.16 vs 0.62 / 0.96. Real ReLU zeros overlap too
// little (union of 3 adjacent positions = 1.2-1.8x their own nonzeros) for its weight reuse to
// pay. ZAPOPT_ACCUMULATION=union2|union3|... forces it (benchmarks/native_accumulation.py).
// Layers whose packed weights (per group) exceed this stream them from L3 or memory once per
// tile; the dense path reads each slab in 24-channel pieces, which the prefetcher follows
// poorly (512->512 3x3 7x7, 9.4 MB: 0.55 with lists, 0.34 dense), so they keep the lists.
constexpr int64_t kDenseMaxWeightBytes = int64_t{4} << 20;

int64_t conv_out(int64_t size, int64_t kernel, int64_t stride, int64_t pad_begin, int64_t pad_end,
                 int64_t dilation) {
  const int64_t span = dilation * (kernel - 1) + 1;
  const int64_t padded = size + pad_begin + pad_end;
  if (padded < span) return 0;
  return (padded - span) / stride + 1;
}

}  // namespace

int64_t ConvGeometry::out_h(int64_t h) const {
  return conv_out(h, kh, stride_h, pad_top, pad_bottom, dilation_h);
}
int64_t ConvGeometry::out_w(int64_t w) const {
  return conv_out(w, kw, stride_w, pad_left, pad_right, dilation_w);
}

struct PackedConv::Job {
  int64_t n, g;
  int64_t start, count;  // positions[n][start, start + count)
  int b0, b1;            // output-channel blocks [b0, b1) of group g
};

std::unique_ptr<PackedConv> PackedConv::create(const ConvGeometry& geo, const float* weights,
                                               const float* bias, KernelPath path, std::string* error) {
  if (geo.group < 1 || geo.c_out < 1 || geo.c_in < 1 || geo.c_out % geo.group != 0 ||
      geo.c_in % geo.group != 0) {
    *error = "C_in and C_out must be positive multiples of group";
    return nullptr;
  }
  if (geo.kh < 1 || geo.kw < 1 || geo.stride_h < 1 || geo.stride_w < 1 || geo.dilation_h < 1 ||
      geo.dilation_w < 1 || geo.pad_top < 0 || geo.pad_left < 0 || geo.pad_bottom < 0 ||
      geo.pad_right < 0) {
    *error = "kernel size, strides and dilations must be >= 1 and pads >= 0";
    return nullptr;
  }
  const int64_t k_size = geo.k_size();
  if (k_size > (int64_t{1} << 24) || geo.c_out > (int64_t{1} << 24)) {
    *error = "layer too large for this kernel (C_in/group * kH * kW and C_out must be < 2^24)";
    return nullptr;
  }
  std::unique_ptr<PackedConv> conv(new PackedConv());
  conv->geometry_ = geo;
  const int64_t cg_out = geo.cg_out();
  PathTraits traits = traits_of(path);
  conv->compact_ = traits.compact;
  conv->transpose_row_ = traits.transpose_row;
  // Too few channels per group to fill one vector: a narrower path wastes less work.
  if (cg_out < traits.lanes && path == KernelPath::kAvx512 && cg_out >= traits_of(KernelPath::kAvx2).lanes) {
    path = KernelPath::kAvx2;
    traits = traits_of(path);
  }
  if (cg_out < traits.lanes) {
    path = KernelPath::kPortable;
    traits = traits_of(path);
  }
  conv->path_ = path;
  conv->accumulate_ = traits.accumulate;
  conv->dense_accumulate_ = traits.dense_accumulate;
  conv->union_accumulate_ = traits.union_accumulate;
  if (!select_accumulation(&conv->accumulation_, error)) return nullptr;
  const int64_t max_ocb = int64_t{traits.lanes} * traits.max_vectors;
  const int64_t blocks = (cg_out + max_ocb - 1) / max_ocb;
  const int64_t per_block = (cg_out + blocks - 1) / blocks;
  conv->ocb_ = static_cast<int>((per_block + traits.lanes - 1) / traits.lanes * traits.lanes);
  conv->blocks_ = static_cast<int>(blocks);
  const int64_t chunk = std::clamp<int64_t>(kWeightSlabBytes / (conv->ocb_ * int64_t{sizeof(float)}), 16, 512);
  conv->chunks_ = static_cast<int>((geo.cg_in() + chunk - 1) / chunk);
  conv->chunk_ = static_cast<int>((geo.cg_in() + conv->chunks_ - 1) / conv->chunks_);  // balanced chunks

  const int64_t ocb = conv->ocb_;
  conv->weights_.assign(static_cast<size_t>(geo.group * blocks * k_size * ocb), 0.0f);
  for (int64_t g = 0; g < geo.group; ++g) {
    for (int64_t b = 0; b < blocks; ++b) {
      float* slab = conv->weights_.data() + (g * blocks + b) * k_size * ocb;
      for (int64_t o = 0; o < ocb && b * ocb + o < cg_out; ++o) {
        const float* row = weights + (g * cg_out + b * ocb + o) * k_size;  // W[oc] is [C_in/g, kH, kW]
        for (int64_t c = 0; c < geo.cg_in(); ++c) {
          for (int64_t tap = 0; tap < geo.kh * geo.kw; ++tap) {
            slab[(tap * geo.cg_in() + c) * ocb + o] = row[c * geo.kh * geo.kw + tap];
          }
        }
      }
    }
  }
  conv->bias_.assign(static_cast<size_t>(geo.c_out), 0.0f);
  if (bias != nullptr) std::copy(bias, bias + geo.c_out, conv->bias_.begin());
  conv->padded_bias_.assign(static_cast<size_t>(geo.group * blocks * ocb), 0.0f);
  for (int64_t g = 0; g < geo.group; ++g) {
    for (int64_t oc = 0; oc < cg_out; ++oc) conv->padded_bias_[g * blocks * ocb + oc] = conv->bias_[g * cg_out + oc];
  }
  return conv;
}

// The nonzero lists of the pixels of input rows [row_begin, row_end) of one batch item and group.
struct PackedConv::Band {
  int64_t row_begin = 0, row_end = 0;
  int64_t stride = 0;  // entries reserved per list (chunk + vector slack)
  std::unique_ptr<int32_t[]> channels;  // channel within the chunk
  std::unique_ptr<float[]> values;
  std::unique_ptr<int32_t[]> counts;  // [row][column][chunk]
  std::unique_ptr<float[]> pixels;    // [row][column][channel]: the dense inputs (NHWC)
};

void PackedConv::compact_band(const float* x, int64_t n, int64_t g, int64_t h, int64_t w, int64_t row_begin,
                              int64_t row_end, Band* band) const {
  const int64_t cg_in = geometry_.cg_in();
  band->row_begin = row_begin, band->row_end = row_end;
  band->stride = chunk_ + kCompactSlack;
  const size_t lists = static_cast<size_t>(std::max<int64_t>(0, row_end - row_begin) * w * chunks_);
  band->channels.reset(new int32_t[std::max<size_t>(1, lists * band->stride)]);  // written before read
  band->values.reset(new float[std::max<size_t>(1, lists * band->stride)]);
  band->counts.reset(new int32_t[std::max<size_t>(1, lists)]);
  band->pixels.reset(new float[std::max<size_t>(1, static_cast<size_t>(std::max<int64_t>(0, row_end - row_begin) * w * cg_in))]);
  const float* group_planes = x + (n * geometry_.c_in + g * cg_in) * h * w;
  for (int64_t y = row_begin; y < row_end; ++y) {
    float* pixels = band->pixels.get() + (y - row_begin) * w * cg_in;
    transpose_row_(group_planes + y * w, h * w, cg_in, w, pixels);
    for (int64_t col = 0; col < w; ++col) {
      for (int j = 0; j < chunks_; ++j) {
        const int64_t c0 = int64_t{j} * chunk_, c1 = std::min<int64_t>(cg_in, c0 + chunk_);
        const int64_t list = ((y - row_begin) * w + col) * chunks_ + j;
        band->counts[list] = compact_(pixels + col * cg_in + c0, static_cast<int>(c1 - c0), 0,
                                      band->channels.get() + list * band->stride,
                                      band->values.get() + list * band->stride);
      }
    }
  }
}

bool PackedConv::run(const float* x, int64_t n, int64_t h, int64_t w,
                     const std::vector<const std::vector<int32_t>*>& positions, const Epilogue& epilogue,
                     const ParallelFor& parallel_for, std::string* error) const {
  const ConvGeometry& geo = geometry_;
  const int64_t ho = geo.out_h(h), wo = geo.out_w(w);
  // Jobs: (batch item, group, run of consecutive positions, range of channel blocks), handed
  // to the pool as about kTasks tasks. With shared lists a job is one tile; otherwise about
  // kTasks position runs in all (each compacts its own input band, so not too many). Channel
  // blocks are split further when that leaves too few jobs.
  int64_t total = 0;
  for (int64_t i = 0; i < n; ++i) total += static_cast<int64_t>(positions[i]->size());
  if (total == 0) return true;
  const int64_t list_bytes = h * w * (chunks_ * (chunk_ + kCompactSlack) * int64_t{2 * sizeof(float)} +
                                      geo.cg_in() * int64_t{sizeof(float)});
  const bool share_lists = list_bytes <= kSharedListBytes;
  const int64_t per_job_raw =
      share_lists ? kTilePositions : std::max<int64_t>(kTilePositions, (total * geo.group + kTasks - 1) / kTasks);
  const int64_t per_job = (per_job_raw + kTilePositions - 1) / kTilePositions * kTilePositions;
  size_t runs = 0;
  for (int64_t i = 0; i < n; ++i) runs += (positions[i]->size() + per_job - 1) / per_job;
  runs *= static_cast<size_t>(geo.group);
  const int splits = static_cast<int>(std::min<size_t>(blocks_, (kMinJobs + runs - 1) / runs));
  const int per_split = (blocks_ + splits - 1) / splits;
  std::vector<Job> jobs;
  jobs.reserve(runs * splits);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t count = static_cast<int64_t>(positions[i]->size());
    for (int64_t g = 0; g < geo.group; ++g) {
      for (int64_t start = 0; start < count; start += per_job) {
        for (int b0 = 0; b0 < blocks_; b0 += per_split) {
          jobs.push_back({i, g, start, std::min<int64_t>(per_job, count - start), b0, std::min(blocks_, b0 + per_split)});
        }
      }
    }
  }
  std::vector<Band> shared;
  if (share_lists) {
    shared.resize(static_cast<size_t>(n * geo.group));
    const bool compacted = parallel_for(shared.size(), [&](size_t i) {
      compact_band(x, static_cast<int64_t>(i) / geo.group, static_cast<int64_t>(i) % geo.group, h, w, 0, h, &shared[i]);
    });
    if (!compacted) {
      *error = "compacting the input failed on onnxruntime's thread pool (out of memory?)";
      return false;
    }
  }
  const size_t per_task = std::max<size_t>(1, jobs.size() / kTasks);
  const size_t tasks = (jobs.size() + per_task - 1) / per_task;
  const bool ok = parallel_for(tasks, [&](size_t task) {
    const size_t end = std::min(jobs.size(), (task + 1) * per_task);
    for (size_t j = task * per_task; j < end; ++j) {
      const Band* band = shared.empty() ? nullptr : &shared[static_cast<size_t>(jobs[j].n * geo.group + jobs[j].g)];
      run_job(jobs[j], x, h, w, ho, wo, positions, epilogue, band);
    }
  });
  if (!ok) {
    *error = "the convolution failed on onnxruntime's thread pool (out of memory for its scratch buffers?)";
    return false;
  }
  return true;
}


template <bool kSkip, bool kAux, bool kMasked>
void PackedConv::finish_tile(const Job& job, const int32_t* pos, int32_t tile, float* acc, int acc_stride,
                             int64_t wo, int64_t plane_out, const Epilogue& ep) const {
  const ConvGeometry& geo = geometry_;
  const int64_t cg_out = geo.cg_out();
  const float clip_max = ep.clip_max;
  const bool relu = ep.relu;
  if (!kSkip && !kAux && !kMasked) {
    // Bias and activation on the NHWC accumulators (contiguous, vectorized), then a plain copy.
    const float* bias = padded_bias_.data() + (job.g * blocks_ + job.b0) * int64_t{ocb_};
    for (int32_t t = 0; t < tile; ++t) {
      float* row = acc + static_cast<size_t>(t) * acc_stride;
      if (relu) {
        for (int i = 0; i < acc_stride; ++i) row[i] = std::min(std::max(row[i] + bias[i], 0.0f), clip_max);
      } else {
        for (int i = 0; i < acc_stride; ++i) row[i] += bias[i];
      }
    }
    for (int b = 0; b < job.b1 - job.b0; ++b) {
      for (int o = 0; o < ocb_; ++o) {
        const int64_t oc_local = int64_t{job.b0 + b} * ocb_ + o;
        if (oc_local >= cg_out) break;
        float* y = ep.y + (job.n * geo.c_out + job.g * cg_out + oc_local) * plane_out;
        const float* a = acc + static_cast<size_t>(b) * ocb_ + o;
        for (int32_t t = 0; t < tile; ++t) y[pos[t]] = a[static_cast<size_t>(t) * acc_stride];
      }
    }
    return;
  }
  for (int b = 0; b < job.b1 - job.b0; ++b) {
    for (int o = 0; o < ocb_; ++o) {
      const int64_t oc_local = int64_t{job.b0 + b} * ocb_ + o;
      if (oc_local >= cg_out) break;
      const int64_t oc = job.g * cg_out + oc_local;
      const float bias = bias_[oc];
      const int64_t plane = (job.n * geo.c_out + oc) * plane_out;
      const float* a = acc + static_cast<size_t>(b) * ocb_ + o;
      float* y = ep.y + plane;
      for (int32_t t = 0; t < tile; ++t) {
        const int64_t p = pos[t];
        if (kMasked && ep.computed[plane + p] == 0) {
          y[p] = 0.0f;
          continue;
        }
        float v = a[static_cast<size_t>(t) * acc_stride] + bias;
        if (kSkip && ep.skip != nullptr) {
          v += ep.skip[job.n * ep.skip_strides[0] + oc * ep.skip_strides[1] + (p / wo) * ep.skip_strides[2] +
                       (p % wo) * ep.skip_strides[3]];
        }
        const float full = relu ? std::min(std::max(v, 0.0f), clip_max) : v;
        y[p] = full;
        if (kAux && ep.aux != nullptr) ep.aux[plane + p] = ep.aux_preactivation ? v : full;
      }
    }
  }
}

AccumulationChoice PackedConv::choose_accumulation(int64_t nonzeros, int64_t slots, bool dense_ok) const {
  if (accumulation_.form != AccumulationChoice::kAuto) return accumulation_;
  AccumulationChoice choice;
  const float cutover = geometry_.kh * geometry_.kw == 1 ? kDenseCutoverPointwise : kDenseCutover;
  const bool dense = dense_ok && static_cast<float>(nonzeros) >= cutover * static_cast<float>(slots);
  choice.form = dense ? AccumulationChoice::kDense : AccumulationChoice::kLists;
  return choice;
}

void PackedConv::run_job(const Job& job, const float* x, int64_t h, int64_t w, int64_t ho, int64_t wo,
                         const std::vector<const std::vector<int32_t>*>& positions, const Epilogue& ep,
                         const Band* shared_band) const {
  const ConvGeometry& geo = geometry_;
  const int64_t k_size = geo.k_size();
  const int64_t cg_out = geo.cg_out(), cg_in = geo.cg_in();
  const int ocb = ocb_;
  const int n_blocks = job.b1 - job.b0;
  const int32_t* job_pos = positions[job.n]->data() + job.start;
  const int64_t plane_out = ho * wo;
  const int acc_stride = n_blocks * ocb;
  const bool dense_ok = int64_t{blocks_} * k_size * ocb * int64_t{sizeof(float)} <= kDenseMaxWeightBytes;

  // The input rows this job's positions read, compacted once for all its tiles (unless the
  // whole input's lists are shared).
  Band own;
  if (shared_band == nullptr) {
    int64_t oh_min = ho, oh_max = -1;
    for (int64_t i = 0; i < job.count; ++i) {
      oh_min = std::min<int64_t>(oh_min, job_pos[i] / wo);
      oh_max = std::max<int64_t>(oh_max, job_pos[i] / wo);
    }
    compact_band(x, job.n, job.g, h, w, std::max<int64_t>(0, oh_min * geo.stride_h - geo.pad_top),
                 std::min<int64_t>(h, oh_max * geo.stride_h - geo.pad_top + (geo.kh - 1) * geo.dilation_h + 1),
                 &own);
  }
  const Band& band = shared_band != nullptr ? *shared_band : own;

  // Per position of a tile: the list of the pixel under the current tap (count 0 in padding).
  std::unique_ptr<const int32_t*[]> channel_lists(new const int32_t*[kTilePositions]);
  std::unique_ptr<const float*[]> value_lists(new const float*[kTilePositions]);
  std::unique_ptr<int32_t[]> counts(new int32_t[kTilePositions]);
  std::unique_ptr<const float*[]> dense_inputs(new const float*[kTilePositions]);
  std::unique_ptr<float[]> zeros(new float[static_cast<size_t>(chunk_)]());  // the padding's inputs
  std::unique_ptr<int64_t[]> ih0(new int64_t[kTilePositions]), iw0(new int64_t[kTilePositions]);
  // Accumulators, deliberately uninitialized: the first tap's pass writes them, and those of
  // skipped (position, block) pairs are never used (their outputs are 0).
  std::unique_ptr<float[]> acc(new float[static_cast<size_t>(kTilePositions) * acc_stride]);
  std::vector<uint8_t> needed(ep.computed != nullptr ? static_cast<size_t>(kTilePositions) * n_blocks : 0);

  for (int64_t tile_start = 0; tile_start < job.count; tile_start += kTilePositions) {
    const int32_t* pos = job_pos + tile_start;
    const int32_t tile = static_cast<int32_t>(std::min<int64_t>(kTilePositions, job.count - tile_start));
    if (ep.computed != nullptr) {
      // A (position, block) is computed only if one of the block's channels is.
      for (int32_t t = 0; t < tile; ++t) {
        for (int b = 0; b < n_blocks; ++b) {
          const int64_t oc0 = job.g * cg_out + int64_t{job.b0 + b} * ocb;
          const int64_t oc1 = job.g * cg_out + std::min<int64_t>(cg_out, int64_t{job.b0 + b + 1} * ocb);
          const uint8_t* m = ep.computed + (job.n * geo.c_out + oc0) * plane_out + pos[t];
          uint8_t any = 0;
          for (int64_t oc = oc0; oc < oc1; ++oc, m += plane_out) any |= *m;
          needed[static_cast<size_t>(t) * n_blocks + b] = any;
        }
      }
    }
    for (int32_t t = 0; t < tile; ++t) {
      ih0[t] = (pos[t] / wo) * geo.stride_h - geo.pad_top;
      iw0[t] = (pos[t] % wo) * geo.stride_w - geo.pad_left;
    }
    bool first = true;
    for (int64_t a = 0; a < geo.kh; ++a) {
      for (int64_t bw = 0; bw < geo.kw; ++bw) {
        const int64_t tap = a * geo.kw + bw;
        for (int j = 0; j < chunks_; ++j) {
          const int64_t c0 = int64_t{j} * chunk_;
          const int32_t k = static_cast<int32_t>(std::min<int64_t>(chunk_, cg_in - c0));
          int64_t nonzeros = 0;
          for (int32_t t = 0; t < tile; ++t) {
            const int64_t ih = ih0[t] + a * geo.dilation_h, iw = iw0[t] + bw * geo.dilation_w;
            if (ih < band.row_begin || ih >= band.row_end || iw < 0 || iw >= w) {  // padding
              counts[t] = 0;
              channel_lists[t] = band.channels.get();
              value_lists[t] = band.values.get();
              dense_inputs[t] = zeros.get();
              continue;
            }
            const int64_t pixel = (ih - band.row_begin) * w + iw;
            const int64_t list = pixel * chunks_ + j;
            counts[t] = band.counts[list];
            nonzeros += counts[t];
            channel_lists[t] = band.channels.get() + list * band.stride;
            value_lists[t] = band.values.get() + list * band.stride;
            dense_inputs[t] = band.pixels.get() + pixel * cg_in + c0;
          }
          const int64_t k0 = tap * cg_in + c0;
          auto block_target = [&](int b) {
            TileTarget target;
            target.positions = tile;
            target.needed = needed.empty() ? nullptr : needed.data() + b;
            target.needed_stride = n_blocks;
            target.weights = weights_.data() + ((job.g * blocks_ + job.b0 + b) * k_size + k0) * ocb;
            target.acc = acc.get() + static_cast<size_t>(b) * ocb;
            target.acc_stride = acc_stride;
            target.first = first;
            return target;
          };
          const AccumulationChoice form = choose_accumulation(nonzeros, int64_t{tile} * k, dense_ok);
          if (form.form != AccumulationChoice::kLists) {
            for (int b = 0; b < n_blocks; ++b) {
              DenseAccumulateArgs args;
              static_cast<TileTarget&>(args) = block_target(b);
              args.inputs = dense_inputs.get();
              args.k = k;
              if (form.form == AccumulationChoice::kDense) {
                dense_accumulate_(args, ocb);
              } else {
                UnionAccumulateArgs with_lists;
                static_cast<DenseAccumulateArgs&>(with_lists) = args;
                with_lists.channels = channel_lists.get();
                with_lists.values = value_lists.get();
                with_lists.counts = counts.get();
                union_accumulate_(with_lists, ocb, form.rows);
              }
            }
            first = false;
            continue;
          }
          for (int b = 0; b < n_blocks; ++b) {
            AccumulateArgs args;
            static_cast<TileTarget&>(args) = block_target(b);
            args.channels = channel_lists.get();
            args.values = value_lists.get();
            args.counts = counts.get();
            accumulate_(args, ocb);
          }
          first = false;
        }
      }
    }
    // Bias, Skip, activation, and the transpose back to NCHW.
    const bool has_skip = ep.skip != nullptr, has_aux = ep.aux != nullptr, masked = ep.computed != nullptr;
    if (!has_skip && !has_aux && !masked) {
      finish_tile<false, false, false>(job, pos, tile, acc.get(), acc_stride, wo, plane_out, ep);
    } else if (!masked) {
      finish_tile<true, true, false>(job, pos, tile, acc.get(), acc_stride, wo, plane_out, ep);
    } else {
      finish_tile<true, true, true>(job, pos, tile, acc.get(), acc_stride, wo, plane_out, ep);
    }
  }
}

}  // namespace zapopt
