"""Finding and loading the compiled CPU library (csrc/cpu/) that ``setup.py`` builds next to this
file, with ctypes; never a build as a side effect."""

from __future__ import annotations

import ctypes
import functools
import importlib.machinery
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from mtl_fast.kernels.cpu.settings import LIBRARY_STEM

# Must equal MTL_MIN_NORM_ABI_VERSION in csrc/cpu/min_norm.h.
ABI_VERSION = 1
# Must equal MTL_AGGREGATORS_ABI_VERSION in csrc/cpu/aggregators.h.
AGGREGATORS_ABI_VERSION = 1
# Must equal MTL_DENSE_ABI_VERSION in csrc/cpu/dense.h.
DENSE_ABI_VERSION = 3
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


def _load(
    version_symbol: str,
    expected: int,
    argtypes: Mapping[str, Sequence[type]],
    restype: type,
    *,
    missing: str,
    unloadable: str,
    mismatch: str,
) -> dict[str, _Kernel] | str:
    """The functions ``mtl_<name>`` of the library for each name of ``argtypes``, with their C
    signatures set, once ``version_symbol`` returns ``expected``; else why not, from the
    templates (fields ``path``, ``exc``, ``found``, ``expected`` and ``hint``)."""
    path = library_path()
    if path is None:
        return missing.format(hint=_BUILD_HINT)
    try:
        lib = ctypes.CDLL(str(path))
        version = getattr(lib, version_symbol)
        fns = {name: getattr(lib, f"mtl_{name}") for name in argtypes}
    except (OSError, AttributeError) as exc:
        return unloadable.format(path=path, exc=exc, hint=_BUILD_HINT)
    version.restype = ctypes.c_int
    version.argtypes = []
    found = int(version())
    if found != expected:
        return mismatch.format(path=path, found=found, expected=expected, hint=_BUILD_HINT)
    for name, fn in fns.items():
        fn.argtypes = argtypes[name]
        fn.restype = restype
    return fns


_NOT_BUILT = "the compiled CPU solver is not built ({hint})"
_vp, _i64, _f64 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_double


@functools.cache
def library() -> tuple[_Solver, _Solver] | str:
    """(fp64 solver, fp32 solver) with their C signatures set, or why they cannot be loaded."""
    solver = [_vp, _vp, _i64, _i64, _i64, _f64]  # K, w, batch, T, max_iter, tol
    fns = _load(
        "mtl_min_norm_abi_version",
        ABI_VERSION,
        {"min_norm_f64": solver, "min_norm_f32": solver},
        ctypes.c_int,
        missing=_NOT_BUILT,
        unloadable="the compiled CPU solver at {path} cannot be loaded: {exc} ({hint})",
        mismatch=(
            "the compiled CPU solver at {path} has ABI version {found}, this package expects "
            "{expected}: it is left over from another version; rebuild it ({hint})"
        ),
    )
    if isinstance(fns, str):
        return fns
    return fns["min_norm_f64"], fns["min_norm_f32"]


_AGGREGATOR_ARGTYPES: dict[str, list[type]] = {
    "pcgrad": [_vp, _vp, _vp, _i64, _i64],  # K, order, c, batch, T
    "imtlg": [_vp, _vp, _i64, _i64, _f64],  # K, c, batch, T, rtol
    # K, c, batch, T, c, norm_eps, rescale, max_iter, tol
    "cagrad": [_vp, _vp, _i64, _i64, _f64, _f64, _i64, _i64, _f64],
    # K, prev, weights, alpha, batch, T, max_norm, max_iter, tol
    "nash_mtl": [_vp, _vp, _vp, _vp, _i64, _i64, _f64, _i64, _f64],
    "aligned_mtl": [_vp, _vp, _vp, _i64, _i64, _i64, _f64],  # K, pref, c, batch, T, mode, rtol
    "config": [_vp, _vp, _vp, _i64, _i64, _f64],  # K, pref, c, batch, T, rtol
}


@functools.cache
def aggregator_library() -> dict[str, Callable[..., int]] | str:
    """The aggregator functions of csrc/cpu/aggregators.h by name (``"pcgrad_f64"``, ...) with
    their C signatures set, or why they cannot be loaded."""
    return _load(
        "mtl_aggregators_abi_version",
        AGGREGATORS_ABI_VERSION,
        {f"{op}_{t}": a for op, a in _AGGREGATOR_ARGTYPES.items() for t in ("f64", "f32")},
        ctypes.c_int,
        missing="the compiled CPU library is not built ({hint})",
        unloadable=(
            "the compiled CPU library at {path} has no aggregators or cannot be loaded: {exc} "
            "({hint})"
        ),
        mismatch=(
            "the aggregators of the compiled CPU library at {path} have ABI version {found}, "
            "this package expects {expected}: rebuild it ({hint})"
        ),
    )


@functools.cache
def dense_kernels() -> dict[str, _Kernel] | str:
    """The Gram and combination kernels of csrc/cpu/dense.cpp (``gram_f32``, ``gram_f64``,
    ``combine_f32``, ``combine_f64``, ``dense_isa``/``dense_best_isa``/``dense_set_isa``, the
    instruction set they use, and ``fma_burst_f32``, the core's FMA rate on it) with their C
    signatures set, or why they cannot be loaded (a library built before they existed lacks
    them)."""
    loaded = library()
    if isinstance(loaded, str):
        return loaded
    gram = [_vp, _i64, _i64, _i64, _i64, _vp, _i64]  # J, batch, T, P, ld, K, threads
    combine = [_vp, _vp, _i64, _i64, _i64, _i64, _vp, _i64]  # J, w, batch, T, P, ld, d, threads
    return _load(
        "mtl_dense_abi_version",
        DENSE_ABI_VERSION,
        {
            "gram_f32": gram,
            "gram_f64": gram,
            "combine_f32": combine,
            "combine_f64": combine,
            "dense_isa": [],
            "dense_best_isa": [],
            "dense_set_isa": [ctypes.c_int],
            "fma_burst_f32": [_i64, _vp],  # steps, out (2 doubles)
        },
        ctypes.c_int,
        missing=_NOT_BUILT,
        unloadable="the compiled CPU library at {path} has no Gram/combine kernels: {exc} ({hint})",
        mismatch=(
            "the compiled CPU library at {path} has dense ABI version {found}, this package "
            "expects {expected}; rebuild it ({hint})"
        ),
    )


@functools.cache
def dual_cone_library() -> DualConeSolver | str:
    """The fp64 dual-cone solver of the same library with its C signature set, or why it cannot
    be loaded (a library built before the solver existed is refused by its missing symbol)."""
    fns = _load(
        "mtl_dual_cone_abi_version",
        DUAL_CONE_ABI_VERSION,
        {"dual_cone_f64": [_vp, _vp, _vp, _i64, _i64, _i64, _f64, _f64, _i64, _f64, _vp]},
        ctypes.c_int64,
        missing=_NOT_BUILT,
        unloadable=(
            "the compiled CPU dual-cone solver at {path} cannot be loaded: {exc} "
            "(it is left over from another version; rebuild it: {hint})"
        ),
        mismatch=(
            "the compiled CPU dual-cone solver at {path} has ABI version {found}, this package "
            "expects {expected}: it is left over from another version; rebuild it ({hint})"
        ),
    )
    if isinstance(fns, str):
        return fns
    solver: DualConeSolver = fns["dual_cone_f64"]
    return solver
