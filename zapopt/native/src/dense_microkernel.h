// The register-blocked accumulations over the dense (NHWC) inputs, written once for every
// vector instruction set: dense (DenseAccumulateFn, zeros multiplied) and union
// (UnionAccumulateFn, channels zero at all R positions of a group skipped). Included by microkernel_avx2.cc and microkernel_avx512.cc *inside their
// anonymous namespace*: each translation unit gets its own internal-linkage copy compiled with
// its own -m flags, so the one definition rule is not broken across instruction sets.
//
// V describes the vector registers: V::kLanes floats per register, V::kRows positions and up
// to V::kVectors registers per position in one block (kRows * kVectors accumulators + kVectors
// weights + 1 broadcast must fit the register file), V::kRegisters in the register file, and
// static zero/load/store/broadcast/fma, nonzero_bits (bit i: p[i] != 0 or NaN, i < kLanes),
// compress_lanes (writes base + i for each set bit i in order, up to kLanes entries; returns
// how many are set) and accumulate_lists (the instruction set's AccumulateFn).
//
// No test for channels that are zero at all kRows positions: this path runs on nearly dense
// inputs, where such channels are rare and the test costs more than it saves (kRows extra
// loads and a branch per channel; 64->64 3x3 56x56 at 0 % zeros: 0.59 -> 0.72 of stock).

// R positions x NV registers of channels: rows[r] = that position's inputs, acc[r] its
// accumulators; w the weight rows (stride ocb) of these channels.
template <class V, int R, int NV>
void dense_block(const float* const* rows, int32_t k, const float* w, int ocb, float* const* acc, bool first) {
  typename V::Reg c[R][NV];
  for (int r = 0; r < R; ++r) {
    for (int i = 0; i < NV; ++i) c[r][i] = first ? V::zero() : V::load(acc[r] + V::kLanes * i);
  }
  for (int32_t ch = 0; ch < k; ++ch, w += ocb) {
    typename V::Reg wv[NV];
    for (int i = 0; i < NV; ++i) wv[i] = V::load(w + V::kLanes * i);
    for (int r = 0; r < R; ++r) {
      const typename V::Reg x = V::broadcast(rows[r] + ch);
      for (int i = 0; i < NV; ++i) c[r][i] = V::fma(x, wv[i], c[r][i]);
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int i = 0; i < NV; ++i) V::store(acc[r] + V::kLanes * i, c[r][i]);
  }
}

// R positions, all ocb channels, in blocks of up to kVectors registers (kVectors <= 3).
template <class V, int R>
void dense_rows(const float* const* rows, int32_t k, const float* w, int ocb, float* const* acc, bool first) {
  static_assert(V::kVectors <= 3, "dense_rows instantiates blocks of 1 to 3 registers");
  for (int o = 0; o < ocb; o += V::kLanes * V::kVectors) {
    float* sub[R];
    for (int r = 0; r < R; ++r) sub[r] = acc[r] + o;
    const int left = (ocb - o) / V::kLanes;
    if (left == 1) {
      dense_block<V, R, 1>(rows, k, w + o, ocb, sub, first);
    } else if (left == 2 || V::kVectors == 2) {
      dense_block<V, R, 2>(rows, k, w + o, ocb, sub, first);
    } else {
      dense_block<V, R, 3>(rows, k, w + o, ocb, sub, first);
    }
  }
}

// The last R < kRows positions of a tile.
template <class V, int R = V::kRows - 1>
void dense_tail(int filled, const float* const* rows, int32_t k, const float* w, int ocb, float* const* acc,
                bool first) {
  if constexpr (R >= 1) {
    if (filled == R) {
      dense_rows<V, R>(rows, k, w, ocb, acc, first);
    } else {
      dense_tail<V, R - 1>(filled, rows, k, w, ocb, acc, first);
    }
  }
}

