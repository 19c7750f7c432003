"""Build hooks: the compiled CPU library, the CUDA sources inside the package, and the optional
CUDA C++ extension. Everything else about the package lives in pyproject.toml.

- The CPU library (csrc/cpu/, always attempted) holds the ``cpu`` backend's kernels (min-norm,
  dual cone, Gram and combination, the Gram-space aggregators): plain C++17 with a C ABI, loaded with ctypes by ``mtl_fast.kernels.cpu``. It is an
  ``Extension(optional=True)``: setuptools compiles and links it like an extension module (same
  compiler discovery, per-platform file name and install location in ``pip install .``, wheels
  and ``pip install -e .``), and when that fails (no C++ compiler) it warns and the install
  still succeeds; ``mtl_fast.backends()["cpu"]`` then says why the backend is missing. It
  includes no torch or Python headers, so it builds in pip's isolated build environment.

- ``csrc/`` is copied into the built package as ``mtl_fast/_csrc/``, so that a wheel (and every
  non-editable install) carries what the just-in-time CUDA build needs; an editable install
  finds ``csrc/`` in the checkout instead.
- The extension ``mtl_fast._C`` is built only when asked, and needs torch in the build
  environment, hence ``--no-build-isolation``::

      MTL_FAST_BUILD_CUDA=1 pip install --no-build-isolation -e .

  ``MAX_JOBS`` (parallel compile jobs, via ninja) and ``TORCH_CUDA_ARCH_LIST`` (e.g. "9.0";
  default: the visible GPU, else 9.0) are respected. Without ``MTL_FAST_BUILD_CUDA=1`` nothing
  is compiled; ``mtl_fast.kernels.cuda`` then explains how to build it, or builds it just in time
  with ``MTL_FAST_CUDA_JIT=1`` (see mtl_fast/kernels/cuda/build.py).

The source list, flags, default architecture and CUDA_HOME guess are those of the just-in-time
build: both read mtl_fast/kernels/cuda/settings.py, loaded here by its path (standard library
only), so that this file imports neither torch nor the package it builds.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType
from typing import Any

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


def _load_settings(backend: str = "cuda") -> ModuleType:
    path = ROOT / "mtl_fast" / "kernels" / backend / "settings.py"
    spec = importlib.util.spec_from_file_location(f"_mtl_fast_{backend}_settings", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


settings = _load_settings()
cpu_settings = _load_settings("cpu")


class BuildPyWithSources(build_py):
    """build_py that also copies ``csrc/`` to ``mtl_fast/_csrc/`` in the build tree."""

    def _source_files(self) -> list[tuple[str, str]]:
        if getattr(self, "editable_mode", False):
            return []  # an editable install runs from the checkout, next to csrc/
        src = ROOT / settings.CHECKOUT_DIR
        if not (src / settings.SOURCES[0]).is_file():
            raise FileNotFoundError(f"{src} holds no CUDA sources: build from a checkout or sdist")
        dst = Path(self.build_lib) / "mtl_fast" / settings.PACKAGED_DIR
        return [
            (str(f), str(dst / f.relative_to(src)))
            for f in sorted(src.rglob("*"))
            if f.is_file() and "__pycache__" not in f.parts
        ]

    def run(self) -> None:
        super().run()
        for src, dst in self._source_files():
            self.mkpath(str(Path(dst).parent))
            self.copy_file(src, dst, preserve_mode=False)

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        return [*super().get_outputs(include_bytecode), *(d for _, d in self._source_files())]


def _cuda_extension() -> tuple[list[Any], dict[str, Any]]:
    if settings.ensure_cuda_home() is None:
        raise RuntimeError("MTL_FAST_BUILD_CUDA=1 needs nvcc: install CUDA or set CUDA_HOME")
    import torch
    from torch.utils.cpp_extension import BuildExtension, CUDAExtension

    if torch.version.cuda is None:
        raise RuntimeError("MTL_FAST_BUILD_CUDA=1 needs a CUDA build of torch in the build env")
    capability = torch.cuda.get_device_capability() if torch.cuda.is_available() else None
    os.environ["TORCH_CUDA_ARCH_LIST"] = settings.arch_list(capability)
    ext = CUDAExtension(
        name=settings.EXTENSION_NAME,
        sources=[f"{settings.CHECKOUT_DIR}/{name}" for name in settings.SOURCES],
        include_dirs=[str(ROOT / settings.CHECKOUT_DIR)],
        extra_compile_args={"cxx": list(settings.CXX_FLAGS), "nvcc": list(settings.CUDA_FLAGS)},
    )
    return [ext], {"build_ext": BuildExtension}


CPU_LIBRARY = cpu_settings.LIBRARY_MODULE


def _cpu_library() -> Extension:
    return Extension(
        name=CPU_LIBRARY,
        sources=[f"{cpu_settings.SOURCE_DIR}/{name}" for name in cpu_settings.SOURCES],
        include_dirs=[cpu_settings.SOURCE_DIR],
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
                    flags = cpu_settings.MSVC_FLAGS if msvc else cpu_settings.CXX_FLAGS
                    ext.extra_compile_args = list(flags)
            super().build_extensions()

        def get_export_symbols(self, ext: Extension) -> list[str]:
            if ext.name == CPU_LIBRARY:
                return list(ext.export_symbols or [])  # a ctypes library: no PyInit_ to export
            exported: list[str] = super().get_export_symbols(ext)
            return exported

    return _OptionalBuildExt


ext_modules: list[Any] = [_cpu_library()]
cmdclass: dict[str, Any] = {"build_py": BuildPyWithSources}
build_ext_base: type = build_ext
if settings.env_flag("MTL_FAST_BUILD_CUDA"):
    cuda_modules, cuda_commands = _cuda_extension()
    ext_modules += cuda_modules
    build_ext_base = cuda_commands["build_ext"]
cmdclass["build_ext"] = _optional_build_ext(build_ext_base)

setup(ext_modules=ext_modules, cmdclass=cmdclass)
