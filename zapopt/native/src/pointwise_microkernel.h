// The pointwise path's inner loops (pointwise.h), written once for every vector instruction
// set. Included by microkernel_avx2.cc and microkernel_avx512.cc *inside their anonymous
// namespace*, like dense_microkernel.h (see there why), with the same V description plus
// V::add, V::max and V::min (the x86 operand order: NaN in the second operand passes) and
// V::set1.

// kRows output channels x NV vectors of positions starting at p: the full accumulation over
// the input channels, then bias, Skip and the activation, stored to Y.
template <class V, int NV>
void pointwise_tile(const PointwiseArgs& a, int64_t p) {  // positions [p, p + NV * lanes)
  constexpr int R = kPointwiseRows;
  typename V::Reg c[R * NV];
  #pragma GCC unroll 16
  for (int i = 0; i < R * NV; ++i) c[i] = V::zero();
  const float* x = a.x + p;
  const float* w = a.weights;
  const int32_t k = a.k;
  const int64_t stride = a.x_stride;
  for (int32_t ch = 0; ch < k; ++ch, x += stride, w += R) {
    typename V::Reg xv[NV];
    #pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) xv[j] = V::load(x + V::kLanes * j);
    #pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      const typename V::Reg wv = V::broadcast(w + r);
      #pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) c[r * NV + j] = V::fma(wv, xv[j], c[r * NV + j]);
    }
  }
  const typename V::Reg zero = V::zero(), clip = V::set1(a.clip_max);
  // Unrolled with constant indices (and a test for the rows that exist): a loop bound read
  // from a made GCC keep the accumulators on the stack, stored on every input channel.
  #pragma GCC unroll 4
  for (int r = 0; r < R; ++r) {
    if (r >= a.rows) break;
    const typename V::Reg b = V::set1(a.bias[r]);
    float* y = a.y + r * a.y_stride + p;
    const float* skip = a.skip == nullptr ? nullptr : a.skip + r * a.y_stride + p;
    #pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) {
      typename V::Reg v = V::add(c[r * NV + j], b);
      if (skip != nullptr) v = V::add(v, V::load(skip + V::kLanes * j));
      if (a.relu) v = V::min(clip, V::max(zero, v));  // NaN passes, like std::min/max
      V::store(y + V::kLanes * j, v);
    }
  }
}

template <class V>
void pointwise(const PointwiseArgs& a) {
  constexpr int64_t kWide = 3 * V::kLanes;
  int64_t p = 0;
  for (; p + kWide <= a.count; p += kWide) pointwise_tile<V, 3>(a, p);
  for (; p + V::kLanes <= a.count; p += V::kLanes) pointwise_tile<V, 1>(a, p);
  if (p < a.count) {  // fewer than one vector left (callers hand over whole vectors)
    PointwiseArgs tail = a;
    tail.x += p;
    tail.y += p;
    if (tail.skip != nullptr) tail.skip += p;
    tail.count = a.count - p;
    pointwise_portable(tail);
  }
}