template <class V>
void dense_accumulate(const DenseAccumulateArgs& a, int ocb) {
  const float* rows[V::kRows];
  float* acc[V::kRows];
  int filled = 0;
  for (int32_t t = 0; t < a.positions; ++t) {
    if (a.needed != nullptr && a.needed[t * a.needed_stride] == 0) continue;
    rows[filled] = a.inputs[t];
    acc[filled] = a.acc + static_cast<int64_t>(t) * a.acc_stride;
    if (++filled == V::kRows) {
      dense_rows<V, V::kRows>(rows, a.k, a.weights, ocb, acc, a.first);
      filled = 0;
    }
  }
  dense_tail<V>(filled, rows, a.k, a.weights, ocb, acc, a.first);
}

// ---- Union accumulation: R positions share each loaded weight row, but only over the channels
// nonzero at one of them at least (SparseTrain's mask loop with weight reuse). Each channel of
// the union costs R broadcasts, NV weight loads and R * NV FMAs, so per multiply-add it runs
// near the dense form's speed, but the work is |union of the R nonzero sets| per position.
// Measured (sparse_conv.cc, kDenseCutover): real ReLU zeros overlap too little for that to beat
// the lists, so only ZAPOPT_ACCUMULATION selects it today.

// The channels c < k nonzero at one of rows[0..R) at least, ascending, into channels[]
// (which holds k + kLanes entries); returns how many. Branch-free: V::compress_lanes writes
// the set lanes of a mask with a table or a compress instruction.
template <class V, int R>
int32_t union_channels(const float* const* rows, int32_t k, int32_t* channels) {
  int32_t count = 0, c = 0;
  for (; c + V::kLanes <= k; c += V::kLanes) {
    unsigned any = 0;
    for (int r = 0; r < R; ++r) any |= V::nonzero_bits(rows[r] + c);
    count += V::compress_lanes(any, c, channels + count);
  }
  for (; c < k; ++c) {  // the last k % kLanes channels
    bool any = false;
    for (int r = 0; r < R; ++r) any |= !(rows[r][c] == 0.0f);
    channels[count] = c;
    count += any;
  }
  return count;
}

// R positions x NV registers of channels, over channels[0..n): each costs R broadcasts, NV
// weight loads and R * NV FMAs. One flat loop, like dense_block: nested loops here made GCC
// keep the accumulators on the stack.
template <class V, int R, int NV>
void union_block(const float* const* rows, const int32_t* __restrict channels, int32_t n, const float* w, int ocb,
                 float* const* acc, bool first) {
  typename V::Reg c[R * NV];
  #pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
    #pragma GCC unroll 16
    for (int i = 0; i < NV; ++i) c[r * NV + i] = V::zero();
  }
  if (!first) {
    #pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      #pragma GCC unroll 16
      for (int i = 0; i < NV; ++i) c[r * NV + i] = V::load(acc[r] + V::kLanes * i);
    }
  }
  for (int32_t j = 0; j < n; ++j) {
    const int32_t ch = channels[j];
    const float* row = w + static_cast<int64_t>(ch) * ocb;
    typename V::Reg x[R];
    #pragma GCC unroll 16
    for (int r = 0; r < R; ++r) x[r] = V::broadcast(rows[r] + ch);
    #pragma GCC unroll 16
    for (int i = 0; i < NV; ++i) {
      const typename V::Reg wv = V::load(row + V::kLanes * i);
      #pragma GCC unroll 16
      for (int r = 0; r < R; ++r) c[r * NV + i] = V::fma(x[r], wv, c[r * NV + i]);
    }
  }
  #pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
    #pragma GCC unroll 16
    for (int i = 0; i < NV; ++i) V::store(acc[r] + V::kLanes * i, c[r * NV + i]);
  }
}

// The largest NV a union block of R positions keeps in registers: R * NV accumulators + R
// broadcasts + 1 weight vector.
template <class V, int R>
constexpr int union_max_vectors() {
  return (V::kRegisters - R - 1) / R;
}

// Dispatches a block of nv registers (1 <= nv <= union_max_vectors, nv <= 8) to its template.
template <class V, int R, int NV = 1>
void union_block_of(int nv, const float* const* rows, const int32_t* channels, int32_t n, const float* w,
                    int ocb, float* const* acc, bool first) {
  if constexpr (NV <= union_max_vectors<V, R>() && NV <= 8) {
    if (nv == NV) {
      union_block<V, R, NV>(rows, channels, n, w, ocb, acc, first);
    } else {
      union_block_of<V, R, NV + 1>(nv, rows, channels, n, w, ocb, acc, first);
    }
  }
}

