// CPU min-norm (MGDA) solve: w* = argmin_{w ∈ simplex} wᵀKw, one problem after another.
//
// The algorithm and the stopping rule are those of the reference (mtl_fast/reference/
// min_norm.py) step for step, in fp64 whatever the I/O type: normalise K by max_i K_ii; start
// at the vertex with the smallest K_ii; then per iteration, with g = Kw and f = wᵀKw: stop when
// the duality gap 2(f − min_i g_i) ≤ tol; otherwise take the Frank-Wolfe step toward
// s = argmin g or the away step from a = argmax_{w_i>0} g_i (whichever gap is larger) with the
// exact line search; then the face correction: solve (K_AA + δI) z = 1 on the support A, move
// from w toward y = z / Σz as far as the simplex allows (the blocking vertex is dropped), and
// keep the move only if f does not rise. Ties go to the smallest index, as torch's argmin does.
//
// What differs from the reference is only how each quantity is computed, never which one:
//
// - Kw is summed over the support of w only (O(T·|A|) instead of O(T²)): for finite K the
//   skipped terms are exact zeros.
// - The face system is not refactored every iteration. The reference solves it by LU, O(|A|³)
//   per iteration, which dominates at T = 64. Here an LDLᵀ factorisation of K_AA + δI is kept
//   across iterations and updated in O(|A|²) when a vertex enters (a bordered append) or leaves
//   (a rank-one update of the trailing block, Gill, Golub, Murray & Saunders, Math. Comp. 1974,
//   method C1), and rebuilt from scratch after kRebuildAfter removals so that update rounding
//   cannot accumulate. For a PSD K every pivot is ≥ δ in exact arithmetic; a pivot below δ/2
//   means K_AA is indefinite beyond rounding (e.g. a rank-deficient Gram rounded to fp32), and
//   that iteration's face system is then solved as the reference solves it (dense LU with
//   partial pivoting), so the factorisation never works on an unstable pivot.
//   Measured (one thread, full-rank fp64 Grams, tol 1e-6): T = 64 (45 iterations) 0.43 ms per
//   solve with a dense LU every iteration, 0.15 ms with the updated factorisation; T = 128
//   (90 iterations) 3-12 ms against 0.6-1.0 ms.
//
// Results agree with the reference to rounding where the minimiser is unique (weights within
// 1e-9 in tests/test_cpu_backend.py, mostly within 1e-15); the guarantees are the same:
// monotone objective, duality-gap stop, every output a point of the simplex. No torch headers: this file is built by setup.py without
// torch and loaded with ctypes.

#include "min_norm.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <new>
#include <vector>

namespace {

// Ridge added to the face system, relative to max K_ii = 1 (the reference's FACE_RIDGE).
constexpr double kFaceRidge = 1e-12;
// Smallest pivot the factorisation keeps (see the header comment).
constexpr double kMinPivot = 0.5 * kFaceRidge;
// Removals after which the factorisation is rebuilt instead of updated again.
constexpr int kRebuildAfter = 16;
// Largest T accepted: the scratch is 3·T² doubles (≈ 400 MB at this bound).
constexpr int64_t kMaxT = 4096;
constexpr double kInf = std::numeric_limits<double>::infinity();

// Scratch of one problem, reused across problems and calls of the same thread.
struct Scratch {
  std::vector<double> d;
  std::vector<int> i;
};

class Problem {
 public:
  Problem(int T, Scratch& s) : T_(T) {
    const size_t TT = static_cast<size_t>(T) * T;
    s.d.resize(3 * TT + 12 * static_cast<size_t>(T));
    s.i.resize(4 * static_cast<size_t>(T));
    double* p = s.d.data();
    knt_ = p, p += TT;
    l_ = p, p += TT;
    lu_ = p, p += TT;
    dn_ = p, p += T;
    w_ = p, p += T;
    g_ = p, p += T;
    mv_ = p, p += T;
    gm_ = p, p += T;
    y_ = p, p += T;
    rhs_ = p, p += T;
    u_ = p, p += T;
    z_ = p, p += T;
    pcol_ = p, p += T;
    beta_ = p, p += T;
    d_ = p;
    int* q = s.i.data();
    ord_ = q, q += T;
    fpos_ = q, q += T;
    act_ = q, q += T;
    sup_ = q;
  }

  template <typename S>
  void solve(const S* K, S* W, int64_t max_iter, double tol);

 private:
  // Kn x over the support of x, into out (T entries); returns xᵀ Kn x.
  double objective(const double* x, double* out) {
    int n = 0;
    for (int j = 0; j < T_; ++j) {
      if (x[j] != 0.0) sup_[n++] = j;
    }
    std::fill(out, out + T_, 0.0);
    // Row j of knt_ is column j of Kn: out += x_j Kn[:, j] is a contiguous axpy.
    for (int q = 0; q < n; ++q) {
      const int j = sup_[q];
      const double xj = x[j];
      const double* col = knt_ + static_cast<size_t>(j) * T_;
      for (int i = 0; i < T_; ++i) out[i] += xj * col[i];
    }
    double f = 0.0;
    for (int q = 0; q < n; ++q) f += x[sup_[q]] * out[sup_[q]];
    return f;
  }

