"""Op-level benchmark cases: every available backend of an op, and the baseline a user would
pick instead, on the same inputs.

A case is built lazily (its tensors exist only while it is measured), holds one zero-argument
callable per provider, and the bytes formula of the op. Baselines:

- gram: ``torch.mm(J, J.T)``;
- combine: ``w @ J`` in plain torch;
- min_norm: :mod:`mtl_fast.tools.bench.mgda_loop`, the published Python-loop solver, problem by problem;
- multi_adam: one ``torch.optim.Adam`` (fused where torch supports it) per task, each stepped
  with its task's gradient on the same flat parameter (T passes over p);
- combine_adam: ``w @ J`` then one ``torch.optim.Adam`` step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch

import mtl_fast
from mtl_fast._core.dispatch import _load, backends
from mtl_fast.tools.bench import _traffic as traffic
from mtl_fast.tools.bench._report import Report, Row
from mtl_fast.tools.bench._timing import measure
from mtl_fast.tools.bench.mgda_loop import loop_min_norm

LIBRARY_PROVIDERS = ("reference", "triton", "cuda")


@dataclass
class OpCase:
    """One (op, shape, dtype) with a callable per provider."""

    op: str
    shape: dict[str, int]
    dtype: torch.dtype
    device: torch.device
    bytes_moved: int
    baseline: str
    providers: dict[str, Callable[[], object]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    problems: int | None = None  # min_norm: problems solved per call
    # provider -> factor applied to its measured time (a baseline timed on a subset).
    time_scale: dict[str, float] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    extra_rows: list[Row] = field(default_factory=list)


def op_backends(op: str, device: torch.device) -> tuple[list[str], dict[str, str]]:
    """Backends that can run ``op`` on ``device``, and the reason for each one that cannot."""
    ok: list[str] = []
    skipped: dict[str, str] = {}
    for name, status in backends().items():
        if not status.available:
            skipped[name] = status.reason or "unavailable"
            continue
        if op not in status.ops:
            skipped[name] = f"does not implement {op}"
            continue
        module = _load(name)
        reason = None if isinstance(module, str) else module.device_reason(device)
        if reason is not None:
            skipped[name] = reason
            continue
        if name == "triton" and device.type != "cuda":
            skipped[name] = (
                "Triton runs on the CPU only under its interpreter: a correctness tool, not timed"
            )
            continue
        ok.append(name)
    return ok, skipped


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def synthetic_gradients(
    B: int, T: int, P: int, dtype: torch.dtype, device: torch.device, seed: int = 0
) -> torch.Tensor:
    """(B, T, P) task gradients that partly agree: a shared component plus task noise (cosines
    around 0.25), scaled like real gradients (‖g‖ ≈ 1)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    common = torch.randn(B, 1, P, generator=gen, device=device, dtype=torch.float32)
    J = torch.randn(B, T, P, generator=gen, device=device, dtype=torch.float32)
    J.mul_(math.sqrt(3.0)).add_(common).mul_(0.5 / math.sqrt(P))
    return J.to(dtype)


def gram_case(T: int, P: int, dtype: torch.dtype, device: torch.device) -> OpCase:
    names, skipped = op_backends("gram", device)
    J = synthetic_gradients(1, T, P, dtype, device)[0]
    case = OpCase(
        "gram", {"T": T, "P": P}, dtype, device, traffic.gram_bytes(1, T, P, dtype), "torch.mm"
    )
    case.skipped = skipped
    for name in names:
        case.providers[name] = partial(mtl_fast.gram, J, backend=name, check_finite=False)
    case.providers["torch.mm"] = lambda: torch.mm(J, J.T)
    return case


def combine_case(T: int, P: int, dtype: torch.dtype, device: torch.device) -> OpCase:
    names, skipped = op_backends("combine", device)
    J = synthetic_gradients(1, T, P, dtype, device)[0]
    w = torch.full((T,), 1.0 / T, device=device)
    wd = w.to(dtype)
    case = OpCase(
        "combine", {"T": T, "P": P}, dtype, device, traffic.combine_bytes(1, T, P, dtype), "w @ J"
    )
    case.skipped = skipped
    for name in names:
        case.providers[name] = partial(mtl_fast.combine, J, w, backend=name)
    case.providers["w @ J"] = lambda: wd @ J
    return case


def solver_problems(B: int, T: int, device: torch.device, seed: int = 0) -> torch.Tensor:
    """(B, T, T) fp32 Grams of partly conflicting gradients (64-dimensional, shared component
    plus noise), the kind MGDA sees."""
    J = synthetic_gradients(B, T, 64, torch.float64, device, seed)
    K = J @ J.transpose(1, 2)
    return (0.5 * (K + K.transpose(1, 2))).float()