// R positions, all ocb channels, in blocks of equal size (as far as they divide).
template <class V, int R>
void union_blocks(const float* const* rows, const int32_t* channels, int32_t n, const float* w, int ocb,
                  float* const* acc, bool first) {
  const int total = ocb / V::kLanes;
  const int blocks = (total + union_max_vectors<V, R>() - 1) / union_max_vectors<V, R>();
  const int per_block = (total + blocks - 1) / blocks;
  for (int v = 0; v < total; v += per_block) {
    float* sub[R];
    for (int r = 0; r < R; ++r) sub[r] = acc[r] + V::kLanes * v;
    union_block_of<V, R>(std::min(per_block, total - v), rows, channels, n, w + V::kLanes * v, ocb, sub, first);
  }
}

// A union multiply-add costs about this share of a list one (Zen 3, 1 thread, R = 3, one
// 64-position tile of OpenNSFW's 64->64 3x3 input in a loop: ~0.75): a group of R positions
// runs as a union unless its union work (R x the channels nonzero at one of them) exceeds the
// sum of the positions' own nonzeros by more than 1 / kUnionCost; then each position walks its
// nonzero list.
constexpr float kUnionCost = 0.75f;

// The R positions index[0..R) of a tile (inputs rows[r], accumulators acc[r]), all ocb channels.
template <class V, int R>
void union_group(const UnionAccumulateArgs& a, int ocb, const float* const* rows, float* const* acc,
                 const int32_t* index, int32_t* channels) {
  const int32_t n = union_channels<V, R>(rows, a.k, channels);
  int32_t own = 0;
  for (int r = 0; r < R; ++r) own += a.counts[index[r]];
  if (static_cast<float>(n * R) * kUnionCost <= static_cast<float>(own)) {
    union_blocks<V, R>(rows, channels, n, a.weights, ocb, acc, a.first);
    return;
  }
  for (int r = 0; r < R; ++r) {
    AccumulateArgs one;
    static_cast<TileTarget&>(one) = a;
    one.positions = 1;
    one.needed = nullptr;
    one.acc = acc[r];
    one.channels = a.channels + index[r];
    one.values = a.values + index[r];
    one.counts = a.counts + index[r];
    V::accumulate_lists(one, ocb);
  }
}

// The last R' < R positions of a tile.
template <class V, int R>
void union_tail(int filled, const UnionAccumulateArgs& a, int ocb, const float* const* rows, float* const* acc,
                const int32_t* index, int32_t* channels) {
  if constexpr (R >= 1) {
    if (filled == R) {
      union_group<V, R>(a, ocb, rows, acc, index, channels);
    } else {
      union_tail<V, R - 1>(filled, a, ocb, rows, acc, index, channels);
    }
  }
}

// Groups of R needed positions in tile order; a last group of fewer than R runs as R' < R.
template <class V, int R>
void union_accumulate_rows(const UnionAccumulateArgs& a, int ocb) {
  const float* rows[R];
  float* acc[R];
  int32_t index[R];
  int32_t channels[kMaxUnionChannels + V::kLanes];
  int filled = 0;
  for (int32_t t = 0; t < a.positions; ++t) {
    if (a.needed != nullptr && a.needed[t * a.needed_stride] == 0) continue;
    rows[filled] = a.inputs[t];
    acc[filled] = a.acc + static_cast<int64_t>(t) * a.acc_stride;
    index[filled] = t;
    if (++filled == R) {
      union_group<V, R>(a, ocb, rows, acc, index, channels);
      filled = 0;
    }
  }
  union_tail<V, R - 1>(filled, a, ocb, rows, acc, index, channels);
}

template <class V>
void union_accumulate(const UnionAccumulateArgs& a, int ocb, int rows) {
  switch (rows) {
    case 1: union_accumulate_rows<V, 1>(a, ocb); break;
    case 2: union_accumulate_rows<V, 2>(a, ocb); break;
    case 3: union_accumulate_rows<V, 3>(a, ocb); break;
    default: union_accumulate_rows<V, 4>(a, ocb); break;
  }
}
