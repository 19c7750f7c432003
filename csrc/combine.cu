// Combine d = Σ_t w_t J_t, batched: J (B, T, P), w (B, T) -> d (B, P) in J's dtype.
//
// One pass over J: each thread owns one column p and walks the T rows (consecutive threads read
// consecutive p of a row: coalesced), accumulating in fp32 (fp64 for fp64 J) in task order, so
// the result is deterministic. Offsets are 64-bit (T·P > 2³¹ is fine).

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <type_traits>

#include "checks.h"
#include "combine_kernel.cuh"
#include "ops.h"

namespace mtl_fast {
namespace {

using namespace combine_detail;

}  // namespace

// J: (B, T, P) contiguous CUDA tensor, fp16/bf16/fp32/fp64; w: (B, T) contiguous, in the
// accumulation dtype (fp32, fp64 for fp64 J). Returns d (B, P) in J's dtype.
at::Tensor combine(const at::Tensor& J, const at::Tensor& w) {
  CHECK_DEVICE(J);
  CHECK_SAME_DEVICE(w, J);
  CHECK_DIM(J, 3);
  CHECK_CONTIGUOUS(J);
  CHECK_CONTIGUOUS(w);
  CHECK_DTYPE(J, at::kHalf, at::kBFloat16, at::kFloat, at::kDouble);
  const int64_t B = J.size(0), T = J.size(1), P = J.size(2);
  CHECK_SHAPE(w, B, T);
  const auto acc_dtype = J.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  TORCH_CHECK(w.scalar_type() == acc_dtype, "w must have dtype ", acc_dtype,
              " (the accumulation dtype of J's ", J.scalar_type(), "), got ", w.scalar_type());
  TORCH_CHECK(B <= 65535, "combine: a batch of at most 65535 problems, got B = ", B);
  const c10::cuda::CUDAGuard guard(J.device());
  if (B == 0 || P == 0 || T == 0) return at::zeros({B, P}, J.options());
  at::Tensor d = at::empty({B, P}, J.options());
  const int64_t blocks = std::min(ceil_div(P, kStreamThreads), kStreamMaxBlocks);
  const dim3 grid(static_cast<unsigned>(blocks), static_cast<unsigned>(B));
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, J.scalar_type(), "mtl_fast_combine",
                                  [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    combine_kernel<scalar_t, acc_t><<<grid, kStreamThreads, 0, stream>>>(
        J.data_ptr<scalar_t>(), w.data_ptr<acc_t>(), d.data_ptr<scalar_t>(), T, P);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return d;
}

}  // namespace mtl_fast
