// The one bindings file: op schemas (TORCH_LIBRARY) and their CUDA kernels
// (TORCH_LIBRARY_IMPL). Fake (meta) implementations for torch.compile are registered from
// Python in mtl_fast/cuda/_fake.py once this library is loaded.
//
// Mutated arguments carry alias annotations (Tensor(a!)) so that torch.compile functionalizes
// the in-place optimizer ops correctly.

#include <Python.h>
#include <torch/library.h>

#include "ops.h"

// A module init function, so that the library built by setup.py is also an importable
// `mtl_fast._C` module; the Python side loads it with torch.ops.load_library either way.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}

TORCH_LIBRARY(mtl_fast_cuda, m) {
  m.def("gram(Tensor J) -> Tensor");
  m.def("gram_list(Tensor[] grads) -> Tensor");
  m.def("sign_conflict(Tensor J) -> Tensor");
  m.def("min_norm(Tensor K, int max_iter, float tol) -> Tensor");
  m.def("combine(Tensor J, Tensor w) -> Tensor");
  m.def(
      "multi_adam(Tensor(a!) param, Tensor grads, Tensor grad_rows, Tensor(b!) exp_avg, "
      "Tensor(c!) exp_avg_sq, Tensor(d!) step, Tensor tasks, Tensor weights, Tensor? lr_tensor, "
      "float lr, float beta1, float beta2, float eps, float weight_decay) -> ()");
  m.def(
      "combine_adam(Tensor(a!) param, Tensor J, Tensor w, Tensor(b!) exp_avg, "
      "Tensor(c!) exp_avg_sq, Tensor(d!) step, Tensor? lr_tensor, float lr, float beta1, "
      "float beta2, float eps, float weight_decay) -> ()");
  // No tensor argument, so this is a catch-all kernel: the SM architectures compiled in.
  m.def("compiled_archs() -> int[]", &mtl_fast::compiled_archs);
}

TORCH_LIBRARY_IMPL(mtl_fast_cuda, CUDA, m) {
  m.impl("gram", &mtl_fast::gram);
  m.impl("gram_list", &mtl_fast::gram_list);  // dispatched on the tensors inside the list
  m.impl("sign_conflict", &mtl_fast::sign_conflict);
  m.impl("min_norm", &mtl_fast::min_norm);
  m.impl("combine", &mtl_fast::combine);
  m.impl("multi_adam", &mtl_fast::multi_adam);
  m.impl("combine_adam", &mtl_fast::combine_adam);
}
