// Gram matrix K = J Jᵀ of per-task gradients, batched: J (B, T, P) -> K (B, T, T); and, with the
// same tiling, the sign-conflict fractions C_ij = |{p : sign(J_ip) sign(J_jp) < 0}| / P.
//
// Accumulation is fp32 for fp16/bf16/fp32 input and fp64 for fp64 input (SPEC.md). The P axis
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
#include "ops.h"

namespace mtl_fast {
namespace {

// Columns of J staged in shared memory per step of the P loop.
constexpr int kTileP = 32;
// Upper bound on the number of P-chunks (bounds the workspace).
constexpr int64_t kMaxChunks = 1024;

// A sign-conflict chunk counts in fp32, exact while the count stays below 2^24.
constexpr int64_t kMaxSignChunk = (int64_t{1} << 24) - 1024;

template <typename scalar_t>
using acc_type_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

// What the tile product accumulates: J's entries (Gram, in the accumulation dtype) or their
// signs (sign conflicts, counted in fp32).
template <typename scalar_t, bool kSign>
using tile_type_t = std::conditional_t<kSign, float, acc_type_t<scalar_t>>;

// One staged entry: the value, or its sign in {−1, 0, 1} taken in J's own precision (a tiny
// fp64 value keeps its sign); NaN stays NaN, as torch.sign does.
template <typename scalar_t, bool kSign>
__device__ __forceinline__ tile_type_t<scalar_t, kSign> stage(scalar_t x) {
  if constexpr (kSign) {
    const acc_type_t<scalar_t> v = static_cast<acc_type_t<scalar_t>>(x);
    return v > 0 ? 1.0f : (v < 0 ? -1.0f : (v == 0 ? 0.0f : static_cast<float>(v)));
  } else {
    return static_cast<acc_type_t<scalar_t>>(x);
  }
}

// acc += a·b (Gram) or acc += [a·b < 0] (sign conflicts; NaN propagates).
template <bool kSign, typename T>
__device__ __forceinline__ T accumulate_product(T a, T b, T acc) {
  if constexpr (kSign) {
    const T prod = a * b;
    return acc + (prod < T(0) ? T(1) : (prod == prod ? T(0) : prod));
  } else {
    return fma(a, b, acc);
  }
}

// Upper-triangle tile pair index -> (ti, tj), ti ≤ tj, for num_tiles tiles per side.
__device__ __forceinline__ void decode_pair(int pair, int num_tiles, int& ti, int& tj) {
  ti = 0;
  while (pair >= num_tiles - ti) {
    pair -= num_tiles - ti;
    ++ti;
  }
  tj = ti + pair;
}

__host__ __device__ __forceinline__ int encode_pair(int ti, int tj, int num_tiles) {
  return ti * num_tiles - ti * (ti - 1) / 2 + (tj - ti);
}

// One block: the TT×TT tile (ti, tj) of K[b] summed over P-chunk `blockIdx.y`. Each of the
// (TT/MT)² threads owns an MT×MT micro-tile in registers. Grid: x = b · num_pairs + pair,
// y = chunk. partial: (num_chunks, B · num_pairs, TT, TT).
template <typename scalar_t, int TT, int MT, bool kSign>
__global__ void __launch_bounds__((TT / MT) * (TT / MT))
    gram_partial_kernel(const scalar_t* __restrict__ J,
                        tile_type_t<scalar_t, kSign>* __restrict__ partial, int64_t T, int64_t P,
                        int64_t chunk_len, int num_tiles, int num_pairs) {
  using acc_t = tile_type_t<scalar_t, kSign>;
  constexpr int D = TT / MT;
  constexpr int NT = D * D;
  // +1 padding: the transposed store below would otherwise hit one bank per warp.
  __shared__ acc_t As[kTileP][TT + 1];
  __shared__ acc_t Bs[kTileP][TT + 1];

  const int64_t b = blockIdx.x / num_pairs;
  const int pair = static_cast<int>(blockIdx.x % num_pairs);
  int ti, tj;
  decode_pair(pair, num_tiles, ti, tj);
  const bool diag = ti == tj;
  const int tid = threadIdx.x;
  const int tx = tid % D;
  const int ty = tid / D;

  acc_t acc[MT][MT];
#pragma unroll
  for (int i = 0; i < MT; ++i)
#pragma unroll
    for (int j = 0; j < MT; ++j) acc[i][j] = acc_t(0);

  const int64_t p_begin = static_cast<int64_t>(blockIdx.y) * chunk_len;
  const int64_t p_end = min(P, p_begin + chunk_len);
  const scalar_t* Jb = J + b * T * P;
  const int64_t row_a0 = static_cast<int64_t>(ti) * TT;
  const int64_t row_b0 = static_cast<int64_t>(tj) * TT;

  for (int64_t p0 = p_begin; p0 < p_end; p0 += kTileP) {
    // Consecutive threads read consecutive p of one row: coalesced.
    for (int idx = tid; idx < TT * kTileP; idx += NT) {
      const int r = idx / kTileP;
      const int c = idx % kTileP;
      const int64_t p = p0 + c;
      const bool in_p = p < p_end;
      const int64_t ra = row_a0 + r;
      As[c][r] = (in_p && ra < T) ? stage<scalar_t, kSign>(Jb[ra * P + p]) : acc_t(0);
      if (!diag) {
        const int64_t rb = row_b0 + r;
        Bs[c][r] = (in_p && rb < T) ? stage<scalar_t, kSign>(Jb[rb * P + p]) : acc_t(0);
      }
    }
    __syncthreads();
    const acc_t(*Bsrc)[TT + 1] = diag ? As : Bs;
#pragma unroll 8
    for (int k = 0; k < kTileP; ++k) {
      acc_t a[MT], c[MT];
#pragma unroll
      for (int i = 0; i < MT; ++i) {
        a[i] = As[k][ty * MT + i];
        c[i] = Bsrc[k][tx * MT + i];
      }
#pragma unroll
      for (int i = 0; i < MT; ++i)
#pragma unroll
        for (int j = 0; j < MT; ++j) acc[i][j] = accumulate_product<kSign>(a[i], c[j], acc[i][j]);
    }
    __syncthreads();
  }

  acc_t* out = partial + (static_cast<int64_t>(blockIdx.y) * gridDim.x + blockIdx.x) * TT * TT;
#pragma unroll
  for (int i = 0; i < MT; ++i)
#pragma unroll
    for (int j = 0; j < MT; ++j) out[(ty * MT + i) * TT + tx * MT + j] = acc[i][j];
}

// K[b, i, j] (+)= Σ_chunks partial[chunk, b, tile(min, max)] in chunk order (then / divisor
// when divisor > 0); the value for (i, j) and (j, i) is the same sum in the same order, so K
// comes out exactly symmetric.
template <typename part_t, typename out_t, int TT>
__global__ void gram_reduce_kernel(const part_t* __restrict__ partial, out_t* __restrict__ K,
                                   int64_t B, int64_t T, int num_chunks, int num_tiles,
                                   int num_pairs, bool accumulate, double divisor) {
  const int64_t total = B * T * T;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t q = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; q < total;
       q += stride) {
    const int64_t b = q / (T * T);
    const int64_t rem = q % (T * T);
    int64_t i = rem / T;
    int64_t j = rem % T;
    if (i > j) {
      const int64_t t = i;
      i = j;
      j = t;
    }
    const int ti = static_cast<int>(i / TT);
    const int tj = static_cast<int>(j / TT);
    const int64_t slot = b * num_pairs + encode_pair(ti, tj, num_tiles);
    const int64_t off = (i % TT) * TT + (j % TT);
    const int64_t chunk_stride = B * num_pairs * TT * TT;
    out_t s = accumulate ? K[q] : out_t(0);
    for (int c = 0; c < num_chunks; ++c) {
      s += static_cast<out_t>(partial[c * chunk_stride + slot * TT * TT + off]);
    }
    K[q] = divisor > 0 ? static_cast<out_t>(s / divisor) : s;
  }
}

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
  const int num_tiles = static_cast<int>(ceil_div(T, TT));
  const int num_pairs = num_tiles * (num_tiles + 1) / 2;
  const int64_t slots = B * num_pairs;
  TORCH_CHECK(slots < (int64_t{1} << 31), "gram: B · (tile pairs) = ", slots, " is too large");

  // Enough blocks to fill the GPU several times over, but at least 8 staged tiles per block.
  const int sms = multiprocessor_count();
  const int64_t target_blocks = 4 * static_cast<int64_t>(sms);
  const int64_t p_tiles = ceil_div(P, kTileP);
  int64_t chunks = std::max<int64_t>(1, ceil_div(target_blocks, slots));
  chunks = std::min({chunks, kMaxChunks, std::max<int64_t>(1, p_tiles / 8)});
  if (kSign) chunks = std::max(chunks, ceil_div(P, kMaxSignChunk));  // exact fp32 counts
  const int64_t chunk_len = ceil_div(p_tiles, chunks) * kTileP;
  chunks = ceil_div(P, chunk_len);
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
