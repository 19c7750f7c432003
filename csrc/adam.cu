// Multi-state Adam (one (m_t, v_t, n_t) per task) and fused combine + single-state Adam.
//
// Math and operation order follow mtl_fast/reference/adam.py (which follows torch.optim.Adam):
//
//   n_t ← n_t + 1;  m_t ← lerp(m_t, g_t, 1 − β1);  v_t ← β2 v_t + (1 − β2) g_t²
//   p   ← p · (1 − lr λ)                       (decoupled weight decay, once, when λ ≠ 0)
//   p   ← p + c_t · m_t / (sqrt(v_t) / sqrt(1 − β2^n_t) + ε),   c_t = −lr w_t / (1 − β1^n_t)
//
// A one-block prologue kernel increments the step counts of the stepped tasks on the device and
// computes c_t, sqrt(1 − β2^n_t) and the decay factor in fp64 (rounded to the dtypes the
// reference rounds them to), so no value travels to the host and a step can be captured in a
// CUDA graph. The element-wise kernel then reads p once, (g, m, v) once per stepped task and
// writes (m, v) and p once: 8 + 20|S| bytes per fp32 element. Tasks outside S are not touched.

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <initializer_list>
#include <optional>
#include <type_traits>

#include "adam_kernel.cuh"
#include "checks.h"
#include "ops.h"

