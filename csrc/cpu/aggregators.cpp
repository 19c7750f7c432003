// CPU Gram-space aggregators: PCGrad, IMTL-G, CAGrad, Nash-MTL, Aligned-MTL and ConFIG, one
// problem after another, each a scalar fp64 loop over its T×T Gram matrix.
//
// The algorithms, constants and stopping rules are those of the reference
// (mtl_fast/kernels/reference/aggregators.py), step for step; docs/aggregators.md has the
// formulas. What differs is only how each quantity is computed:
//
// - The eigen-based methods (IMTL-G, Aligned-MTL, ConFIG) use Householder tridiagonalisation
//   and implicit QR steps (see eigh) instead of LAPACK's routine behind torch.linalg.eigh; its
//   eigenvalue errors are O(eps·‖K‖), as LAPACK's, which is what the pseudo-inverse cut-offs
//   look at. A cyclic Jacobi solver (the design for one GPU program) was 6× slower here.
// - The linear systems (CAGrad's face systems, Nash-MTL's Newton systems) are solved on the
//   support only, by LU with partial pivoting and by Cholesky, where the reference solves the
//   padded T×T system with torch.linalg.
//
// No torch headers: this file is built by setup.py without torch and loaded with ctypes.

#include "aggregators.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <new>
#include <numeric>
#include <vector>

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kEps = std::numeric_limits<double>::epsilon();
// Largest T accepted (the scratch is a few T² doubles).
constexpr int64_t kMaxT = 4096;
// IMTL-G: weights are 0 when |Σv| < this on K / max K_ii (the reference's IMTLG_SUM_EPS).
constexpr double kImtlgSumEps = 1e-12;
// CAGrad: face ridge, smoothing of ‖g_w‖ and tie tolerance (the reference's constants).
constexpr double kCagradRidge = 1e-12;
constexpr double kCagradSmooth = 1e-12;
constexpr double kCagradTie = 1e-12;

// Per-thread scratch reused across problems and calls (a training step solves one small
// problem; allocating O(T²) every time would cost more than the solve at small T).
struct Scratch {
  std::vector<double> d;
  std::vector<int> i;
  double* take(size_t n) {
    double* p = d.data() + used;
    used += n;
    return p;
  }
  // Points each of `out` at its own next n doubles, in order.
  void take_each(size_t n, std::initializer_list<double**> out) {
    for (double** p : out) *p = take(n);
  }
  size_t used = 0;
};

// Reads K[b] symmetrised into A (row-major T×T fp64).
template <typename S>
void read_sym(const S* K, int T, double* A) {
  for (int i = 0; i < T; ++i) {
    for (int j = 0; j < T; ++j) {
      A[i * T + j] = 0.5 * (static_cast<double>(K[i * T + j]) + static_cast<double>(K[j * T + i]));
    }
  }
}

double max_diag(const double* A, int T) {
  double m = -kInf;
  for (int i = 0; i < T; ++i) m = std::max(m, A[i * T + i]);
  return m > 0 ? m : 1.0;
}

void matvec(const double* A, const double* x, double* out, int T) {
  for (int i = 0; i < T; ++i) {
    const double* row = A + static_cast<size_t>(i) * T;
    double s = 0.0;
    for (int j = 0; j < T; ++j) s += row[j] * x[j];
    out[i] = s;
  }
}

double dot(const double* x, const double* y, int T) {
  double s = 0.0;
  for (int i = 0; i < T; ++i) s += x[i] * y[i];
  return s;
}

