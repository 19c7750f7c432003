// Argument checks shared by every op of the extension. Each failure raises a Python
// RuntimeError (via TORCH_CHECK) that names the argument and what was expected.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <initializer_list>

namespace mtl_fast {

// A tensor must live on a CUDA device.
#define CHECK_DEVICE(x)                                                                    \
  TORCH_CHECK((x).is_cuda(), #x " must be a CUDA tensor, got a tensor on ", (x).device())

// Two tensors must live on the same device.
#define CHECK_SAME_DEVICE(x, ref)                                                          \
  TORCH_CHECK((x).device() == (ref).device(), #x " is on ", (x).device(), " but " #ref     \
              " is on ", (ref).device())

// A tensor must be contiguous (the kernels index it as a dense row-major array).
#define CHECK_CONTIGUOUS(x) TORCH_CHECK((x).is_contiguous(), #x " must be contiguous")

// A tensor's dtype must be one of the listed scalar types, e.g.
// CHECK_DTYPE(K, at::kFloat, at::kDouble).
#define CHECK_DTYPE(x, ...)                                                                \
  TORCH_CHECK(::mtl_fast::dtype_in((x).scalar_type(), {__VA_ARGS__}), #x                   \
              " has an unsupported dtype ", (x).scalar_type(), " (allowed: " #__VA_ARGS__ ")")

// A tensor must have exactly the given sizes, e.g. CHECK_SHAPE(w, B, T).
#define CHECK_SHAPE(x, ...)                                                                \
  TORCH_CHECK((x).sizes() == at::IntArrayRef({__VA_ARGS__}), #x " must have shape (" #__VA_ARGS__ \
              ") = ", at::IntArrayRef({__VA_ARGS__}), ", got ", (x).sizes())

// A tensor must have the given number of dimensions.
#define CHECK_DIM(x, n)                                                                    \
  TORCH_CHECK((x).dim() == (n), #x " must have ", (n), " dimensions, got shape ", (x).sizes())

inline bool dtype_in(at::ScalarType t, std::initializer_list<at::ScalarType> allowed) {
  for (auto a : allowed) {
    if (a == t) return true;
  }
  return false;
}

// Grid-size helper: ceil(a / b) for positive 64-bit sizes.
inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace mtl_fast
