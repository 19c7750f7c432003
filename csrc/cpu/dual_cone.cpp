// Dual-cone projection (the QP of UPGrad and DualProj) on one CPU thread, float64.
//
// For each problem b and each row u of U[b]:
//     W[b, r] = argmin_v vᵀ G̃ v  subject to  v ≥ u,
//     G̃ = sym(G[b]) / tr(G[b]) + reg_eps·I   (G̃ = reg_eps·I when tr(G[b]) < norm_eps),
// the semantics of TorchJD's QuadprogProjector (Quinton & Rey, "Jacobian Descent for
// Multi-Objective Optimization", 2024, Prop. 1). Same algorithm, stopping rule and exchange
// rules as the reference (mtl_fast/kernels/reference/dual_cone.py), iterate for iterate: block
// principal pivoting (Júdice & Pires 1994) with Kim & Park's backup rule (2011), started from
// the exchange at v = u, stopped when
//     v_j − u_j ≥ −tol·s on the free set F,   (G̃v)_j ≥ −tol·s·G̃_jj on its complement A,
// s = max(‖u‖∞, ‖v‖∞). What differs is how each iterate is computed:
//   * the Cholesky factor of the free block G̃_FF is kept across the iterations of a row and
//     updated (append: one forward substitution; removal: Givens rotations), O(k²) per
//     changed index, instead of being rebuilt (O(k³/3));
//   * when H = G̃⁻¹ pays for itself (many rows with large free sets; about T³ flops once per
//     problem), a row with |A| < |F| factors the bound block H_AA instead:
//     H_AA μ_A = u_A, v = H_{:,A} μ_A, λ_A = μ_A — the same iterate, since
//     G̃_FF⁻¹ = H_FF − H_FA H_AA⁻¹ H_AF — so each factorisation is of size min(|F|, |A|);
//   * the factor of a row's starting free set is kept for the next rows of the problem (a few
//     slots): rows often start from the same or a similar set (the tasks of one group conflict
//     with the same other tasks), and updating a kept factor replaces a fresh factorisation;
//   * G̃u is formed from the columns of the nonzero u_j only (one column for a UPGrad row);
//   * with GCC on x86-64 Linux an AVX2/FMA clone is chosen at load time (target_clones, an
//     ifunc); other compilers and platforms build the portable baseline.
// Measured steps (one thread, UPGrad weights at T = 128, ms, medians; docs/upgrad.md):
//     step                                         agree gauss lowrank twogroups conflict simplex
//     refactor every iteration, SSE2               0.10  8.8   17.0    10.2      3.4      19.4
//     + factor kept across iterations              0.06  6.1   13.1    8.9       3.2      17.4
//     + 4-pivot panel Cholesky, ld = T + 4         0.07  4.5   9.3     6.2       2.0      9.1
//     + x86-64-v3 clone (AVX2/FMA)                 0.04  3.8   7.4     4.8       1.7      6.2
//     + bound block through H when |A| < |F|       0.07  4.0   7.7     5.3       1.8      0.59
//     + starting factors kept across rows          ─     ─     ─       −15 %     −30 %    ─
//   (gauss, lowrank and the Grams of real ResNet-18 gradients start from unrelated sets:
//   unchanged, within the ±10 % noise of the shared machine). Also tried: an AVX-512 clone
//   (x86-64-v4: no faster on this Zen 4, whose AVX-512 is double-pumped) and two trailing rows
//   per pass of the Cholesky update (no difference).
//
// Layout: every array is contiguous row-major float64. No dependencies, no global state
// (thread-safe; buffers are allocated per call). No torch headers: this file is built by
// setup.py without torch and loaded with ctypes.

#include "dual_cone.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <new>
#include <vector>

// With GCC on x86-64 Linux the solver is also compiled for x86-64-v3 (AVX2, FMA) and chosen at
// load time (target_clones); everything it calls is inlined into it. Define
// MTL_DUAL_CONE_NO_CLONES for one portable baseline build.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) && \
    !defined(MTL_DUAL_CONE_NO_CLONES)
