// C ABI of the CPU Gram-space aggregators, csrc/cpu/aggregators.cpp: PCGrad, IMTL-G, CAGrad,
// Nash-MTL, Aligned-MTL and ConFIG coefficients from a batch of T×T Gram matrices.
//
// Plain C types over raw contiguous row-major buffers, no torch or Python headers: the shared
// library is built by setup.py without torch and loaded with ctypes (mtl_fast/kernels/cpu/).
// K is (batch, T, T), symmetric positive semi-definite (not checked; it is symmetrised as
// ½(K + Kᵀ) on reading); every per-task vector is (batch, T); all arithmetic is fp64 whatever
// the I/O type. The algorithms are those of mtl_fast/kernels/reference/aggregators.py.
#pragma once

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// Bumped whenever a signature or the meaning of an argument changes; the Python side refuses a
// library whose version differs from the one it was written for.
#define MTL_AGGREGATORS_ABI_VERSION 1

// Status codes.
#define MTL_AGG_OK 0
#define MTL_AGG_BAD_ARGUMENT 1  // batch < 0, T out of range, a bad option or a null pointer
#define MTL_AGG_NO_MEMORY 2     // the O(T²) scratch could not be allocated

// Aligned-MTL scale modes.
#define MTL_AGG_SCALE_MIN 0
#define MTL_AGG_SCALE_MEDIAN 1
#define MTL_AGG_SCALE_RMSE 2

int mtl_aggregators_abi_version(void);

// PCGrad: order (batch, T, T) int64, row i a permutation of 0..T-1 (task i's projection order).
int mtl_pcgrad_f64(const double* K, const int64_t* order, double* c, int64_t batch, int64_t T);
int mtl_pcgrad_f32(const float* K, const int64_t* order, float* c, int64_t batch, int64_t T);

// IMTL-G: rtol is the pseudo-inverse cut-off relative to the largest |eigenvalue|.
int mtl_imtlg_f64(const double* K, double* c, int64_t batch, int64_t T, double rtol);
int mtl_imtlg_f32(const float* K, float* c, int64_t batch, int64_t T, double rtol);

// CAGrad: radius scale cc ≥ 0, norm_eps ≥ 0, rescale ∈ {0, 1, 2}, inner budget and gap.
int mtl_cagrad_f64(const double* K, double* c, int64_t batch, int64_t T, double cc,
                   double norm_eps, int64_t rescale, int64_t max_iter, double tol);
int mtl_cagrad_f32(const float* K, float* c, int64_t batch, int64_t T, double cc, double norm_eps,
                   int64_t rescale, int64_t max_iter, double tol);

// Nash-MTL: prev (batch, T) fp64 state; writes the clipped weights and the new state alpha.
int mtl_nash_mtl_f64(const double* K, const double* prev, double* weights, double* alpha,
                     int64_t batch, int64_t T, double max_norm, int64_t max_iter, double tol);
int mtl_nash_mtl_f32(const float* K, const double* prev, float* weights, float* alpha,
                     int64_t batch, int64_t T, double max_norm, int64_t max_iter, double tol);

// Aligned-MTL: pref (batch, T) fp64; scale_mode one of MTL_AGG_SCALE_*; rtol the rank cut-off
// relative to the largest eigenvalue.
int mtl_aligned_mtl_f64(const double* K, const double* pref, double* c, int64_t batch, int64_t T,
                        int64_t scale_mode, double rtol);
int mtl_aligned_mtl_f32(const float* K, const double* pref, float* c, int64_t batch, int64_t T,
                        int64_t scale_mode, double rtol);

// ConFIG: pref (batch, T) fp64 target cosine weights; rtol the cut-off of the cosine matrix's
// pseudo-inverse.
int mtl_config_f64(const double* K, const double* pref, double* c, int64_t batch, int64_t T,
                   double rtol);
int mtl_config_f32(const float* K, const double* pref, float* c, int64_t batch, int64_t T,
                   double rtol);

#ifdef __cplusplus
}  // extern "C"
#endif