  double kn(int r, int c) const { return knt_[static_cast<size_t>(c) * T_ + r]; }
  double* lrow(int r) { return l_ + static_cast<size_t>(r) * T_; }

  // Appends task t as the last row/column of the factorisation; false on an unsafe pivot.
  bool append(int t) {
    const int P = nf_;
    double* row = lrow(P);
    double schur = 0.0;
    for (int c = 0; c < P; ++c) {
      const double* lc = lrow(c);
      double uc = kn(t, ord_[c]);
      for (int j = 0; j < c; ++j) uc -= lc[j] * u_[j];
      u_[c] = uc;
      row[c] = uc / d_[c];
      schur += uc * row[c];
    }
    const double d = (dn_[t] + kFaceRidge) - schur;
    if (!(d >= kMinPivot) || !std::isfinite(d)) return false;
    d_[P] = d;
    ord_[P] = t;
    fpos_[t] = P;
    ++nf_;
    return true;
  }

  // Removes factor position p: rank-one update d_p l_p l_pᵀ of the trailing block (method C1,
  // row by row), then rows and columns after p move up by one.
  void remove(int p) {
    double alpha = d_[p];
    for (int R = p + 1; R < nf_; ++R) {
      double* row = lrow(R);
      double x = row[p];
      for (int J = p + 1; J < R; ++J) {
        x -= pcol_[J] * row[J];
        row[J] += beta_[J] * x;
      }
      const double dr = d_[R];
      const double dnew = dr + alpha * x * x;
      beta_[R] = x * alpha / dnew;
      alpha = dr * alpha / dnew;
      d_[R] = dnew;
      pcol_[R] = x;
      double* up = lrow(R - 1);
      for (int c = 0; c < p; ++c) up[c] = row[c];
      for (int c = p + 1; c < R; ++c) up[c - 1] = row[c];
    }
    fpos_[ord_[p]] = -1;
    for (int R = p + 1; R < nf_; ++R) {
      d_[R - 1] = d_[R];
      ord_[R - 1] = ord_[R];
      fpos_[ord_[R - 1]] = R - 1;
    }
    --nf_;
  }

  // Brings the factorisation to the support act_[0..n) of w; false when it cannot be kept.
  bool sync_factor(int n) {
    int removals = 0;
    if (valid_) {
      for (int p = 0; p < nf_; ++p) removals += w_[ord_[p]] > 0.0 ? 0 : 1;
    }
    // Updating costs ≈ nf² per removal, rebuilding ≈ n³/6 (bordered appends).
    const double update_cost = static_cast<double>(removals) * nf_ * nf_;
    const bool rebuild = !valid_ || removals_since_rebuild_ + removals > kRebuildAfter ||
                         6.0 * update_cost > static_cast<double>(n) * n * n;
    if (rebuild) {
      for (int p = 0; p < nf_; ++p) fpos_[ord_[p]] = -1;
      nf_ = 0;
      removals_since_rebuild_ = 0;
    } else {
      for (int p = nf_ - 1; p >= 0; --p) {
        if (!(w_[ord_[p]] > 0.0)) remove(p);
      }
      removals_since_rebuild_ += removals;
    }
    valid_ = true;
    for (int q = 0; q < n; ++q) {
      if (fpos_[act_[q]] < 0 && !append(act_[q])) {
        valid_ = false;
        return false;
      }
    }
    return true;
  }

  // z (by task, support entries only) solving (K_AA + δI) z = 1 by the factorisation.
  void factor_solve() {
    for (int p = 0; p < nf_; ++p) {
      const double* row = lrow(p);
      double v = 1.0;
      for (int c = 0; c < p; ++c) v -= row[c] * u_[c];
      u_[p] = v;
    }
    for (int p = 0; p < nf_; ++p) u_[p] /= d_[p];
    for (int p = nf_ - 1; p >= 0; --p) {
      const double* row = lrow(p);
      const double zp = u_[p];
      for (int c = 0; c < p; ++c) u_[c] -= row[c] * zp;
    }
    for (int p = 0; p < nf_; ++p) z_[ord_[p]] = u_[p];
  }

