"""Finding and loading the compiled CPU library (csrc/cpu/) that ``setup.py`` builds next to this
file, with ctypes; never a build as a side effect."""

from __future__ import annotations

import ctypes
import functools
import importlib.machinery
from collections.abc import Callable
from pathlib import Path

from mtl_fast.kernels.cpu.settings import LIBRARY_STEM

# Must equal MTL_MIN_NORM_ABI_VERSION in csrc/cpu/min_norm.h.
ABI_VERSION = 1
# Must equal MTL_AGGREGATORS_ABI_VERSION in csrc/cpu/aggregators.h.
AGGREGATORS_ABI_VERSION = 1
# Must equal MTL_DENSE_ABI_VERSION in csrc/cpu/dense.h.
DENSE_ABI_VERSION = 1
# Must equal MTL_DUAL_CONE_ABI_VERSION in csrc/cpu/dual_cone.h.
DUAL_CONE_ABI_VERSION = 1

_BUILD_HINT = (
    "it is built at install time when a C++17 compiler is present: install one (e.g. g++) and "
    "reinstall mtl-fast, or run `python setup.py build_ext --inplace` in a source checkout"
)

_Solver = Callable[[int, int, int, int, int, float], int]
_Kernel = Callable[..., int]
# U, G, W, batch, R, T, norm_eps, reg_eps, max_iter, tol, iters -> unconverged rows or a code.
DualConeSolver = Callable[[int, int, int, int, int, int, float, float, int, float, int | None], int]


def library_path() -> Path | None:
    """The built shared library next to this file, or None when it was not built."""
    here = Path(__file__).resolve().parent
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = here / f"{LIBRARY_STEM}{suffix}"
        if path.is_file():
            return path
    return None


@functools.cache
def library() -> tuple[_Solver, _Solver] | str:
    """(fp64 solver, fp32 solver) with their C signatures set, or why they cannot be loaded."""
    path = library_path()
    if path is None:
        return f"the compiled CPU solver is not built ({_BUILD_HINT})"
    try:
        lib = ctypes.CDLL(str(path))
        version = lib.mtl_min_norm_abi_version
        f64, f32 = lib.mtl_min_norm_f64, lib.mtl_min_norm_f32
    except (OSError, AttributeError) as exc:
        return f"the compiled CPU solver at {path} cannot be loaded: {exc} ({_BUILD_HINT})"
    version.restype = ctypes.c_int
    version.argtypes = []
    found = int(version())
    if found != ABI_VERSION:
        return (
            f"the compiled CPU solver at {path} has ABI version {found}, this package expects "
            f"{ABI_VERSION}: it is left over from another version; rebuild it ({_BUILD_HINT})"
        )
    vp, i64 = ctypes.c_void_p, ctypes.c_int64
    for fn in (f64, f32):
        fn.argtypes = [vp, vp, i64, i64, i64, ctypes.c_double]  # K, w, batch, T, max_iter, tol
        fn.restype = ctypes.c_int
    return f64, f32


@functools.cache
def aggregator_library() -> dict[str, Callable[..., int]] | str:
    """The aggregator functions of csrc/cpu/aggregators.h by name (``"pcgrad_f64"``, ...) with
    their C signatures set, or why they cannot be loaded."""
    path = library_path()
    if path is None:
        return f"the compiled CPU library is not built ({_BUILD_HINT})"
    vp, i64, f64 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_double
    signatures: dict[str, list[type]] = {
        "pcgrad": [vp, vp, vp, i64, i64],  # K, order, c, batch, T
        "imtlg": [vp, vp, i64, i64, f64],  # K, c, batch, T, rtol
        # K, c, batch, T, c, norm_eps, rescale, max_iter, tol
        "cagrad": [vp, vp, i64, i64, f64, f64, i64, i64, f64],
        # K, prev, weights, alpha, batch, T, max_norm, max_iter, tol
        "nash_mtl": [vp, vp, vp, vp, i64, i64, f64, i64, f64],
        "aligned_mtl": [vp, vp, vp, i64, i64, i64, f64],  # K, pref, c, batch, T, mode, rtol
        "config": [vp, vp, vp, i64, i64, f64],  # K, pref, c, batch, T, rtol
    }
    try:
        lib = ctypes.CDLL(str(path))
        version = lib.mtl_aggregators_abi_version
        fns = {
            f"{op}_{t}": getattr(lib, f"mtl_{op}_{t}") for op in signatures for t in ("f64", "f32")
        }
    except (OSError, AttributeError) as exc:
        return (
            f"the compiled CPU library at {path} has no aggregators or cannot be loaded: {exc} "
            f"({_BUILD_HINT})"
        )
    version.restype = ctypes.c_int
    version.argtypes = []
    found = int(version())
    if found != AGGREGATORS_ABI_VERSION:
        return (
            f"the aggregators of the compiled CPU library at {path} have ABI version {found}, "
            f"this package expects {AGGREGATORS_ABI_VERSION}: rebuild it ({_BUILD_HINT})"
        )
    for name, fn in fns.items():
        fn.argtypes = signatures[name.rsplit("_", 1)[0]]
        fn.restype = ctypes.c_int
    return fns


