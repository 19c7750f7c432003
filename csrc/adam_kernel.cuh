// Device code of the Adam kernels (see adam.cu for the math), kept free of ATen so that the very
// same code also compiles on the host against emulate/cuda_emulator.h, where a test runs it.
#pragma once

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "streaming.cuh"

namespace mtl_fast {
namespace adam_detail {

// Scalars of one step, on the device: [decay, c_0 .. c_{S-1}, bc2s_0 .. bc2s_{S-1}].
// tasks == nullptr means task 0 only (combine_adam); weights == nullptr means w = 1.
template <typename param_t, typename state_t>
__global__ void adam_prologue_kernel(float* __restrict__ step, const int64_t* __restrict__ tasks,
                                     const double* __restrict__ weights, int64_t S,
                                     const double* __restrict__ lr_ptr, double lr, double beta1,
                                     double beta2, double weight_decay,
                                     double* __restrict__ coefs) {
  const double lr_v = lr_ptr != nullptr ? *lr_ptr : lr;
  if (threadIdx.x == 0) {
    coefs[0] = static_cast<double>(static_cast<param_t>(1.0 - lr_v * weight_decay));
  }
  for (int64_t i = threadIdx.x; i < S; i += blockDim.x) {
    const int64_t t = tasks != nullptr ? tasks[i] : 0;
    const float n = step[t] + 1.0f;  // tasks are distinct: no two threads share a t
    step[t] = n;
    const double nd = static_cast<double>(n);
    const double bc1 = 1.0 - pow(beta1, nd);
    const double bc2s = sqrt(1.0 - pow(beta2, nd));
    const double w = weights != nullptr ? weights[i] : 1.0;
    coefs[1 + i] = static_cast<double>(static_cast<param_t>(-lr_v / bc1 * w));
    coefs[1 + S + i] = static_cast<double>(static_cast<state_t>(bc2s));
  }
}

struct AdamScalars {
  double one_minus_beta1, beta2, one_minus_beta2, eps;
  bool decay;
};

// One task's moment update for one element; returns the direction term c · m / denom.
template <typename state_t>
__device__ __forceinline__ state_t adam_term(state_t g, state_t& m, state_t& v, double coef,
                                             double bc2s, const AdamScalars& h) {
  const state_t w1 = static_cast<state_t>(h.one_minus_beta1);
  // torch's lerp: the small-weight form for |weight| < 0.5, the other form otherwise.
  m = w1 < state_t(0.5) ? m + w1 * (g - m) : g - (g - m) * (state_t(1) - w1);
  v = v * static_cast<state_t>(h.beta2) + static_cast<state_t>(h.one_minus_beta2) * g * g;
  const state_t denom = sqrt(v) / static_cast<state_t>(bc2s) + static_cast<state_t>(h.eps);
  return static_cast<state_t>(coef) * m / denom;
}

// p ← p + term, computed in the state precision and rounded to param's dtype (param.add_).
template <typename param_t, typename state_t>
__device__ __forceinline__ param_t add_rounded(param_t p, state_t term) {
  return static_cast<param_t>(static_cast<state_t>(p) + term);
}

template <typename param_t, typename grad_t, typename state_t>
__global__ void __launch_bounds__(kStreamThreads)
    multi_adam_kernel(param_t* __restrict__ param, const grad_t* __restrict__ grads,
                      const int64_t* __restrict__ grad_rows, state_t* __restrict__ exp_avg,
                      state_t* __restrict__ exp_avg_sq, const int64_t* __restrict__ tasks,
                      const double* __restrict__ coefs, int64_t S, int64_t P, AdamScalars h) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < P;
       e += stride) {
    param_t p = param[e];
    if (h.decay) {
      p = static_cast<param_t>(static_cast<state_t>(p) *
                               static_cast<state_t>(static_cast<param_t>(coefs[0])));
    }
    for (int64_t i = 0; i < S; ++i) {
      const int64_t t = __ldg(tasks + i);
      const int64_t r = __ldg(grad_rows + i);
      const state_t g = static_cast<state_t>(grads[r * P + e]);
      state_t m = exp_avg[t * P + e];
      state_t v = exp_avg_sq[t * P + e];
      const state_t term = adam_term(g, m, v, __ldg(coefs + 1 + i), __ldg(coefs + 1 + S + i), h);
      exp_avg[t * P + e] = m;
      exp_avg_sq[t * P + e] = v;
      p = add_rounded(p, term);
    }
    param[e] = p;
  }
}

// d = Σ_t w_t J_t for element e (accumulated like combine, rounded to J's dtype as the
// reference's combine output is), then one single-state Adam step with d.
template <typename state_t, typename j_t>
__global__ void __launch_bounds__(kStreamThreads)
    combine_adam_kernel(state_t* __restrict__ param, const j_t* __restrict__ J,
                        const std::conditional_t<std::is_same_v<j_t, double>, double, float>*
                            __restrict__ w,
                        state_t* __restrict__ exp_avg, state_t* __restrict__ exp_avg_sq,
                        const double* __restrict__ coefs, int64_t T, int64_t P, AdamScalars h) {
  using acc_t = std::conditional_t<std::is_same_v<j_t, double>, double, float>;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < P;
       e += stride) {
    acc_t d = acc_t(0);
    for (int64_t t = 0; t < T; ++t) d = fma(__ldg(w + t), static_cast<acc_t>(J[t * P + e]), d);
    const state_t g = static_cast<state_t>(static_cast<j_t>(d));
    state_t p = param[e];
    if (h.decay) p = p * static_cast<state_t>(coefs[0]);
    state_t m = exp_avg[e];
    state_t v = exp_avg_sq[e];
    const state_t term = adam_term(g, m, v, coefs[1], coefs[2], h);
    exp_avg[e] = m;
    exp_avg_sq[e] = v;
    param[e] = p + term;
  }
}

inline AdamScalars make_scalars(double beta1, double beta2, double eps, double weight_decay) {
  return AdamScalars{1.0 - beta1, beta2, 1.0 - beta2, eps, weight_decay != 0.0};
}

}  // namespace adam_detail
}  // namespace mtl_fast
