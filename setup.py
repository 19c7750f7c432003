"""Build hooks: the CUDA sources travel inside the package, and the optional CUDA C++ extension.

Everything else about the package lives in pyproject.toml.

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

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


def _load_settings() -> ModuleType:
    path = ROOT / "mtl_fast" / "kernels" / "cuda" / "settings.py"
    spec = importlib.util.spec_from_file_location("_mtl_fast_cuda_settings", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


settings = _load_settings()


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


ext_modules: list[Any] = []
cmdclass: dict[str, Any] = {"build_py": BuildPyWithSources}
if settings.env_flag("MTL_FAST_BUILD_CUDA"):
    cuda_modules, cuda_commands = _cuda_extension()
    ext_modules += cuda_modules
    cmdclass.update(cuda_commands)

setup(ext_modules=ext_modules, cmdclass=cmdclass)
