// The per-position nonzero lists (AccumulateFn), written once for every vector instruction
// set. Included by microkernel_avx2.cc and microkernel_avx512.cc *inside their anonymous
// namespace*, like dense_microkernel.h (see there why), with the same V description plus
// V::add.
//
// Each nonzero entry costs one broadcast and NV fused multiply-adds with its weight row. An
// FMA has 4 cycles of latency and two pipes run one each cycle (Zen 3, Skylake-X), so fewer
// than 8 independent accumulator chains leave the pipes idle (with 4 vectors, 32 output
// channels on AVX2, perf's samples piled up on the FMAs). Layers with few vectors therefore
// take S entries at a time into S accumulator sets, added up at the end. Measured gain: small,
// within the +-5 % noise of same-process model runs on the shared machine.

// S accumulator sets for NV vectors: at least 8 chains where the registers allow.
template <int NV>
constexpr int list_sets() {
  return NV >= 5 ? 1 : (NV >= 3 ? 2 : 4);
}

template <class V, int NV>
void accumulate_lists_of(const AccumulateArgs& a) {
  constexpr int S = list_sets<NV>();
  constexpr int kOcb = NV * V::kLanes;
  // The next step's weights, spread over the positions: 64-byte lines, about as many per
  // position as the slab has lines per position.
  const char* next = reinterpret_cast<const char*>(a.next_weights);
  const int32_t lines = next == nullptr || a.positions == 0 ? 0 : (a.next_bytes + 63) / 64;
  const int32_t per_position = (lines + a.positions - 1) / std::max<int32_t>(1, a.positions);
  for (int32_t t = 0; t < a.positions; ++t) {
    for (int32_t l = t * per_position; l < std::min(lines, (t + 1) * per_position); ++l) {
      __builtin_prefetch(next + int64_t{l} * 64, 0, 3);
    }
    if (a.needed != nullptr && a.needed[t * a.needed_stride] == 0) continue;
    float* acc = a.acc + static_cast<int64_t>(t) * a.acc_stride;
    typename V::Reg c[S * NV];  // one flat array: a 2-D one made GCC keep it on the stack
    #pragma GCC unroll 16
    for (int i = 0; i < S * NV; ++i) c[i] = V::zero();
    if (!a.first) {
      #pragma GCC unroll 16
      for (int i = 0; i < NV; ++i) c[i] = V::load(acc + V::kLanes * i);
    }
    const int32_t* ks = a.channels[t];
    const float* values = a.values[t];
    const int32_t n = a.counts[t];
    int32_t j = 0;
    for (; j + S <= n; j += S) {
      #pragma GCC unroll 4
      for (int s = 0; s < S; ++s) {
        const typename V::Reg x = V::broadcast(values + j + s);
        const float* w = a.weights + static_cast<int64_t>(ks[j + s]) * kOcb;
        #pragma GCC unroll 16
        for (int i = 0; i < NV; ++i) c[s * NV + i] = V::fma(x, V::load(w + V::kLanes * i), c[s * NV + i]);
      }
    }
    for (; j < n; ++j) {
      const typename V::Reg x = V::broadcast(values + j);
      const float* w = a.weights + static_cast<int64_t>(ks[j]) * kOcb;
      #pragma GCC unroll 16
      for (int i = 0; i < NV; ++i) c[i] = V::fma(x, V::load(w + V::kLanes * i), c[i]);
    }
    #pragma GCC unroll 4
    for (int s = 1; s < S; ++s) {
      #pragma GCC unroll 16
      for (int i = 0; i < NV; ++i) c[i] = V::add(c[i], c[s * NV + i]);
    }
    #pragma GCC unroll 16
    for (int i = 0; i < NV; ++i) V::store(acc + V::kLanes * i, c[i]);
  }
}
