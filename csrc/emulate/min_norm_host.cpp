// The min-norm device code (../min_norm_kernel.cuh), compiled for the host against the CUDA
// emulator and exposed with a C ABI for the CPU tests (tests/emulated_cuda.py loads it).
#include "cuda_emulator.h"
#include "../min_norm_kernel.cuh"

#include <vector>

namespace {

template <typename scalar_t>
void solve_all(const scalar_t* K, scalar_t* W, int64_t B, int T, int64_t max_iter, double tol) {
  using mtl_fast::min_norm_detail::Layout;
  using mtl_fast::min_norm_detail::solve_problem;
  const Layout L(T);
  std::vector<double> scratch(L.doubles(T));
  for (int64_t b = 0; b < B; ++b) {
    const scalar_t* Kb = K + b * T * T;
    scalar_t* Wb = W + b * T;
    warp_emulator::run_warp([&](int lane) {
      solve_problem<scalar_t>(Kb, Wb, scratch.data(), T, max_iter, tol, lane);
    });
  }
}

}  // namespace

extern "C" {

// K: (B, T, T) row-major, W: (B, T) output. Returns 0.
int mtl_fast_min_norm_emulated_f64(const double* K, double* W, int64_t B, int T,
                                   int64_t max_iter, double tol) {
  solve_all<double>(K, W, B, T, max_iter, tol);
  return 0;
}

int mtl_fast_min_norm_emulated_f32(const float* K, float* W, int64_t B, int T, int64_t max_iter,
                                   double tol) {
  solve_all<float>(K, W, B, T, max_iter, tol);
  return 0;
}

}  // extern "C"