// ---------------------------------------------------------------------------------------------
// Householder tridiagonalisation and implicit symmetric QR (Golub & Van Loan, "Matrix
// Computations", §8.3): A (T×T symmetric, destroyed) = V diag(lam) Vᵀ, eigenvalues ascending,
// V's columns matching. Eigenvectors are kept as the rows of Qᵀ while they are built, so every
// reflection and rotation is a contiguous row operation. Measured on one thread (fp64, Grams of
// 1024-dimensional gradients): 0.17 ms at T = 40 and 6 µs at T = 10, against 1.0 ms and 18 µs
// for a cyclic Jacobi solver (6-7 sweeps of T²/2 rotations at O(T) each), and against
// torch.linalg.eigh's 0.17 ms and 9-14 µs. At most 30·T QR steps (2-3 per eigenvalue in
// practice).
// work: 4T doubles; V: T² doubles (used for Qᵀ, then transposed into place).
// ---------------------------------------------------------------------------------------------
void eigh(double* A, double* V, double* lam, int* idx, double* work, int T) {
  double* d = work;
  double* e = work + T;  // e[i] couples i and i + 1
  double* v = work + 2 * T;
  double* p = work + 3 * T;
  double* Qt = V;
  std::fill(Qt, Qt + static_cast<size_t>(T) * T, 0.0);
  for (int i = 0; i < T; ++i) Qt[i * T + i] = 1.0;
  // 1. Reflections H_k = I − β v vᵀ on indices k+1..T-1 zero column k below the subdiagonal:
  //    A ← H_k A H_k, Qᵀ ← H_k Qᵀ.
  for (int k = 0; k + 2 < T; ++k) {
    const int m = T - k - 1;  // length of the reflected part
    double tail = 0.0;
    for (int i = 1; i < m; ++i) tail += A[(k + 1 + i) * T + k] * A[(k + 1 + i) * T + k];
    const double x0 = A[(k + 1) * T + k];
    if (tail == 0.0) continue;  // already tridiagonal in this column
    const double norm = std::sqrt(x0 * x0 + tail);
    const double alpha = x0 > 0 ? -norm : norm;  // the new subdiagonal entry, no cancellation
    v[0] = x0 - alpha;
    for (int i = 1; i < m; ++i) v[i] = A[(k + 1 + i) * T + k];
    const double beta = 1.0 / (norm * (norm + std::fabs(x0)));  // 2 / vᵀv
    // Trailing block B = A[k+1:, k+1:]: p = βBv, w = p − (β/2)(vᵀp)v, B ← B − vwᵀ − wvᵀ.
    double vp = 0.0;
    for (int i = 0; i < m; ++i) {
      const double* row = A + static_cast<size_t>(k + 1 + i) * T + (k + 1);
      double acc = 0.0;
      for (int j = 0; j < m; ++j) acc += row[j] * v[j];
      p[i] = beta * acc;
      vp += v[i] * p[i];
    }
    const double half = 0.5 * beta * vp;
    for (int i = 0; i < m; ++i) p[i] -= half * v[i];
    for (int i = 0; i < m; ++i) {
      double* row = A + static_cast<size_t>(k + 1 + i) * T + (k + 1);
      const double vi = v[i], pi = p[i];
      for (int j = 0; j < m; ++j) row[j] -= vi * p[j] + pi * v[j];
    }
    A[(k + 1) * T + k] = A[k * T + k + 1] = alpha;
    for (int i = 1; i < m; ++i) A[(k + 1 + i) * T + k] = A[k * T + k + 1 + i] = 0.0;
    // Qᵀ rows k+1.. : u = vᵀ Qᵀ[k+1:], then Qᵀ[k+1:] −= β v uᵀ.
    double* u = d;  // d is free until step 2
    std::fill(u, u + T, 0.0);
    for (int i = 0; i < m; ++i) {
      const double* row = Qt + static_cast<size_t>(k + 1 + i) * T;
      const double vi = v[i];
      for (int j = 0; j < T; ++j) u[j] += vi * row[j];
    }
    for (int i = 0; i < m; ++i) {
      double* row = Qt + static_cast<size_t>(k + 1 + i) * T;
      const double f = beta * v[i];
      for (int j = 0; j < T; ++j) row[j] -= f * u[j];
    }
  }
  for (int i = 0; i < T; ++i) d[i] = A[i * T + i];
  for (int i = 0; i + 1 < T; ++i) e[i] = A[(i + 1) * T + i];
  // 2. Implicit QR steps with the Wilkinson shift on the lowest unreduced block [l, m], chasing
  //    the bulge down with Givens rotations G (row k' = c·row k + s·row k+1, row k+1' =
  //    −s·row k + c·row k+1), applied to Qᵀ as well. An off-diagonal entry below
  //    eps·(|d_i| + |d_i+1|) is set to zero (deflation).
  int m = T - 1;
  for (int steps = 0; m > 0 && steps < 30 * T; ++steps) {
    for (int i = 0; i < m; ++i) {
      if (std::fabs(e[i]) <= kEps * (std::fabs(d[i]) + std::fabs(d[i + 1]))) e[i] = 0.0;
    }
    while (m > 0 && e[m - 1] == 0.0) --m;
    if (m == 0) break;
    int l = m - 1;
    while (l > 0 && e[l - 1] != 0.0) --l;
    // Shift: the eigenvalue of the trailing 2×2 of the block nearer to d[m].
    const double half = 0.5 * (d[m - 1] - d[m]);
    const double b2 = e[m - 1] * e[m - 1];
    const double mu = d[m] - b2 / (half + (half >= 0 ? 1.0 : -1.0) * std::sqrt(half * half + b2));
    double x = d[l] - mu, z = e[l];
    for (int k = l; k < m; ++k) {
      const double r = std::hypot(x, z);
      const double c = r > 0 ? x / r : 1.0, s = r > 0 ? z / r : 0.0;
      if (k > l) e[k - 1] = r;
      const double ak = d[k], ak1 = d[k + 1], bk = e[k];
      d[k] = c * c * ak + 2 * c * s * bk + s * s * ak1;
      d[k + 1] = s * s * ak - 2 * c * s * bk + c * c * ak1;
      e[k] = c * s * (ak1 - ak) + (c * c - s * s) * bk;
      if (k + 1 < m) {
        x = e[k];
        z = s * e[k + 1];
        e[k + 1] *= c;
      }
      double* rk = Qt + static_cast<size_t>(k) * T;
      double* rk1 = rk + T;
      for (int j = 0; j < T; ++j) {
        const double a = rk[j], b = rk1[j];
        rk[j] = c * a + s * b;
        rk1[j] = -s * a + c * b;
      }
    }
  }
  for (int i = 0; i < T; ++i) idx[i] = i;
  std::stable_sort(idx, idx + T, [&](int a, int b) { return d[a] < d[b]; });
  for (int i = 0; i < T; ++i) lam[i] = d[idx[i]];
  // V[r][i] = Qᵀ[idx[i]][r]: gather the sorted rows into A, then transpose into V.
  for (int i = 0; i < T; ++i) {
    std::copy(Qt + static_cast<size_t>(idx[i]) * T, Qt + static_cast<size_t>(idx[i] + 1) * T,
              A + static_cast<size_t>(i) * T);
  }
  for (int r = 0; r < T; ++r) {
    for (int i = 0; i < T; ++i) V[r * T + i] = A[i * T + r];
  }
}

