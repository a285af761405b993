#include "sparse_conv.h"

#include <algorithm>
#include <cmath>
#include <cstring>

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
// Shared lists of about this many bytes are compacted and consumed per pass over the batch.
constexpr int64_t kPassListBytes = int64_t{1} << 20;
// NHWC pixels transposed per pass before they are compacted (still in L2 when compacted).
constexpr int64_t kTransposeBytes = int64_t{128} << 10;
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
// Layers whose packed weights (per group) reach this size prefetch the next step's weight slab
// while a step runs (TileTarget::next_weights). Inside a model their weights come from L3 or
// memory on every run (the other layers evicted them), read by few tiles, and the list loop
// touches a slab's rows in data order: each first touch was a miss of its own. Same-process
// A/B on OpenNSFW, 1 thread: the ten deep 3x3 convs native 1.04-1.09x faster end to end,
// every conv native 1.05-1.13x. Small weights stay cached across a layer's many tiles, so
// there the prefetches would only add instructions.
constexpr int64_t kPrefetchMinWeightBytes = int64_t{128} << 10;
// The pointwise path (1x1, no padding, one group) runs on inputs at least
// kDenseCutoverPointwise nonzero, where the lists do not pay.
// Input bytes (C_in x positions) one pointwise job keeps in L2 while every block of output
// channels passes over them.
constexpr int64_t kPointwisePanelBytes = int64_t{256} << 10;
// Pointwise job spans are multiples of this many positions: whole 3-vector tiles on AVX2 (24)
// and AVX-512 (48).
constexpr int64_t kPointwiseSpanStep = 48;
// Positions handed to the vector paths in whole groups of this many (a multiple of every
// path's vector width); the rest of a span goes through a zero-padded copy.
constexpr int64_t kPointwiseTail = 16;
constexpr int64_t kPointwiseSampledPlanes = 16;

// Whether x[0..n) are all +0 or -0 (anything else, NaN included, is nonzero as in compaction).
// Checked before compacting a pixel's chunk: all-zero pixels (dead regions of a ReLU's output)
// then cost a few loads instead of a compaction; 16 values a step, so dense inputs exit at once.
bool all_zero(const float* x, int n) {
  int i = 0;
  for (; i + 16 <= n; i += 16) {
    uint32_t bits = 0;
    for (int l = 0; l < 16; ++l) {
      uint32_t b;
      std::memcpy(&b, x + i + l, sizeof b);
      bits |= b << 1;  // drops the sign
    }
    if (bits != 0) return false;
  }
  uint32_t bits = 0;
  for (; i < n; ++i) {
    uint32_t b;
    std::memcpy(&b, x + i, sizeof b);
    bits |= b << 1;
  }
  return bits == 0;
}

// A compacted band as the per-step gathering reads it.
struct BandView {
  const int32_t* channels;
  const float* values;
  const int32_t* counts;
  const float* pixels;
  const int64_t* before;
  int64_t stride, row_begin, row_end, w, cg_in;
  int chunks;
};

// Whether every input pixel one tap reads for a tile is zero or padding. Output row segment i
// (positions [segment_start[i], segment_start[i + 1]), receptive fields from (ih0, iw0) shifted
// by (dy, dx)) reads input row ih0 + dy between its first and last position's columns.
bool tap_is_empty(const BandView& band, const int64_t* ih0, const int64_t* iw0, const int32_t* segment_start,
                  int32_t segments, int64_t dy, int64_t dx) {
  for (int32_t i = 0; i < segments; ++i) {
    const int32_t t0 = segment_start[i], t1 = segment_start[i + 1] - 1;
    const int64_t row = ih0[t0] + dy - band.row_begin;
    if (row < 0 || row >= band.row_end - band.row_begin) continue;  // padding
    const int64_t lo = std::max<int64_t>(0, iw0[t0] + dx), hi = std::min<int64_t>(band.w - 1, iw0[t1] + dx);
    if (lo > hi) continue;
    if (band.before[row * band.w + hi + 1] != band.before[row * band.w + lo]) return false;
  }
  return true;
}

// Where each position of a tile reads for one (tap, channel chunk): its nonzero list
// (channels, values, counts; empty in the padding) and its dense input vector.
struct StepInputs {
  const int32_t** __restrict channels;
  const float** __restrict values;
  int32_t* __restrict counts;
  const float** __restrict dense;
};

