#include "sparse_conv.h"

#include <algorithm>
#include <cmath>

namespace zapopt {
namespace {

constexpr int kTilePositions = 32;    // output positions sharing one weight slab
constexpr int kWeightSlabBytes = 16384;  // one K block x one channel block, kept in L1
constexpr size_t kMinJobs = 16;        // enough jobs to keep a few threads busy

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
  if (cg_out < traits.lanes) {
    // Too few channels per group to fill one vector: plain code does less wasted work.
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
  conv->k_block_ = static_cast<int>(
      std::clamp<int64_t>(kWeightSlabBytes / (conv->ocb_ * int64_t{sizeof(float)}), 16, 512));

  const int64_t ocb = conv->ocb_;
  conv->weights_.assign(static_cast<size_t>(geo.group * blocks * k_size * ocb), 0.0f);
  for (int64_t g = 0; g < geo.group; ++g) {
    for (int64_t b = 0; b < blocks; ++b) {
      float* slab = conv->weights_.data() + (g * blocks + b) * k_size * ocb;
      for (int64_t o = 0; o < ocb && b * ocb + o < cg_out; ++o) {
        const float* row = weights + (g * cg_out + b * ocb + o) * k_size;  // W[oc] is [C_in/g, kH, kW]
        for (int64_t k = 0; k < k_size; ++k) slab[k * ocb + o] = row[k];
      }
    }
  }
  conv->bias_.assign(static_cast<size_t>(geo.c_out), 0.0f);
  if (bias != nullptr) std::copy(bias, bias + geo.c_out, conv->bias_.begin());
  return conv;
}

bool PackedConv::run(const float* x, int64_t n, int64_t h, int64_t w,
                     const std::vector<const std::vector<int32_t>*>& positions, const Epilogue& epilogue,
                     const ParallelFor& parallel_for, std::string* error) const {
  const ConvGeometry& geo = geometry_;
  const int64_t ho = geo.out_h(h), wo = geo.out_w(w);
  // Receptive-field taps relative to the top-left input of a position, shared by all jobs.
  const int64_t k_size = geo.k_size();
  std::vector<int64_t> tap_offset(static_cast<size_t>(k_size));
  std::vector<int32_t> tap_dy(static_cast<size_t>(k_size)), tap_dx(static_cast<size_t>(k_size));
  for (int64_t c = 0, k = 0; c < geo.cg_in(); ++c) {
    for (int64_t a = 0; a < geo.kh; ++a) {
      for (int64_t b = 0; b < geo.kw; ++b, ++k) {
        tap_dy[k] = static_cast<int32_t>(a * geo.dilation_h);
        tap_dx[k] = static_cast<int32_t>(b * geo.dilation_w);
        tap_offset[k] = c * h * w + tap_dy[k] * w + tap_dx[k];
      }
    }
  }
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
  const bool ok = parallel_for(jobs.size(), [&](size_t j) {
    run_job(jobs[j], x, h, w, ho, wo, positions, epilogue, tap_offset.data(), tap_dy.data(), tap_dx.data());
  });
  if (!ok) {
    *error = "the convolution failed on onnxruntime's thread pool (out of memory for its scratch buffers?)";
    return false;
  }
  return true;
}

void PackedConv::run_job(const Job& job, const float* x, int64_t h, int64_t w, int64_t ho, int64_t wo,
                         const std::vector<const std::vector<int32_t>*>& positions, const Epilogue& ep,
                         const int64_t* tap_offset, const int32_t* tap_dy, const int32_t* tap_dx) const {
  const ConvGeometry& geo = geometry_;
  const int64_t k_size = geo.k_size();
  const int64_t cg_out = geo.cg_out();
  const int ocb = ocb_;
  const int n_blocks = job.b1 - job.b0;
  const int32_t* pos = positions[job.n]->data() + job.start;
  const int32_t tile = static_cast<int32_t>(job.count);
  const int64_t plane_out = ho * wo;
  const int acc_stride = n_blocks * ocb;

  std::vector<Entry> entries(static_cast<size_t>(tile) * k_block_);
  std::vector<int32_t> counts(static_cast<size_t>(tile));
  std::vector<float> acc(static_cast<size_t>(tile) * acc_stride, 0.0f);
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
  const float* x_group = x + (job.n * geo.c_in + job.g * geo.cg_in()) * h * w;
  const int32_t span_h = static_cast<int32_t>(geo.dilation_h * (geo.kh - 1));
  const int32_t span_w = static_cast<int32_t>(geo.dilation_w * (geo.kw - 1));

  for (int64_t k0 = 0; k0 < k_size; k0 += k_block_) {
    const int64_t k1 = std::min<int64_t>(k_size, k0 + k_block_);
    // Compact the nonzero inputs of each position's receptive field (branch-free append).
    for (int32_t t = 0; t < tile; ++t) {
      const int64_t oh = pos[t] / wo, ow = pos[t] % wo;
      const int64_t ih0 = oh * geo.stride_h - geo.pad_top, iw0 = ow * geo.stride_w - geo.pad_left;
      Entry* e = entries.data() + static_cast<size_t>(t) * k_block_;
      int32_t count = 0;
      if (ih0 >= 0 && iw0 >= 0 && ih0 + span_h < h && iw0 + span_w < w) {
        const float* origin = x_group + ih0 * w + iw0;
        for (int64_t k = k0; k < k1; ++k) {
          const float v = origin[tap_offset[k]];
          e[count].k = static_cast<int32_t>(k);
          e[count].value = v;
          count += (v != 0.0f);
        }
      } else {
        for (int64_t k = k0; k < k1; ++k) {
          const int64_t ih = ih0 + tap_dy[k], iw = iw0 + tap_dx[k];
          if (ih < 0 || ih >= h || iw < 0 || iw >= w) continue;
          const float v = x_group[tap_offset[k] + ih0 * w + iw0];
          e[count].k = static_cast<int32_t>(k);
          e[count].value = v;
          count += (v != 0.0f);
        }
      }
      counts[t] = count;
    }
    for (int b = 0; b < n_blocks; ++b) {
      AccumulateArgs args;
      args.entries = entries.data();
      args.counts = counts.data();
      args.entry_stride = k_block_;
      args.positions = tile;
      args.needed = needed.empty() ? nullptr : needed.data() + b;
      args.needed_stride = n_blocks;
      args.weights = weights_.data() + (job.g * blocks_ + job.b0 + b) * k_size * ocb;
      args.acc = acc.data() + static_cast<size_t>(b) * ocb;
      args.acc_stride = acc_stride;
      args.first = (k0 == 0);
      accumulate_(args, ocb);
    }
  }

  // Bias, Skip, activation, and the transpose back to NCHW.
  for (int b = 0; b < n_blocks; ++b) {
    for (int o = 0; o < ocb; ++o) {
      const int64_t oc_local = int64_t{job.b0 + b} * ocb + o;
      if (oc_local >= cg_out) break;
      const int64_t oc = job.g * cg_out + oc_local;
      const float bias = bias_[oc];
      const int64_t plane = (job.n * geo.c_out + oc) * plane_out;
      const float* a = acc.data() + static_cast<size_t>(b) * ocb + o;
      for (int32_t t = 0; t < tile; ++t) {
        const int64_t idx = plane + pos[t];
        if (ep.computed != nullptr && ep.computed[idx] == 0) {
          ep.y[idx] = 0.0f;
          continue;
        }
        float v = a[static_cast<size_t>(t) * acc_stride] + bias;
        if (ep.skip != nullptr) {
          const int64_t oh = pos[t] / wo, ow = pos[t] % wo;
          v += ep.skip[job.n * ep.skip_strides[0] + oc * ep.skip_strides[1] + oh * ep.skip_strides[2] +
                       ow * ep.skip_strides[3]];
        }
        float full = v;
        if (ep.relu) full = std::min(std::max(v, 0.0f), ep.clip_max);
        ep.y[idx] = full;
        if (ep.aux != nullptr) ep.aux[idx] = ep.aux_preactivation ? v : full;
      }
    }
  }
}

}  // namespace zapopt