// coords = Vᵀx
void to_basis(const double* V, const double* x, double* coords, int T) {
  for (int i = 0; i < T; ++i) coords[i] = 0.0;
  for (int r = 0; r < T; ++r) {
    const double xr = x[r];
    const double* row = V + static_cast<size_t>(r) * T;
    for (int i = 0; i < T; ++i) coords[i] += row[i] * xr;
  }
}

// out = V y
void from_basis(const double* V, const double* y, double* out, int T) { matvec(V, y, out, T); }

// K[b] symmetrised and divided by its largest diagonal entry, in the next T×T of the scratch.
template <typename S>
double* read_scaled(const S* K, int T, Scratch& sc) {
  const size_t TT = static_cast<size_t>(T) * T;
  double* A = sc.take(TT);
  read_sym(K, T, A);
  const double m = max_diag(A, T);
  for (size_t k = 0; k < TT; ++k) A[k] /= m;
  return A;
}

// The eigenvectors V (T×T) and ascending eigenvalues lam (T) of A (destroyed), in the scratch.
struct Eigen {
  double* V;
  double* lam;
};

Eigen eigen(double* A, int T, Scratch& sc) {
  const Eigen e{sc.take(static_cast<size_t>(T) * T), sc.take(T)};
  eigh(A, e.V, e.lam, sc.i.data(), sc.take(4 * static_cast<size_t>(T)), T);
  return e;
}

// ---------------------------------------------------------------------------------------------
// PCGrad
// ---------------------------------------------------------------------------------------------
template <typename S>
void pcgrad_one(const S* K, const int64_t* order, S* out, int T, Scratch& sc) {
  sc.used = 0;
  double* A = sc.take(static_cast<size_t>(T) * T);
  double* ci = sc.take(T);
  double* total = sc.take(T);
  read_sym(K, T, A);
  std::fill(total, total + T, 0.0);
  for (int i = 0; i < T; ++i) {
    std::fill(ci, ci + T, 0.0);
    ci[i] = 1.0;
    const int64_t* perm = order + static_cast<size_t>(i) * T;
    for (int k = 0; k < T; ++k) {
      const int j = static_cast<int>(perm[k]);
      if (j == i) continue;
      const double s = dot(A + static_cast<size_t>(j) * T, ci, T);
      const double kjj = A[j * T + j];
      if (s < 0 && kjj > 0) ci[j] -= s / kjj;
    }
    for (int t = 0; t < T; ++t) total[t] += ci[t];
  }
  for (int t = 0; t < T; ++t) out[t] = static_cast<S>(total[t]);
}

// ---------------------------------------------------------------------------------------------
// IMTL-G
// ---------------------------------------------------------------------------------------------
template <typename S>
void imtlg_one(const S* K, S* out, int T, double rtol, Scratch& sc) {
  sc.used = 0;
  double* A = read_scaled(K, T, sc);
  double* x = sc.take(T);
  double* y = sc.take(T);
  for (int i = 0; i < T; ++i) x[i] = std::sqrt(std::max(A[i * T + i], 0.0));
  const auto [V, lam] = eigen(A, T, sc);
  double top = 0.0;
  for (int i = 0; i < T; ++i) top = std::max(top, std::fabs(lam[i]));
  to_basis(V, x, y, T);
  for (int i = 0; i < T; ++i) y[i] = std::fabs(lam[i]) > rtol * top ? y[i] / lam[i] : 0.0;
  from_basis(V, y, x, T);
  double total = 0.0;
  for (int i = 0; i < T; ++i) total += x[i];
  const bool ok = std::fabs(total) >= kImtlgSumEps;
  for (int i = 0; i < T; ++i) out[i] = static_cast<S>(ok ? x[i] / total : 0.0);
}

// ---------------------------------------------------------------------------------------------
// Aligned-MTL
// ---------------------------------------------------------------------------------------------
template <typename S>
void aligned_mtl_one(const S* K, const double* pref, S* out, int T, int mode, double rtol,
                     Scratch& sc) {
  sc.used = 0;
  double* A = read_scaled(K, T, sc);
  double* y = sc.take(T);
  double* c = sc.take(T);
  const auto [V, lam] = eigen(A, T, sc);  // ascending
  const double cut = rtol * lam[T - 1];
  int rank = 0;
  double kept_sum = 0.0;
  for (int i = 0; i < T; ++i) {
    if (lam[i] > cut) {
      ++rank;
      kept_sum += lam[i];
    }
  }
  if (rank == 0) {
    for (int i = 0; i < T; ++i) out[i] = static_cast<S>(pref[i]);
    return;
  }
  // The kept eigenvalues are the last `rank` in ascending order (the cut is relative to the
  // largest): "min" the first of them, "median" the lower middle one, "rmse" their mean.
  double sigma;
  if (mode == MTL_AGG_SCALE_MIN) {
    sigma = lam[T - rank];
  } else if (mode == MTL_AGG_SCALE_MEDIAN) {
    sigma = lam[T - rank + (rank - 1) / 2];
  } else {
    sigma = kept_sum / rank;
  }
  const double root = std::sqrt(std::max(sigma, 0.0));
  to_basis(V, pref, y, T);
  for (int i = 0; i < T; ++i) y[i] = lam[i] > cut ? y[i] / std::sqrt(lam[i]) : 0.0;
  from_basis(V, y, c, T);
  for (int i = 0; i < T; ++i) out[i] = static_cast<S>(c[i] * root);
}