// Fills `out` for positions whose receptive fields start at input (ih0[t], iw0[t]), shifted
// by this tap's (dy, dx), chunk j (from channel c0). Returns the nonzeros in all these lists;
// *empty: the positions with none. On its own (not inlined into run_job), its sums stay in
// registers.
__attribute__((noinline)) int64_t gather_step(const BandView& band, const int64_t* ih0, const int64_t* iw0,
                                              int32_t tile, int64_t dy, int64_t dx, int j, int64_t c0,
                                              const float* zeros, const StepInputs& out, int32_t* empty) {
  // Locals, not band's and out's fields: the stores through out could alias them otherwise.
  const int32_t* const band_counts = band.counts;
  const int32_t* const band_channels = band.channels;
  const float* const band_values = band.values;
  const float* const band_pixels = band.pixels;
  const int64_t row_begin = band.row_begin, rows = band.row_end - band.row_begin, w = band.w;
  const int64_t stride = band.stride, cg_in = band.cg_in, chunks = band.chunks;
  const int32_t** __restrict channels = out.channels;
  const float** __restrict values = out.values;
  int32_t* __restrict counts = out.counts;
  const float** __restrict dense = out.dense;
  int64_t nonzeros = 0;
  int32_t none = 0;
  for (int32_t t = 0; t < tile; ++t) {
    const int64_t row = ih0[t] + dy - row_begin, col = iw0[t] + dx;
    // One unsigned comparison per axis: negative values wrap to large ones.
    if (static_cast<uint64_t>(row) >= static_cast<uint64_t>(rows) ||
        static_cast<uint64_t>(col) >= static_cast<uint64_t>(w)) {
      counts[t] = 0;  // padding
      channels[t] = band_channels;
      values[t] = band_values;
      dense[t] = zeros;
      ++none;
      continue;
    }
    const int64_t pixel = row * w + col;
    const int64_t list = pixel * chunks + j;
    const int32_t count = band_counts[list];
    counts[t] = count;
    nonzeros += count;
    none += count == 0;
    channels[t] = band_channels + list * stride;
    values[t] = band_values + list * stride;
    dense[t] = band_pixels + pixel * cg_in + c0;
  }
  *empty = none;
  return nonzeros;
}

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
  conv->write_back_ = traits.write_back;
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
  conv->prefetch_next_slab_ = blocks * k_size * ocb * int64_t{sizeof(float)} >= kPrefetchMinWeightBytes;
  if (geo.kh == 1 && geo.kw == 1 && geo.group == 1 && geo.pad_top == 0 && geo.pad_left == 0 && geo.pad_bottom == 0 &&
      geo.pad_right == 0) {
    conv->pointwise_ = traits.pointwise;
    const int64_t pw_blocks = (geo.c_out + kPointwiseRows - 1) / kPointwiseRows;
    conv->pointwise_weights_.assign(static_cast<size_t>(pw_blocks * geo.c_in * kPointwiseRows), 0.0f);
    conv->pointwise_bias_.assign(static_cast<size_t>(pw_blocks * kPointwiseRows), 0.0f);
    for (int64_t oc = 0; oc < geo.c_out; ++oc) {
      const int64_t b = oc / kPointwiseRows, r = oc % kPointwiseRows;
      for (int64_t c = 0; c < geo.c_in; ++c) {
        conv->pointwise_weights_[(b * geo.c_in + c) * kPointwiseRows + r] = weights[oc * geo.c_in + c];
      }
      if (bias != nullptr) conv->pointwise_bias_[b * kPointwiseRows + r] = bias[oc];
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
  ScratchArray<int32_t> channels;  // channel within the chunk
  ScratchArray<float> values;
  ScratchArray<int32_t> counts;  // [row][column][chunk]
  ScratchArray<float> pixels;    // [row][column][channel]: the dense inputs (NHWC)
  // before[p]: the nonzeros of all pixels before p (row-major, every chunk); a span's count is
  // a difference of two entries.
  ScratchArray<int64_t> before;
};

void PackedConv::compact_band(const float* x, int64_t n, int64_t g, int64_t h, int64_t w, int64_t row_begin,
                              int64_t row_end, const Scratch& scratch, Band* band) const {
  allocate_band(w, row_begin, row_end, scratch, band);
  compact_rows(x, n, g, h, w, row_begin, row_end, band);
  count_band(w, band);
}

void PackedConv::allocate_band(int64_t w, int64_t row_begin, int64_t row_end, const Scratch& scratch,
                               Band* band) const {
  const int64_t cg_in = geometry_.cg_in();
  band->row_begin = row_begin, band->row_end = row_end;
  band->stride = chunk_ + kCompactSlack;
  const int64_t band_pixels = std::max<int64_t>(0, row_end - row_begin) * w;
  const size_t lists = static_cast<size_t>(band_pixels * chunks_);
  band->channels = ScratchArray<int32_t>(scratch, lists * band->stride);  // written before read
  band->values = ScratchArray<float>(scratch, lists * band->stride);
  band->counts = ScratchArray<int32_t>(scratch, lists);
  band->pixels = ScratchArray<float>(scratch, static_cast<size_t>(band_pixels * cg_in));
  band->before = ScratchArray<int64_t>(scratch, static_cast<size_t>(band_pixels + 1));
}

int64_t PackedConv::rows_per_transpose(int64_t w) const {
  return std::max<int64_t>(1, kTransposeBytes / (w * geometry_.cg_in() * static_cast<int64_t>(sizeof(float))));
}

void PackedConv::compact_rows(const float* x, int64_t n, int64_t g, int64_t h, int64_t w, int64_t y_begin,
                              int64_t y_end, Band* band) const {
  const int64_t cg_in = geometry_.cg_in();
  const float* group_planes = x + (n * geometry_.c_in + g * cg_in) * h * w;
  // Rows are contiguous in every channel plane, so several rows transpose as one long row:
  // each 8-channel block then streams through its planes (a row at a time, wide layers read
  // hundreds of planes a few cache lines each, which the prefetchers do not follow).
  const int64_t rows_per_pass = rows_per_transpose(w);
  for (int64_t y0 = y_begin; y0 < y_end; y0 += rows_per_pass) {
    const int64_t y1 = std::min(y_end, y0 + rows_per_pass);
    const int64_t first_pixel = (y0 - band->row_begin) * w, end_pixel = (y1 - band->row_begin) * w;
    float* pixels = band->pixels.get() + first_pixel * cg_in;
    transpose_row_(group_planes + y0 * w, h * w, cg_in, end_pixel - first_pixel, pixels);
    for (int64_t pixel = first_pixel; pixel < end_pixel; ++pixel) {
      for (int j = 0; j < chunks_; ++j) {
        const int64_t c0 = int64_t{j} * chunk_, c1 = std::min<int64_t>(cg_in, c0 + chunk_);
        const int64_t list = pixel * chunks_ + j;
        const float* inputs = band->pixels.get() + pixel * cg_in + c0;
        const int k = static_cast<int>(c1 - c0);
        band->counts[list] = all_zero(inputs, k) ? 0
                                                 : compact_(inputs, k, 0, band->channels.get() + list * band->stride,
                                                            band->values.get() + list * band->stride);
      }
    }
  }
}

void PackedConv::count_band(int64_t w, Band* band) const {
  const int64_t band_pixels = std::max<int64_t>(0, band->row_end - band->row_begin) * w;
  band->before[0] = 0;
  for (int64_t p = 0; p < band_pixels; ++p) {
    int64_t sum = 0;
    for (int j = 0; j < chunks_; ++j) sum += band->counts[p * chunks_ + j];
    band->before[p + 1] = band->before[p] + sum;
  }
}

bool PackedConv::try_pointwise(const float* x, int64_t n, int64_t h, int64_t w,
                               const std::vector<const std::vector<int32_t>*>& positions, const Epilogue& ep,
                               const ParallelFor& parallel_for, const Scratch& scratch, std::string* error,
                               bool* ok) const {
  const ConvGeometry& geo = geometry_;
  const int64_t wo = geo.out_w(w), plane = geo.out_h(h) * wo;
  if (pointwise_ == nullptr) return false;
  for (int64_t i = 0; i < n; ++i) {
    if (static_cast<int64_t>(positions[i]->size()) != plane) return false;  // ascending and unique: all of them
  }
  // Skip laid out like Y (a batch of one has batch stride 0: size-1 axes broadcast), else
  // the general epilogue handles the broadcast.
  if (ep.skip != nullptr && ((n > 1 && ep.skip_strides[0] != geo.c_out * plane) || ep.skip_strides[1] != plane ||
                             ep.skip_strides[2] != wo || ep.skip_strides[3] != 1)) {
    return false;
  }
  // The input's zero share, estimated on up to kPointwiseSampledPlanes channel planes spread
  // over the channels: the choice needs no more.
  const int64_t step = std::max<int64_t>(1, geo.c_in / kPointwiseSampledPlanes);
  int64_t zeros = 0, seen = 0;
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t c = 0; c < geo.c_in; c += step) {
      const float* values = x + (i * geo.c_in + c) * h * w;
      int32_t plane_zeros = 0;
      for (int64_t p = 0; p < h * w; ++p) plane_zeros += values[p] == 0.0f;
      zeros += plane_zeros;
      seen += h * w;
    }
  }
  const float zero_share = static_cast<float>(zeros) / static_cast<float>(std::max<int64_t>(1, seen));
  if (1.0f - zero_share < kDenseCutoverPointwise) return false;  // sparse enough for the lists

  // A strided 1x1 conv reads every stride-th pixel: those are gathered once into planes of the
  // output's size, and the product runs on them.
  ScratchArray<float> strided;
  if (geo.stride_h != 1 || geo.stride_w != 1) {
    const int64_t ho = plane / wo, planes = n * geo.c_in;
    strided = ScratchArray<float>(scratch, static_cast<size_t>(planes * plane));
    const int64_t pieces = std::min<int64_t>(planes, kTasks);  // on the pool: serial, it held up the other threads
    const bool gathered = parallel_for(static_cast<size_t>(pieces), [&](size_t piece) {
      const int64_t first = planes * static_cast<int64_t>(piece) / pieces;
      const int64_t last = planes * (static_cast<int64_t>(piece) + 1) / pieces;
      for (int64_t index = first; index < last; ++index) {
        const float* from = x + index * h * w;
        float* to = strided.get() + index * plane;
        for (int64_t oy = 0; oy < ho; ++oy) {
          const float* row = from + oy * geo.stride_h * w;
          for (int64_t ox = 0; ox < wo; ++ox) to[oy * wo + ox] = row[ox * geo.stride_w];
        }
      }
    });
    if (!gathered) {
      *ok = false;
      *error = "gathering the strided pixels failed on onnxruntime's thread pool";
      return true;
    }
    x = strided.get();
  }

  const int64_t k = geo.c_in, c_out = geo.c_out;
  const int64_t blocks = (c_out + kPointwiseRows - 1) / kPointwiseRows;
  const int64_t panel = kPointwisePanelBytes / (k * int64_t{sizeof(float)}) / kPointwiseSpanStep * kPointwiseSpanStep;
  const int64_t span = std::clamp<int64_t>(panel, kPointwiseSpanStep, 4 * kPointwiseSpanStep);
  const int64_t spans = (plane + span - 1) / span;
  const int64_t runs = n * spans;
  const int64_t splits = std::min<int64_t>(blocks, (static_cast<int64_t>(kMinJobs) + runs - 1) / runs);
  const int64_t per_split = (blocks + splits - 1) / splits;
  // Whole kPointwiseTail-position groups straight from X; the last few positions of a batch
  // item (spans are multiples of kPointwiseTail, so only its last span has any) through a
  // zero-padded copy, made once here for all the jobs that split that span's channel blocks
  // (the vector paths would otherwise finish them one scalar at a time: 1024->256 14x14 took
  // 2.0 instead of 1.7 ms). Packing the whole span into a contiguous panel first, as matrix
  // products usually do, cost more than it saved (0.90-0.98x on OpenNSFW).
  const int64_t last_p0 = (spans - 1) * span;
  const int64_t last_main = (plane - last_p0) / kPointwiseTail * kPointwiseTail;
  const int64_t last_rest = plane - last_p0 - last_main;
  ScratchArray<float> tails_x(scratch, last_rest > 0 ? static_cast<size_t>(n * k * kPointwiseTail) : 0);
  for (int64_t i = 0; last_rest > 0 && i < n; ++i) {
    for (int64_t c = 0; c < k; ++c) {
      const float* from = x + (i * k + c) * plane + last_p0 + last_main;
      float* to = tails_x.get() + (i * k + c) * kPointwiseTail;
      std::copy(from, from + last_rest, to);
      std::fill(to + last_rest, to + kPointwiseTail, 0.0f);
    }
  }
  *ok = parallel_for(static_cast<size_t>(runs * splits), [&](size_t job) {
    const int64_t run = static_cast<int64_t>(job) / splits, split = static_cast<int64_t>(job) % splits;
    const int64_t i = run / spans, p0 = (run % spans) * span;
    const int64_t count = std::min(span, plane - p0);
    const int64_t main = count / kPointwiseTail * kPointwiseTail, rest = count - main;
    // This job's outputs (and Skip) for the last positions, computed as a whole group.
    ScratchArray<float> tail(scratch, rest > 0 ? static_cast<size_t>(2 * kPointwiseRows * kPointwiseTail) : 0);
    PointwiseArgs args;
    args.k = static_cast<int32_t>(k);
    args.relu = ep.relu;
    args.clip_max = ep.clip_max;
    for (int64_t b = split * per_split; b < std::min(blocks, (split + 1) * per_split); ++b) {
      const int64_t oc0 = b * kPointwiseRows;
      args.weights = pointwise_weights_.data() + b * k * kPointwiseRows;
      args.bias = pointwise_bias_.data() + b * kPointwiseRows;
      args.rows = static_cast<int32_t>(std::min<int64_t>(kPointwiseRows, c_out - oc0));
      float* y = ep.y + (i * c_out + oc0) * plane + p0;
      const float* skip = ep.skip == nullptr ? nullptr : ep.skip + (i * c_out + oc0) * plane + p0;
      if (main > 0) {
        args.x = x + i * k * plane + p0;
        args.x_stride = plane;
        args.count = main;
        args.y = y;
        args.skip = skip;
        args.y_stride = plane;
        pointwise_(args);
      }
      if (rest > 0) {
        float* tail_y = tail.get();
        float* tail_skip = tail.get() + kPointwiseRows * kPointwiseTail;
        for (int r = 0; skip != nullptr && r < args.rows; ++r) {
          std::copy(skip + r * plane + main, skip + r * plane + count, tail_skip + r * kPointwiseTail);
        }
        args.x = tails_x.get() + i * k * kPointwiseTail;
        args.x_stride = kPointwiseTail;
        args.count = kPointwiseTail;
        args.y = tail_y;
        args.skip = skip == nullptr ? nullptr : tail_skip;
        args.y_stride = kPointwiseTail;
        pointwise_(args);
        for (int r = 0; r < args.rows; ++r) {
          std::copy(tail_y + r * kPointwiseTail, tail_y + r * kPointwiseTail + rest, y + r * plane + main);
        }
      }
    }
  });
  if (!*ok) *error = "the pointwise convolution failed on onnxruntime's thread pool";
  return true;
}