  // The same system by LU with partial pivoting on the compacted n × n matrix (the method of
  // torch.linalg.solve and of the CUDA kernel); false on a zero or non-finite pivot.
  bool dense_solve(int n) {
    double* A = lu_;
    for (int r = 0; r < n; ++r) {
      for (int c = 0; c < n; ++c) {
        A[r * n + c] = kn(act_[r], act_[c]) + (r == c ? kFaceRidge : 0.0);
      }
      rhs_[r] = 1.0;
    }
    for (int k = 0; k < n; ++k) {
      double best = -1.0;
      int pr = k;
      for (int r = k; r < n; ++r) {
        const double v = std::fabs(A[r * n + k]);
        if (v > best) {
          best = v;
          pr = r;
        }
      }
      if (!(best > 0.0) || !std::isfinite(best)) return false;
      if (pr != k) {
        for (int c = 0; c < n; ++c) std::swap(A[k * n + c], A[pr * n + c]);
        std::swap(rhs_[k], rhs_[pr]);
      }
      const double inv = 1.0 / A[k * n + k];
      for (int r = k + 1; r < n; ++r) {
        const double l = A[r * n + k] * inv;
        for (int c = k + 1; c < n; ++c) A[r * n + c] -= l * A[k * n + c];
        rhs_[r] -= l * rhs_[k];
      }
    }
    for (int k = n - 1; k >= 0; --k) {
      double v = rhs_[k];
      for (int c = k + 1; c < n; ++c) v -= A[k * n + c] * rhs_[c];
      rhs_[k] = v / A[k * n + k];
    }
    for (int q = 0; q < n; ++q) z_[act_[q]] = rhs_[q];
    return true;
  }