#define MTL_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define MTL_CLONES
#endif
#if defined(__GNUC__)
#define MTL_INLINE inline __attribute__((always_inline))
#else
#define MTL_INLINE inline
#endif

namespace {

constexpr int kBackupExchanges = 3;  // Kim & Park's p̄ (the reference's BACKUP_EXCHANGES)
constexpr double kFailRidge = 1e-12;  // first ridge (× max G̃_kk) after a failed Cholesky
// A Cholesky pivot at most this fraction of its diagonal entry fails the factorisation (the
// reference's PIVOT_TOL): the rounding noise of a singular block is ~k·ε ≈ 1e-14 at k = 128,
// a genuine pivot with the default reg_eps = 1e-4 is ≥ 1e-4 of it.
constexpr double kPivotTol = 1e-12;
// Largest T accepted: the scratch is about 4·T² doubles (≈ 540 MB at this bound).
constexpr int64_t kMaxT = 4096;
// Refactor instead of updating when kRemoveCost·removed + kAppendCost·added ≥ new |F|.
constexpr int64_t kRemoveCost = 4;
constexpr int64_t kAppendCost = 3;

// Per-problem and per-row buffers, allocated once per call.
struct Work {
    int64_t T;
    std::vector<double> g;       // G̃, T×T
    std::vector<double> h;       // H = G̃⁻¹, T×T, computed on demand
    bool have_h = false;
    bool tried_h = false;
    std::vector<double> lam0;    // G̃u
    std::vector<double> lam;     // G̃v
    std::vector<double> v;       // iterate
    std::vector<double> x;       // solve of the free (or bound) block
    std::vector<int64_t> nz;     // indices with u_j != 0
    std::vector<uint8_t> free;   // F as a mask
    std::vector<uint8_t> bound;  // A = complement of F, as a mask
    std::vector<uint8_t> bad;    // infeasible set