namespace mtl_fast {
namespace {

using namespace adam_detail;

const double* lr_pointer(const std::optional<at::Tensor>& lr_tensor, const at::Tensor& param) {
  if (!lr_tensor.has_value()) return nullptr;
  const at::Tensor& lr = *lr_tensor;
  CHECK_SAME_DEVICE(lr, param);
  TORCH_CHECK(lr.numel() == 1 && lr.scalar_type() == at::kDouble,
              "lr_tensor must be a one-element float64 tensor, got ", lr.sizes(), " ",
              lr.scalar_type());
  return lr.data_ptr<double>();
}

int blocks_for(int64_t P) {
  const int64_t blocks = std::min(ceil_div(P, kStreamThreads), kStreamMaxBlocks);
  return static_cast<int>(std::max<int64_t>(1, blocks));
}

// param: a contiguous 1-D CUDA tensor; every other tensor contiguous and on its device.
void check_param_and(const at::Tensor& param, std::initializer_list<const at::Tensor*> others) {
  CHECK_DEVICE(param);
  for (const at::Tensor* x : others) {
    TORCH_CHECK(x->device() == param.device(), "every tensor must be on param's device ",
                param.device(), ", got one on ", x->device());
    TORCH_CHECK(x->is_contiguous(), "every tensor argument must be contiguous");
  }
  CHECK_CONTIGUOUS(param);
  CHECK_DIM(param, 1);
}

void check_hyper(double lr, double beta1, double beta2, double eps, double weight_decay) {
  TORCH_CHECK(lr >= 0, "lr must be ≥ 0, got ", lr);
  TORCH_CHECK(beta1 >= 0 && beta1 < 1, "beta1 must be in [0, 1), got ", beta1);
  TORCH_CHECK(beta2 >= 0 && beta2 < 1, "beta2 must be in [0, 1), got ", beta2);
  TORCH_CHECK(eps >= 0, "eps must be ≥ 0, got ", eps);
  TORCH_CHECK(weight_decay >= 0, "weight_decay must be ≥ 0, got ", weight_decay);
}

}  // namespace

// param (P,) fp16/bf16/fp32 with fp32 states, or fp64 with fp64 states; grads (R, P) in
// param's dtype or fp32 (fp64 for fp64 param); grad_rows, tasks (S,) int64 (tasks distinct);
// exp_avg, exp_avg_sq (T, P); step (T,) fp32; weights (S,) fp64; lr_tensor: optional
// one-element fp64 tensor that overrides lr. All contiguous, on one CUDA device; in place.
void multi_adam(const at::Tensor& param, const at::Tensor& grads, const at::Tensor& grad_rows,
                const at::Tensor& exp_avg, const at::Tensor& exp_avg_sq, const at::Tensor& step,
                const at::Tensor& tasks, const at::Tensor& weights,
                const std::optional<at::Tensor>& lr_tensor, double lr, double beta1, double beta2,
                double eps, double weight_decay) {
  check_param_and(param,
                  {&grads, &grad_rows, &exp_avg, &exp_avg_sq, &step, &tasks, &weights});
  CHECK_DIM(grads, 2);
  CHECK_DIM(exp_avg, 2);
  check_hyper(lr, beta1, beta2, eps, weight_decay);
  const int64_t P = param.size(0), T = exp_avg.size(0), S = tasks.numel();
  CHECK_SHAPE(exp_avg, T, P);
  CHECK_SHAPE(exp_avg_sq, T, P);
  CHECK_SHAPE(step, T);
  CHECK_SHAPE(tasks, S);
  CHECK_SHAPE(grad_rows, S);
  CHECK_SHAPE(weights, S);
  TORCH_CHECK(grads.size(1) == P, "grads must have shape (R, P = ", P, "), got ", grads.sizes());
  CHECK_DTYPE(step, at::kFloat);
  CHECK_DTYPE(tasks, at::kLong);
  CHECK_DTYPE(grad_rows, at::kLong);
  CHECK_DTYPE(weights, at::kDouble);
  const at::ScalarType pt = param.scalar_type();
  const at::ScalarType st = pt == at::kDouble ? at::kDouble : at::kFloat;
  CHECK_DTYPE(param, at::kHalf, at::kBFloat16, at::kFloat, at::kDouble);
  TORCH_CHECK(exp_avg.scalar_type() == st && exp_avg_sq.scalar_type() == st, "exp_avg and "
              "exp_avg_sq must be ", st, " for a ", pt, " param, got ", exp_avg.scalar_type(),
              " and ", exp_avg_sq.scalar_type());
  TORCH_CHECK(grads.scalar_type() == pt || grads.scalar_type() == st, "grads must have param's "
              "dtype ", pt, " or ", st, ", got ", grads.scalar_type());
  const c10::cuda::CUDAGuard guard(param.device());
  // S = 0 still applies the weight decay, as the reference does.
  const double* lr_ptr = lr_pointer(lr_tensor, param);
  at::Tensor coefs = at::empty({1 + 2 * S}, param.options().dtype(at::kDouble));
  const AdamScalars h = make_scalars(beta1, beta2, eps, weight_decay);
  auto stream = c10::cuda::getCurrentCUDAStream();

  auto launch = [&](auto param_tag, auto grad_tag, auto state_tag) {
    using param_t = decltype(param_tag);
    using grad_t = decltype(grad_tag);
    using state_t = decltype(state_tag);
    adam_prologue_kernel<param_t, state_t><<<1, kStreamThreads, 0, stream>>>(
        step.data_ptr<float>(), tasks.data_ptr<int64_t>(), weights.data_ptr<double>(), S, lr_ptr,
        lr, beta1, beta2, weight_decay, coefs.data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (P == 0) return;
    multi_adam_kernel<param_t, grad_t, state_t><<<blocks_for(P), kStreamThreads, 0, stream>>>(
        param.data_ptr<param_t>(), grads.data_ptr<grad_t>(), grad_rows.data_ptr<int64_t>(),
        exp_avg.data_ptr<state_t>(), exp_avg_sq.data_ptr<state_t>(), tasks.data_ptr<int64_t>(),
        coefs.data_ptr<double>(), S, P, h);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  };
  const bool grads_fp32 = grads.scalar_type() == at::kFloat;
  switch (pt) {
    case at::kDouble:
      launch(double{}, double{}, double{});
      break;
    case at::kFloat:
      launch(float{}, float{}, float{});
      break;
    case at::kHalf:
      grads_fp32 ? launch(c10::Half{}, float{}, float{}) : launch(c10::Half{}, c10::Half{}, float{});
      break;
    case at::kBFloat16:
      grads_fp32 ? launch(c10::BFloat16{}, float{}, float{})
                 : launch(c10::BFloat16{}, c10::BFloat16{}, float{});
      break;
    default:
      TORCH_CHECK(false, "param has an unsupported dtype ", pt);
  }
}

// param, exp_avg, exp_avg_sq (P,) fp32 or fp64 (one dtype); J (T, P) fp16/bf16/fp32 (fp64 for
// fp64 param); w (T,) in J's accumulation dtype; step (1,) fp32; lr_tensor as in multi_adam.
// d = Σ_t w_t J_t, then one Adam(W) step with d; in place.
void combine_adam(const at::Tensor& param, const at::Tensor& J, const at::Tensor& w,
                  const at::Tensor& exp_avg, const at::Tensor& exp_avg_sq, const at::Tensor& step,
                  const std::optional<at::Tensor>& lr_tensor, double lr, double beta1,
                  double beta2, double eps, double weight_decay) {
  check_param_and(param, {&J, &w, &exp_avg, &exp_avg_sq, &step});
  CHECK_DIM(J, 2);
  check_hyper(lr, beta1, beta2, eps, weight_decay);
  const int64_t P = param.size(0), T = J.size(0);
  CHECK_SHAPE(J, T, P);
  CHECK_SHAPE(w, T);
  CHECK_SHAPE(exp_avg, P);
  CHECK_SHAPE(exp_avg_sq, P);
  CHECK_SHAPE(step, 1);
  CHECK_DTYPE(step, at::kFloat);
  CHECK_DTYPE(param, at::kFloat, at::kDouble);
  const at::ScalarType pt = param.scalar_type();
  TORCH_CHECK(exp_avg.scalar_type() == pt && exp_avg_sq.scalar_type() == pt,
              "exp_avg and exp_avg_sq must have param's dtype ", pt);
  if (pt == at::kDouble) {
    CHECK_DTYPE(J, at::kDouble);
  } else {
    CHECK_DTYPE(J, at::kHalf, at::kBFloat16, at::kFloat);
  }
  const auto acc = J.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  TORCH_CHECK(w.scalar_type() == acc, "w must have dtype ", acc, " for a ", J.scalar_type(),
              " J, got ", w.scalar_type());
  const c10::cuda::CUDAGuard guard(param.device());
  const double* lr_ptr = lr_pointer(lr_tensor, param);
  at::Tensor coefs = at::empty({3}, param.options().dtype(at::kDouble));
  const AdamScalars h = make_scalars(beta1, beta2, eps, weight_decay);
  auto stream = c10::cuda::getCurrentCUDAStream();

  auto launch = [&](auto state_tag, auto j_tag) {
    using state_t = decltype(state_tag);
    using j_t = decltype(j_tag);
    using acc_t = std::conditional_t<std::is_same_v<j_t, double>, double, float>;
    adam_prologue_kernel<state_t, state_t><<<1, 32, 0, stream>>>(
        step.data_ptr<float>(), nullptr, nullptr, 1, lr_ptr, lr, beta1, beta2, weight_decay,
        coefs.data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (P == 0) return;
    combine_adam_kernel<state_t, j_t><<<blocks_for(P), kStreamThreads, 0, stream>>>(
        param.data_ptr<state_t>(), J.data_ptr<j_t>(), w.data_ptr<acc_t>(),
        exp_avg.data_ptr<state_t>(), exp_avg_sq.data_ptr<state_t>(), coefs.data_ptr<double>(), T,
        P, h);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  };
  switch (J.scalar_type()) {
    case at::kDouble:
      launch(double{}, double{});
      break;
    case at::kFloat:
      launch(float{}, float{});
      break;
    case at::kHalf:
      launch(float{}, c10::Half{});
      break;
    case at::kBFloat16:
      launch(float{}, c10::BFloat16{});
      break;
    default:
      TORCH_CHECK(false, "J has an unsupported dtype ", J.scalar_type());
  }
}

}  // namespace mtl_fast
