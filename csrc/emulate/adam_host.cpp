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

extern "C" {

// Shapes as mtl_fast.reference.multi_adam; lr_ptr may be null (then lr is used).
int mtl_fast_multi_adam_emulated_f32(float* param, const float* grads, const int64_t* grad_rows,
                                     float* exp_avg, float* exp_avg_sq, float* step,
                                     const int64_t* tasks, const double* weights, int64_t S,
                                     int64_t P, const double* lr_ptr, double lr, double beta1,
                                     double beta2, double eps, double weight_decay) {
  multi_adam<float>(param, grads, grad_rows, exp_avg, exp_avg_sq, step, tasks, weights, S, P,
                    lr_ptr, lr, beta1, beta2, eps, weight_decay);
  return 0;
}

int mtl_fast_multi_adam_emulated_f64(double* param, const double* grads, const int64_t* grad_rows,
                                     double* exp_avg, double* exp_avg_sq, float* step,
                                     const int64_t* tasks, const double* weights, int64_t S,
                                     int64_t P, const double* lr_ptr, double lr, double beta1,
                                     double beta2, double eps, double weight_decay) {
  multi_adam<double>(param, grads, grad_rows, exp_avg, exp_avg_sq, step, tasks, weights, S, P,
                     lr_ptr, lr, beta1, beta2, eps, weight_decay);
  return 0;
}

// param, exp_avg, exp_avg_sq (P,), J (T, P), w (T,), step (1,).
int mtl_fast_combine_adam_emulated_f32(float* param, const float* J, const float* w,
                                       float* exp_avg, float* exp_avg_sq, float* step, int64_t T,
                                       int64_t P, const double* lr_ptr, double lr, double beta1,
                                       double beta2, double eps, double weight_decay) {
  combine_adam<float>(param, J, w, exp_avg, exp_avg_sq, step, T, P, lr_ptr, lr, beta1, beta2, eps,
                      weight_decay);
  return 0;
}

// bf16 / fp16 parameters and gradients with fp32 moments (MultiAdam's low-precision layout).
int mtl_fast_multi_adam_emulated_bf16(void* param, const void* grads, const int64_t* grad_rows,
                                      float* exp_avg, float* exp_avg_sq, float* step,
                                      const int64_t* tasks, const double* weights, int64_t S,
                                      int64_t P, const double* lr_ptr, double lr, double beta1,
                                      double beta2, double eps, double weight_decay) {
  multi_adam<c10::BFloat16, c10::BFloat16, float>(
      static_cast<c10::BFloat16*>(param), static_cast<const c10::BFloat16*>(grads), grad_rows,
      exp_avg, exp_avg_sq, step, tasks, weights, S, P, lr_ptr, lr, beta1, beta2, eps,
      weight_decay);
  return 0;
}

int mtl_fast_multi_adam_emulated_f16(void* param, const void* grads, const int64_t* grad_rows,
                                     float* exp_avg, float* exp_avg_sq, float* step,
                                     const int64_t* tasks, const double* weights, int64_t S,
                                     int64_t P, const double* lr_ptr, double lr, double beta1,
                                     double beta2, double eps, double weight_decay) {
  multi_adam<c10::Half, c10::Half, float>(
      static_cast<c10::Half*>(param), static_cast<const c10::Half*>(grads), grad_rows, exp_avg,
      exp_avg_sq, step, tasks, weights, S, P, lr_ptr, lr, beta1, beta2, eps, weight_decay);
  return 0;
}

// fp64 parameters, moments, J and w.
int mtl_fast_combine_adam_emulated_f64(double* param, const double* J, const double* w,
                                       double* exp_avg, double* exp_avg_sq, float* step, int64_t T,
                                       int64_t P, const double* lr_ptr, double lr, double beta1,
                                       double beta2, double eps, double weight_decay) {
  combine_adam<double>(param, J, w, exp_avg, exp_avg_sq, step, T, P, lr_ptr, lr, beta1, beta2,
                       eps, weight_decay);
  return 0;
}

// fp32 parameters and moments, fp16 J.
int mtl_fast_combine_adam_emulated_f16(float* param, const void* J, const float* w,
                                       float* exp_avg, float* exp_avg_sq, float* step, int64_t T,
                                       int64_t P, const double* lr_ptr, double lr, double beta1,
                                       double beta2, double eps, double weight_decay) {
  combine_adam<float, c10::Half>(param, static_cast<const c10::Half*>(J), w, exp_avg, exp_avg_sq,
                                 step, T, P, lr_ptr, lr, beta1, beta2, eps, weight_decay);
  return 0;
}

// bf16 / fp16 parameters with fp32 gradients and moments.
int mtl_fast_multi_adam_emulated_bf16_f32grads(void* param, const float* grads,
                                               const int64_t* grad_rows, float* exp_avg,
                                               float* exp_avg_sq, float* step,
                                               const int64_t* tasks, const double* weights,
                                               int64_t S, int64_t P, const double* lr_ptr,
                                               double lr, double beta1, double beta2, double eps,
                                               double weight_decay) {
  multi_adam<c10::BFloat16, float, float>(static_cast<c10::BFloat16*>(param), grads, grad_rows,
                                          exp_avg, exp_avg_sq, step, tasks, weights, S, P, lr_ptr,
                                          lr, beta1, beta2, eps, weight_decay);
  return 0;
}

int mtl_fast_multi_adam_emulated_f16_f32grads(void* param, const float* grads,
                                              const int64_t* grad_rows, float* exp_avg,
                                              float* exp_avg_sq, float* step, const int64_t* tasks,
                                              const double* weights, int64_t S, int64_t P,
                                              const double* lr_ptr, double lr, double beta1,
                                              double beta2, double eps, double weight_decay) {
  multi_adam<c10::Half, float, float>(static_cast<c10::Half*>(param), grads, grad_rows, exp_avg,
                                      exp_avg_sq, step, tasks, weights, S, P, lr_ptr, lr, beta1,
                                      beta2, eps, weight_decay);
  return 0;
}

// fp32 parameters and moments, bf16 J.
int mtl_fast_combine_adam_emulated_bf16(float* param, const void* J, const float* w,
                                        float* exp_avg, float* exp_avg_sq, float* step, int64_t T,
                                        int64_t P, const double* lr_ptr, double lr, double beta1,
                                        double beta2, double eps, double weight_decay) {
  combine_adam<float, c10::BFloat16>(param, static_cast<const c10::BFloat16*>(J), w, exp_avg,
                                     exp_avg_sq, step, T, P, lr_ptr, lr, beta1, beta2, eps,
                                     weight_decay);
  return 0;
}

// J (B, T, P) fp16 / bf16, w (B, T) fp32 -> d (B, P) in J's dtype.
int mtl_fast_combine_emulated_bf16(const void* J, const float* w, void* d, int64_t B, int64_t T,
                                   int64_t P) {
  warp_emulator::run_grid({kBlocks, static_cast<unsigned>(B), 1}, kEmuThreads, [&] {
    mtl_fast::combine_detail::combine_kernel<c10::BFloat16, float>(
        static_cast<const c10::BFloat16*>(J), w, static_cast<c10::BFloat16*>(d), T, P);
  });
  return 0;
}

int mtl_fast_combine_emulated_f16(const void* J, const float* w, void* d, int64_t B, int64_t T,
                                  int64_t P) {
  warp_emulator::run_grid({kBlocks, static_cast<unsigned>(B), 1}, kEmuThreads, [&] {
    mtl_fast::combine_detail::combine_kernel<c10::Half, float>(
        static_cast<const c10::Half*>(J), w, static_cast<c10::Half*>(d), T, P);
  });
  return 0;
}

// J (B, T, P), w (B, T) -> d (B, P).
int mtl_fast_combine_emulated_f32(const float* J, const float* w, float* d, int64_t B, int64_t T,
                                  int64_t P) {
  warp_emulator::run_grid({kBlocks, static_cast<unsigned>(B), 1}, kEmuThreads, [&] {
    mtl_fast::combine_detail::combine_kernel<float, float>(J, w, d, T, P);
  });
  return 0;
}

int mtl_fast_combine_emulated_f64(const double* J, const double* w, double* d, int64_t B,
                                  int64_t T, int64_t P) {
  warp_emulator::run_grid({kBlocks, static_cast<unsigned>(B), 1}, kEmuThreads, [&] {
    mtl_fast::combine_detail::combine_kernel<double, double>(J, w, d, T, P);
  });
  return 0;
}

}  // extern "C"
