// Launch shape of the streaming kernels (combine, Adam): one element of P per thread, in a
// grid-stride loop. Free of ATen, as the device code that includes it (see adam_kernel.cuh).
#pragma once

#include <cstdint>

namespace mtl_fast {

constexpr int kStreamThreads = 256;
// Enough resident blocks per SM-sized slice of P to hide latency, with a grid-stride loop
// beyond; 65535 keeps the grid legal in x.
constexpr int64_t kStreamMaxBlocks = 65535;

}  // namespace mtl_fast
