"""Op-level benchmark cases: every available backend of an op, and the baseline a user would
pick instead, on the same inputs.

A case is built lazily (its tensors exist only while it is measured), holds one zero-argument
callable per provider, and the bytes formula of the op. Baselines:

- gram: ``torch.mm(J, J.T)``;
- combine: ``w @ J`` in plain torch;
- min_norm: :mod:`mtl_fast.tools.bench.mgda_loop`, the published Python-loop solver, problem by problem;
- multi_adam: one ``torch.optim.Adam`` (fused where torch supports it) per task, each stepped
  with its task's gradient on the same flat parameter (T passes over p);
- combine_adam: ``w @ J`` then one ``torch.optim.Adam`` step;
- upgrad_weights: TorchJD's ``UPGradWeighting()`` (its ``QuadprogProjector``: one quadprog QP
  per task on the host), one Gram after another; also TorchJD's weighting with mtl_fast's
  projector plugged in (:mod:`mtl_fast.integrations.torchjd`). Timed in thread CPU time with the
  providers interleaved on the CPU (see :func:`upgrad_case`).
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
from mtl_fast.tools.bench._timing import Timing, measure, measure_interleaved
from mtl_fast.tools.bench.mgda_loop import loop_min_norm

LIBRARY_PROVIDERS = ("reference", "triton", "cuda")


@dataclass
class OpCase:
    """One (op, shape, dtype) with a callable per provider."""

    op: str
    shape: dict[str, Any]
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
    # Interleaved cases (the aggregators): ``rounds`` rounds, each calling every provider once,
    # cycling through its list of callables (one per problem).
    rounds: int | None = None
    cycles: dict[str, list[Callable[[], object]]] = field(default_factory=dict)
    # On the CPU: time the providers in rounds, in turn (measure_interleaved), with this clock.
    interleave: bool = False
    clock: str = "wall"

    def row(
        self, provider: str, dtype: str, metric: str, unit: str, value: float, **kw: Any
    ) -> Row:
        """A row of this case's op and shape."""
        return Row("op", self.op, provider, dict(self.shape), dtype, metric, unit, value, **kw)


def speedup_rows(
    report: Report, case: OpCase, dname: str, times: dict[str, float], clock: str = ""
) -> None:
    """Each provider's "speedup_vs_baseline" row (the baseline's time over its own, measured on
    ``clock`` when named), when the baseline was timed."""
    base = times.get(case.baseline)
    if base is None:
        return
    for name, t in times.items():
        if name != case.baseline and t > 0:
            unit = f"× ({case.baseline} time / this time{clock})"
            report.rows.append(case.row(name, dname, "speedup_vs_baseline", unit, base / t))


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


def _gradients_case(
    op: str,
    T: int,
    P: int,
    dtype: torch.dtype,
    device: torch.device,
    bytes_moved: int,
    baseline: str,
) -> tuple[OpCase, list[str], torch.Tensor]:
    """A case of ``op`` on one (T, P) problem: the case (its unavailable backends in
    ``skipped``), the backends that run it, and the (T, P) synthetic gradients."""
    names, skipped = op_backends(op, device)
    J = synthetic_gradients(1, T, P, dtype, device)[0]
    case = OpCase(op, {"T": T, "P": P}, dtype, device, bytes_moved, baseline)
    case.skipped = skipped
    return case, names, J


def gram_case(T: int, P: int, dtype: torch.dtype, device: torch.device) -> OpCase:
    case, names, J = _gradients_case(
        "gram", T, P, dtype, device, traffic.gram_bytes(1, T, P, dtype), "torch.mm"
    )
    for name in names:
        case.providers[name] = partial(mtl_fast.gram, J, backend=name, check_finite=False)
    case.providers["torch.mm"] = lambda: torch.mm(J, J.T)
    return case


