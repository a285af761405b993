// The register-blocked dense accumulation (DenseAccumulateFn), written once for every vector
// instruction set. Included by microkernel_avx2.cc and microkernel_avx512.cc *inside their
// anonymous namespace*: each translation unit gets its own internal-linkage copy compiled with
// its own -m flags, so the one definition rule is not broken across instruction sets.
//
// V describes the vector registers: V::kLanes floats per register, V::kRows positions and up
// to V::kVectors registers per position in one block (kRows * kVectors accumulators + kVectors
// weights + 1 broadcast must fit the register file), and static zero/load/store/broadcast/fma.
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
