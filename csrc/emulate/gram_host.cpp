// The Gram / sign-conflict device code (../gram_kernel.cuh), compiled for the host against the
// CUDA emulator, launched with the same plan and tile choice as gram.cu, and exposed with a C
// ABI for the CPU tests (tests/emulated_cuda.py loads it). Needs torch's include directory for
// c10's fp16/bf16 types (header-only on the host), included before the emulator's macros.
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "cuda_emulator.h"
#include "../gram_kernel.cuh"

#include <type_traits>
#include <vector>

namespace {

using namespace mtl_fast::gram_detail;

template <typename scalar_t, int TT, int MT, bool kSign>
void run(const scalar_t* J, void* K, int64_t B, int64_t T, int64_t P, int sms, bool accumulate) {
  using part_t = tile_type_t<scalar_t, kSign>;
  using out_t = std::conditional_t<kSign, double, acc_type_t<scalar_t>>;
  const GramPlan plan = plan_gram(B, T, P, TT, sms, kSign);
  std::vector<part_t> partial(static_cast<size_t>(plan.chunks * plan.slots * TT * TT));
  warp_emulator::run_grid(
      {static_cast<unsigned>(plan.slots), static_cast<unsigned>(plan.chunks), 1},
      (TT / MT) * (TT / MT), [&] {
        gram_partial_kernel<scalar_t, TT, MT, kSign>(J, partial.data(), T, P, plan.chunk_len,
                                                     plan.num_tiles, plan.num_pairs);
      });
  const int64_t total = B * T * T;
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((total + 255) / 256, 65535));
  warp_emulator::run_grid({blocks, 1, 1}, 256, [&] {
    gram_reduce_kernel<part_t, out_t, TT>(partial.data(), static_cast<out_t*>(K), B, T,
                                          static_cast<int>(plan.chunks), plan.num_tiles,
                                          plan.num_pairs, accumulate,
                                          kSign ? static_cast<double>(P) : 0.0);
  });
}

template <typename scalar_t>
void gram(const scalar_t* J, void* K, int64_t B, int64_t T, int64_t P, int sms, bool acc) {
  if (T <= 16) {
    run<scalar_t, 16, 2, false>(J, K, B, T, P, sms, acc);
  } else if (T <= 32) {
    run<scalar_t, 32, 2, false>(J, K, B, T, P, sms, acc);
  } else {
    run<scalar_t, 64, 4, false>(J, K, B, T, P, sms, acc);
  }
}

}  // namespace

extern "C" {

// J: (B, T, P) row-major; K: (B, T, T) in the accumulation dtype; sms: the SM count to plan for.
int mtl_fast_gram_emulated_f32(const float* J, float* K, int64_t B, int64_t T, int64_t P, int sms,
                               int accumulate) {
  gram<float>(J, K, B, T, P, sms, accumulate != 0);
  return 0;
}

int mtl_fast_gram_emulated_f64(const double* J, double* K, int64_t B, int64_t T, int64_t P,
                               int sms, int accumulate) {
  gram<double>(J, K, B, T, P, sms, accumulate != 0);
  return 0;
}

// J: (B, T, P) fp16 / bf16; K: (B, T, T) fp32.
int mtl_fast_gram_emulated_f16(const void* J, float* K, int64_t B, int64_t T, int64_t P, int sms,
                               int accumulate) {
  gram<c10::Half>(static_cast<const c10::Half*>(J), K, B, T, P, sms, accumulate != 0);
  return 0;
}

int mtl_fast_gram_emulated_bf16(const void* J, float* K, int64_t B, int64_t T, int64_t P, int sms,
                                int accumulate) {
  gram<c10::BFloat16>(static_cast<const c10::BFloat16*>(J), K, B, T, P, sms, accumulate != 0);
  return 0;
}

int mtl_fast_sign_conflict_emulated_bf16(const void* J, double* C, int64_t B, int64_t T,
                                         int64_t P, int sms) {
  run<c10::BFloat16, 32, 2, true>(static_cast<const c10::BFloat16*>(J), C, B, T, P, sms, false);
  return 0;
}

int mtl_fast_sign_conflict_emulated_f16(const void* J, double* C, int64_t B, int64_t T,
                                        int64_t P, int sms) {
  run<c10::Half, 32, 2, true>(static_cast<const c10::Half*>(J), C, B, T, P, sms, false);
  return 0;
}

// C: (B, T, T) fp64 fractions of opposite-sign coordinates.
int mtl_fast_sign_conflict_emulated_f32(const float* J, double* C, int64_t B, int64_t T,
                                        int64_t P, int sms) {
  run<float, 32, 2, true>(J, C, B, T, P, sms, false);
  return 0;
}

int mtl_fast_sign_conflict_emulated_f64(const double* J, double* C, int64_t B, int64_t T,
                                        int64_t P, int sms) {
  run<double, 32, 2, true>(J, C, B, T, P, sms, false);
  return 0;
}

}  // extern "C"