bool PackedConv::run(const float* x, int64_t n, int64_t h, int64_t w,
                     const std::vector<const std::vector<int32_t>*>& positions, const Epilogue& epilogue,
                     const ParallelFor& parallel_for, const Scratch& scratch, std::string* error) const {
  bool pointwise_ok = false;
  if (accumulation_.form == AccumulationChoice::kAuto &&
      try_pointwise(x, n, h, w, positions, epilogue, parallel_for, scratch, error, &pointwise_ok)) {
    return pointwise_ok;
  }
  const ConvGeometry& geo = geometry_;
  const int64_t ho = geo.out_h(h), wo = geo.out_w(w);
  int64_t total = 0;
  for (int64_t i = 0; i < n; ++i) total += static_cast<int64_t>(positions[i]->size());
  if (total == 0) return true;
  const int64_t list_bytes = h * w * (chunks_ * (chunk_ + kCompactSlack) * int64_t{2 * sizeof(float)} +
                                      geo.cg_in() * int64_t{sizeof(float)});
  const bool share_lists = list_bytes <= kSharedListBytes;
  // With shared lists, a few batch items at a time (about kPassListBytes of lists): they are
  // compacted and then read by their jobs while still in cache. Compacting all items first
  // left the first ones' lists evicted by the last ones' (OpenNSFW, batch 8, every conv
  // native: 1.04-1.06x with one item per pass); a few small items per pass keep enough jobs
  // for several threads.
  const int64_t items_per_pass = share_lists ? std::clamp<int64_t>(kPassListBytes / list_bytes, 1, n) : n;
  for (int64_t first_item = 0; first_item < n; first_item += items_per_pass) {
    const int64_t end_item = std::min(n, first_item + items_per_pass);
    if (!run_items(x, first_item, end_item, h, w, ho, wo, positions, share_lists, epilogue, parallel_for, scratch,
                   error)) {
      return false;
    }
  }
  return true;
}