@functools.cache
def dense_kernels() -> dict[str, _Kernel] | str:
    """The Gram and combination kernels of csrc/cpu/dense.cpp (``gram_f32``, ``gram_f64``,
    ``combine_f32``, ``combine_f64``) with their C signatures set, or why they cannot be loaded
    (a library built before they existed lacks them)."""
    loaded = library()
    if isinstance(loaded, str):
        return loaded
    path = library_path()
    try:
        lib = ctypes.CDLL(str(path))
        version = lib.mtl_dense_abi_version
        fns = {name: getattr(lib, f"mtl_{name}") for name in _DENSE_NAMES}
    except (OSError, AttributeError) as exc:
        return (
            f"the compiled CPU library at {path} has no Gram/combine kernels: {exc} ({_BUILD_HINT})"
        )
    version.restype = ctypes.c_int
    version.argtypes = []
    found = int(version())
    if found != DENSE_ABI_VERSION:
        return (
            f"the compiled CPU library at {path} has dense ABI version {found}, this package "
            f"expects {DENSE_ABI_VERSION}; rebuild it ({_BUILD_HINT})"
        )
    vp, i64 = ctypes.c_void_p, ctypes.c_int64
    for name, fn in fns.items():
        if name.startswith("gram"):
            fn.argtypes = [vp, i64, i64, i64, i64, vp, i64]  # J, batch, T, P, ld, K, threads
        else:
            fn.argtypes = [vp, vp, i64, i64, i64, i64, vp, i64]  # J, w, batch, T, P, ld, d, thr.
        fn.restype = ctypes.c_int
    return fns


_DENSE_NAMES = ("gram_f32", "gram_f64", "combine_f32", "combine_f64")


@functools.cache
def dual_cone_library() -> DualConeSolver | str:
    """The fp64 dual-cone solver of the same library with its C signature set, or why it cannot
    be loaded (a library built before the solver existed is refused by its missing symbol)."""
    path = library_path()
    if path is None:
        return f"the compiled CPU solver is not built ({_BUILD_HINT})"
    try:
        lib = ctypes.CDLL(str(path))
        version = lib.mtl_dual_cone_abi_version
        solve = lib.mtl_dual_cone_f64
    except (OSError, AttributeError) as exc:
        return (
            f"the compiled CPU dual-cone solver at {path} cannot be loaded: {exc} "
            f"(it is left over from another version; rebuild it: {_BUILD_HINT})"
        )
    version.restype = ctypes.c_int
    version.argtypes = []
    found = int(version())
    if found != DUAL_CONE_ABI_VERSION:
        return (
            f"the compiled CPU dual-cone solver at {path} has ABI version {found}, this package "
            f"expects {DUAL_CONE_ABI_VERSION}: it is left over from another version; rebuild it "
            f"({_BUILD_HINT})"
        )
    vp, i64, f64 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_double
    solve.argtypes = [vp, vp, vp, i64, i64, i64, f64, f64, i64, f64, vp]
    solve.restype = i64
    solver: DualConeSolver = solve
    return solver
