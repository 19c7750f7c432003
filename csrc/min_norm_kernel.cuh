// Device code of the min-norm solve (see min_norm.cu for the algorithm), kept free of ATen so
// that the very same code also compiles on the host against emulate/cuda_emulator.h, where a
// test runs it with 32 threads standing in for the lanes of a warp.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>

namespace mtl_fast {
namespace min_norm_detail {

constexpr int kWarp = 32;
constexpr int kMaxSharedT = 64;  // largest T whose scratch fits in shared memory
constexpr int kMaxT = 2048;       // scratch is ≈ 16·T² bytes per problem
// Ridge added to the face system, relative to max K_ii = 1 (the reference's FACE_RIDGE).
constexpr double kFaceRidge = 1e-12;
constexpr unsigned kFull = 0xffffffffu;

__device__ __forceinline__ double warp_sum(double v) {
#pragma unroll
  for (int m = kWarp / 2; m > 0; m >>= 1) v += __shfl_xor_sync(kFull, v, m);
  return v;
}

__device__ __forceinline__ double warp_max(double v) {
#pragma unroll
  for (int m = kWarp / 2; m > 0; m >>= 1) v = fmax(v, __shfl_xor_sync(kFull, v, m));
  return v;
}

// (value, index) arg-min over the warp; ties -> smallest index.
__device__ __forceinline__ void warp_argmin(double& v, int& i) {
#pragma unroll
  for (int m = kWarp / 2; m > 0; m >>= 1) {
    const double ov = __shfl_xor_sync(kFull, v, m);
    const int oi = __shfl_xor_sync(kFull, i, m);
    if (ov < v || (ov == v && oi < i)) {
      v = ov;
      i = oi;
    }
  }
}

// (value, index) arg-max over the warp; ties -> smallest index.
__device__ __forceinline__ void warp_argmax(double& v, int& i) {
#pragma unroll
  for (int m = kWarp / 2; m > 0; m >>= 1) {
    const double ov = __shfl_xor_sync(kFull, v, m);
    const int oi = __shfl_xor_sync(kFull, i, m);
    if (ov > v || (ov == v && oi < i)) {
      v = ov;
      i = oi;
    }
  }
}

// out = Kn x for the normalised Gram in shared memory, row by row as the reference computes
// it. Lane i reads row i: the odd leading dimension spreads the lanes over all banks.
__device__ __forceinline__ void matvec(const double* Kn, int ld, const double* x, double* out,
                                       int T, int lane) {
  for (int i = lane; i < T; i += kWarp) {
    double s = 0.0;
    for (int j = 0; j < T; ++j) s = fma(Kn[i * ld + j], x[j], s);
    out[i] = s;
  }
  __syncwarp();
}

__device__ __forceinline__ double dot(const double* x, const double* y, int T, int lane) {
  double s = 0.0;
  for (int i = lane; i < T; i += kWarp) s += x[i] * y[i];
  return warp_sum(s);
}

// Solve A z = rhs in place (A: n×n with leading dimension lda, destroyed; rhs becomes z) by LU
// with partial pivoting, the method torch.linalg.solve uses. Returns false on a zero or
// non-finite pivot (the reference then gets a non-finite solution and rejects the move).
__device__ inline bool lu_solve(double* A, int lda, double* rhs, int n, int lane) {
  bool ok = true;
  for (int k = 0; k < n; ++k) {
    double best = -1.0;
    int piv = n;
    for (int r = k + lane; r < n; r += kWarp) {
      const double v = fabs(A[r * lda + k]);
      if (v > best || (v == best && r < piv)) {
        best = v;
        piv = r;
      }
    }
    warp_argmax(best, piv);
    __syncwarp();  // every lane has read column k before any row is swapped
    if (!(best > 0.0) || !isfinite(best)) {
      ok = false;
      break;
    }
    if (piv != k) {
      for (int c = lane; c < n; c += kWarp) {
        const double t = A[k * lda + c];
        A[k * lda + c] = A[piv * lda + c];
        A[piv * lda + c] = t;
      }
      if (lane == 0) {
        const double t = rhs[k];
        rhs[k] = rhs[piv];
        rhs[piv] = t;
      }
    }
    __syncwarp();
    const double inv = 1.0 / A[k * lda + k];
    for (int r = k + 1 + lane; r < n; r += kWarp) {
      const double l = A[r * lda + k] * inv;
      for (int c = k + 1; c < n; ++c) A[r * lda + c] = fma(-l, A[k * lda + c], A[r * lda + c]);
      rhs[r] = fma(-l, rhs[k], rhs[r]);
    }
    __syncwarp();
  }
  if (!ok) return false;
  for (int k = n - 1; k >= 0; --k) {
    const double zk = rhs[k] / A[k * lda + k];
    __syncwarp();
    for (int r = lane; r < k; r += kWarp) rhs[r] = fma(-A[r * lda + k], zk, rhs[r]);
    if (lane == 0) rhs[k] = zk;
    __syncwarp();
  }
  return true;
}

// Scratch of one problem, in doubles: Kn and the face system A (T × ld each, ld odd so that
// lanes reading different rows hit different banks), six vectors of T doubles, then 2T ints.
struct Layout {
  int ld;
  __host__ __device__ explicit Layout(int T) : ld(T | 1) {}
  __host__ __device__ size_t doubles(int T) const {
    return 2 * static_cast<size_t>(T) * ld + 7 * static_cast<size_t>(T);
  }
  __host__ __device__ size_t bytes(int T) const { return doubles(T) * sizeof(double); }
};

// Solve one problem with the calling warp: Kb (T, T) -> Wb (T,), scratch of Layout(T).bytes(T)
// at `base` (shared or global memory), lane = this thread's lane.
template <typename scalar_t>
__device__ void solve_problem(const scalar_t* __restrict__ Kb, scalar_t* __restrict__ Wb,
                              double* __restrict__ base, int T, int64_t max_iter, double tol,
                              int lane) {
  const Layout L(T);
  double* Kn = base;                               // T × ld, normalised K
  double* A = Kn + static_cast<size_t>(T) * L.ld;  // T × ld, face system (compacted)
  double* w = A + static_cast<size_t>(T) * L.ld;   // current weights
  double* g = w + T;                               // Kn w
  double* mv = g + T;                              // candidate (moved) weights
  double* gm = mv + T;                             // Kn mv
  double* z = gm + T;                              // face solution (compacted)
  double* y = z + T;                               // affine min-norm point of the face
  int* idx = reinterpret_cast<int*>(y + T);        // support position -> task
  int* pos = idx + T;                              // task -> support position


  // 1. Normalise by max_i K_ii (when positive) so everything below is scale-free.
  double dmax = -INFINITY;
  for (int i = lane; i < T; i += kWarp) dmax = fmax(dmax, static_cast<double>(Kb[i * T + i]));
  dmax = warp_max(dmax);
  const double scale = dmax > 0.0 ? dmax : 1.0;
  for (int q = lane; q < T * T; q += kWarp) {
    Kn[(q / T) * L.ld + (q % T)] = static_cast<double>(Kb[q]) / scale;
  }
  __syncwarp();

  // 2. Start at the vertex with the smallest diagonal entry.
  double dmin = INFINITY;
  int imin = T;
  for (int i = lane; i < T; i += kWarp) {
    const double d = Kn[i * L.ld + i];
    if (d < dmin || (d == dmin && i < imin)) {
      dmin = d;
      imin = i;
    }
  }
  warp_argmin(dmin, imin);
  if (imin >= T) imin = 0;  // all-NaN diagonal: any vertex is as good
  for (int i = lane; i < T; i += kWarp) w[i] = i == imin ? 1.0 : 0.0;
  __syncwarp();
  matvec(Kn, L.ld, w, g, T, lane);

  for (int64_t it = 0; it < max_iter; ++it) {
    // 3. Duality gap, Frank-Wolfe vertex s and away vertex a.
    const double f = dot(w, g, T, lane);
    double g_s = INFINITY, g_a = -INFINITY;
    int s = T, a = T;
    for (int i = lane; i < T; i += kWarp) {
      const double gi = g[i];
      if (gi < g_s || (gi == g_s && i < s)) {
        g_s = gi;
        s = i;
      }
      if (w[i] > 0.0 && (gi > g_a || (gi == g_a && i < a))) {
        g_a = gi;
        a = i;
      }
    }
    warp_argmin(g_s, s);
    warp_argmax(g_a, a);
    if (s >= T) s = 0;
    if (a >= T) a = s;
    const double gap_fw = f - g_s;
    const double gap_aw = g_a - f;
    if (2.0 * gap_fw <= tol) break;  // converged: this problem is done

    // Away-step Frank-Wolfe step with exact line search on the quadratic.
    const bool use_fw = gap_fw >= gap_aw;
    const double num = fmax(use_fw ? gap_fw : gap_aw, 0.0);  // −dᵀKw ≥ 0
    const double den = use_fw ? (Kn[s * L.ld + s] - 2.0 * g_s) + f
                              : (f - 2.0 * g_a) + Kn[a * L.ld + a];
    const double w_a = w[a];
    __syncwarp();  // every lane has read w[a], g and Kn before w is overwritten
    // An away step from a vertex (w_a = 1) has zero gap and is never taken.
    const double gamma_max = use_fw ? 1.0 : w_a / (w_a < 1.0 ? 1.0 - w_a : 1.0);
    double gamma = den > 0.0 ? num / den : gamma_max;
    gamma = gamma < gamma_max ? gamma : gamma_max;
    if (num <= 0.0) gamma = 0.0;
    const int v = use_fw ? s : a;
    const double coef = use_fw ? 1.0 - gamma : 1.0 + gamma;
    const bool drop = !use_fw && gamma >= gamma_max && gamma > 0.0;
    double part = 0.0;
    for (int i = lane; i < T; i += kWarp) {
      double wi = coef * w[i];
      if (i == v) wi = drop ? 0.0 : wi + (use_fw ? gamma : -gamma);
      wi = fmax(wi, 0.0);
      w[i] = wi;
      part += wi;
    }
    const double wsum = warp_sum(part);
    for (int i = lane; i < T; i += kWarp) w[i] = w[i] / wsum;
    __syncwarp();
    matvec(Kn, L.ld, w, g, T, lane);  // g = Kn w for the stepped w
    const double f_w = dot(w, g, T, lane);

    // 4. Face correction toward the affine min-norm point of the support A = {w_i > 0}.
    int n = 0;
    for (int base = 0; base < T; base += kWarp) {
      const int i = base + lane;
      const bool act = i < T && w[i] > 0.0;
      const unsigned mask = __ballot_sync(kFull, act);
      const int p = n + __popc(mask & ((1u << lane) - 1u));
      if (i < T) pos[i] = act ? p : -1;
      if (act) idx[p] = i;
      n += __popc(mask);
    }
    __syncwarp();
    for (int q = lane; q < n * n; q += kWarp) {
      const int r = q / n, c = q % n;
      A[r * L.ld + c] = Kn[idx[r] * L.ld + idx[c]] + (r == c ? kFaceRidge : 0.0);
    }
    for (int r = lane; r < n; r += kWarp) z[r] = 1.0;
    __syncwarp();
    bool ok = lu_solve(A, L.ld, z, n, lane);
    double zpart = 0.0;
    int finite = 1;
    for (int r = lane; r < n; r += kWarp) {
      zpart += z[r];
      finite &= isfinite(z[r]) ? 1 : 0;
    }
    const double total = warp_sum(zpart);
    ok = ok && __all_sync(kFull, finite) && isfinite(total) && total > 0.0;
    if (!ok) continue;  // keep the Frank-Wolfe iterate (g already matches it)

    // Ratio test: the largest step toward y that stays in the simplex; the blocker is dropped.
    double r_min = INFINITY;
    int blocker = T;
    for (int i = lane; i < T; i += kWarp) {
      const int p = pos[i];
      const double yi = p >= 0 ? z[p] / total : 0.0;
      y[i] = yi;
      if (p >= 0 && yi < 0.0) {
        const double ratio = w[i] / (w[i] - yi);
        if (ratio < r_min || (ratio == r_min && i < blocker)) {
          r_min = ratio;
          blocker = i;
        }
      }
    }
    warp_argmin(r_min, blocker);
    const double step = fmin(r_min, 1.0);
    part = 0.0;
    for (int i = lane; i < T; i += kWarp) {
      double mi = w[i] + step * (y[i] - w[i]);
      if (r_min <= 1.0 && i == blocker) mi = 0.0;
      mi = fmax(mi, 0.0);
      mv[i] = mi;
      part += mi;
    }
    const double msum = warp_sum(part);
    if (!(msum > 0.0)) continue;
    for (int i = lane; i < T; i += kWarp) mv[i] = mv[i] / msum;
    __syncwarp();
    matvec(Kn, L.ld, mv, gm, T, lane);
    const double f_moved = dot(mv, gm, T, lane);
    if (f_moved <= f_w) {  // monotone: accept only if the objective does not rise
      for (int i = lane; i < T; i += kWarp) {
        w[i] = mv[i];
        g[i] = gm[i];
      }
      __syncwarp();
    }
  }

  for (int i = lane; i < T; i += kWarp) Wb[i] = static_cast<scalar_t>(w[i]);
}


}  // namespace min_norm_detail
}  // namespace mtl_fast
