// The combine and Adam device code (../combine_kernel.cuh, ../adam_kernel.cuh), compiled for the
// host against the CUDA emulator, launched as combine.cu / adam.cu launch it (with a small grid,
// so that the grid-stride loops wrap), and exposed with a C ABI for the CPU tests
// (tests/emulated_cuda.py loads it). Every dtype combination adam.cu and combine.cu launch has
// an entry point. Needs torch's include directory for c10's fp16/bf16 types (header-only on the
// host), included before the emulator's macros.
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "cuda_emulator.h"
#include "../adam_kernel.cuh"
#include "../combine_kernel.cuh"

namespace {

using namespace mtl_fast::adam_detail;

constexpr unsigned kBlocks = 3;
constexpr unsigned kEmuThreads = 64;

template <typename param_t, typename state_t>
void prologue(float* step, const int64_t* tasks, const double* weights, int64_t S,
              const double* lr_ptr, double lr, double beta1, double beta2, double weight_decay,
              double* coefs) {
  warp_emulator::run_grid({1, 1, 1}, 32, [&] {
    adam_prologue_kernel<param_t, state_t>(step, tasks, weights, S, lr_ptr, lr, beta1, beta2,
                                           weight_decay, coefs);
  });
}

template <typename param_t, typename grad_t = param_t, typename state_t = param_t>
void multi_adam(param_t* param, const grad_t* grads, const int64_t* grad_rows, state_t* exp_avg,
                state_t* exp_avg_sq, float* step, const int64_t* tasks, const double* weights,
                int64_t S, int64_t P, const double* lr_ptr, double lr, double beta1, double beta2,
                double eps, double weight_decay) {
  std::vector<double> coefs(1 + 2 * S);
  prologue<param_t, state_t>(step, tasks, weights, S, lr_ptr, lr, beta1, beta2, weight_decay,
                             coefs.data());
  const AdamScalars h = make_scalars(beta1, beta2, eps, weight_decay);
  warp_emulator::run_grid({kBlocks, 1, 1}, kEmuThreads, [&] {
    multi_adam_kernel<param_t, grad_t, state_t>(param, grads, grad_rows, exp_avg, exp_avg_sq,
                                                tasks, coefs.data(), S, P, h);
  });
}

template <typename T, typename j_t = T>
void combine_adam(T* param, const j_t* J, const T* w, T* exp_avg, T* exp_avg_sq, float* step,
                  int64_t Tn, int64_t P, const double* lr_ptr, double lr, double beta1,
                  double beta2, double eps, double weight_decay) {
  std::vector<double> coefs(3);
  prologue<T, T>(step, nullptr, nullptr, 1, lr_ptr, lr, beta1, beta2, weight_decay, coefs.data());
  const AdamScalars h = make_scalars(beta1, beta2, eps, weight_decay);
  warp_emulator::run_grid({kBlocks, 1, 1}, kEmuThreads, [&] {
    combine_adam_kernel<T, j_t>(param, J, w, exp_avg, exp_avg_sq, coefs.data(), Tn, P, h);
  });
}

}  // namespace

// The C entry points: one per dtype combination, the pointers of the 16-/32-/64-bit element
// tensors as void* (ctypes passes them as such).

// Shapes as mtl_fast.reference.multi_adam; lr_ptr may be null (then lr is used).
#define MTL_MULTI_ADAM_ENTRY(SUFFIX, PARAM, GRAD, STATE)                                       \
  int mtl_fast_multi_adam_emulated_##SUFFIX(                                                   \
      void* param, const void* grads, const int64_t* grad_rows, STATE* exp_avg,                \
      STATE* exp_avg_sq, float* step, const int64_t* tasks, const double* weights, int64_t S,  \
      int64_t P, const double* lr_ptr, double lr, double beta1, double beta2, double eps,      \
      double weight_decay) {                                                                   \
    multi_adam<PARAM, GRAD, STATE>(static_cast<PARAM*>(param), static_cast<const GRAD*>(grads), \
                                   grad_rows, exp_avg, exp_avg_sq, step, tasks, weights, S, P,  \
                                   lr_ptr, lr, beta1, beta2, eps, weight_decay);                \
    return 0;                                                                                  \
  }

// param, exp_avg, exp_avg_sq (P,), J (T, P), w (T,), step (1,).
#define MTL_COMBINE_ADAM_ENTRY(SUFFIX, T, J_T)                                                   \
  int mtl_fast_combine_adam_emulated_##SUFFIX(                                                 \
      T* param, const void* J, const T* w, T* exp_avg, T* exp_avg_sq, float* step, int64_t Tn, \
      int64_t P, const double* lr_ptr, double lr, double beta1, double beta2, double eps,      \
      double weight_decay) {                                                                   \
    combine_adam<T, J_T>(param, static_cast<const J_T*>(J), w, exp_avg, exp_avg_sq, step, Tn, \
                         P, lr_ptr, lr, beta1, beta2, eps, weight_decay);                      \
    return 0;                                                                                  \
  }

// J (B, T, P), w (B, T) -> d (B, P) in J's dtype.
#define MTL_COMBINE_ENTRY(SUFFIX, E, W)                                                          \
  int mtl_fast_combine_emulated_##SUFFIX(const void* J, const W* w, void* d, int64_t B,       \
                                         int64_t T, int64_t P) {                              \
    warp_emulator::run_grid({kBlocks, static_cast<unsigned>(B), 1}, kEmuThreads, [&] {         \
      mtl_fast::combine_detail::combine_kernel<E, W>(static_cast<const E*>(J), w,              \
                                                     static_cast<E*>(d), T, P);                \
    });                                                                                        \
    return 0;                                                                                  \
  }

extern "C" {

MTL_MULTI_ADAM_ENTRY(f32, float, float, float)
MTL_MULTI_ADAM_ENTRY(f64, double, double, double)
// bf16 / fp16 parameters and gradients with fp32 moments (MultiAdam's low-precision layout).
MTL_MULTI_ADAM_ENTRY(bf16, c10::BFloat16, c10::BFloat16, float)
MTL_MULTI_ADAM_ENTRY(f16, c10::Half, c10::Half, float)
// bf16 / fp16 parameters with fp32 gradients and moments.
MTL_MULTI_ADAM_ENTRY(bf16_f32grads, c10::BFloat16, float, float)
MTL_MULTI_ADAM_ENTRY(f16_f32grads, c10::Half, float, float)

MTL_COMBINE_ADAM_ENTRY(f32, float, float)
// fp64 parameters, moments, J and w.
MTL_COMBINE_ADAM_ENTRY(f64, double, double)
// fp32 parameters and moments, fp16 / bf16 J.
MTL_COMBINE_ADAM_ENTRY(f16, float, c10::Half)
MTL_COMBINE_ADAM_ENTRY(bf16, float, c10::BFloat16)

// fp16 / bf16 J with fp32 w; fp32 and fp64 throughout.
MTL_COMBINE_ENTRY(bf16, c10::BFloat16, float)
MTL_COMBINE_ENTRY(f16, c10::Half, float)
MTL_COMBINE_ENTRY(f32, float, float)
MTL_COMBINE_ENTRY(f64, double, double)

}  // extern "C"