    explicit Work(int64_t T_)
        : T(T_), g(T_ * T_), h(T_ * T_), lam0(T_), lam(T_), v(T_), x(T_), nz(T_), free(T_),
          bound(T_), bad(T_) {}
};

// G̃ = sym(G) / tr(G) + reg·I; returns max_k G̃_kk.
MTL_INLINE double normalize(const double* G, int64_t T, double norm_eps, double reg_eps,
                            double* g) {
    double trace = 0.0;
    for (int64_t i = 0; i < T; ++i) trace += G[i * T + i];
    const bool small = trace < norm_eps;  // false for NaN, caught by the finite check
    const double inv = small ? 0.0 : 1.0 / trace;
    for (int64_t i = 0; i < T; ++i) {
        for (int64_t j = 0; j < T; ++j) {
            g[i * T + j] = small ? 0.0 : 0.5 * (G[i * T + j] + G[j * T + i]) * inv;
        }
        g[i * T + i] += reg_eps;
    }
    double gmax = 0.0;
    bool finite = true;
    for (int64_t i = 0; i < T * T; ++i) finite &= std::isfinite(g[i]);
    for (int64_t i = 0; i < T; ++i) gmax = std::max(gmax, g[i * T + i]);
    return finite ? gmax : std::nan("");  // NaN marks a non-finite G
}

// Dot product with four independent partial sums (no reassociation flags needed for ILP).
MTL_INLINE double dot(const double* a, const double* b, int64_t n) {
    double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0;
    int64_t j = 0;
    for (; j + 3 < n; j += 4) {
        s0 += a[j] * b[j];
        s1 += a[j + 1] * b[j + 1];
        s2 += a[j + 2] * b[j + 2];
        s3 += a[j + 3] * b[j + 3];
    }
    for (; j < n; ++j) s0 += a[j] * b[j];
    return (s0 + s1) + (s2 + s3);
}

// Factor one row p of the upper Cholesky factor in place (its pivot and the rest of the row);
// d0 is the pivot's diagonal entry before elimination.
MTL_INLINE bool pivot_row(double* rp, int64_t p, int64_t k, double d0) {
    const double d = rp[p];
    if (!(d > kPivotTol * d0) || !std::isfinite(d)) return false;
    const double s = std::sqrt(d);
    const double inv = 1.0 / s;
    rp[p] = s;
    for (int64_t j = p + 1; j < k; ++j) rp[j] *= inv;
    return true;
}

// In-place upper Cholesky a = RᵀR of the k×k symmetric a (upper triangle read), leading
// dimension ld. Right-looking, four pivots per pass: the trailing update is a rank-4 update,
// so each trailing row is read and written once per four pivots.
MTL_INLINE bool cholesky(double* a, int64_t k, int64_t ld, const double* d0) {
    int64_t p = 0;
    for (; p + 3 < k; p += 4) {
        double* r[4] = {a + p * ld, a + (p + 1) * ld, a + (p + 2) * ld, a + (p + 3) * ld};
        for (int q = 0; q < 4; ++q) {  // the 4-row panel
            for (int t = 0; t < q; ++t) {
                const double c = r[t][p + q];
                for (int64_t j = p + q; j < k; ++j) r[q][j] -= c * r[t][j];
            }
            if (!pivot_row(r[q], p + q, k, d0[p + q])) return false;
        }
        const double *r0 = r[0], *r1 = r[1], *r2 = r[2], *r3 = r[3];
        for (int64_t i = p + 4; i < k; ++i) {
            const double c0 = r0[i], c1 = r1[i], c2 = r2[i], c3 = r3[i];
            double* ri = a + i * ld;
            for (int64_t j = i; j < k; ++j)
                ri[j] -= (c0 * r0[j] + c1 * r1[j]) + (c2 * r2[j] + c3 * r3[j]);
        }
    }
    for (; p < k; ++p) {
        double* rp = a + p * ld;
        if (!pivot_row(rp, p, k, d0[p])) return false;
        for (int64_t i = p + 1; i < k; ++i) {
            const double c = rp[i];
            double* ri = a + i * ld;
            for (int64_t j = i; j < k; ++j) ri[j] -= c * rp[j];
        }
    }
    return true;
}

// H = G̃⁻¹ for a positive definite G̃ (T×T, row-major), through G̃ = RᵀR, X = R⁻¹ (upper,
// built row by row from the bottom) and H = XXᵀ: about T³ flops. scratch: T×T. False when the
// Cholesky fails.
MTL_INLINE bool invert_spd(const double* g, int64_t T, double* h, double* scratch) {
    double* r = scratch;
    std::copy(g, g + T * T, r);
    std::vector<double> d0(T);
    for (int64_t i = 0; i < T; ++i) d0[i] = g[i * T + i];
    if (!cholesky(r, T, T, d0.data())) return false;
    double* x = h;  // X = R⁻¹ in h's upper triangle, then H overwrites it
    for (int64_t i = T - 1; i >= 0; --i) {
        const double* ri = r + i * T;
        double* xi = x + i * T;
        const double inv = 1.0 / ri[i];
        for (int64_t j = i; j < T; ++j) xi[j] = 0.0;
        for (int64_t t = i + 1; t < T; ++t) {  // x_i = −(1/R_ii) Σ_t R_it x_t
            const double c = ri[t];
            const double* xt = x + t * T;
            for (int64_t j = t; j < T; ++j) xi[j] -= c * xt[j];
        }
        for (int64_t j = i + 1; j < T; ++j) xi[j] *= inv;
        xi[i] = inv;
    }
    // H_ij = Σ_{t ≥ j} X_it X_jt for i ≤ j, into scratch (R is no longer needed), then back.
    for (int64_t i = 0; i < T; ++i) {
        for (int64_t j = i; j < T; ++j) {
            const double s = dot(x + i * T + j, x + j * T + j, T - j);
            scratch[i * T + j] = s;
            scratch[j * T + i] = s;
        }
    }
    std::copy(scratch, scratch + T * T, h);
    return true;
}

// Cholesky factor R (upper) of G̃[idx][idx] + ridge·I, kept across the iterations of a row and
// updated when the free set changes: appending an index costs one forward substitution,
// removing one a Givens rank-1 update of the trailing block, both O(k²), against O(k³/3) for
// a fresh factorisation.
struct Factor {
    int64_t T, ld, k = 0;
    bool valid = false;
    double ridge = 0.0;
    std::vector<double> r;     // T×ld row-major; the upper triangle of the leading k×k is R
    std::vector<int64_t> idx;  // free index at each position
    std::vector<int64_t> pos;  // position of each index, −1 when not free
    std::vector<double> col;   // scratch