bool PackedConv::run_items(const float* x, int64_t first_item, int64_t end_item, int64_t h, int64_t w, int64_t ho,
                           int64_t wo, const std::vector<const std::vector<int32_t>*>& positions, bool share_lists,
                           const Epilogue& epilogue, const ParallelFor& parallel_for, const Scratch& scratch,
                           std::string* error) const {
  const ConvGeometry& geo = geometry_;
  // Jobs: (batch item, group, run of consecutive positions, range of channel blocks), handed
  // to the pool as about kTasks tasks. With shared lists a job is one tile; otherwise about
  // kTasks position runs in all (each compacts its own input band, so not too many). Channel
  // blocks are split further when that leaves too few jobs.
  int64_t total = 0;
  for (int64_t i = first_item; i < end_item; ++i) total += static_cast<int64_t>(positions[i]->size());
  if (total == 0) return true;
  const int64_t per_job_raw =
      share_lists ? kTilePositions : std::max<int64_t>(kTilePositions, (total * geo.group + kTasks - 1) / kTasks);
  const int64_t per_job = (per_job_raw + kTilePositions - 1) / kTilePositions * kTilePositions;
  size_t runs = 0;
  for (int64_t i = first_item; i < end_item; ++i) runs += (positions[i]->size() + per_job - 1) / per_job;
  runs = std::max<size_t>(1, runs * static_cast<size_t>(geo.group));
  const int splits = static_cast<int>(std::min<size_t>(blocks_, (kMinJobs + runs - 1) / runs));
  const int per_split = (blocks_ + splits - 1) / splits;
  std::vector<Job> jobs;
  jobs.reserve(runs * splits);
  for (int64_t i = first_item; i < end_item; ++i) {
    const int64_t count = static_cast<int64_t>(positions[i]->size());
    for (int64_t g = 0; g < geo.group; ++g) {
      for (int64_t start = 0; start < count; start += per_job) {
        for (int b0 = 0; b0 < blocks_; b0 += per_split) {
          jobs.push_back({i, g, start, std::min<int64_t>(per_job, count - start), b0, std::min(blocks_, b0 + per_split)});
        }
      }
    }
  }
  if (jobs.empty()) return true;
  // Shared bands of items [first_item, end_item), indexed (item - first_item, group), compacted
  // in pieces of rows_per_transpose rows on the pool (a batch of one is one band: compacted
  // whole, it kept one thread busy and the others waiting).
  std::vector<Band> shared;
  if (share_lists) {
    shared.resize(static_cast<size_t>((end_item - first_item) * geo.group));
    for (Band& band : shared) allocate_band(w, 0, h, scratch, &band);
    const int64_t rows = rows_per_transpose(w), pieces = (h + rows - 1) / rows;
    const bool compacted = parallel_for(shared.size() * static_cast<size_t>(pieces), [&](size_t task) {
      const size_t i = task / static_cast<size_t>(pieces);
      const int64_t y0 = static_cast<int64_t>(task % static_cast<size_t>(pieces)) * rows;
      const int64_t item = first_item + static_cast<int64_t>(i) / geo.group, g = static_cast<int64_t>(i) % geo.group;
      compact_rows(x, item, g, h, w, y0, std::min(h, y0 + rows), &shared[i]);
    });
    if (!compacted) {
      *error = "compacting the input failed on onnxruntime's thread pool (out of memory?)";
      return false;
    }
    for (Band& band : shared) count_band(w, &band);
  }
  const size_t per_task = std::max<size_t>(1, jobs.size() / kTasks);
  const size_t tasks = (jobs.size() + per_task - 1) / per_task;
  const bool ok = parallel_for(tasks, [&](size_t task) {
    const size_t end = std::min(jobs.size(), (task + 1) * per_task);
    for (size_t j = task * per_task; j < end; ++j) {
      const Band* band = shared.empty()
                             ? nullptr
                             : &shared[static_cast<size_t>((jobs[j].n - first_item) * geo.group + jobs[j].g)];
      run_job(jobs[j], x, h, w, ho, wo, positions, epilogue, band, scratch);
    }
  });
  if (!ok) {
    *error = "the convolution failed on onnxruntime's thread pool (out of memory for its scratch buffers?)";
    return false;
  }
  return true;
}


