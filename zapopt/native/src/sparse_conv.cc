#include "sparse_conv.h"

#include <algorithm>
#include <cmath>

namespace zapopt {
namespace {

constexpr int kTilePositions = 16;       // output positions sharing one weight slab
constexpr int kWeightSlabBytes = 16384;  // one K block x one channel block, kept in L1 (32 KiB)
constexpr size_t kMinJobs = 16;        // enough jobs to keep a few threads busy
constexpr size_t kTasks = 32;          // tasks handed to the thread pool per run

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
  return conv;
}

bool PackedConv::compact_input(const float* x, int64_t n, int64_t h, int64_t w, CompactInput* out,
                               const ParallelFor& parallel_for) const {
  const int64_t c = geometry_.c_in, cg_in = geometry_.cg_in();
  out->n = n, out->h = h, out->w = w;
  out->lists_per_pixel = geometry_.group * chunks_;
  out->stride = chunk_ + kCompactSlack;
  const size_t lists = static_cast<size_t>(n * h * w * out->lists_per_pixel);
  out->channels.reset(new int32_t[lists * out->stride]);  // written before read, as counts say
  out->values.reset(new float[lists * out->stride]);
  out->counts.reset(new int32_t[lists]);
  return parallel_for(static_cast<size_t>(n * h), [&](size_t row) {
    const int64_t i = static_cast<int64_t>(row) / h, y = static_cast<int64_t>(row) % h;
    std::unique_ptr<float[]> pixels(new float[static_cast<size_t>(w * c)]);  // this row in NHWC
    transpose_row_(x + i * c * h * w + y * w, h * w, c, w, pixels.get());
    for (int64_t col = 0; col < w; ++col) {
      const int64_t first = (row * w + col) * out->lists_per_pixel;
      for (int64_t g = 0; g < geometry_.group; ++g) {
        for (int j = 0; j < chunks_; ++j) {
          const int64_t c0 = int64_t{j} * chunk_, c1 = std::min<int64_t>(cg_in, c0 + chunk_);
          const int64_t list = first + g * chunks_ + j;
          out->counts[list] = compact_(pixels.get() + col * c + g * cg_in + c0, static_cast<int>(c1 - c0), 0,
                                       out->channels.get() + list * out->stride, out->values.get() + list * out->stride);
        }
      }
    }
  });
}

bool PackedConv::run(const CompactInput& input, const std::vector<const std::vector<int32_t>*>& positions,
                     const Epilogue& epilogue, const ParallelFor& parallel_for, std::string* error) const {
  const ConvGeometry& geo = geometry_;
  const int64_t n = input.n;
  const int64_t ho = geo.out_h(input.h), wo = geo.out_w(input.w);
  // Jobs: (batch item, group, tile of positions, range of channel blocks).
  size_t tiles = 0;
  for (int64_t i = 0; i < n; ++i) tiles += (positions[i]->size() + kTilePositions - 1) / kTilePositions;
  if (tiles == 0) return true;
  const size_t base_jobs = tiles * static_cast<size_t>(geo.group);
  const int chunks = static_cast<int>(std::min<size_t>(blocks_, (kMinJobs + base_jobs - 1) / base_jobs));
  const int per_chunk = (blocks_ + chunks - 1) / chunks;
  std::vector<Job> jobs;
  jobs.reserve(base_jobs * chunks);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t count = static_cast<int64_t>(positions[i]->size());
    for (int64_t g = 0; g < geo.group; ++g) {
      for (int64_t start = 0; start < count; start += kTilePositions) {
        for (int b0 = 0; b0 < blocks_; b0 += per_chunk) {
          jobs.push_back({i, g, start, std::min<int64_t>(kTilePositions, count - start), b0,
                          std::min(blocks_, b0 + per_chunk)});
        }
      }
    }
  }
  // Hand the pool a few dozen tasks of consecutive jobs: enough to balance a handful of
  // threads, few enough that scheduling costs nothing next to the work.
  const size_t per_task = std::max<size_t>(1, jobs.size() / kTasks);
  const size_t tasks = (jobs.size() + per_task - 1) / per_task;
  const bool ok = parallel_for(tasks, [&](size_t task) {
    const size_t end = std::min(jobs.size(), (task + 1) * per_task);
    for (size_t j = task * per_task; j < end; ++j) run_job(jobs[j], input, ho, wo, positions, epilogue);
  });
  if (!ok) {
    *error = "the convolution failed on onnxruntime's thread pool (out of memory for its scratch buffers?)";
    return false;
  }
  return true;
}