def min_norm_case(
    B: int, T: int, device: torch.device, *, loop_problems: int | None = None
) -> OpCase:
    """The batched solve vs the Python-loop solver; the loop runs on ``loop_problems`` of the
    B problems (all when None) and its time is scaled to B."""
    names, skipped = op_backends("min_norm", device)
    K = solver_problems(B, T, device)
    case = OpCase(
        "min_norm",
        {"B": B, "T": T},
        torch.float32,
        device,
        traffic.min_norm_bytes(B, T, torch.float32),
        "python-loop",
        problems=B,
    )
    case.skipped = skipped
    for name in names:
        case.providers[name] = partial(mtl_fast.min_norm, K, backend=name, check_finite=False)
    n_loop = B if loop_problems is None else max(1, min(B, loop_problems))
    K_loop = K[:n_loop]
    case.providers["python-loop"] = lambda: loop_min_norm(K_loop)
    if n_loop < B:
        case.time_scale["python-loop"] = B / n_loop
        case.notes["python-loop"] = f"timed on {n_loop} of {B} problems, scaled to {B}"
    # Quality of both answers on the same problems (not timed): objective excess over the
    # best of the two, relative to max K_ii.
    Kd = K[:n_loop].double()
    scale = Kd.diagonal(dim1=1, dim2=2).amax(dim=1).clamp_min(1e-300)
    w_loop, capped = loop_min_norm(K_loop)
    f_loop = torch.einsum("bi,bij,bj->b", w_loop, Kd, w_loop)
    best = f_loop
    answers = {"python-loop": f_loop}
    for name in names:
        try:
            w = mtl_fast.min_norm(K[:n_loop], backend=name, check_finite=False).double()
        except Exception:  # run_case times it again and records the error
            continue
        answers[name] = torch.einsum("bi,bij,bj->b", w, Kd, w)
        best = torch.minimum(best, answers[name])
    for name, f in answers.items():
        case.extra_rows.append(
            Row(
                "op",
                "min_norm",
                name,
                dict(case.shape),
                "float32",
                "objective_excess_max",
                "relative to max K_ii",
                float(((f - best) / scale).max()),
                note=f"over {n_loop} problems"
                + (f"; {capped} ended by the safety cap" if name == "python-loop" else ""),
            )
        )
    return case


def _torch_adam(params: list[torch.Tensor], device: torch.device) -> torch.optim.Adam:
    try:
        return torch.optim.Adam(params, lr=1e-6, fused=True)
    except (RuntimeError, ValueError):  # fused not supported for this device/dtype
        return torch.optim.Adam(params, lr=1e-6, foreach=True)


def multi_adam_case(T: int, P: int, dtype: torch.dtype, device: torch.device) -> OpCase:
    """One MultiAdam step over all T tasks (S = T) vs T torch Adam steps."""
    names, skipped = op_backends("multi_adam", device)
    J = synthetic_gradients(1, T, P, dtype, device)[0]
    case = OpCase(
        "multi_adam",
        {"T": T, "P": P},
        dtype,
        device,
        traffic.multi_adam_bytes(T, P, dtype),
        "torch Adam ×T",
    )
    case.skipped = skipped
    for name in names:
        p = torch.nn.Parameter(torch.zeros(P, dtype=dtype, device=device))
        opt = mtl_fast.MultiAdam([p], num_tasks=T, lr=1e-6, on_nonfinite="ignore", backend=name)
        tasks = torch.arange(T, device=device)
        case.providers[name] = partial(opt.step, J, tasks)
    p0 = torch.nn.Parameter(torch.zeros(P, dtype=dtype, device=device))
    opts = [_torch_adam([p0], device) for _ in range(T)]
    case.notes["torch Adam ×T"] = "fused" if opts[0].defaults.get("fused") else "foreach"

    def per_task() -> None:
        for t, opt in enumerate(opts):
            p0.grad = J[t]
            opt.step()

    case.providers["torch Adam ×T"] = per_task
    return case


