"""The implementations of every op: one sub-package per backend, with the same file name per op.

- :mod:`~mtl_fast.kernels.reference`: pure PyTorch, the ground truth and the CPU path;
- :mod:`~mtl_fast.kernels.triton`: Triton kernels (CUDA devices, or the interpreter on the CPU);
- :mod:`~mtl_fast.kernels.cuda`: the CUDA C++ extension built from ``csrc/``.

Backends take already-validated inputs in the calling convention of
:mod:`mtl_fast._core.contracts`; users call the public ops instead.
"""