    // ld = T + 4: rows a power of two bytes apart would fall into a few L1 sets.
    explicit Factor(int64_t T_)
        : T(T_), ld(T_ + 4), r(T_ * (T_ + 4)), idx(T_), pos(T_, -1), col(T_) {}

    MTL_INLINE void clear() {
        for (int64_t p = 0; p < k; ++p) pos[idx[p]] = -1;
        k = 0;
        valid = false;
    }

    // Become a copy of o (same T): O(k²).
    MTL_INLINE void assign(const Factor& o) {
        clear();
        k = o.k;
        valid = o.valid;
        ridge = o.ridge;
        for (int64_t p = 0; p < k; ++p) {
            idx[p] = o.idx[p];
            pos[idx[p]] = p;
            std::copy(o.r.data() + p * ld + p, o.r.data() + p * ld + k, r.data() + p * ld + p);
        }
    }

    // The update cost model of update(), in units of about k²; −1 when not usable.
    MTL_INLINE int64_t change_cost(const uint8_t* free) const {
        if (!valid || ridge != 0.0) return -1;
        int64_t removed = 0, added = 0;
        for (int64_t j = 0; j < T; ++j) {
            removed += pos[j] >= 0 && !free[j];
            added += pos[j] < 0 && free[j];
        }
        return kRemoveCost * removed + kAppendCost * added;
    }

    // Fresh factorisation of the indices marked in free (ascending order).
    MTL_INLINE bool refactor(const double* g, const uint8_t* free) {
        clear();
        for (int64_t j = 0; j < T; ++j)
            if (free[j]) {
                pos[j] = k;
                idx[k++] = j;
            }
        for (int64_t p = 0; p < k; ++p) {
            const double* gp = g + idx[p] * T;
            double* rp = r.data() + p * ld;
            for (int64_t q = p; q < k; ++q) rp[q] = gp[idx[q]];
            rp[p] += ridge;
        }
        for (int64_t p = 0; p < k; ++p) col[p] = r[p * ld + p];  // diagonal before elimination
        valid = cholesky(r.data(), k, ld, col.data());
        return valid;
    }

    // Drop the index at position p. With w = R[p, p+1:], the trailing factor S of the remaining
    // indices satisfies SᵀS = R₂₂ᵀR₂₂ + wᵀw: Givens rotations of the rows q > p against w, each
    // rotated row written one row up and one column left.
    MTL_INLINE void remove(int64_t p) {
        double* R = r.data();
        for (int64_t i = 0; i < p; ++i) {  // rows above: close the gap of column p
            double* ri = R + i * ld;
            for (int64_t j = p; j + 1 < k; ++j) ri[j] = ri[j + 1];
        }
        double* w = col.data();
        for (int64_t j = p + 1; j < k; ++j) w[j] = R[p * ld + j];
        for (int64_t q = p + 1; q < k; ++q) {
            const double* rq = R + q * ld;
            double* out = R + (q - 1) * ld;
            const double a = rq[q], b = w[q];
            const double h = std::sqrt(a * a + b * b);  // entries are O(1): no overflow
            const double c = a / h, s = b / h;
            out[q - 1] = h;
            for (int64_t j = q + 1; j < k; ++j) {
                const double x = rq[j], y = w[j];
                out[j - 1] = c * x + s * y;
                w[j] = c * y - s * x;
            }
        }
        pos[idx[p]] = -1;
        for (int64_t q = p; q + 1 < k; ++q) {
            idx[q] = idx[q + 1];
            pos[idx[q]] = q;
        }
        --k;
    }