  const int T_;
  // knt_: Knᵀ (row j = column j of the normalised K); l_: the unit lower factor L (row-major,
  // leading dimension T); lu_: the dense fallback's n × n matrix; d_: the pivots D.
  double *knt_, *l_, *lu_, *dn_, *w_, *g_, *mv_, *gm_, *y_, *rhs_, *u_, *z_, *pcol_, *beta_, *d_;
  int *ord_, *fpos_, *act_, *sup_;
  int nf_ = 0;  // factorised support size; ord_[p] is the task at position p, fpos_ its inverse
  int removals_since_rebuild_ = 0;
  bool valid_ = true;
};

template <typename S>
void Problem::solve(const S* K, S* W, int64_t max_iter, double tol) {
  const int T = T_;
  // 1. Normalise by max_i K_ii (when positive; a NaN diagonal gives 1, as torch's amax does).
  double dmax = -kInf;
  bool nan = false;
  for (int i = 0; i < T; ++i) {
    const double d = static_cast<double>(K[static_cast<size_t>(i) * T + i]);
    if (std::isnan(d)) nan = true;
    dmax = d > dmax ? d : dmax;
  }
  const double scale = !nan && dmax > 0.0 ? dmax : 1.0;
  for (int r = 0; r < T; ++r) {
    const S* krow = K + static_cast<size_t>(r) * T;
    for (int c = 0; c < T; ++c) knt_[static_cast<size_t>(c) * T + r] = static_cast<double>(krow[c]) / scale;
  }
  for (int i = 0; i < T; ++i) dn_[i] = knt_[static_cast<size_t>(i) * T + i];

  // 2. Start at the vertex with the smallest diagonal entry.
  int imin = 0;
  double dmin = kInf;
  for (int i = 0; i < T; ++i) {
    if (dn_[i] < dmin) {
      dmin = dn_[i];
      imin = i;
    }
  }
  std::fill(w_, w_ + T, 0.0);
  w_[imin] = 1.0;
  for (int i = 0; i < T; ++i) fpos_[i] = -1;
  nf_ = 0;
  removals_since_rebuild_ = 0;
  valid_ = true;
  double f = objective(w_, g_);

  for (int64_t it = 0; it < max_iter; ++it) {
    // 3. Duality gap, Frank-Wolfe vertex s and away vertex a.
    double g_s = kInf, g_a = -kInf;
    int s = -1, a = -1;
    for (int i = 0; i < T; ++i) {
      const double gi = g_[i];
      if (gi < g_s) {
        g_s = gi;
        s = i;
      }
      if (w_[i] > 0.0 && gi > g_a) {
        g_a = gi;
        a = i;
      }
    }
    if (s < 0) s = 0;
    if (a < 0) a = s;
    const double gap_fw = f - g_s;
    const double gap_aw = g_a - f;
    if (2.0 * gap_fw <= tol) break;

    // Away-step Frank-Wolfe step with exact line search on the quadratic.
    const bool use_fw = gap_fw >= gap_aw;
    const double gap = use_fw ? gap_fw : gap_aw;
    const double num = gap < 0.0 ? 0.0 : gap;  // −dᵀKw ≥ 0 (NaN stays NaN, as clamp_min)
    const double den = use_fw ? (dn_[s] - 2.0 * g_s) + f : (f - 2.0 * g_a) + dn_[a];
    const double w_a = w_[a];
    // An away step from a vertex (w_a = 1) has zero gap and is never taken.
    const double gamma_max = use_fw ? 1.0 : w_a / (w_a < 1.0 ? 1.0 - w_a : 1.0);
    double gamma = den > 0.0 ? num / den : gamma_max;
    gamma = gamma > gamma_max ? gamma_max : gamma;
    if (num <= 0.0) gamma = 0.0;
    const int v = use_fw ? s : a;
    const double coef = use_fw ? 1.0 - gamma : 1.0 + gamma;
    const bool drop = !use_fw && gamma >= gamma_max && gamma > 0.0;
    double wsum = 0.0;
    for (int i = 0; i < T; ++i) {
      double wi = coef * w_[i];
      if (i == v) wi = drop ? 0.0 : wi + (use_fw ? gamma : -gamma);
      wi = wi < 0.0 ? 0.0 : wi;
      w_[i] = wi;
      wsum += wi;
    }
    for (int i = 0; i < T; ++i) w_[i] /= wsum;
    const double f_w = objective(w_, g_);
    f = f_w;

    // 4. Face correction toward the affine min-norm point of the support A = {w_i > 0}.
    int n = 0;
    for (int i = 0; i < T; ++i) {
      if (w_[i] > 0.0) act_[n++] = i;
    }
    if (n == 0) continue;
    bool ok = sync_factor(n);
    if (ok) {
      factor_solve();
    } else {
      ok = dense_solve(n);
    }
    if (!ok) continue;
    double total = 0.0;
    bool finite = true;
    for (int q = 0; q < n; ++q) {
      const double zq = z_[act_[q]];
      total += zq;
      finite = finite && std::isfinite(zq);
    }
    if (!(finite && std::isfinite(total) && total > 0.0)) continue;

    // Ratio test: the largest step toward y that stays in the simplex; the blocker is dropped.
    std::fill(y_, y_ + T, 0.0);
    double r_min = kInf;
    int blocker = -1;
    for (int q = 0; q < n; ++q) {
      const int i = act_[q];
      const double yi = z_[i] / total;
      y_[i] = yi;
      if (yi < 0.0) {
        const double ratio = w_[i] / (w_[i] - yi);
        if (ratio < r_min) {
          r_min = ratio;
          blocker = i;
        }
      }
    }
    const double step = r_min < 1.0 ? r_min : 1.0;
    double msum = 0.0;
    for (int i = 0; i < T; ++i) {
      double mi = w_[i] + step * (y_[i] - w_[i]);
      if (r_min <= 1.0 && i == blocker) mi = 0.0;
      mi = mi < 0.0 ? 0.0 : mi;
      mv_[i] = mi;
      msum += mi;
    }
    if (!(msum > 0.0)) continue;
    for (int i = 0; i < T; ++i) mv_[i] /= msum;
    const double f_moved = objective(mv_, gm_);
    if (f_moved <= f_w) {  // monotone: accept only if the objective does not rise
      std::copy(mv_, mv_ + T, w_);
      std::copy(gm_, gm_ + T, g_);
      f = f_moved;
    }
  }
  for (int i = 0; i < T; ++i) W[i] = static_cast<S>(w_[i]);
}

template <typename S>
int solve_batch(const S* K, S* W, int64_t batch, int64_t T, int64_t max_iter, double tol) {
  if (batch < 0 || T < 1 || T > kMaxT || max_iter < 0) return MTL_MIN_NORM_BAD_ARGUMENT;
  if (batch == 0) return MTL_MIN_NORM_OK;
  if (K == nullptr || W == nullptr) return MTL_MIN_NORM_BAD_ARGUMENT;
  // One thread's scratch survives the call: a training loop solves one problem per step and
  // would otherwise allocate O(T²) every time. Beyond 8 MB it is freed again.
  thread_local Scratch kept;
  Scratch local;
  const bool large = 3 * T * T > (int64_t{1} << 20);
  Scratch& scratch = large ? local : kept;
  try {
    Problem problem(static_cast<int>(T), scratch);
    for (int64_t b = 0; b < batch; ++b) {
      problem.solve<S>(K + b * T * T, W + b * T, max_iter, tol);
    }
  } catch (const std::bad_alloc&) {
    return MTL_MIN_NORM_NO_MEMORY;
  }
  return MTL_MIN_NORM_OK;
}

}  // namespace

extern "C" {

int mtl_min_norm_abi_version(void) { return MTL_MIN_NORM_ABI_VERSION; }

int mtl_min_norm_f64(const double* K, double* w, int64_t batch, int64_t T, int64_t max_iter,
                     double tol) {
  return solve_batch<double>(K, w, batch, T, max_iter, tol);
}

int mtl_min_norm_f32(const float* K, float* w, int64_t batch, int64_t T, int64_t max_iter,
                     double tol) {
  return solve_batch<float>(K, w, batch, T, max_iter, tol);
}

}  // extern "C"
