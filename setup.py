"""Build hook for the optional CUDA C++ extension (csrc/); the pure-Python package needs none.

Everything about the package lives in pyproject.toml. The extension ``mtl_fast._C`` is built only
when asked, and needs torch in the build environment, hence ``--no-build-isolation``:

    MTL_FAST_BUILD_CUDA=1 pip install --no-build-isolation -e .

``MAX_JOBS`` (parallel compile jobs, via ninja) and ``TORCH_CUDA_ARCH_LIST`` (e.g. "9.0"; default:
the visible GPU, else 9.0) are respected. Without ``MTL_FAST_BUILD_CUDA=1`` nothing is compiled;
``mtl_fast.kernels.cuda`` then explains how to build it, or builds it just in time with
``MTL_FAST_CUDA_JIT=1`` (see mtl_fast/kernels/cuda/build.py).
"""

from __future__ import annotations

import os
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent
SOURCES = ["bindings.cpp", "gram.cu", "min_norm.cu", "combine.cu", "adam.cu"]


def _wants_cuda() -> bool:
    return os.environ.get("MTL_FAST_BUILD_CUDA", "").strip().lower() in ("1", "true", "yes", "on")


def _cuda_extension() -> tuple[list, dict]:
    if not os.environ.get("CUDA_HOME") and Path("/usr/local/cuda/bin/nvcc").exists():
        os.environ["CUDA_HOME"] = "/usr/local/cuda"  # torch's guess from `which nvcc` can be off
    import torch
    from torch.utils.cpp_extension import BuildExtension, CUDAExtension

    if torch.version.cuda is None:
        raise RuntimeError("MTL_FAST_BUILD_CUDA=1 needs a CUDA build of torch in the build env")
    if not os.environ.get("TORCH_CUDA_ARCH_LIST"):
        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability()
            os.environ["TORCH_CUDA_ARCH_LIST"] = f"{major}.{minor}"
        else:
            os.environ["TORCH_CUDA_ARCH_LIST"] = "9.0"
    ext = CUDAExtension(
        name="mtl_fast._C",
        sources=[f"csrc/{name}" for name in SOURCES],
        include_dirs=[str(ROOT / "csrc")],
        # No --use_fast_math: the solver relies on IEEE division, sqrt and isfinite.
        extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3", "--expt-relaxed-constexpr"]},
    )
    return [ext], {"build_ext": BuildExtension}


ext_modules, cmdclass = _cuda_extension() if _wants_cuda() else ([], {})
setup(ext_modules=ext_modules, cmdclass=cmdclass)