def combine_adam_case(T: int, P: int, dtype: torch.dtype, device: torch.device) -> OpCase:
    """J in ``dtype``; the flat parameters and moments in fp32 (fp64 for fp64 J), as
    ``combine_adam`` requires."""
    names, skipped = op_backends("combine_adam", device)
    J = synthetic_gradients(1, T, P, dtype, device)[0]
    w = torch.full((T,), 1.0 / T, device=device)
    case = OpCase(
        "combine_adam",
        {"T": T, "P": P},
        dtype,
        device,
        traffic.combine_adam_bytes(T, P, dtype),
        "w @ J + torch Adam",
    )
    case.skipped = skipped
    sdt = traffic.state_dtype(dtype)
    for name in names:
        p = torch.zeros(P, dtype=sdt, device=device)
        m = torch.zeros(P, dtype=sdt, device=device)
        v = torch.zeros(P, dtype=sdt, device=device)
        step = torch.zeros(1, dtype=torch.float32, device=device)
        case.providers[name] = partial(
            mtl_fast.combine_adam, J, w, p, m, v, step, lr=1e-6, backend=name
        )
    p0 = torch.nn.Parameter(torch.zeros(P, dtype=sdt, device=device))
    opt = _torch_adam([p0], device)
    wd = w.to(dtype)
    case.notes["w @ J + torch Adam"] = "fused" if opt.defaults.get("fused") else "foreach"

    def baseline() -> None:
        p0.grad = (wd @ J).to(sdt)
        opt.step()

    case.providers["w @ J + torch Adam"] = baseline
    return case


def run_case(
    case: OpCase,
    report: Report,
    timing: dict[str, Any],
    *,
    baseline_timing: dict[str, Any] | None = None,
) -> None:
    """Measure every provider of ``case`` and append its rows to ``report``."""
    dname = _dtype_name(case.dtype)
    for name, reason in case.skipped.items():
        report.skip("op", case.op, name, case.shape, reason)
    copy_bw = report.meta.get("copy_bandwidth_GBps")
    spec_bw = report.meta.get("spec_bandwidth_GBps")
    times: dict[str, float] = {}
    for name, fn in case.providers.items():
        kw = baseline_timing if (name == case.baseline and baseline_timing) else timing
        try:
            t = measure(fn, case.device, **kw)
        except Exception as exc:  # a backend under development may fail: record, go on
            report.skip("op", case.op, name, case.shape, f"raised {type(exc).__name__}: {exc}")
            continue
        scale = case.time_scale.get(name, 1.0)
        med = t.median * scale
        times[name] = med
        note = case.notes.get(name, "")

        def row(
            metric: str, unit: str, value: float, name: str = name, note: str = note, **kw: Any
        ) -> None:
            report.rows.append(
                Row(
                    "op",
                    case.op,
                    name,
                    dict(case.shape),
                    dname,
                    metric,
                    unit,
                    value,
                    note=note,
                    **kw,
                )
            )

        row("time_ms", "ms", med * 1e3, q20=t.q20 * scale * 1e3, q80=t.q80 * scale * 1e3)
        bw = case.bytes_moved / med / 1e9
        if case.problems is not None:
            row("problems_per_s", "1/s", case.problems / med)
        else:
            row("bytes", "B", float(case.bytes_moved))
            row("bandwidth_GBps", "GB/s", bw)
            if copy_bw:
                row("bandwidth_vs_copy", "fraction", bw / copy_bw)
            if spec_bw:
                row("bandwidth_vs_spec", "fraction", bw / spec_bw)
    base = times.get(case.baseline)
    if base is not None:
        for name, med in times.items():
            if name != case.baseline:
                report.rows.append(
                    Row(
                        "op",
                        case.op,
                        name,
                        dict(case.shape),
                        dname,
                        "speedup_vs_baseline",
                        f"× ({case.baseline} time / this time)",
                        base / med,
                    )
                )
    report.rows.extend(case.extra_rows)


@dataclass(frozen=True)
class OpGrid:
    """Which shapes each op is measured at."""

    Ps: tuple[int, ...]
    Ts: tuple[int, ...]
    adam_Ts: tuple[int, ...]
    solver: tuple[tuple[int, int], ...]  # (B, T)
    loop_problems: int | None  # cap on problems the Python-loop baseline runs per case
    dtypes: tuple[torch.dtype, ...]
    adam_Ps: tuple[int, ...] | None = None  # P of multi_adam/combine_adam (None: ``Ps``)


def op_cases(grid: OpGrid, device: torch.device, ops: set[str]) -> Iterator[Callable[[], OpCase]]:
    """Builders of every case of ``grid`` (build one, measure it, drop it)."""
    for dtype in grid.dtypes:
        adam_Ps = grid.Ps if grid.adam_Ps is None else grid.adam_Ps
        for op, Ts, Ps, make in (
            ("gram", grid.Ts, grid.Ps, gram_case),
            ("combine", grid.Ts, grid.Ps, combine_case),
            ("multi_adam", grid.adam_Ts, adam_Ps, multi_adam_case),
            ("combine_adam", grid.adam_Ts, adam_Ps, combine_adam_case),
        ):
            if op not in ops:
                continue
            for T in Ts:
                for P in Ps:
                    yield partial(make, T, P, dtype, device)
    if "min_norm" in ops:
        for B, T in grid.solver:
            yield partial(min_norm_case, B, T, device, loop_problems=grid.loop_problems)
