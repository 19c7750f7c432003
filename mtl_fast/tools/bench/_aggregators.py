"""Op-level benchmark of the Gram-space aggregators against TorchJD's implementations.

One case per (method, T, B): B Gram matrices of partly conflicting synthetic gradients (fp32,
P = 1024, :func:`~mtl_fast.tools.bench._ops.synthetic_gradients`), five different problems
cycled from call to call (the stateful Nash-MTL providers carry their state). Providers:

- every backend that runs the op on the device (B problems per call); on the CPU the Triton
  interpreter is not timed;
- for B = 1, ``torchjd``: TorchJD's own class, as a user would call it: the Weighting on the
  Gram for PCGrad, IMTL-G, CAGrad (cvxpy/Clarabel) and Aligned-MTL; the Aggregator on J for
  Nash-MTL (cvxpy/ECOS; it forms JJᵀ and d itself) and ConFIG (a pseudo-inverse of the T×P
  unit gradients);
- for those two, also ``<backend> J→d``: ``gram`` + weights + ``combine`` from J, the same work
  as TorchJD's aggregator.

Providers are interleaved round by round (a burst of load on a shared machine hits all of them
alike), and each call is timed in wall-clock time and, on the CPU, in the calling thread's CPU
time, which other processes on a loaded machine do not inflate; speed-ups are taken from the
CPU times there, from wall time on a GPU.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import torch

import mtl_fast
from mtl_fast.tools.bench._ops import OpCase, op_backends, speedup_rows, synthetic_gradients
from mtl_fast.tools.bench._report import Report
from mtl_fast.tools.bench._timing import synchronize

METHODS = ("pcgrad", "imtlg", "cagrad", "nash_mtl", "aligned_mtl", "config")
PEER = "torchjd"
_N_PROBLEMS = 5
_P = 1024
CAGRAD_C = 0.5


def _ours(method: str, K: torch.Tensor, backend: str) -> Callable[[], object]:
    """Our weights for K (B, T, T) on ``backend``; Nash-MTL carries its state across calls."""
    if method == "pcgrad":
        return partial(mtl_fast.pcgrad_weights, K, backend=backend, check_finite=False)
    if method == "imtlg":
        return partial(mtl_fast.imtlg_weights, K, backend=backend, check_finite=False)
    if method == "cagrad":
        return partial(mtl_fast.cagrad_weights, K, c=CAGRAD_C, backend=backend, check_finite=False)
    if method == "aligned_mtl":
        return partial(mtl_fast.aligned_mtl_weights, K, backend=backend, check_finite=False)
    if method == "config":
        return partial(mtl_fast.config_weights, K, backend=backend, check_finite=False)
    state: dict[str, torch.Tensor | None] = {"alpha": None}

    def nash() -> object:
        step = mtl_fast.nash_mtl_step(
            K, prev_alpha=state["alpha"], backend=backend, check_finite=False
        )
        state["alpha"] = step.alpha
        return step.weights

    return nash


def _ours_from_J(method: str, J: torch.Tensor, backend: str) -> Callable[[], object]:
    """gram + weights + combine from J (T, P): what TorchJD's J-form aggregators compute. The
    CPU library has no gram or combine: those run on "auto" (the reference) there."""
    state: dict[str, torch.Tensor | None] = {"alpha": None}
    dense = None if backend == "cpu" else backend

    def run() -> object:
        K = mtl_fast.gram(J, backend=dense, check_finite=False)
        if method == "config":
            c = mtl_fast.config_weights(K, backend=backend, check_finite=False)
        else:
            step = mtl_fast.nash_mtl_step(
                K, prev_alpha=state["alpha"], backend=backend, check_finite=False
            )
            state["alpha"], c = step.alpha, step.weights
        return mtl_fast.combine(J, c.to(J.dtype), backend=dense)

    return run


def _torchjd(method: str, K: torch.Tensor, J: torch.Tensor) -> Callable[[], object]:
    """TorchJD's implementation on one problem (K: (T, T), J: (T, P)); raises ImportError when
    TorchJD (or the solver it needs) is not installed."""
    from torchjd import aggregation as a

    T = K.shape[-1]
    if method == "pcgrad":
        return partial(a.PCGradWeighting(), K)
    if method == "imtlg":
        return partial(a.IMTLGWeighting(), K)
    if method == "cagrad":
        return partial(a.CAGradWeighting(c=CAGRAD_C), K)
    if method == "aligned_mtl":
        return partial(a.AlignedMTLWeighting(), K)
    if method == "config":
        return partial(a.ConFIG(), J)
    return partial(a.NashMTL(n_tasks=T), J)


def aggregator_case(method: str, T: int, B: int, device: torch.device, rounds: int) -> OpCase:
    """The (method, T, B) case: our backends, and TorchJD's implementation when B = 1."""
    names, skipped = op_backends(method, device)
    problems = []
    for seed in range(_N_PROBLEMS):
        J = synthetic_gradients(B, T, _P, torch.float32, device, seed=seed)
        K = J @ J.transpose(1, 2)
        problems.append((J, 0.5 * (K + K.transpose(1, 2))))
    case = OpCase(
        method,
        {"T": T, "B": B},
        torch.float32,
        device,
        0,
        PEER if B == 1 else "",
        problems=B,
        rounds=rounds,
    )
    case.skipped = skipped
    for name in names:
        case.cycles[name] = [_ours(method, K if B > 1 else K[0], name) for _, K in problems]
        if B == 1 and method in ("nash_mtl", "config"):
            case.cycles[f"{name} J→d"] = [_ours_from_J(method, J[0], name) for J, _ in problems]
    if B == 1:
        try:
            calls = [_torchjd(method, K[0].clone(), J[0].clone()) for J, K in problems]
            with torch.no_grad():
                calls[0]()  # TorchJD checks its optional solvers at construction or first call
        except ImportError as exc:
            case.skipped[PEER] = f"{type(exc).__name__}: {exc}"
        else:
            case.cycles[PEER] = calls
        if method == "cagrad":
            case.notes[PEER] = "cvxpy/Clarabel on the CPU"
        elif method == "nash_mtl":
            case.notes[PEER] = "NashMTL aggregator on J (cvxpy/ECOS), state carried"
        elif method == "config":
            case.notes[PEER] = "ConFIG aggregator on J (pinv of the unit gradients)"
    return case