    // Add index j at the end. False when the new pivot is not positive.
    MTL_INLINE bool append(const double* g, int64_t j) {
        double* R = r.data();
        double* c = col.data();
        const double* gj = g + j * T;
        for (int64_t q = 0; q < k; ++q) c[q] = gj[idx[q]];
        for (int64_t t = 0; t < k; ++t) {  // Rᵀ c' = c, by rows of R
            const double* rt = R + t * ld;
            const double y = c[t] / rt[t];
            c[t] = y;
            for (int64_t q = t + 1; q < k; ++q) c[q] -= rt[q] * y;
        }
        const double d0 = gj[j] + ridge;
        const double d = d0 - dot(c, c, k);
        if (!(d > kPivotTol * d0) || !std::isfinite(d)) return false;
        for (int64_t q = 0; q < k; ++q) R[q * ld + k] = c[q];
        R[k * ld + k] = std::sqrt(d);
        pos[j] = k;
        idx[k++] = j;
        return true;
    }

    // Bring the factor to the free set, by updates when they are cheaper than a fresh
    // factorisation. Measured costs at k ≈ 60: a removal ≈ k/14 and an append ≈ k/24 of a
    // fresh factorisation.
    MTL_INLINE bool update(const double* g, const uint8_t* free) {
        if (!valid) return refactor(g, free);
        int64_t removed = 0, added = 0, knew = 0;
        for (int64_t j = 0; j < T; ++j) {
            removed += pos[j] >= 0 && !free[j];
            added += pos[j] < 0 && free[j];
            knew += free[j] != 0;
        }
        if (kRemoveCost * removed + kAppendCost * added >= knew) return refactor(g, free);
        for (int64_t p = k - 1; p >= 0; --p)
            if (!free[idx[p]]) remove(p);
        for (int64_t j = 0; j < T; ++j)
            if (free[j] && pos[j] < 0 && !append(g, j)) return refactor(g, free);
        return true;
    }

    // Solve (RᵀR) x = b in place over the k positions.
    MTL_INLINE void solve(double* b) const {
        const double* R = r.data();
        for (int64_t p = 0; p < k; ++p) {  // Rᵀ y = b
            const double* rp = R + p * ld;
            const double y = b[p] / rp[p];
            b[p] = y;
            for (int64_t j = p + 1; j < k; ++j) b[j] -= rp[j] * y;
        }
        for (int64_t p = k - 1; p >= 0; --p) {  // R x = y
            const double* rp = R + p * ld;
            b[p] = (b[p] - dot(rp + p + 1, b + p + 1, k - p - 1)) / rp[p];
        }
    }
};

// Factors of the starting free sets of a problem's recent rows (free-block path only). Rows of
// one problem often start from the same or a similar set — the tasks of one group conflict with
// the same other tasks — and bringing a cached factor to a new set costs O(k²) per changed index
// against O(k³/3) for a fresh factorisation. Same factor up to rounding: the iterates do not
// change.
struct StartCache {
    static constexpr int kSlots = 4;
    static constexpr int64_t kMinSize = 16;  // smaller starting sets are refactored: cheap
    int64_t T;
    std::vector<Factor> slots;
    std::vector<int64_t> last_use;
    int64_t now = 0;

