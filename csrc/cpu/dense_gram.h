// The Gram kernel on one instruction set's vectors: included by dense.cpp once per set, inside
// that set's namespace, which defines before the include
//   vzero(const S*), vloadu(const S*), vstoreu(S*, v), vfma(a, b, c) for S = float and double,
//   kVecBytes (the vector width), kMI × kMJ (the largest tile), block_columns(T, sizeof(S)),
//   MTL_TARGET (the set's __attribute__((target(...)))).
// No include guard, on purpose. Only tiles with j ≥ i (the upper triangle, diagonal tiles whole)
// are computed; the caller mirrors.

// The sum of a vector's lanes in fp64, in order.
template <typename S, typename V>
MTL_TARGET inline double vsum(const S*, const V& v) {
  S lanes[kVecBytes / sizeof(S)];
  vstoreu(lanes, v);
  double s = 0.0;
  for (size_t l = 0; l < kVecBytes / sizeof(S); ++l) s += static_cast<double>(lanes[l]);
  return s;
}

// Adds the (i0.., j0..) tile of one column block [c0, c0 + n) into Kd (fp64, T × T): an MI × MJ
// tile of accumulators in registers, summed in fp64 once per block.
template <typename S, int MI, int MJ>
MTL_TARGET inline void tile(const S* J, int64_t ld, int64_t T, int64_t i0, int64_t j0, int64_t c0,
                            int64_t n, double* Kd) {
  using V = decltype(vzero(J));
  constexpr int64_t kLanes = kVecBytes / sizeof(S);
  const S* x[MI];
  const S* y[MJ];
  for (int a = 0; a < MI; ++a) x[a] = J + (i0 + a) * ld + c0;
  for (int b = 0; b < MJ; ++b) y[b] = J + (j0 + b) * ld + c0;
  V acc[MI][MJ];
  for (int a = 0; a < MI; ++a)
    for (int b = 0; b < MJ; ++b) acc[a][b] = vzero(J);
  int64_t p = 0;
  for (; p + kLanes <= n; p += kLanes) {
    V xv[MI];
    for (int a = 0; a < MI; ++a) xv[a] = vloadu(x[a] + p);
    for (int b = 0; b < MJ; ++b) {
      const V yv = vloadu(y[b] + p);
      for (int a = 0; a < MI; ++a) acc[a][b] = vfma(xv[a], yv, acc[a][b]);
    }
  }
  for (int a = 0; a < MI; ++a) {
    for (int b = 0; b < MJ; ++b) {
      double s = vsum(J, acc[a][b]);
      for (int64_t q = p; q < n; ++q) s += static_cast<double>(x[a][q]) * y[b][q];
      Kd[(i0 + a) * T + (j0 + b)] += s;
    }
  }
}

// tile<S, mi, mj> for run-time mi ≤ MI and mj ≤ MJ (the edges of the triangle).
template <typename S, int MI, int MJ>
MTL_TARGET inline void edge_tile(int64_t mi, int64_t mj, const S* J, int64_t ld, int64_t T,
                                 int64_t i0, int64_t j0, int64_t c0, int64_t n, double* Kd) {
  if constexpr (MI > 1) {
    if (mi < MI) return edge_tile<S, MI - 1, MJ>(mi, mj, J, ld, T, i0, j0, c0, n, Kd);
  }
  if constexpr (MJ > 1) {
    if (mj < MJ) return edge_tile<S, MI, MJ - 1>(mi, mj, J, ld, T, i0, j0, c0, n, Kd);
  }
  tile<S, MI, MJ>(J, ld, T, i0, j0, c0, n, Kd);
}

template <typename S>
MTL_TARGET void gram(const S* J, int64_t T, int64_t ld, int64_t p0, int64_t p1, double* Kd) {
  const int64_t block = block_columns(T, int64_t(sizeof(S)));
  for (int64_t c0 = p0; c0 < p1; c0 += block) {
    const int64_t n = std::min(block, p1 - c0);
    for (int64_t i0 = 0; i0 < T; i0 += kMI) {
      const int64_t mi = std::min<int64_t>(kMI, T - i0);
      for (int64_t j0 = i0; j0 < T; j0 += kMJ) {
        const int64_t mj = std::min<int64_t>(kMJ, T - j0);
        edge_tile<S, kMI, kMJ>(mi, mj, J, ld, T, i0, j0, c0, n, Kd);
      }
    }
  }
}
