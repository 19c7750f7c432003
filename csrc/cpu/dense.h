// C ABI of the CPU Gram and combination kernels, csrc/cpu/dense.cpp.
//
// Plain C types over raw row-major buffers, no torch or Python headers (built by setup.py into
// the same shared library as the min-norm solver and loaded with ctypes by mtl_fast.kernels.cpu).
#pragma once

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// Bumped whenever a signature or the meaning of an argument changes.
#define MTL_DENSE_ABI_VERSION 3

#define MTL_DENSE_OK 0
#define MTL_DENSE_BAD_ARGUMENT 1  // batch < 0, T < 1, P < 0, ld < P, threads < 1, a null pointer

int mtl_dense_abi_version(void);

// The instruction set the kernels use: 0 portable C++, 1 AVX2+FMA, 2 AVX-512 (the Gram; the
// combination stays AVX2). The best the processor has unless set lower: mtl_dense_set_isa(isa)
// picks the highest it has that is ≤ isa (isa < 0: the best again) and returns it. Process-wide,
// for tests and measurements. mtl_dense_best_isa: the best the processor has.
int mtl_dense_isa(void);
int mtl_dense_best_isa(void);
int mtl_dense_set_isa(int isa);

// K[b] = J[b] J[b]ᵀ for b < batch. J: (batch, T, P) with rows ld elements apart (ld ≥ P) and
// batches T·ld apart; K: (batch, T, T) row-major output, exactly symmetric. fp32 input: products
// summed in fp32 within blocks of 512 to 2048 columns, the blocks summed in fp64; fp64 input: fp64
// throughout. threads ≥ 1 splits P (used when a problem is large enough to pay for it).
int mtl_gram_f32(const float* J, int64_t batch, int64_t T, int64_t P, int64_t ld, float* K,
                 int64_t threads);
int mtl_gram_f64(const double* J, int64_t batch, int64_t T, int64_t P, int64_t ld, double* K,
                 int64_t threads);

// d[b] = Σ_t w[b, t] J[b, t] for b < batch. J as above; w: (batch, T) in J's type; d: (batch, P)
// row-major output. Accumulated in J's type, t in order.
int mtl_combine_f32(const float* J, const float* w, int64_t batch, int64_t T, int64_t P,
                    int64_t ld, float* d, int64_t threads);
int mtl_combine_f64(const double* J, const double* w, int64_t batch, int64_t T, int64_t P,
                    int64_t ld, double* d, int64_t threads);

// The core's fp32 FMA rate on the kernels' instruction set (mtl_dense_isa): `steps` rounds of
// independent vector FMAs on registers (dense_peak.h). out[0]: the scalar FMAs done; out[1]: the
// accumulators' sum (a value to keep the loop from being optimised away). The caller times it.
// steps < 0 or a null out: MTL_DENSE_BAD_ARGUMENT.
int mtl_fma_burst_f32(int64_t steps, double* out);

#ifdef __cplusplus
}  // extern "C"
#endif
