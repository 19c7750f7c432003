// Host entry points of the CUDA ops, implemented one per .cu file and registered with the
// PyTorch dispatcher in bindings.cpp. Shapes and dtypes are documented at each definition.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <vector>

namespace mtl_fast {

// gram.cu
at::Tensor gram(const at::Tensor& J);
at::Tensor gram_list(at::TensorList grads);
at::Tensor sign_conflict(const at::Tensor& J);
std::vector<int64_t> compiled_archs();

// min_norm.cu
at::Tensor min_norm(const at::Tensor& K, int64_t max_iter, double tol);

// combine.cu
at::Tensor combine(const at::Tensor& J, const at::Tensor& w);

// adam.cu
void multi_adam(const at::Tensor& param, const at::Tensor& grads, const at::Tensor& grad_rows,
                const at::Tensor& exp_avg, const at::Tensor& exp_avg_sq, const at::Tensor& step,
                const at::Tensor& tasks, const at::Tensor& weights,
                const std::optional<at::Tensor>& lr_tensor, double lr, double beta1, double beta2,
                double eps, double weight_decay);
void combine_adam(const at::Tensor& param, const at::Tensor& J, const at::Tensor& w,
                  const at::Tensor& exp_avg, const at::Tensor& exp_avg_sq, const at::Tensor& step,
                  const std::optional<at::Tensor>& lr_tensor, double lr, double beta1,
                  double beta2, double eps, double weight_decay);

}  // namespace mtl_fast