// ---------------------------------------------------------------------------------------------
// ConFIG
// ---------------------------------------------------------------------------------------------
template <typename S>
void config_one(const S* K, const double* pref, S* out, int T, double rtol, Scratch& sc) {
  sc.used = 0;
  double* Kn = read_scaled(K, T, sc);
  double* A = sc.take(static_cast<size_t>(T) * T);
  double *norms, *dinv, *coords, *y, *a, *Ka;
  sc.take_each(T, {&norms, &dinv, &coords, &y, &a, &Ka});
  for (int i = 0; i < T; ++i) {
    norms[i] = std::sqrt(std::max(Kn[i * T + i], 0.0));
    dinv[i] = norms[i] > 0 ? 1.0 / norms[i] : 0.0;
  }
  for (int i = 0; i < T; ++i) {
    for (int j = 0; j < T; ++j) A[i * T + j] = dinv[i] * Kn[i * T + j] * dinv[j];
  }
  const auto [V, lam] = eigen(A, T, sc);
  double top = 0.0;
  for (int i = 0; i < T; ++i) top = std::max(top, std::fabs(lam[i]));
  to_basis(V, pref, coords, T);
  double in_range = 0.0, pnorm = 0.0;
  for (int i = 0; i < T; ++i) {
    const bool kept = std::fabs(lam[i]) > rtol * top;
    y[i] = kept ? coords[i] / lam[i] : 0.0;
    if (kept) in_range += coords[i] * coords[i];
    pnorm += pref[i] * pref[i];
  }
  from_basis(V, y, a, T);
  for (int i = 0; i < T; ++i) a[i] *= dinv[i];
  matvec(Kn, a, Ka, T);
  double q = 0.0, length = 0.0, bound = 0.0;
  for (int i = 0; i < T; ++i) {
    q += a[i] * Ka[i];
    length += Ka[i];
    bound += std::fabs(a[i]) * norms[i];
  }
  // No direction when p has (numerically) no component in C's range, or when Jᵀa cancels to
  // rounding noise against the sum of its parts' norms.
  const double eps = T * kEps;
  const bool ok = std::sqrt(in_range) > std::max(rtol, eps) * std::sqrt(pnorm) &&
                  std::sqrt(std::max(q, 0.0)) > eps * bound;
  const double scale = ok ? length / q : 0.0;
  for (int i = 0; i < T; ++i) out[i] = static_cast<S>(scale * a[i]);
}

// ---------------------------------------------------------------------------------------------
// Dense solves on a subset of indices
// ---------------------------------------------------------------------------------------------

// Solves M Z = R for the n×n row-major M (destroyed) and n×k R (overwritten by Z) by LU with
// partial pivoting; false when a pivot is zero or not finite.
bool lu_solve(double* M, double* R, int n, int k) {
  for (int col = 0; col < n; ++col) {
    int piv = col;
    double best = std::fabs(M[col * n + col]);
    for (int r = col + 1; r < n; ++r) {
      const double v = std::fabs(M[r * n + col]);
      if (v > best) best = v, piv = r;
    }
    if (!(best > 0) || !(best < kInf)) return false;
    if (piv != col) {
      for (int j = 0; j < n; ++j) std::swap(M[col * n + j], M[piv * n + j]);
      for (int j = 0; j < k; ++j) std::swap(R[col * k + j], R[piv * k + j]);
    }
    const double d = M[col * n + col];
    for (int r = col + 1; r < n; ++r) {
      const double f = M[r * n + col] / d;
      if (f == 0.0) continue;
      for (int j = col + 1; j < n; ++j) M[r * n + j] -= f * M[col * n + j];
      for (int j = 0; j < k; ++j) R[r * k + j] -= f * R[col * k + j];
    }
  }
  for (int col = n - 1; col >= 0; --col) {
    const double d = M[col * n + col];
    for (int j = 0; j < k; ++j) {
      double s = R[col * k + j];
      for (int c = col + 1; c < n; ++c) s -= M[col * n + c] * R[c * k + j];
      R[col * k + j] = s / d;
    }
  }
  return true;
}

// Solves H x = r for the T×T SPD row-major H (destroyed: its lower triangle becomes L) by
// Cholesky; false when a pivot is not positive and finite.
bool cholesky_solve(double* H, double* r, int T) {
  for (int j = 0; j < T; ++j) {
    double d = H[j * T + j];
    for (int k = 0; k < j; ++k) d -= H[j * T + k] * H[j * T + k];
    if (!(d > 0) || !(d < kInf)) return false;
    const double l = std::sqrt(d);
    H[j * T + j] = l;
    for (int i = j + 1; i < T; ++i) {
      double s = H[i * T + j];
      for (int k = 0; k < j; ++k) s -= H[i * T + k] * H[j * T + k];
      H[i * T + j] = s / l;
    }
  }
  for (int i = 0; i < T; ++i) {
    double s = r[i];
    for (int k = 0; k < i; ++k) s -= H[i * T + k] * r[k];
    r[i] = s / H[i * T + i];
  }
  for (int i = T - 1; i >= 0; --i) {
    double s = r[i];
    for (int k = i + 1; k < T; ++k) s -= H[k * T + i] * r[k];
    r[i] = s / H[i * T + i];
  }
  return true;
}

// ---------------------------------------------------------------------------------------------
// CAGrad
// ---------------------------------------------------------------------------------------------

