// C ABI of the CPU min-norm (MGDA) solver, csrc/cpu/min_norm.cpp.
//
// Plain C types over raw contiguous row-major buffers, no torch or Python headers: the shared
// library is built by setup.py without torch in the build environment and loaded with ctypes
// (mtl_fast/backends/cpu/).
#pragma once

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// Bumped whenever a signature or the meaning of an argument changes; the Python side refuses a
// library whose version differs from the one it was written for.
#define MTL_MIN_NORM_ABI_VERSION 1

// Status codes returned by the solvers.
#define MTL_MIN_NORM_OK 0
#define MTL_MIN_NORM_BAD_ARGUMENT 1  // batch < 0, T < 1, max_iter < 0 or a null pointer
#define MTL_MIN_NORM_NO_MEMORY 2     // the O(T²) scratch could not be allocated

int mtl_min_norm_abi_version(void);

// w[b] = argmin_{w ∈ simplex} wᵀ K[b] w for b < batch.
//   K: (batch, T, T) row-major, symmetric positive semi-definite (not checked).
//   w: (batch, T) row-major output, each row on the simplex.
//   max_iter ≥ 0: iterations at most per problem; tol ≥ 0: stop once the duality gap is at most
//   tol · max_i K_ii. All arithmetic is fp64 whatever the I/O type.
// Returns one of the MTL_MIN_NORM_* codes; on an error nothing meaningful is in w.
int mtl_min_norm_f64(const double* K, double* w, int64_t batch, int64_t T, int64_t max_iter,
                     double tol);
int mtl_min_norm_f32(const float* K, float* w, int64_t batch, int64_t T, int64_t max_iter,
                     double tol);

#ifdef __cplusplus
}  // extern "C"
#endif