def run_interleaved(case: OpCase, report: Report, *, warmup: int = 2) -> None:
    """Time every provider of ``case`` round by round (``case.rounds`` rounds) and append the
    rows: median wall ms (with 20/80 % quantiles), median thread-CPU ms (CPU), problems/s, and
    the speed-up over ``case.baseline``."""
    dname = str(case.dtype).replace("torch.", "")
    for name, reason in case.skipped.items():
        report.skip("op", case.op, name, case.shape, reason)
    cycles = dict(case.cycles)
    for name, calls in list(cycles.items()):
        try:
            with torch.no_grad():
                for k in range(warmup):
                    calls[k % len(calls)]()
        except Exception as exc:  # a backend under development may fail: record, go on
            report.skip("op", case.op, name, case.shape, f"raised {type(exc).__name__}: {exc}")
            del cycles[name]
    wall: dict[str, list[float]] = {n: [] for n in cycles}
    cpu: dict[str, list[float]] = {n: [] for n in cycles}
    on_cpu = case.device.type == "cpu"
    with torch.no_grad():
        for r in range(case.rounds or 1):
            for name, calls in cycles.items():
                fn = calls[r % len(calls)]
                synchronize(case.device)
                c0, t0 = time.thread_time(), time.perf_counter()
                fn()
                synchronize(case.device)
                wall[name].append(time.perf_counter() - t0)
                cpu[name].append(time.thread_time() - c0)
    times: dict[str, float] = {}
    for name in cycles:
        s = sorted(wall[name])
        med = statistics.median(s)
        q20, q80 = s[round(0.2 * (len(s) - 1))], s[round(0.8 * (len(s) - 1))]
        note = case.notes.get(name, "") + (" " if case.notes.get(name) else "")
        note += f"median of {len(s)} interleaved rounds"

        def row(metric: str, unit: str, value: float, name: str = name, **kw: Any) -> None:
            report.rows.append(case.row(name, dname, metric, unit, value, **kw))

        row("time_ms", "ms", med * 1e3, q20=q20 * 1e3, q80=q80 * 1e3, note=note)
        if on_cpu:
            cpu_med = statistics.median(cpu[name])
            row("cpu_time_ms", "ms", cpu_med * 1e3, note="thread CPU time")
            times[name] = cpu_med
        else:
            times[name] = med
        if case.problems is not None:
            row("problems_per_s", "1/s", case.problems / med)
    speedup_rows(report, case, dname, times, ", thread CPU time" if on_cpu else ", wall time")