// argmin over γ ∈ [0, γ_max] of h(γ) = γ·bᵀd + φ·sqrt(q + 2γA + γ²C) (the reference's
// _cagrad_step_size, closed form; q includes the smoothing ε²).
double cagrad_step(double b_d, double A, double C, double q, double phi, double gamma_max) {
  const double D = phi * phi * C - b_d * b_d;
  const bool ok = C > 0 && D > 0;
  const double root = std::max(C * q - A * A, 0.0) / (ok ? D : 1.0);
  const double c_safe = C > 0 ? C : 1.0;
  double gamma = -(A + b_d * std::sqrt(root)) / c_safe;
  if (!ok) gamma = gamma_max;
  gamma = std::min(std::max(gamma, 0.0), gamma_max);
  auto h = [&](double g) {
    return g * b_d + phi * std::sqrt(std::max(q + 2 * g * A + g * g * C, 0.0));
  };
  const double h0 = h(0.0), h1 = h(gamma), h2 = h(gamma_max);
  const double best = h2 < h1 ? gamma_max : gamma;
  return std::min(h1, h2) < h0 ? best : 0.0;
}

struct CagradSolver {
  int T = 0;
  const double* Kn = nullptr;
  const double* b = nullptr;
  const double* dn = nullptr;
  double phi = 0.0;
  double* w = nullptr;
  double* g = nullptr;
  double* grad = nullptr;
  double* X1 = nullptr;  // moved
  double* X2 = nullptr;  // cut
  double* G1 = nullptr;
  double* G2 = nullptr;
  double* w0 = nullptr;
  double* w1 = nullptr;
  double* Kw0 = nullptr;
  double* Kw1 = nullptr;
  double* y = nullptr;
  double* M = nullptr;
  double* R = nullptr;
  double* wk = nullptr;
  int* act = nullptr;

  // Kx into G; returns (q = max(xᵀKx, 0), f = bᵀx + φ sqrt(q + ε²)).
  void evaluate(const double* x, double* G, double& q, double& f) const {
    matvec(Kn, x, G, T);
    q = std::max(dot(x, G, T), 0.0);
    f = dot(b, x, T) + phi * std::sqrt(q + kCagradSmooth * kCagradSmooth);
  }

  void solve(int64_t max_iter, double tol) {
    const double eps2 = kCagradSmooth * kCagradSmooth;
    for (int i = 0; i < T; ++i) w[i] = 1.0 / T;
    double q, f;
    evaluate(w, g, q, f);
    bool stalled = false;
    for (int64_t it = 0; it < max_iter; ++it) {
      const double rho = std::sqrt(q + eps2);
      int s = 0, a = -1;
      double gw = 0.0;
      for (int i = 0; i < T; ++i) {
        grad[i] = b[i] + (phi / rho) * g[i];
        gw += grad[i] * w[i];
        if (grad[i] < grad[s]) s = i;
        if (w[i] > 0 && (a < 0 || grad[i] > grad[a])) a = i;
      }
      if (a < 0) a = 0;  // unreachable for a point of the simplex
      const double gap_fw = gw - grad[s];
      const double gap_aw = grad[a] - gw;
      if (gap_fw <= tol || stalled) break;
      std::copy(w, w + T, wk);

      // Away-step Frank-Wolfe step, exact line search.
      const bool use_fw = gap_fw >= gap_aw;
      const int v = use_fw ? s : a;
      const double bw = dot(b, w, T);
      const double sign = use_fw ? 1.0 : -1.0;
      const double b_d = sign * (b[v] - bw);
      const double Ad = sign * (g[v] - q);
      const double Cd = dn[v] - 2 * g[v] + q;
      const double w_a = w[a];
      const double gamma_max = use_fw ? 1.0 : w_a / (w_a < 1 ? 1 - w_a : 1.0);
      const double gamma = cagrad_step(b_d, Ad, Cd, q + eps2, phi, gamma_max);
      const double coef = use_fw ? 1 - gamma : 1 + gamma;
      for (int i = 0; i < T; ++i) w[i] *= coef;
      w[v] += use_fw ? gamma : -gamma;
      if (!use_fw && gamma >= gamma_max && gamma > 0) w[v] = 0.0;
      double sum = 0.0;
      for (int i = 0; i < T; ++i) sum += (w[i] = std::max(w[i], 0.0));
      for (int i = 0; i < T; ++i) w[i] /= sum;

      // Face correction toward the stationary point of the face's affine hull.
      int n = 0;
      for (int i = 0; i < T; ++i) {
        if (w[i] > 0) act[n++] = i;
      }
      for (int r = 0; r < n; ++r) {
        for (int c = 0; c < n; ++c) M[r * n + c] = Kn[act[r] * T + act[c]];
        M[r * n + r] += kCagradRidge;
        R[2 * r] = 1.0;
        R[2 * r + 1] = b[act[r]];
      }
      bool fin = lu_solve(M, R, n, 2);
      double s1 = 0.0, s2 = 0.0;
      for (int r = 0; r < n && fin; ++r) {
        if (!std::isfinite(R[2 * r]) || !std::isfinite(R[2 * r + 1])) fin = false;
        s1 += R[2 * r];
        s2 += R[2 * r + 1];
      }
      fin = fin && std::isfinite(s1) && s1 > 0;
      if (!fin) s1 = 1.0;
      std::fill(w0, w0 + T, 0.0);
      std::fill(w1, w1 + T, 0.0);
      if (fin) {
        for (int r = 0; r < n; ++r) {
          w0[act[r]] = R[2 * r] / s1;
          w1[act[r]] = (s2 / s1) * R[2 * r] - R[2 * r + 1];
        }
      }
      matvec(Kn, w0, Kw0, T);
      matvec(Kn, w1, Kw1, T);
      const double qa = dot(w0, Kw0, T) + eps2;
      const double qb = dot(w0, Kw1, T);
      const double qc = dot(w1, Kw1, T);
      const double disc = qb * qb - qa * (qc - phi * phi);
      const double lam = (-qb + std::sqrt(std::max(disc, 0.0))) / qa;
      bool ok = fin && disc >= 0 && lam > 0 && std::isfinite(lam);
      for (int i = 0; i < T; ++i) y[i] = w0[i] + w1[i] / (ok ? lam : 1.0);
      for (int i = 0; i < T && ok; ++i) ok = std::isfinite(y[i]);
      if (!ok) std::copy(w, w + T, y);
      double r_min = kInf;
      int blocker = 0;
      for (int i = 0; i < T; ++i) {
        const double ratio = (w[i] > 0 && y[i] < 0) ? w[i] / (w[i] - y[i]) : kInf;
        if (ratio < r_min) r_min = ratio, blocker = i;
      }
      const double step = std::min(r_min, 1.0);
      double ms = 0.0, cs = 0.0;
      for (int i = 0; i < T; ++i) X1[i] = w[i] + step * (y[i] - w[i]);
      if (r_min <= 1) X1[blocker] = 0.0;
      for (int i = 0; i < T; ++i) {
        ms += (X1[i] = std::max(X1[i], 0.0));
        X2[i] = w[i] > 0 ? std::max(y[i], 0.0) : 0.0;
        cs += X2[i];
      }
      ok = ok && ms > 0;
      for (int i = 0; i < T; ++i) {
        X1[i] /= ok ? ms : 1.0;
        X2[i] /= cs > 0 ? cs : 1.0;
      }
      // Candidates: 0 the point after the Frank-Wolfe step, 1 moved, 2 cut.
      double q0, f0, q1, f1, q2, f2;
      evaluate(w, g, q0, f0);
      evaluate(X1, G1, q1, f1);
      evaluate(X2, G2, q2, f2);
      const bool use_cut = ok && cs > 0 && f2 < f1;
      const bool accept = ok && (use_cut ? f2 : f1) <= f0;
      if (accept && use_cut) {
        std::copy(X2, X2 + T, w);
        std::copy(G2, G2 + T, g);
        q = q2, f = f2;
      } else if (accept) {
        std::copy(X1, X1 + T, w);
        std::copy(G1, G1 + T, g);
        q = q1, f = f1;
      } else {
        q = q0, f = f0;
      }
      stalled = std::equal(w, w + T, wk);
    }
  }
};

