// Device code of the combine kernel (see combine.cu), kept free of ATen so that the very same
// code also compiles on the host against emulate/cuda_emulator.h, where a test runs it.
#pragma once

#include <cmath>
#include <cstdint>

#include "streaming.cuh"

namespace mtl_fast {
namespace combine_detail {

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kStreamThreads)
    combine_kernel(const scalar_t* __restrict__ J, const acc_t* __restrict__ w,
                   scalar_t* __restrict__ d, int64_t T, int64_t P) {
  const int64_t b = blockIdx.y;
  const scalar_t* Jb = J + b * T * P;
  const acc_t* wb = w + b * T;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; p < P;
       p += stride) {
    acc_t acc = acc_t(0);
#pragma unroll 4
    for (int64_t t = 0; t < T; ++t) acc = fma(wb[t], static_cast<acc_t>(Jb[t * P + p]), acc);
    d[b * P + p] = static_cast<scalar_t>(acc);
  }
}

}  // namespace combine_detail
}  // namespace mtl_fast