    explicit StartCache(int64_t T_) : T(T_) {}

    MTL_INLINE void clear() {
        for (Factor& f : slots) f.clear();
    }

    // The slot cheapest to bring to free (|free| = kF) when that beats a fresh factorisation,
    // else −1.
    MTL_INLINE int best(const uint8_t* free, int64_t kF) {
        int found = -1;
        // Half of update()'s own threshold: a cached factor must be clearly closer than a
        // fresh one, since removals in the middle of it cost more than the model says.
        int64_t cheapest = kF / 2;
        for (int s = 0; s < static_cast<int>(slots.size()); ++s) {
            const int64_t c = slots[s].change_cost(free);
            if (c >= 0 && c < cheapest) {
                cheapest = c;
                found = s;
            }
        }
        if (found >= 0) last_use[found] = ++now;
        return found;
    }

    MTL_INLINE void store(const Factor& f) {
        int s = 0;
        if (static_cast<int>(slots.size()) < kSlots) {
            slots.emplace_back(T);
            last_use.push_back(0);
            s = static_cast<int>(slots.size()) - 1;
        } else {
            for (int t = 1; t < kSlots; ++t)
                if (last_use[t] < last_use[s]) s = t;
        }
        slots[s].assign(f);
        last_use[s] = ++now;
    }
};

// Whether H = G̃⁻¹ pays for itself: it costs about T³ flops once per problem, and lets a row
// factor its bound block (|A| = T − |F|) instead of its free block. Decided on the first free
// set of a row, assuming the rows left behave alike.
MTL_INLINE bool worth_inverting(int64_t kF, int64_t T, int64_t rows_left) {
    const double kA = static_cast<double>(T - kF), k = static_cast<double>(kF);
    const double saved = (k * k * k - kA * kA * kA) / 3.0;
    return saved > 0.0 && saved * static_cast<double>(rows_left) > static_cast<double>(T * T * T);
}

// One row: v = argmin vᵀ G̃ v s.t. v ≥ u. Returns the iterations used; *converged set.
// Each iteration computes the complementary basic solution of the free set F in whichever
// space is smaller: the free block, G̃_FF x_F = −G̃_FA u_A (factor f), or, when H = G̃⁻¹ is
// available and |A| < |F|, the bound block, H_AA μ_A = u_A, v = H_{:,A} μ_A, λ_A = μ_A,
// λ_F = 0 (factor fa): the same iterate, since G̃_FF⁻¹ = H_FF − H_FA H_AA⁻¹ H_AF.
MTL_INLINE int64_t solve_row(const double* u, double gmax, int64_t max_iter, double tol,
                             int64_t rows_left, Work& w, Factor& f, Factor& fa,
                             StartCache& cache, double* out, bool* converged) {
    const int64_t T = w.T;
    const double* g = w.g.data();
    bool finite = std::isfinite(gmax);
    for (int64_t j = 0; j < T; ++j) finite &= std::isfinite(u[j]);
    if (!finite) {  // non-finite G or u: a NaN row
        std::fill(out, out + T, std::nan(""));
        *converged = false;
        return 0;
    }
    double s_u = 0.0;
    int64_t nnz = 0;
    for (int64_t j = 0; j < T; ++j) {
        s_u = std::max(s_u, std::fabs(u[j]));
        if (u[j] != 0.0) w.nz[nnz++] = j;
    }
    // λ0 = G̃u from the columns of the nonzero u_j (one column for a UPGrad row).
    std::fill(w.lam0.begin(), w.lam0.end(), 0.0);
    for (int64_t t = 0; t < nnz; ++t) {
        const int64_t j = w.nz[t];
        const double c = u[j];
        const double* gj = g + j * T;
        for (int64_t i = 0; i < T; ++i) w.lam0[i] += c * gj[i];
    }
    int64_t nbad = 0;
    for (int64_t j = 0; j < T; ++j) {
        const bool b = w.lam0[j] < -tol * s_u * g[j * T + j];
        w.free[j] = b;
        nbad += b;
    }
    for (int64_t j = 0; j < T; ++j) w.v[j] = u[j];
    *converged = nbad == 0;
    if (!*converged && !w.tried_h && worth_inverting(nbad, T, rows_left)) {
        w.tried_h = true;
        w.have_h = invert_spd(g, T, w.h.data(), f.r.data());
        f.clear();
    }
    int64_t best = nbad, budget = kBackupExchanges, iters = 0, singles = 0;
    f.clear();
    fa.clear();
    f.ridge = 0.0;
    bool keep_start = false;  // store the factor of the starting set after iteration 1
    if (!*converged && nbad >= StartCache::kMinSize) {
        const int s = cache.best(w.free.data(), nbad);
        if (s >= 0) f.assign(cache.slots[s]);
        keep_start = s < 0 || cache.slots[s].change_cost(w.free.data()) > 0;
    }
    while (!*converged && iters < max_iter) {
        ++iters;
        int64_t kF = 0;
        for (int64_t j = 0; j < T; ++j) kF += w.free[j];
        double s_v = s_u;
        if (w.have_h && T - kF < kF) {
            // Bound block: H_AA μ_A = u_A; v = H_{:,A} μ_A; λ_A = μ_A, λ_F = 0.
            for (int64_t j = 0; j < T; ++j) w.bound[j] = !w.free[j];
            if (!fa.update(w.h.data(), w.bound.data())) {
                w.have_h = false;  // H not positive definite: G̃ was not; use the free block
                --iters;
                continue;
            }
            const int64_t k = fa.k;
            for (int64_t p = 0; p < k; ++p) w.x[p] = u[fa.idx[p]];
            fa.solve(w.x.data());
            std::fill(w.v.begin(), w.v.end(), 0.0);
            std::fill(w.lam.begin(), w.lam.end(), 0.0);
            for (int64_t p = 0; p < k; ++p) {
                const int64_t a = fa.idx[p];
                const double c = w.x[p];
                const double* ha = w.h.data() + a * T;
                for (int64_t i = 0; i < T; ++i) w.v[i] += c * ha[i];
                w.lam[a] = c;
            }
            for (int64_t j = 0; j < T; ++j) {
                if (w.bound[j]) w.v[j] = u[j];
                s_v = std::max(s_v, std::fabs(w.v[j]));
            }
        } else {
            if (!f.update(g, w.free.data())) {
                f.ridge = std::max(100.0 * f.ridge, kFailRidge * gmax);
                f.clear();
                keep_start = false;
                continue;  // keep the previous iterate, retry with a ridge
            }
            if (keep_start) {
                cache.store(f);
                keep_start = false;
            }
            const int64_t k = f.k;
            // rhs −(G̃ u_A)_F over the nonzero u_j outside F.
            for (int64_t p = 0; p < k; ++p) {
                const double* gi = g + f.idx[p] * T;
                double s = 0.0;
                for (int64_t t = 0; t < nnz; ++t) {
                    const int64_t j = w.nz[t];
                    if (!w.free[j]) s += gi[j] * u[j];
                }
                w.x[p] = -s;
            }
            f.solve(w.x.data());
            // v and λ = G̃u + Σ_F (v_j − u_j) G̃[j, :].
            for (int64_t j = 0; j < T; ++j) w.v[j] = u[j];
            std::copy(w.lam0.begin(), w.lam0.end(), w.lam.begin());
            for (int64_t p = 0; p < k; ++p) {
                const int64_t j = f.idx[p];
                w.v[j] = w.x[p];
                s_v = std::max(s_v, std::fabs(w.x[p]));
                const double c = w.x[p] - u[j];
                const double* gj = g + j * T;
                for (int64_t i = 0; i < T; ++i) w.lam[i] += c * gj[i];
            }
        }
        // Infeasible set and the exchange (Júdice & Pires, Kim & Park backup rule).
        int64_t nb = 0, largest = -1, worst = -1;
        double worst_violation = -1.0;
        for (int64_t j = 0; j < T; ++j) {
            const double violation =
                w.free[j] ? (u[j] - w.v[j]) / s_v : -w.lam[j] / (s_v * g[j * T + j]);
            const bool b = violation > tol;
            w.bad[j] = b;
            if (b) {
                ++nb;
                largest = j;
                if (violation > worst_violation) {
                    worst_violation = violation;
                    worst = j;
                }
            }
        }
        if (nb == 0) {
            *converged = true;
            break;
        }
        const bool improve = nb < best;
        const bool full = improve || budget > 0;
        if (improve) {
            best = nb;
            budget = kBackupExchanges;
        } else if (full) {
            --budget;
        }
        if (full) {
            for (int64_t j = 0; j < T; ++j) w.free[j] ^= w.bad[j];
        } else {  // the most violated index for the first T single exchanges, then Murty's
            w.free[singles < T ? worst : largest] ^= 1;
            ++singles;
        }
    }
    for (int64_t j = 0; j < T; ++j) out[j] = std::max(w.v[j], u[j]);
    return iters;
}

MTL_INLINE double start_problem(const double* G, double norm_eps, double reg_eps, Work& w) {
    w.have_h = w.tried_h = false;
    return normalize(G, w.T, norm_eps, reg_eps, w.g.data());
}

bool valid(int64_t batch, int64_t R, int64_t T, double norm_eps, double reg_eps,
           int64_t max_iter, double tol) {
    // The negated comparisons also refuse NaN.
    return batch >= 0 && R >= 0 && T >= 0 && T <= kMaxT && norm_eps >= 0 && reg_eps >= 0 &&
           max_iter >= 0 && tol >= 0 && !(norm_eps != norm_eps) && !(reg_eps != reg_eps) &&
           !(tol != tol);
}

MTL_CLONES int64_t project_batch(const double* U, const double* G, double* W, int64_t batch,
                                 int64_t R, int64_t T, double norm_eps, double reg_eps,
                                 int64_t max_iter, double tol, int64_t* iters) {
    Work w(T);
    Factor f(T), fa(T);
    StartCache cache(T);
    int64_t unconverged = 0;
    for (int64_t b = 0; b < batch; ++b) {
        const double gmax = start_problem(G + b * T * T, norm_eps, reg_eps, w);
        cache.clear();
        for (int64_t r = 0; r < R; ++r) {
            const int64_t row = b * R + r;
            bool conv = false;
            const int64_t it = solve_row(U + row * T, gmax, max_iter, tol, R - r, w, f, fa,
                                         cache, W + row * T, &conv);
            if (iters) iters[row] = it;
            unconverged += !conv;
        }
    }
    return unconverged;
}

}  // namespace

extern "C" {

int mtl_dual_cone_abi_version(void) { return MTL_DUAL_CONE_ABI_VERSION; }

int64_t mtl_dual_cone_f64(const double* U, const double* G, double* W, int64_t batch, int64_t R,
                          int64_t T, double norm_eps, double reg_eps, int64_t max_iter,
                          double tol, int64_t* iters) {
    if (!valid(batch, R, T, norm_eps, reg_eps, max_iter, tol)) return MTL_DUAL_CONE_BAD_ARGUMENT;
    if (batch == 0 || R == 0 || T == 0) return 0;
    if (U == nullptr || G == nullptr || W == nullptr) return MTL_DUAL_CONE_BAD_ARGUMENT;
    try {
        return project_batch(U, G, W, batch, R, T, norm_eps, reg_eps, max_iter, tol, iters);
    } catch (const std::bad_alloc&) {
        return MTL_DUAL_CONE_NO_MEMORY;
    }
}

}  // extern "C"