template <typename S>
void cagrad_one(const S* K, S* out, int T, double cc, double norm_eps, int rescale,
                int64_t max_iter, double tol, Scratch& sc) {
  sc.used = 0;
  const size_t TT = static_cast<size_t>(T) * T;
  double* Kn = sc.take(TT);
  double* M = sc.take(TT);
  double* R = sc.take(2 * static_cast<size_t>(T));
  double* b = sc.take(T);
  double* dn = sc.take(T);
  read_sym(K, T, Kn);
  double trace = 0.0;
  for (int i = 0; i < T; ++i) trace += Kn[i * T + i];
  const bool small = trace < norm_eps;
  const double div = trace > 0 ? trace : 1.0;
  double total = 0.0;
  for (size_t k = 0; k < TT; ++k) {
    Kn[k] = small ? 0.0 : Kn[k] / div;
    total += Kn[k];
  }
  double bmin = kInf;
  for (int i = 0; i < T; ++i) {
    double s = 0.0;
    for (int j = 0; j < T; ++j) s += Kn[i * T + j];
    b[i] = s / T;
    bmin = std::min(bmin, b[i]);
    dn[i] = Kn[i * T + i];
  }
  const double phi = cc * std::sqrt(std::max(total, 0.0)) / T;
  CagradSolver solver{T, Kn, b, dn, phi};
  sc.take_each(T, {&solver.w, &solver.g, &solver.grad, &solver.X1, &solver.X2, &solver.G1,
                   &solver.G2, &solver.w0, &solver.w1, &solver.Kw0, &solver.Kw1, &solver.y,
                   &solver.wk});
  solver.M = M;
  solver.R = R;
  solver.act = sc.i.data();
  double* w = solver.w;
  if (phi > 0) {
    solver.solve(max_iter, tol);
  } else {
    // φ = 0: a linear problem; the uniform point of its optimal face.
    int ties = 0;
    for (int i = 0; i < T; ++i) ties += b[i] <= bmin + kCagradTie;
    for (int i = 0; i < T; ++i) w[i] = b[i] <= bmin + kCagradTie ? 1.0 / ties : 0.0;
  }
  double* Kw = solver.g;
  matvec(Kn, w, Kw, T);
  const double rho = std::sqrt(std::max(dot(w, Kw, T), 0.0));
  const bool keep = rho >= norm_eps && rho > 0;
  const double bonus = keep ? phi / rho : 0.0;
  const double div_out = rescale == 1 ? 1 + cc * cc : rescale == 2 ? 1 + cc : 1.0;
  for (int i = 0; i < T; ++i) {
    const double v = keep ? 1.0 / T + bonus * w[i] : 0.0;
    out[i] = static_cast<S>(rescale == 0 ? v : v / div_out);
  }
}

