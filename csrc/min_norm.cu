// Batched min-norm (MGDA) solve: w* = argmin_{w ∈ simplex} wᵀKw for K (B, T, T).
//
// One warp per problem (each lane owns the entries i ≡ lane mod 32), all arithmetic in fp64
// whatever K's dtype. For T ≤ 64 (the common case) the problem's scratch — the normalised Gram,
// the face system and a few vectors, ≈ 70 KB at T = 64 — lives in shared memory; larger T uses
// the same code on a per-problem scratch buffer in global memory (slower, still correct). The algorithm and the stopping rule are
// those of the reference (mtl_fast/reference/min_norm.py), step for step:
//
//   normalise K by max_i K_ii; start at the vertex with the smallest K_ii; then per iteration,
//   with g = Kw and f = wᵀKw: stop when the duality gap 2(f − min_i g_i) ≤ tol; otherwise take
//   the Frank-Wolfe step toward s = argmin g or the away step from a = argmax_{w_i>0} g_i
//   (whichever gap is larger) with the exact line search; then the face correction: solve
//   (K_AA + δI) z = 1 on the support A (LU with partial pivoting, in shared memory), move from
//   w toward y = z / Σz as far as the simplex allows, and keep the move only if f does not rise.
//
// Arg-min/arg-max and sums use warp shuffles (ties go to the smallest index, as torch does). A
// butterfly (xor) reduction leaves the same bits in every lane, so control flow stays uniform.
// Each warp leaves its loop as soon as its problem has converged; nothing is read back to the
// host, so the solve can be captured in a CUDA graph.

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

#include <cmath>

#include "checks.h"
#include "min_norm_kernel.cuh"
#include "ops.h"

namespace mtl_fast {
namespace {

using namespace min_norm_detail;

template <typename scalar_t>
__global__ void __launch_bounds__(kWarp)
    min_norm_kernel(const scalar_t* __restrict__ K, scalar_t* __restrict__ W,
                    double* __restrict__ scratch, int T, int64_t max_iter, double tol) {
  extern __shared__ double smem[];
  const int64_t b = blockIdx.x;
  // scratch == nullptr: this problem's scratch is the block's shared memory.
  double* base = scratch != nullptr ? scratch + b * Layout(T).doubles(T) : smem;
  solve_problem<scalar_t>(K + b * T * T, W + b * T, base, T, max_iter, tol,
                          static_cast<int>(threadIdx.x));
}

// T = 64 needs ≈ 70 KB of shared memory, above the 48 KB default: opt in to the largest size
// the kernel can ask for. An attribute of the function (not a stream operation), set once per
// kernel and device; a repeated call from a racing thread is harmless.
template <typename scalar_t>
void allow_max_shared_memory(int device) {
  constexpr int kMaxDevices = 64;
  static bool done[kMaxDevices] = {};
  if (device >= 0 && device < kMaxDevices && done[device]) return;
  const int bytes = static_cast<int>(Layout(kMaxSharedT).bytes(kMaxSharedT));
  C10_CUDA_CHECK(cudaFuncSetAttribute(min_norm_kernel<scalar_t>,
                                      cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
  if (device >= 0 && device < kMaxDevices) done[device] = true;
}

}  // namespace

// K: (B, T, T) contiguous CUDA tensor, fp32 or fp64, symmetric PSD (not checked), 1 ≤ T ≤ 2048.
// max_iter ≥ 0 iterations at most; stops per problem when the duality gap ≤ tol · max_i K_ii.
// Returns (B, T) weights on the simplex in K's dtype.
at::Tensor min_norm(const at::Tensor& K, int64_t max_iter, double tol) {
  CHECK_DEVICE(K);
  CHECK_DIM(K, 3);
  CHECK_CONTIGUOUS(K);
  CHECK_DTYPE(K, at::kFloat, at::kDouble);
  const int64_t B = K.size(0), T = K.size(1);
  TORCH_CHECK(K.size(2) == T, "K must have shape (B, T, T), got ", K.sizes());
  TORCH_CHECK(T >= 1 && T <= kMaxT, "K: the CUDA min_norm supports 1 ≤ T ≤ ", kMaxT,
              " (its per-problem scratch grows as T²), got T = ", T);
  TORCH_CHECK(max_iter >= 0, "max_iter must be ≥ 0, got ", max_iter);
  TORCH_CHECK(tol >= 0, "tol must be ≥ 0, got ", tol);
  TORCH_CHECK(B < (int64_t{1} << 31), "K: batch of ", B, " problems is too large");
  const c10::cuda::CUDAGuard guard(K.device());
  at::Tensor W = at::empty({B, T}, K.options());
  if (B == 0) return W;
  const int Ti = static_cast<int>(T);
  const bool shared = Ti <= kMaxSharedT;
  const size_t smem = shared ? Layout(Ti).bytes(Ti) : 0;
  at::Tensor scratch;
  if (!shared) {
    scratch = at::empty({B * static_cast<int64_t>(Layout(Ti).doubles(Ti))},
                        K.options().dtype(at::kDouble));
  }
  double* scratch_ptr = shared ? nullptr : scratch.data_ptr<double>();
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(K.scalar_type(), "mtl_fast_min_norm", [&] {
    allow_max_shared_memory<scalar_t>(K.get_device());
    min_norm_kernel<scalar_t><<<static_cast<unsigned>(B), kWarp, smem, stream>>>(
        K.data_ptr<scalar_t>(), W.data_ptr<scalar_t>(), scratch_ptr, Ti, max_iter, tol);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return W;
}

}  // namespace mtl_fast
