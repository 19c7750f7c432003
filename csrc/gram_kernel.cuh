// Device code of the Gram and sign-conflict kernels (see gram.cu), kept free of ATen so that
// the very same code also compiles on the host against emulate/cuda_emulator.h, where a test
// runs it with one std::thread per CUDA thread.
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>

namespace mtl_fast {
namespace gram_detail {

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

// How a (B, T, P) problem is split: TT×TT tiles (num_pairs on or above the diagonal per
// problem, slots = B · num_pairs), and P into `chunks` chunks of chunk_len columns (a multiple
// of kTileP). Enough blocks to fill `sms` SMs four times over, with at least 8 staged tiles per
// block; sign counts additionally keep every chunk below 2^24 coordinates (exact fp32 counts).
struct GramPlan {
  int num_tiles, num_pairs;
  int64_t slots, chunks, chunk_len;
};

inline int64_t ceil_div64(int64_t a, int64_t b) { return (a + b - 1) / b; }

inline GramPlan plan_gram(int64_t B, int64_t T, int64_t P, int TT, int sms, bool sign) {
  GramPlan plan;
  plan.num_tiles = static_cast<int>(ceil_div64(T, TT));
  plan.num_pairs = plan.num_tiles * (plan.num_tiles + 1) / 2;
  plan.slots = B * plan.num_pairs;
  const int64_t target_blocks = 4 * static_cast<int64_t>(sms);
  const int64_t p_tiles = ceil_div64(P, kTileP);
  int64_t chunks = std::max<int64_t>(1, ceil_div64(target_blocks, plan.slots));
  chunks = std::min({chunks, kMaxChunks, std::max<int64_t>(1, p_tiles / 8)});
  if (sign) chunks = std::max(chunks, ceil_div64(P, kMaxSignChunk));
  plan.chunk_len = ceil_div64(p_tiles, chunks) * kTileP;
  plan.chunks = ceil_div64(P, plan.chunk_len);
  return plan;
}

}  // namespace gram_detail
}  // namespace mtl_fast