// ---------------------------------------------------------------------------------------------
// Nash-MTL
// ---------------------------------------------------------------------------------------------
template <typename S>
void nash_one(const S* K, const double* prev, S* weights, S* alpha_out, int T, double max_norm,
              int64_t max_iter, double tol, Scratch& sc) {
  sc.used = 0;
  const size_t TT = static_cast<size_t>(T) * T;
  double *Kd, *Kn, *H, *a, *grad, *step, *moved, *Ka;
  sc.take_each(TT, {&Kd, &Kn, &H});
  sc.take_each(T, {&a, &grad, &step, &moved, &Ka});
  read_sym(K, T, Kd);
  const double scale = max_diag(Kd, T);
  for (size_t k = 0; k < TT; ++k) Kn[k] = Kd[k] / scale;
  const double root = std::sqrt(scale);
  auto ray = [&](double* x) {
    matvec(Kn, x, Ka, T);
    const double quad = dot(x, Ka, T);
    if (quad > 0) {
      const double f = std::sqrt(T / quad);
      for (int i = 0; i < T; ++i) x[i] *= f;
    }
  };
  for (int i = 0; i < T; ++i) {
    a[i] = ((prev[i] > 0 && std::isfinite(prev[i])) ? prev[i] : 1.0) * root;
  }
  ray(a);
  bool done = false;
  for (int64_t it = 0; it < max_iter; ++it) {
    matvec(Kn, a, grad, T);
    for (int i = 0; i < T; ++i) grad[i] -= 1.0 / a[i];
    std::copy(Kn, Kn + TT, H);
    for (int i = 0; i < T; ++i) H[i * T + i] += 1.0 / (a[i] * a[i]);
    for (int i = 0; i < T; ++i) step[i] = grad[i];
    bool good = cholesky_solve(H, step, T);
    double gs = 0.0;
    for (int i = 0; i < T; ++i) gs += grad[i] * (step[i] = -step[i]);
    const double dec = std::sqrt(std::max(-gs, 0.0));
    good = good && std::isfinite(dec);
    for (int i = 0; i < T && good; ++i) good = std::isfinite(step[i]);
    if (good && dec <= tol) {
      done = true;
      break;
    }
    for (int i = 0; i < T; ++i) moved[i] = a[i] + step[i] / (1 + dec);
    ray(moved);
    bool moved_ok = good;
    for (int i = 0; i < T && moved_ok; ++i) moved_ok = moved[i] > 0 && std::isfinite(moved[i]);
    if (moved_ok) std::copy(moved, moved + T, a);
  }
  for (int i = 0; i < T; ++i) a[i] = done ? a[i] / root : prev[i];
  double factor = 1.0;
  if (max_norm > 0) {
    matvec(Kd, a, Ka, T);
    const double norm = std::sqrt(std::max(dot(a, Ka, T), 0.0));
    if (norm > max_norm) factor = max_norm / norm;
  }
  for (int i = 0; i < T; ++i) {
    alpha_out[i] = static_cast<S>(a[i]);
    weights[i] = static_cast<S>(a[i] * factor);
  }
}

// ---------------------------------------------------------------------------------------------
// Batch drivers
// ---------------------------------------------------------------------------------------------

// Runs body(b, scratch) for every problem with a scratch of `doubles` doubles and T ints.
template <typename Body>
int for_each_problem(int64_t batch, int64_t T, size_t doubles, Body body) {
  if (batch < 0 || T < 1 || T > kMaxT) return MTL_AGG_BAD_ARGUMENT;
  if (batch == 0) return MTL_AGG_OK;
  // One thread's scratch survives the call (a training loop solves one problem per step);
  // beyond 8 MB it is freed again.
  thread_local Scratch kept;
  Scratch local;
  Scratch& sc = doubles > (size_t{1} << 20) ? local : kept;
  try {
    if (sc.d.size() < doubles) sc.d.resize(doubles);
    if (sc.i.size() < static_cast<size_t>(T)) sc.i.resize(T);
    for (int64_t b = 0; b < batch; ++b) body(b, sc);
  } catch (const std::bad_alloc&) {
    return MTL_AGG_NO_MEMORY;
  }
  return MTL_AGG_OK;
}

size_t square(int64_t T) { return static_cast<size_t>(T) * static_cast<size_t>(T); }

template <typename S>
int pcgrad_batch(const S* K, const int64_t* order, S* c, int64_t batch, int64_t T) {
  if (batch > 0 && (K == nullptr || order == nullptr || c == nullptr)) return MTL_AGG_BAD_ARGUMENT;
  const int n = static_cast<int>(T);
  return for_each_problem(batch, T, square(T) + 2 * T, [&](int64_t b, Scratch& sc) {
    pcgrad_one<S>(K + b * T * T, order + b * T * T, c + b * T, n, sc);
  });
}

template <typename S>
int imtlg_batch(const S* K, S* c, int64_t batch, int64_t T, double rtol) {
  if (batch > 0 && (K == nullptr || c == nullptr)) return MTL_AGG_BAD_ARGUMENT;
  const int n = static_cast<int>(T);
  return for_each_problem(batch, T, 2 * square(T) + 7 * T, [&](int64_t b, Scratch& sc) {
    imtlg_one<S>(K + b * T * T, c + b * T, n, rtol, sc);
  });
}

