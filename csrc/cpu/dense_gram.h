// The Gram kernel on one instruction set's vectors: included by dense.cpp once per set, inside
// that set's namespace, which defines before the include
//   vzero(const S*), vloadu(const S*), vstoreu(S*, v), vfma(a, b, c) for S = float and double,
//   kVecBytes (the vector width), kMI × kMJ (the largest tile), flush_columns(T, sizeof(S)) (the
//   columns a tile sums in S before it adds the sums into Kd in fp64: the rounding of the kernel),
//   MTL_TARGET (the set's __attribute__((target(...)))).
// and, before the first include, PrefetchCursor (dense.cpp). No include guard, on purpose. Only
// pairs with j ≥ i (the upper triangle) are computed; the caller mirrors.

// The sum of a vector's lanes in fp64, in order.
template <typename S, typename V>
MTL_TARGET inline double vsum(const S*, const V& v) {
  S lanes[kVecBytes / sizeof(S)];
  vstoreu(lanes, v);
  double s = 0.0;
  for (size_t l = 0; l < kVecBytes / sizeof(S); ++l) s += static_cast<double>(lanes[l]);
  return s;
}

// Adds the (i0.., j0..) tile of the columns [c0, c0 + n) (at most flush_columns) into Kd (fp64,
// T × T): an MI × MJ tile of accumulators in registers, summed in fp64 at the end. A tile on the
// diagonal (DIAG: i0 = j0) skips the pairs below it and reuses its row loads: at T = 10, 55
// vector FMAs per column step instead of 68. Each step of the loop also issues the next few
// prefetches of the next block (pf).
template <typename S, int MI, int MJ, bool DIAG>
MTL_TARGET inline void tile(const S* J, int64_t ld, int64_t T, int64_t i0, int64_t j0, int64_t c0,
                            int64_t n, double* Kd, PrefetchCursor& pf) {
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
    pf.step();
    V xv[MI];
    for (int a = 0; a < MI; ++a) xv[a] = vloadu(x[a] + p);
    for (int b = 0; b < MJ; ++b) {
      const V yv = DIAG && b < MI ? xv[b] : vloadu(y[b] + p);
      for (int a = 0; a < MI; ++a) {
        if (!DIAG || a <= b) acc[a][b] = vfma(xv[a], yv, acc[a][b]);
      }
    }
  }
  for (int a = 0; a < MI; ++a) {
    for (int b = DIAG ? a : 0; b < MJ; ++b) {
      double s = vsum(J, acc[a][b]);
      for (int64_t q = p; q < n; ++q) s += static_cast<double>(x[a][q]) * y[b][q];
      Kd[(i0 + a) * T + (j0 + b)] += s;
    }
  }
}

// tile<S, mi, mj, i0 == j0> for run-time mi ≤ MI and mj ≤ MJ (the edges of the triangle).
template <typename S, int MI, int MJ>
MTL_TARGET inline void edge_tile(int64_t mi, int64_t mj, const S* J, int64_t ld, int64_t T,
                                 int64_t i0, int64_t j0, int64_t c0, int64_t n, double* Kd,
                                 PrefetchCursor& pf) {
  if constexpr (MI > 1) {
    if (mi < MI) return edge_tile<S, MI - 1, MJ>(mi, mj, J, ld, T, i0, j0, c0, n, Kd, pf);
  }
  if constexpr (MJ > 1) {
    if (mj < MJ) return edge_tile<S, MI, MJ - 1>(mi, mj, J, ld, T, i0, j0, c0, n, Kd, pf);
  }
  if (i0 == j0) return tile<S, MI, MJ, true>(J, ld, T, i0, j0, c0, n, Kd, pf);
  tile<S, MI, MJ, false>(J, ld, T, i0, j0, c0, n, Kd, pf);
}

// J is read in blocks of whole flush spans, about kPrefetchBytes of T rows each: while the tiles
// of one block run on it (from L2), the block after it is prefetched into L2, spread evenly over
// the block's tile steps, so that reading memory overlaps the arithmetic instead of following it.
template <typename S>
MTL_TARGET void gram(const S* J, int64_t T, int64_t ld, int64_t p0, int64_t p1, double* Kd) {
  constexpr int64_t kLanes = kVecBytes / sizeof(S);
  constexpr int64_t kSize = sizeof(S);
  const int64_t flush = flush_columns(T, kSize);
  const int64_t block = flush * std::max<int64_t>(1, kPrefetchBytes / (T * flush * kSize));
  int64_t tiles = 0;  // tile launches per block
  for (int64_t i0 = 0; i0 < T; i0 += kMI) tiles += (T - i0 + kMJ - 1) / kMJ;
  for (int64_t b0 = p0; b0 < p1; b0 += block) {
    const int64_t nb = std::min(block, p1 - b0);
    PrefetchCursor pf(J, ld, T, b0 + nb, p1, block, tiles * (nb / kLanes));
    for (int64_t c0 = b0; c0 < b0 + nb; c0 += flush) {
      const int64_t n = std::min(flush, b0 + nb - c0);
      for (int64_t i0 = 0; i0 < T; i0 += kMI) {
        const int64_t mi = std::min<int64_t>(kMI, T - i0);
        for (int64_t j0 = i0; j0 < T; j0 += kMJ) {
          const int64_t mj = std::min<int64_t>(kMJ, T - j0);
          edge_tile<S, kMI, kMJ>(mi, mj, J, ld, T, i0, j0, c0, n, Kd, pf);
        }
      }
    }
  }
}