template <bool kSkip, bool kAux, bool kMasked>
void PackedConv::finish_tile(const Job& job, const int32_t* pos, int32_t tile, const float* acc, int acc_stride,
                             int64_t wo, int64_t plane_out, const Epilogue& ep) const {
  const ConvGeometry& geo = geometry_;
  const int64_t cg_out = geo.cg_out();
  const float clip_max = ep.clip_max;
  const bool relu = ep.relu;
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

void PackedConv::run_job(const Job& job, const CompactInput& input, int64_t ho, int64_t wo,
                         const std::vector<const std::vector<int32_t>*>& positions, const Epilogue& ep) const {
  const ConvGeometry& geo = geometry_;
  const int64_t k_size = geo.k_size();
  const int64_t cg_out = geo.cg_out(), cg_in = geo.cg_in();
  const int ocb = ocb_;
  const int n_blocks = job.b1 - job.b0;
  const int32_t* pos = positions[job.n]->data() + job.start;
  const int32_t tile = static_cast<int32_t>(job.count);
  const int64_t plane_out = ho * wo;
  const int acc_stride = n_blocks * ocb;
  const int64_t h = input.h, w = input.w;

  // Per position of the tile: the list of the pixel under the current tap (count 0 in padding).
  std::unique_ptr<const int32_t*[]> channel_lists(new const int32_t*[tile]);
  std::unique_ptr<const float*[]> value_lists(new const float*[tile]);
  std::unique_ptr<int32_t[]> counts(new int32_t[tile]);
  std::unique_ptr<int64_t[]> ih0(new int64_t[tile]), iw0(new int64_t[tile]);
  // Accumulators, deliberately uninitialized: the first tap's pass writes them, and those of
  // skipped (position, block) pairs are never used (their outputs are 0).
  std::unique_ptr<float[]> acc(new float[static_cast<size_t>(tile) * acc_stride]);
  std::vector<uint8_t> needed;
  if (ep.computed != nullptr) {
    // A (position, block) is computed only if one of the block's channels is.
    needed.assign(static_cast<size_t>(tile) * n_blocks, 0);
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
  const int64_t pixel_base = job.n * h * w;
  bool first = true;
  for (int64_t a = 0; a < geo.kh; ++a) {
    for (int64_t bw = 0; bw < geo.kw; ++bw) {
      const int64_t tap = a * geo.kw + bw;
      for (int j = 0; j < chunks_; ++j) {
        for (int32_t t = 0; t < tile; ++t) {
          const int64_t ih = ih0[t] + a * geo.dilation_h, iw = iw0[t] + bw * geo.dilation_w;
          if (ih < 0 || ih >= h || iw < 0 || iw >= w) {
            counts[t] = 0;
            channel_lists[t] = input.channels.get();
            value_lists[t] = input.values.get();
            continue;
          }
          const int64_t list = (pixel_base + ih * w + iw) * input.lists_per_pixel + job.g * chunks_ + j;
          counts[t] = input.counts[list];
          channel_lists[t] = input.channels.get() + list * input.stride;
          value_lists[t] = input.values.get() + list * input.stride;
        }
        const int64_t k0 = tap * cg_in + int64_t{j} * chunk_;
        for (int b = 0; b < n_blocks; ++b) {
          AccumulateArgs args;
          args.channels = channel_lists.get();
          args.values = value_lists.get();
          args.counts = counts.get();
          args.positions = tile;
          args.needed = needed.empty() ? nullptr : needed.data() + b;
          args.needed_stride = n_blocks;
          args.weights = weights_.data() + ((job.g * blocks_ + job.b0 + b) * k_size + k0) * ocb;
          args.acc = acc.get() + static_cast<size_t>(b) * ocb;
          args.acc_stride = acc_stride;
          args.first = first;
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

}  // namespace zapopt
