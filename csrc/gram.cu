// Gram matrix K = J Jᵀ of per-task gradients, batched: J (B, T, P) -> K (B, T, T); and, with the
// same tiling, the sign-conflict fractions C_ij = |{p : sign(J_ip) sign(J_jp) < 0}| / P.
//
// Accumulation is fp32 for fp16/bf16/fp32 input and fp64 for fp64 input (docs/math.md). The P axis
// is split into chunks; each block computes one TT×TT tile of K (only tiles on or above the
// diagonal: K is symmetric) over one chunk and writes it to a workspace, and a second kernel
// sums the chunks in a fixed order and mirrors the tile. No atomics, so the result is bitwise
// reproducible, and K is exactly symmetric. For T ≤ 64 J is read from global memory exactly
// once (4·T·P bytes for fp32, 2·T·P for bf16); offsets are 64-bit, so T·P > 2³¹ is fine.

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "checks.h"
#include "gram_kernel.cuh"
#include "ops.h"

namespace mtl_fast {
namespace {

using namespace gram_detail;

// Number of SMs of the current device (a cheap driver query).
int multiprocessor_count() {
  int dev = 0, sms = 0;
  C10_CUDA_CHECK(cudaGetDevice(&dev));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  return sms > 0 ? sms : 1;
}

// K: (B, T, T), the accumulation dtype (Gram) or fp64 (sign conflicts, divided by P).
template <typename scalar_t, int TT, int MT, bool kSign>
void launch_gram_tiles(const at::Tensor& J, at::Tensor& K, bool accumulate) {
  using part_t = tile_type_t<scalar_t, kSign>;
  using out_t = std::conditional_t<kSign, double, acc_type_t<scalar_t>>;
  const int64_t B = J.size(0), T = J.size(1), P = J.size(2);
  const GramPlan plan = plan_gram(B, T, P, TT, multiprocessor_count(), kSign);
  const int num_tiles = plan.num_tiles, num_pairs = plan.num_pairs;
  const int64_t slots = plan.slots, chunks = plan.chunks, chunk_len = plan.chunk_len;
  TORCH_CHECK(slots < (int64_t{1} << 31), "gram: B · (tile pairs) = ", slots, " is too large");
  TORCH_CHECK(chunks <= 65535, "J: P = ", P, " needs more than 65535 chunks");

  const auto part_dtype = kSign ? at::kFloat : K.scalar_type();
  at::Tensor partial = at::empty({chunks, slots, TT, TT}, J.options().dtype(part_dtype));
  auto stream = c10::cuda::getCurrentCUDAStream();
  constexpr int threads = (TT / MT) * (TT / MT);
  dim3 grid(static_cast<unsigned>(slots), static_cast<unsigned>(chunks));
  gram_partial_kernel<scalar_t, TT, MT, kSign><<<grid, threads, 0, stream>>>(
      J.data_ptr<scalar_t>(), partial.data_ptr<part_t>(), T, P, chunk_len, num_tiles, num_pairs);
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  const int64_t total = B * T * T;
  const int reduce_threads = 256;
  const int reduce_blocks = static_cast<int>(std::min<int64_t>(ceil_div(total, reduce_threads), 65535));
  gram_reduce_kernel<part_t, out_t, TT><<<reduce_blocks, reduce_threads, 0, stream>>>(
      partial.data_ptr<part_t>(), K.data_ptr<out_t>(), B, T, static_cast<int>(chunks), num_tiles,
      num_pairs, accumulate, kSign ? static_cast<double>(P) : 0.0);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// K (B, T, T) (+)= J Jᵀ for a contiguous J (B, T, P) with P ≥ 1; the tile size follows T.
void gram_into(const at::Tensor& J, at::Tensor& K, bool accumulate) {
  const int64_t T = J.size(1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, J.scalar_type(), "mtl_fast_gram", [&] {
    if (T <= 16) {
      launch_gram_tiles<scalar_t, 16, 2, false>(J, K, accumulate);  // 64 threads
    } else if (T <= 32) {
      launch_gram_tiles<scalar_t, 32, 2, false>(J, K, accumulate);  // 256 threads
    } else {
      launch_gram_tiles<scalar_t, 64, 4, false>(J, K, accumulate);  // 256 threads, 4×4 each
    }
  });
}

at::ScalarType accumulation_dtype(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

}  // namespace

// J: (B, T, P) contiguous CUDA tensor, fp16/bf16/fp32/fp64.
// Returns (B, T, T), fp32 (fp64 for fp64 J), exactly symmetric.
at::Tensor gram(const at::Tensor& J) {
  CHECK_DEVICE(J);
  CHECK_DIM(J, 3);
  CHECK_CONTIGUOUS(J);
  CHECK_DTYPE(J, at::kHalf, at::kBFloat16, at::kFloat, at::kDouble);
  const c10::cuda::CUDAGuard guard(J.device());
  const int64_t B = J.size(0), T = J.size(1), P = J.size(2);
  auto opts = J.options().dtype(accumulation_dtype(J.scalar_type()));
  if (B == 0 || T == 0 || P == 0) return at::zeros({B, T, T}, opts);
  at::Tensor K = at::empty({B, T, T}, opts);
  gram_into(J, K, /*accumulate=*/false);
  return K;
}

// grads: non-empty list of contiguous (T, n_i) CUDA tensors of one dtype.
// Returns K = Σ_i G_i G_iᵀ (T, T) in the accumulation dtype, without concatenating the blocks.
at::Tensor gram_list(at::TensorList grads) {
  TORCH_CHECK(!grads.empty(), "grads must hold at least one (T, n) tensor");
  const at::Tensor& first = grads[0];
  CHECK_DEVICE(first);
  CHECK_DTYPE(first, at::kHalf, at::kBFloat16, at::kFloat, at::kDouble);
  TORCH_CHECK(first.dim() == 2, "grads[0] must have shape (T, n), got ", first.sizes());
  const int64_t T = first.size(0);
  for (size_t i = 0; i < grads.size(); ++i) {
    const at::Tensor& g = grads[i];
    TORCH_CHECK(g.dim() == 2 && g.size(0) == T, "grads[", i, "] must have shape (", T,
                ", n), got ", g.sizes());
    TORCH_CHECK(g.scalar_type() == first.scalar_type(), "grads[", i, "] has dtype ",
                g.scalar_type(), " but grads[0] has ", first.scalar_type());
    TORCH_CHECK(g.device() == first.device(), "grads[", i, "] is on ", g.device(),
                " but grads[0] is on ", first.device());
    TORCH_CHECK(g.is_contiguous(), "grads[", i, "] must be contiguous");
  }
  const c10::cuda::CUDAGuard guard(first.device());
  at::Tensor K = at::zeros({1, T, T}, first.options().dtype(accumulation_dtype(first.scalar_type())));
  for (const at::Tensor& g : grads) {
    if (g.numel() == 0) continue;
    gram_into(g.view({1, T, g.size(1)}), K, /*accumulate=*/true);
  }
  return K.view({T, T});
}

// J: (B, T, P) contiguous CUDA tensor, fp16/bf16/fp32/fp64, P ≥ 1.
// Returns C (B, T, T) fp64: the fraction of coordinates where rows i and j have opposite signs
// (zeros never conflict); symmetric with a zero diagonal. Counts are exact: each chunk of at
// most 2^24 coordinates is counted in fp32, the chunks are summed in fp64.
at::Tensor sign_conflict(const at::Tensor& J) {
  CHECK_DEVICE(J);
  CHECK_DIM(J, 3);
  CHECK_CONTIGUOUS(J);
  CHECK_DTYPE(J, at::kHalf, at::kBFloat16, at::kFloat, at::kDouble);
  const int64_t B = J.size(0), T = J.size(1), P = J.size(2);
  TORCH_CHECK(P >= 1, "J must have P ≥ 1 coordinates, got shape ", J.sizes());
  const c10::cuda::CUDAGuard guard(J.device());
  auto opts = J.options().dtype(at::kDouble);
  if (B == 0 || T == 0) return at::zeros({B, T, T}, opts);
  at::Tensor C = at::empty({B, T, T}, opts);
  // One tile shape for every T keeps the number of compiled kernels down (a diagnostic).
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, J.scalar_type(),
                                  "mtl_fast_sign_conflict", [&] {
    launch_gram_tiles<scalar_t, 32, 2, true>(J, C, /*accumulate=*/false);
  });
  return C;
}

// The SM architectures this library was compiled for, as 10·major + minor, e.g. {90}. nvcc
// defines __CUDA_ARCH_LIST__ in host code as the comma-separated list of __CUDA_ARCH__ values
// (900 for sm_90).
std::vector<int64_t> compiled_archs() {
  std::vector<int64_t> out;
#ifdef __CUDA_ARCH_LIST__
  for (const int arch : {__CUDA_ARCH_LIST__}) out.push_back(arch / 10);
#endif
  return out;
}

}  // namespace mtl_fast