void PackedConv::write_tile(const Job& job, const int32_t* pos, int32_t tile, const float* acc, int acc_stride,
                            int64_t wo, int64_t plane_out, const Epilogue& ep) const {
  const bool consecutive = pos[tile - 1] - pos[0] == tile - 1;  // pos ascending
  const bool skip_consecutive = ep.skip == nullptr || (ep.skip_strides[3] == 1 && ep.skip_strides[2] == wo);
  if (!consecutive || !skip_consecutive) {
    finish_tile(job, pos, tile, acc, acc_stride, wo, plane_out, ep);
    return;
  }
  const ConvGeometry& geo = geometry_;
  const int64_t oc0 = job.g * geo.cg_out() + int64_t{job.b0} * ocb_;  // the tile's first output channel
  WriteBackArgs args;
  args.acc = acc;
  args.acc_stride = acc_stride;
  args.positions = tile;
  args.channels = static_cast<int32_t>(std::min<int64_t>(geo.cg_out() - int64_t{job.b0} * ocb_, acc_stride));
  args.bias = padded_bias_.data() + (job.g * blocks_ + job.b0) * int64_t{ocb_};
  args.skip = ep.skip == nullptr ? nullptr : ep.skip + job.n * ep.skip_strides[0] + oc0 * ep.skip_strides[1] + pos[0];
  args.skip_channel_stride = ep.skip_strides[1];
  args.relu = ep.relu;
  args.clip_max = ep.clip_max;
  args.y = ep.y + (job.n * geo.c_out + oc0) * plane_out + pos[0];
  args.y_channel_stride = plane_out;
  write_back_(args);
}