template <typename S>
int aligned_batch(const S* K, const double* pref, S* c, int64_t batch, int64_t T, int64_t mode,
                  double rtol) {
  if (batch > 0 && (K == nullptr || pref == nullptr || c == nullptr)) return MTL_AGG_BAD_ARGUMENT;
  if (mode < MTL_AGG_SCALE_MIN || mode > MTL_AGG_SCALE_RMSE) return MTL_AGG_BAD_ARGUMENT;
  const int n = static_cast<int>(T);
  return for_each_problem(batch, T, 2 * square(T) + 7 * T, [&](int64_t b, Scratch& sc) {
    aligned_mtl_one<S>(K + b * T * T, pref + b * T, c + b * T, n, static_cast<int>(mode), rtol,
                       sc);
  });
}

template <typename S>
int config_batch(const S* K, const double* pref, S* c, int64_t batch, int64_t T, double rtol) {
  if (batch > 0 && (K == nullptr || pref == nullptr || c == nullptr)) return MTL_AGG_BAD_ARGUMENT;
  const int n = static_cast<int>(T);
  return for_each_problem(batch, T, 3 * square(T) + 12 * T, [&](int64_t b, Scratch& sc) {
    config_one<S>(K + b * T * T, pref + b * T, c + b * T, n, rtol, sc);
  });
}

template <typename S>
int cagrad_batch(const S* K, S* c, int64_t batch, int64_t T, double cc, double norm_eps,
                 int64_t rescale, int64_t max_iter, double tol) {
  if (batch > 0 && (K == nullptr || c == nullptr)) return MTL_AGG_BAD_ARGUMENT;
  if (rescale < 0 || rescale > 2 || max_iter < 0) return MTL_AGG_BAD_ARGUMENT;
  const int n = static_cast<int>(T);
  return for_each_problem(batch, T, 2 * square(T) + 17 * T, [&](int64_t b, Scratch& sc) {
    cagrad_one<S>(K + b * T * T, c + b * T, n, cc, norm_eps, static_cast<int>(rescale), max_iter,
                  tol, sc);
  });
}

template <typename S>
int nash_batch(const S* K, const double* prev, S* weights, S* alpha, int64_t batch, int64_t T,
               double max_norm, int64_t max_iter, double tol) {
  if (batch > 0 && (K == nullptr || prev == nullptr || weights == nullptr || alpha == nullptr)) {
    return MTL_AGG_BAD_ARGUMENT;
  }
  if (max_iter < 0) return MTL_AGG_BAD_ARGUMENT;
  const int n = static_cast<int>(T);
  return for_each_problem(batch, T, 3 * square(T) + 5 * T, [&](int64_t b, Scratch& sc) {
    nash_one<S>(K + b * T * T, prev + b * T, weights + b * T, alpha + b * T, n, max_norm,
                max_iter, tol, sc);
  });
}

}  // namespace

extern "C" {

int mtl_aggregators_abi_version(void) { return MTL_AGGREGATORS_ABI_VERSION; }

int mtl_pcgrad_f64(const double* K, const int64_t* order, double* c, int64_t batch, int64_t T) {
  return pcgrad_batch<double>(K, order, c, batch, T);
}
int mtl_pcgrad_f32(const float* K, const int64_t* order, float* c, int64_t batch, int64_t T) {
  return pcgrad_batch<float>(K, order, c, batch, T);
}

int mtl_imtlg_f64(const double* K, double* c, int64_t batch, int64_t T, double rtol) {
  return imtlg_batch<double>(K, c, batch, T, rtol);
}
int mtl_imtlg_f32(const float* K, float* c, int64_t batch, int64_t T, double rtol) {
  return imtlg_batch<float>(K, c, batch, T, rtol);
}

int mtl_cagrad_f64(const double* K, double* c, int64_t batch, int64_t T, double cc,
                   double norm_eps, int64_t rescale, int64_t max_iter, double tol) {
  return cagrad_batch<double>(K, c, batch, T, cc, norm_eps, rescale, max_iter, tol);
}
int mtl_cagrad_f32(const float* K, float* c, int64_t batch, int64_t T, double cc, double norm_eps,
                   int64_t rescale, int64_t max_iter, double tol) {
  return cagrad_batch<float>(K, c, batch, T, cc, norm_eps, rescale, max_iter, tol);
}

int mtl_nash_mtl_f64(const double* K, const double* prev, double* weights, double* alpha,
                     int64_t batch, int64_t T, double max_norm, int64_t max_iter, double tol) {
  return nash_batch<double>(K, prev, weights, alpha, batch, T, max_norm, max_iter, tol);
}
int mtl_nash_mtl_f32(const float* K, const double* prev, float* weights, float* alpha,
                     int64_t batch, int64_t T, double max_norm, int64_t max_iter, double tol) {
  return nash_batch<float>(K, prev, weights, alpha, batch, T, max_norm, max_iter, tol);
}

int mtl_aligned_mtl_f64(const double* K, const double* pref, double* c, int64_t batch, int64_t T,
                        int64_t scale_mode, double rtol) {
  return aligned_batch<double>(K, pref, c, batch, T, scale_mode, rtol);
}
int mtl_aligned_mtl_f32(const float* K, const double* pref, float* c, int64_t batch, int64_t T,
                        int64_t scale_mode, double rtol) {
  return aligned_batch<float>(K, pref, c, batch, T, scale_mode, rtol);
}

int mtl_config_f64(const double* K, const double* pref, double* c, int64_t batch, int64_t T,
                   double rtol) {
  return config_batch<double>(K, pref, c, batch, T, rtol);
}
int mtl_config_f32(const float* K, const double* pref, float* c, int64_t batch, int64_t T,
                   double rtol) {
  return config_batch<float>(K, pref, c, batch, T, rtol);
}

}  // extern "C"
