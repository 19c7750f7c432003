"""Build hook for the optional compiled parts (csrc/); the pure-Python package needs neither.

Everything about the package lives in pyproject.toml. Two optional builds:

**CPU solvers** (csrc/cpu/, always attempted): the min-norm and dual-cone (UPGrad) solvers of
the ``cpu`` backend, one plain C++17 shared library with a C ABI, loaded with ctypes by
``mtl_fast.kernels.cpu``. It is an ``Extension(optional=True)``: setuptools compiles and links
it like a Python extension module (same compiler discovery, same per-platform file name and
install location, in ``pip install .``, wheels and ``pip install -e .`` alike), and when that
fails — no C++ compiler — it warns and the install still succeeds;
``mtl_fast.backends()["cpu"]`` then says why the backend is missing. It includes no torch or
Python headers, so it builds in pip's isolated build environment, which holds no torch. It is
not importable as a module (no ``PyInit_``); ``_OptionalBuildExt`` only stops Windows linkers
from asking for that symbol and picks the optimisation flags per compiler.

**CUDA extension** ``mtl_fast._C`` (csrc/*.cu), built only when asked; it needs torch in the
build environment, hence ``--no-build-isolation``:

    MTL_FAST_BUILD_CUDA=1 pip install --no-build-isolation -e .

``MAX_JOBS`` (parallel compile jobs, via ninja) and ``TORCH_CUDA_ARCH_LIST`` (e.g. "9.0"; default:
the visible GPU, else 9.0) are respected. Without ``MTL_FAST_BUILD_CUDA=1`` no CUDA is compiled;
``mtl_fast.kernels.cuda`` then explains how to build it, or builds it just in time with
``MTL_FAST_CUDA_JIT=1`` (see mtl_fast/kernels/cuda/build.py).
"""

from __future__ import annotations

import os
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
SOURCES = ["bindings.cpp", "gram.cu", "min_norm.cu", "combine.cu", "adam.cu"]
CPU_LIBRARY = "mtl_fast.kernels.cpu._lib"


def _cpu_library() -> Extension:
    return Extension(
        name=CPU_LIBRARY,
        sources=["csrc/cpu/min_norm.cpp", "csrc/cpu/dual_cone.cpp"],
        include_dirs=["csrc/cpu"],
        language="c++",
        optional=True,  # a failed build (no compiler) warns; the install goes on without it
    )


def _optional_build_ext(base: type) -> type:
    """``base`` (setuptools' build_ext, or torch's for the CUDA build) aware of the CPU library."""

    class _OptionalBuildExt(base):  # type: ignore[misc, valid-type]
        def build_extensions(self) -> None:
            msvc = self.compiler.compiler_type == "msvc"
            for ext in self.extensions:
                if ext.name == CPU_LIBRARY:
                    # -O3 and no -march: the library must run on any CPU of the platform.
                    ext.extra_compile_args = (
                        ["/O2", "/std:c++17"] if msvc else ["-O3", "-std=c++17"]
                    )
            super().build_extensions()

        def get_export_symbols(self, ext: Extension) -> list[str]:
            if ext.name == CPU_LIBRARY:
                return list(ext.export_symbols or [])  # a ctypes library: no PyInit_ to export
            exported: list[str] = super().get_export_symbols(ext)
            return exported

    return _OptionalBuildExt


def _wants_cuda() -> bool:
    return os.environ.get("MTL_FAST_BUILD_CUDA", "").strip().lower() in ("1", "true", "yes", "on")


def _cuda_extension() -> tuple[list, type]:
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
    return [ext], BuildExtension


cuda_modules, base = _cuda_extension() if _wants_cuda() else ([], build_ext)
setup(
    ext_modules=[_cpu_library(), *cuda_modules],
    cmdclass={"build_ext": _optional_build_ext(base)},
)