// The general write-back: any positions, Skip broadcast in any way.
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
        float v = a[static_cast<size_t>(t) * acc_stride] + bias;
        if (ep.skip != nullptr) {
          v += ep.skip[job.n * ep.skip_strides[0] + oc * ep.skip_strides[1] + (p / wo) * ep.skip_strides[2] +
                       (p % wo) * ep.skip_strides[3]];
        }
        y[p] = relu ? std::min(std::max(v, 0.0f), clip_max) : v;
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
                         const Band* shared_band, const Scratch& scratch) const {
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
                 scratch, &own);
  }
  const Band& band = shared_band != nullptr ? *shared_band : own;

  const BandView view{band.channels.get(), band.values.get(), band.counts.get(), band.pixels.get(),
                      band.before.get(), band.stride, band.row_begin, band.row_end, w, cg_in, chunks_};
  // Per position of a tile: the list of the pixel under the current tap (count 0 in padding).
  std::unique_ptr<const int32_t*[]> channel_lists(new const int32_t*[kTilePositions]);
  std::unique_ptr<const float*[]> value_lists(new const float*[kTilePositions]);
  std::unique_ptr<int32_t[]> counts(new int32_t[kTilePositions]);
  std::unique_ptr<const float*[]> dense_inputs(new const float*[kTilePositions]);
  std::unique_ptr<float[]> zeros(new float[static_cast<size_t>(chunk_)]());  // the padding's inputs
  std::unique_ptr<int64_t[]> ih0(new int64_t[kTilePositions]), iw0(new int64_t[kTilePositions]);
  std::unique_ptr<int32_t[]> segment_start(new int32_t[kTilePositions + 1]);
  const StepInputs step_inputs{channel_lists.get(), value_lists.get(), counts.get(), dense_inputs.get()};
  // Accumulators, deliberately uninitialized: the first tap's pass writes them. Cache-line
  // aligned (scratch memory is): their vector loads and stores must not straddle lines.
  ScratchArray<float> acc(scratch, static_cast<size_t>(kTilePositions) * acc_stride);
  // For one step: the (position, block)s whose lists are not empty.
  std::vector<uint8_t> step_needed(static_cast<size_t>(kTilePositions) * n_blocks);
  const std::vector<uint8_t> every;  // no mask: every (position, block)

  for (int64_t tile_start = 0; tile_start < job.count; tile_start += kTilePositions) {
    const int32_t* pos = job_pos + tile_start;
    const int32_t tile = static_cast<int32_t>(std::min<int64_t>(kTilePositions, job.count - tile_start));
    // The tile's positions by output row: segment i is positions [segment_start[i], segment_start[i + 1]).
    int32_t segments = 0;
    for (int32_t t = 0; t < tile; ++t) {
      ih0[t] = (pos[t] / wo) * geo.stride_h - geo.pad_top;
      iw0[t] = (pos[t] % wo) * geo.stride_w - geo.pad_left;
      if (t == 0 || ih0[t] != ih0[t - 1]) segment_start[segments++] = t;
    }
    segment_start[segments] = tile;
    bool first = true;
    for (int64_t a = 0; a < geo.kh; ++a) {
      for (int64_t bw = 0; bw < geo.kw; ++bw) {
        const int64_t tap = a * geo.kw + bw;
        // A tap whose input pixels are all zero (or padding) adds nothing after the first step:
        // checked per output row on the span of input pixels it reads (a superset when strided).
        if (!first && tap_is_empty(view, ih0.get(), iw0.get(), segment_start.get(), segments, a * geo.dilation_h,
                                   bw * geo.dilation_w)) {
          continue;
        }
        for (int j = 0; j < chunks_; ++j) {
          const int64_t c0 = int64_t{j} * chunk_;
          const int32_t k = static_cast<int32_t>(std::min<int64_t>(chunk_, cg_in - c0));
          int32_t empty = 0;  // positions with nothing to add in this step
          const int64_t nonzeros = gather_step(view, ih0.get(), iw0.get(), tile, a * geo.dilation_h,
                                               bw * geo.dilation_w, j, c0, zeros.get(), step_inputs, &empty);
          const int64_t k0 = tap * cg_in + c0;
          auto block_target = [&](int b, const std::vector<uint8_t>& mask) {
            TileTarget target;
            target.positions = tile;
            target.needed = mask.empty() ? nullptr : mask.data() + b;
            target.needed_stride = n_blocks;
            target.weights = weights_.data() + ((job.g * blocks_ + job.b0 + b) * k_size + k0) * ocb;
            target.acc = acc.get() + static_cast<size_t>(b) * ocb;
            target.acc_stride = acc_stride;
            target.first = first;
            if (prefetch_next_slab_ && k0 + k < k_size) {  // the next step's slab follows this one in K
              target.next_weights = target.weights + int64_t{k} * ocb;
              target.next_bytes = static_cast<int32_t>(std::min<int64_t>(k, k_size - k0 - k) * ocb * int64_t{sizeof(float)});
            }
            return target;
          };
          const AccumulationChoice form = choose_accumulation(nonzeros, int64_t{tile} * k, dense_ok);
          if (form.form != AccumulationChoice::kLists) {
            for (int b = 0; b < n_blocks; ++b) {
              DenseAccumulateArgs args;
              static_cast<TileTarget&>(args) = block_target(b, every);
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
          // After the first step (which initializes every accumulator), positions with empty
          // lists have nothing to do: at high input sparsity most steps of most positions.
          if (!first && nonzeros == 0) continue;
          const bool narrow = !first && empty > 0;
          if (narrow) {
            for (int32_t t = 0; t < tile; ++t) {
              for (int b = 0; b < n_blocks; ++b) {
                const size_t i = static_cast<size_t>(t) * n_blocks + b;
                step_needed[i] = counts[t] != 0;
              }
            }
          }
          for (int b = 0; b < n_blocks; ++b) {
            AccumulateArgs args;
            static_cast<TileTarget&>(args) = block_target(b, narrow ? step_needed : every);
            args.channels = channel_lists.get();
            args.values = value_lists.get();
            args.counts = counts.get();
            accumulate_(args, ocb);
          }
          first = false;
        }
      }
    }
    write_tile(job, pos, tile, acc.get(), acc_stride, wo, plane_out, ep);
  }
}

}  // namespace zapopt