def combine_case(T: int, P: int, dtype: torch.dtype, device: torch.device) -> OpCase:
    case, names, J = _gradients_case(
        "combine", T, P, dtype, device, traffic.combine_bytes(1, T, P, dtype), "w @ J"
    )
    w = torch.full((T,), 1.0 / T, device=device)
    wd = w.to(dtype)
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
        excess = float(((f - best) / scale).max())
        note = f"over {n_loop} problems"
        if name == "python-loop":
            note += f"; {capped} ended by the safety cap"
        case.extra_rows.append(
            case.row(
                name, "float32", "objective_excess_max", "relative to max K_ii", excess, note=note
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
    baseline = "torch Adam ×T"
    nbytes = traffic.multi_adam_bytes(T, P, dtype)
    case, names, J = _gradients_case("multi_adam", T, P, dtype, device, nbytes, baseline)
    for name in names:
        p = torch.nn.Parameter(torch.zeros(P, dtype=dtype, device=device))
        opt = mtl_fast.MultiAdam([p], num_tasks=T, lr=1e-6, on_nonfinite="ignore", backend=name)
        tasks = torch.arange(T, device=device)
        case.providers[name] = partial(opt.step, J, tasks)
    p0 = torch.nn.Parameter(torch.zeros(P, dtype=dtype, device=device))
    opts = [_torch_adam([p0], device) for _ in range(T)]
    case.notes[baseline] = "fused" if opts[0].defaults.get("fused") else "foreach"

    def per_task() -> None:
        for t, opt in enumerate(opts):
            p0.grad = J[t]
            opt.step()

    case.providers[baseline] = per_task
    return case


def combine_adam_case(T: int, P: int, dtype: torch.dtype, device: torch.device) -> OpCase:
    """J in ``dtype``; the flat parameters and moments in fp32 (fp64 for fp64 J), as
    ``combine_adam`` requires."""
    baseline = "w @ J + torch Adam"
    nbytes = traffic.combine_adam_bytes(T, P, dtype)
    case, names, J = _gradients_case("combine_adam", T, P, dtype, device, nbytes, baseline)
    w = torch.full((T,), 1.0 / T, device=device)
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
    case.notes[baseline] = "fused" if opt.defaults.get("fused") else "foreach"

    def combine_then_step() -> None:
        p0.grad = (wd @ J).to(sdt)
        opt.step()

    case.providers[baseline] = combine_then_step
    return case


def run_case(
    case: OpCase,
    report: Report,
    timing: dict[str, Any],
    *,
    baseline_timing: dict[str, Any] | None = None,
) -> None:
    """Measure every provider of ``case`` and append its rows to ``report``."""
    if case.rounds is not None:
        from mtl_fast.tools.bench._aggregators import run_interleaved

        run_interleaved(case, report)
        return
    dname = _dtype_name(case.dtype)
    for name, reason in case.skipped.items():
        report.skip("op", case.op, name, case.shape, reason)
    copy_bw = report.meta.get("copy_bandwidth_GBps")
    spec_bw = report.meta.get("spec_bandwidth_GBps")
    times: dict[str, float] = {}
    timings: dict[str, Timing | Exception] = {}
    if case.interleave and case.device.type == "cpu":
        timings = measure_interleaved(case.providers, clock=case.clock, **timing)
    else:
        for name, fn in case.providers.items():
            kw = baseline_timing if (name == case.baseline and baseline_timing) else timing
            try:
                timings[name] = measure(fn, case.device, **kw)
            except Exception as exc:  # a backend under development may fail: record, go on
                timings[name] = exc
    for name in case.providers:
        t = timings[name]
        if isinstance(t, Exception):
            report.skip("op", case.op, name, case.shape, f"raised {type(t).__name__}: {t}")
            continue
        scale = case.time_scale.get(name, 1.0)
        med = t.median * scale
        times[name] = med
        note = case.notes.get(name, "")

        def row(
            metric: str, unit: str, value: float, name: str = name, note: str = note, **kw: Any
        ) -> None:
            report.rows.append(case.row(name, dname, metric, unit, value, note=note, **kw))

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
    speedup_rows(report, case, dname, times)
    report.rows.extend(case.extra_rows)


UPGRAD_FAMILIES = ("agree", "gauss", "lowrank", "twogroups", "conflict", "resnet18")


def _family_jacobian(family: str, B: int, T: int, gen: torch.Generator) -> torch.Tensor:
    """(B, T, P) float64 task gradients of a synthetic conflict pattern (P = 4T + 8)."""
    P = 4 * T + 8

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    if family == "agree":  # shared component + noise: cosines ≈ 0.25 (synthetic_gradients)
        return math.sqrt(3.0) * randn(B, T, P) + randn(B, 1, P)
    if family == "gauss":  # independent: cosines ≈ 0, about half the pairs conflict
        return randn(B, T, P)
    if family == "lowrank":  # rank T/3: the regularisation sets the conditioning (up to 1e4)
        r = max(1, T // 3)
        return randn(B, T, r) @ randn(B, r, P)
    if family == "twogroups":  # two opposed groups plus noise
        s = torch.where(torch.arange(T) % 2 == 0, 1.0, -0.5).to(torch.float64)[None, :, None]
        return s * randn(B, 1, P) + 0.7 * randn(B, T, P)
    if family == "conflict":  # near rank 1 with random signs
        signs = torch.rand(B, T, 1, generator=gen) < 0.5
        s = torch.where(signs, -1.0, 1.0).to(torch.float64)
        return s * randn(B, 1, P) + 1e-3 * randn(B, T, P)
    raise ValueError(f"family must be one of {UPGRAD_FAMILIES}, got {family!r}")


def trunk_gradient_grams(
    trunk: str, B: int, T: int, device: torch.device, *, coords: int = 2**18, seed: int = 0
) -> torch.Tensor:
    """(B, T, T) float32 Grams of real MTL gradients: the trunk of the strategy benchmark
    (:mod:`mtl_fast.tools.bench._models`, image 32, batch 8) with T random linear heads and
    regression targets, one gradient per task w.r.t. the trunk's parameters. Each Gram is taken
    over ``coords`` coordinates of the flat gradient drawn at random (a random projection:
    inner products are preserved up to ~1/√coords, and the weights do not depend on the scale);
    problem b uses data batch b."""
    from mtl_fast.tools.bench._models import make_trunk, synthetic_batch

    torch.manual_seed(seed)
    model, feats = make_trunk(trunk, 32)
    model.to(device)
    heads = torch.nn.ModuleList(torch.nn.Linear(feats, 1) for _ in range(T)).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    P = sum(p.numel() for p in params)
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(P, generator=gen)[: min(coords, P)].to(device)
    grams = []
    for b in range(B):
        x, y = synthetic_batch(trunk, 8, 32, T, device, seed=seed + b)
        z = model(x)
        rows = []
        for t in range(T):
            loss = torch.nn.functional.mse_loss(heads[t](z).squeeze(1), y[:, t])
            grads = torch.autograd.grad(loss, params, retain_graph=t < T - 1)
            rows.append(torch.cat([g.reshape(-1) for g in grads])[idx])
        J = torch.stack(rows).double()
        grams.append(J @ J.T)
    return torch.stack(grams).float()


def upgrad_grams(family: str, B: int, T: int, device: torch.device, seed: int = 0) -> torch.Tensor:
    """(B, T, T) float32 Grams (as a training step forms them) of one family: the synthetic
    patterns of :func:`_family_jacobian`, or "resnet18" (real trunk gradients)."""
    if family == "resnet18":
        return trunk_gradient_grams("resnet18", B, T, device, seed=seed)
    J = _family_jacobian(family, B, T, torch.Generator().manual_seed(1000 * T + seed))
    return (J @ J.mT).float().to(device)


def _torchjd_upgrad() -> tuple[Callable[[torch.Tensor], torch.Tensor], Any] | str:
    """TorchJD's UPGradWeighting (quadprog) and the same weighting on mtl_fast's projector."""
    try:
        from torchjd.aggregation import UPGradWeighting

        from mtl_fast.integrations.torchjd import UPGradWeighting as PluggedUPGradWeighting
    except ImportError as exc:
        return f"TorchJD is not installed ({exc}; pip install 'mtl-fast[peers]')"
    return UPGradWeighting(), PluggedUPGradWeighting()


TORCHJD_UPGRAD = "torchjd QuadprogProjector"
TORCHJD_PLUGGED = "torchjd + mtl_fast Projector"


def upgrad_case(family: str, B: int, T: int, device: torch.device) -> OpCase:
    """UPGrad weights of B Grams of T tasks (one (T, T) Gram when B = 1) from a float32 Gram:
    every backend of ``dual_cone`` through :func:`mtl_fast.upgrad_weights` (default
    arguments), against TorchJD's ``UPGradWeighting()``, which takes one Gram (a batch is a
    loop), and TorchJD's weighting with :class:`mtl_fast.integrations.torchjd.Projector`.

    On the CPU the providers are timed in rounds, in turn, in thread CPU time: every provider is
    single-threaded (quadprog, the compiled solver; torch with one thread), so the CPU time of
    the calling thread is what it costs, and time spent waiting for a shared core is not.
    Agreement with TorchJD is recorded too (not timed): the largest per-row relative error."""
    names, skipped = op_backends("dual_cone", device)
    K = upgrad_grams(family, B, T, device)
    K_in = K[0] if B == 1 else K
    case = OpCase(
        "upgrad_weights",
        {"family": family, "B": B, "T": T},
        torch.float32,
        device,
        traffic.min_norm_bytes(B, T, torch.float32),
        TORCHJD_UPGRAD,
        problems=B,
        interleave=True,
        clock="thread",
    )
    case.skipped = skipped
    for name in names:
        case.providers[name] = partial(mtl_fast.upgrad_weights, K_in, backend=name)
    peers = _torchjd_upgrad()
    if isinstance(peers, str):
        case.skipped[TORCHJD_UPGRAD] = peers
        case.baseline = ""
    else:
        theirs, plugged = peers

        def loop(weighting: Any) -> object:
            return weighting(K_in) if B == 1 else [weighting(k) for k in K_in]

        case.providers[TORCHJD_UPGRAD] = partial(loop, theirs)
        case.providers[TORCHJD_PLUGGED] = partial(loop, plugged)
        truth = torch.stack([theirs(k.double()) for k in K.cpu()])
        for name in [*names, TORCHJD_PLUGGED]:
            try:
                out = case.providers[name]()
            except Exception:  # run_case times it again and records the error
                continue
            w = torch.stack(out) if isinstance(out, list) else out
            assert isinstance(w, torch.Tensor)
            w = w.reshape(B, T).double().cpu()
            scale = truth.abs().amax(dim=-1, keepdim=True).clamp_min(1e-300)
            err = float(((w - truth).abs() / scale).max())
            unit = "relative to each problem's largest weight"
            note = "against TorchJD's UPGradWeighting on the same Grams in float64"
            case.extra_rows.append(
                case.row(name, "float32", "max_rel_error_vs_torchjd", unit, err, note=note)
            )
    return case


@dataclass(frozen=True)
class OpGrid:
    """Which shapes each op is measured at."""

    Ps: tuple[int, ...]
    Ts: tuple[int, ...]
    adam_Ts: tuple[int, ...]
    solver: tuple[tuple[int, int], ...]  # (B, T)
    loop_problems: int | None  # cap on problems the Python-loop baseline runs per case
    dtypes: tuple[torch.dtype, ...]
    # The aggregators (op "aggregators"): task counts, batch sizes, interleaved rounds.
    aggregator_Ts: tuple[int, ...] = (2, 10, 40)
    aggregator_batches: tuple[int, ...] = (1, 256)
    aggregator_rounds: int = 30
    adam_Ps: tuple[int, ...] | None = None  # P of multi_adam/combine_adam (None: ``Ps``)
    # UPGrad weights: (B, T) shapes and Gram families; real-gradient families at B = 1 only.
    upgrad: tuple[tuple[int, int], ...] = ((1, 2), (1, 10), (1, 40), (1, 128))
    upgrad_families: tuple[str, ...] = UPGRAD_FAMILIES


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
    if "upgrad" in ops:
        for family in grid.upgrad_families:
            for B, T in grid.upgrad:
                if family == "resnet18" and B > 1:
                    continue  # B × T trunk backward passes to build: single problems only
                yield partial(upgrad_case, family, B, T, device)
    if "aggregators" in ops:
        from mtl_fast.tools.bench._aggregators import METHODS, aggregator_case

        for method in METHODS:
            for T in grid.aggregator_Ts:
                for B in grid.aggregator_batches:
                    rounds = (
                        grid.aggregator_rounds if B == 1 else max(3, grid.aggregator_rounds // 4)
                    )
                    yield partial(aggregator_case, method, T, B, device, rounds)
