"""Build settings of the CUDA extension, in one place for setup.py and the just-in-time build.

Standard library only, and no import of the package: setup.py loads this file by its path (before
torch, or the package being built, can be imported), and :mod:`mtl_fast.kernels.cuda.build`
imports it as a module. What lives here: the source and header lists, the compiler flags, the
default architecture, the CUDA_HOME guess, and where the sources are found.

Where the sources are: ``csrc/`` at the top of a source checkout (and of an sdist); a wheel, and
so every non-editable install, carries a copy as ``mtl_fast/_csrc/`` (setup.py copies it there
when it builds the package). :func:`source_dir` looks for the installed copy first.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

EXTENSION_NAME = "mtl_fast._C"  # built by setup.py with MTL_FAST_BUILD_CUDA=1
LIBRARY_NAME = "mtl_fast_cuda"  # the just-in-time build's library, and the torch.ops namespace

CHECKOUT_DIR = "csrc"  # relative to the top of a source checkout or sdist
PACKAGED_DIR = "_csrc"  # relative to the installed ``mtl_fast`` package

SOURCES = ("bindings.cpp", "gram.cu", "min_norm.cu", "combine.cu", "adam.cu")
HEADERS = (
    "checks.h",
    "ops.h",
    "streaming.cuh",
    "adam_kernel.cuh",
    "combine_kernel.cuh",
    "gram_kernel.cuh",
    "min_norm_kernel.cuh",
)

# -O3 everywhere; no --use_fast_math: the solver relies on IEEE division, sqrt and isfinite.
CXX_FLAGS = ("-O3",)
CUDA_FLAGS = ("-O3", "--expt-relaxed-constexpr")
DEFAULT_ARCH_LIST = "9.0"  # used when TORCH_CUDA_ARCH_LIST is unset and no GPU is visible
CONVENTIONAL_CUDA_HOME = "/usr/local/cuda"

_PACKAGE = Path(__file__).resolve().parents[2]  # the ``mtl_fast`` directory


def env_flag(name: str) -> bool:
    """Whether the environment variable ``name`` is set to 1, true, yes or on."""
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def source_dirs() -> tuple[Path, Path]:
    """Where the sources may be: the installed copy, then the source checkout's ``csrc/``."""
    return _PACKAGE / PACKAGED_DIR, _PACKAGE.parent / CHECKOUT_DIR


def source_dir() -> Path:
    """The directory holding :data:`SOURCES` and :data:`HEADERS`: ``mtl_fast/_csrc/`` in an
    installed copy, ``csrc/`` in a source checkout (an editable install runs from one). When
    neither exists, the checkout's path (a build then says what is missing where)."""
    for candidate in source_dirs():
        if (candidate / SOURCES[0]).is_file():
            return candidate
    return source_dirs()[1]


def arch_list(capability: tuple[int, int] | None = None) -> str:
    """The TORCH_CUDA_ARCH_LIST a build uses: the variable if set, else the visible GPU's
    ``capability`` (major, minor), else :data:`DEFAULT_ARCH_LIST`."""
    value = os.environ.get("TORCH_CUDA_ARCH_LIST", "").strip()
    if value:
        return value
    if capability is not None:
        return f"{capability[0]}.{capability[1]}"
    return DEFAULT_ARCH_LIST


def ensure_cuda_home() -> str | None:
    """Set CUDA_HOME to the conventional toolkit location when neither CUDA_HOME nor CUDA_PATH
    is set and it holds nvcc; return the toolkit a build will use, or None if there is none.

    torch guesses CUDA_HOME from ``which nvcc``, which is wrong when nvcc is a wrapper script
    outside the toolkit; the conventional location wins when it exists, ``which nvcc`` (torch's
    own guess) is the fallback.
    """
    for var in ("CUDA_HOME", "CUDA_PATH"):
        value = os.environ.get(var, "").strip()
        if value:
            return value
    if (Path(CONVENTIONAL_CUDA_HOME) / "bin" / "nvcc").exists():
        os.environ["CUDA_HOME"] = CONVENTIONAL_CUDA_HOME
        return CONVENTIONAL_CUDA_HOME
    nvcc = shutil.which("nvcc")
    return str(Path(nvcc).resolve().parents[1]) if nvcc else None
