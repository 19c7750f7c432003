// Host stand-ins for the CUDA primitives the device code uses, so that the very same kernel
// source runs on a CPU: every CUDA thread of a block is a std::thread, blocks run one after the
// other, __syncthreads is a barrier across the block, and every warp-wide operation (shuffle,
// ballot, vote, __syncwarp) is a barrier across the 32 lanes of a one-warp launch. This checks
// the kernels' logic (indexing, tiling, reductions, the algorithm) where no GPU exists; it says
// nothing about timing, the GPU memory model or occupancy.
#pragma once

#include <barrier>
#include <cmath>
#include <cstdint>
#include <functional>
#include <thread>
#include <vector>

#define __device__
#define __host__
#define __forceinline__ inline
#define __global__
#define __launch_bounds__(...)
// Blocks run one at a time, so a function-local static is exactly one block's shared memory.
#define __shared__ static

using std::fabs;
using std::fma;
using std::fmax;
using std::fmin;
using std::isfinite;
using std::pow;
using std::sqrt;

namespace warp_emulator {

constexpr int kLanes = 32;

struct Warp {
  std::barrier<> sync{kLanes};
  double d[kLanes];
  int i[kLanes];
  unsigned u[kLanes];
};

inline thread_local Warp* current = nullptr;
inline thread_local int lane = 0;

// Run body(lane) on 32 threads that form one emulated warp.
inline void run_warp(const std::function<void(int)>& body) {
  Warp warp;
  std::vector<std::thread> threads;
  threads.reserve(kLanes);
  for (int l = 0; l < kLanes; ++l) {
    threads.emplace_back([&warp, &body, l] {
      current = &warp;
      lane = l;
      body(l);
    });
  }
  for (auto& t : threads) t.join();
}

template <typename T>
T* slots(Warp* w);
template <>
inline double* slots<double>(Warp* w) { return w->d; }
template <>
inline int* slots<int>(Warp* w) { return w->i; }
template <>
inline unsigned* slots<unsigned>(Warp* w) { return w->u; }

template <typename T>
T exchange(T v, int src_lane) {
  Warp* w = current;
  slots<T>(w)[lane] = v;
  w->sync.arrive_and_wait();
  const T out = slots<T>(w)[src_lane];
  w->sync.arrive_and_wait();
  return out;
}

struct Dim3 {
  unsigned x = 1, y = 1, z = 1;
};

inline thread_local std::barrier<>* block_sync = nullptr;

// Run kernel() for every block of `grid`, `threads` std::threads per block.
template <typename Kernel>
void run_grid(Dim3 grid, unsigned threads, Kernel kernel);

}  // namespace warp_emulator

inline thread_local warp_emulator::Dim3 threadIdx, blockIdx;
inline warp_emulator::Dim3 gridDim, blockDim;

template <typename Kernel>
void warp_emulator::run_grid(Dim3 grid, unsigned threads, Kernel kernel) {
  gridDim = grid;
  blockDim = Dim3{threads, 1, 1};
  for (unsigned by = 0; by < grid.y; ++by) {
    for (unsigned bx = 0; bx < grid.x; ++bx) {
      std::barrier<> sync(threads);
      std::vector<std::thread> pool;
      pool.reserve(threads);
      for (unsigned t = 0; t < threads; ++t) {
        pool.emplace_back([&, t] {
          threadIdx = Dim3{t, 0, 0};
          blockIdx = Dim3{bx, by, 0};
          block_sync = &sync;
          kernel();
        });
      }
      for (auto& th : pool) th.join();
    }
  }
}

inline void __syncthreads() { warp_emulator::block_sync->arrive_and_wait(); }
inline int64_t min(int64_t a, int64_t b) { return a < b ? a : b; }
template <typename T>
T __ldg(const T* p) {
  return *p;
}

inline void __syncwarp(unsigned = 0xffffffffu) { warp_emulator::current->sync.arrive_and_wait(); }

inline double __shfl_xor_sync(unsigned, double v, int m) {
  return warp_emulator::exchange<double>(v, warp_emulator::lane ^ m);
}
inline int __shfl_xor_sync(unsigned, int v, int m) {
  return warp_emulator::exchange<int>(v, warp_emulator::lane ^ m);
}

inline unsigned __ballot_sync(unsigned, bool predicate) {
  using namespace warp_emulator;
  Warp* w = current;
  w->u[lane] = predicate ? 1u : 0u;
  w->sync.arrive_and_wait();
  unsigned mask = 0;
  for (int l = 0; l < kLanes; ++l) mask |= w->u[l] << l;
  w->sync.arrive_and_wait();
  return mask;
}

inline int __all_sync(unsigned mask, int predicate) {
  return __ballot_sync(mask, predicate != 0) == 0xffffffffu ? 1 : 0;
}

inline int __popc(unsigned x) { return __builtin_popcount(x); }
