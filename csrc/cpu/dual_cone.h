// C ABI of the CPU dual-cone projection solver (UPGrad / DualProj), csrc/cpu/dual_cone.cpp.
//
// Plain C types over raw contiguous row-major float64 buffers, no torch or Python headers: the
// shared library is built by setup.py without torch in the build environment and loaded with
// ctypes (mtl_fast/kernels/cpu/).
#pragma once

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// Bumped whenever a signature or the meaning of an argument changes; the Python side refuses a
// library whose version differs from the one it was written for.
#define MTL_DUAL_CONE_ABI_VERSION 1

// Negative return values of mtl_dual_cone_f64 (a non-negative value counts unconverged rows).
#define MTL_DUAL_CONE_BAD_ARGUMENT (-1)  // a negative size, T > 4096, a negative eps, max_iter
                                         // or tol, or a null pointer with a non-empty problem
#define MTL_DUAL_CONE_NO_MEMORY (-2)     // the O(T²) scratch could not be allocated

int mtl_dual_cone_abi_version(void);

// W[b, r] = argmin_v vᵀ G̃_b v subject to v ≥ U[b, r], for b < batch, r < R, with
//   G̃_b = sym(G[b]) / tr(G[b]) + reg_eps·I   (reg_eps·I when tr(G[b]) < norm_eps).
//   U: (batch, R, T), G: (batch, T, T), W: (batch, R, T), iters: (batch, R) or null (the
//   factorisations each row used). max_iter ≥ 0 bounds the factorisations per row; tol ≥ 0 is
//   the stopping rule's tolerance (see dual_cone.cpp). W ≥ U exactly.
// Returns the number of rows that did not meet the stopping rule within max_iter (their W is the
// last iterate, clamped to W ≥ U) — rows of a problem whose G, or rows whose u, hold NaN/Inf are
// NaN and counted — or one of the negative codes above, in which case W holds nothing meaningful.
int64_t mtl_dual_cone_f64(const double* U, const double* G, double* W, int64_t batch, int64_t R,
                          int64_t T, double norm_eps, double reg_eps, int64_t max_iter,
                          double tol, int64_t* iters);

#ifdef __cplusplus
}  // extern "C"
#endif
