"""Strategy-level benchmark: the whole training step (forward, per-task backward passes,
combination, optimizer) of each MTL method on a shared trunk, against the peers' full pipelines
on the same model, providers interleaved step by step.

Every provider gets its own copy of the model (same initial weights, same batch) and its own
optimizer, so no provider's state (flattened parameters, autograd hooks, optimizer moments) can
touch another's. Each provider is what a user of that library writes:

- ``sum``: one forward, ``backward(Σ_t L_t)``, one Adam step (the baseline);
- ``floor``: one forward, T backward passes ``L_t.backward()`` accumulating into ``.grad``, one
  Adam step: what any per-task-gradient method must at least pay on this framework;
- ``mgda``: :class:`mtl_fast.strategies.MGDA` (T backward passes into the arena, Gram, min-norm,
  combination, heads) and ``torch.optim.Adam``; ``mgda-batched`` the same with the arena filled
  by one vmapped backward pass (``batched=True``);
- ``mgda-ub``: :class:`mtl_fast.strategies.MGDAUB` and ``torch.optim.Adam``;
- ``upgrad``: :class:`mtl_fast.strategies.UPGrad` (as ``mgda``, UPGrad's weights from the
  dual-cone solver) and ``torch.optim.Adam``;
- ``mgda-fused``: the ops-level pipeline (arena, ``gram``, ``min_norm``, ``combine_adam`` on the
  flat trunk, Adam on the heads): the sync-free path a CUDA graph captures;
- ``multi-adam``, ``per-task``: one MultiAdam step over all tasks; Pascal et al.'s per-task steps;
- ``torchjd-mgda`` / ``torchjd-upgrad``: TorchJD's autojac pipeline, ``mtl_backward(losses,
  features=z)`` then ``jac_to_grad(trunk.parameters(), MGDA() | UPGrad())``, then Adam;
- ``torchjd-autogram-upgrad``: TorchJD's autogram pipeline, ``Engine(trunk, batch_dim=None)``,
  ``weights = UPGradWeighting()(engine.compute_gramian(losses))``, ``losses.backward(weights)``,
  then Adam;
- ``torchjd-mgda-arena`` / ``torchjd-upgrad-arena``: TorchJD's aggregators on mtl_fast's arena;
- ``libmtl-mgda``: LibMTL's ``MGDA`` weighting (``mgda_gn="none"``) hosted as LibMTL's trainer
  hosts it, then Adam;
- ``pcgrad``, ``imtlg``, ``cagrad``, ``nashmtl``, ``alignedmtl``, ``config``: the Gram-space
  aggregator's strategy (:class:`mtl_fast.strategies.PCGrad`, ...) and ``torch.optim.Adam``, as
  ``mgda``; ``torchjd-<name>`` of each (on request, when TorchJD and the solver it needs are
  installed): TorchJD's aggregator on mtl_fast's arena, then Adam.

Phases (device-synchronised at their boundaries): forward, backward (every backward pass),
combination (Gram + solve + combination, or the peer's aggregation), optimizer. Peak memory: the
growth of the peak (GPU: ``max_memory_allocated``; CPU: the resident set's high-water mark) while
the provider is built and takes two steps, measured alone before the timed, interleaved steps.
"""

from __future__ import annotations

import copy
import ctypes
import gc
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn

import mtl_fast
from mtl_fast.tools.bench._malloc import KernelCounters
from mtl_fast.tools.bench._models import make_trunk, synthetic_batch
from mtl_fast.tools.bench._ops import OpCase, op_backends, run_case
from mtl_fast.tools.bench._report import Report, Row
from mtl_fast.tools.bench._timing import synchronize

_BASE_STRATEGIES = (
    "sum",
    "floor",
    "mgda",
    "mgda-batched",
    "mgda-ub",
    "mgda-fused",
    "upgrad",
    "multi-adam",
    "per-task",
    "torchjd-mgda",
    "torchjd-upgrad",
    "torchjd-autogram-upgrad",
    "torchjd-mgda-arena",
    "torchjd-upgrad-arena",
    "libmtl-mgda",
)
AGGREGATOR_STEPS = ("pcgrad", "imtlg", "cagrad", "nashmtl", "alignedmtl", "config")
TORCHJD_AGGREGATOR_STEPS = tuple(f"torchjd-{name}" for name in AGGREGATOR_STEPS)
# What a run measures when not told; TORCHJD_AGGREGATOR_STEPS only when asked (--strategies).
DEFAULT_STRATEGIES: tuple[str, ...] = (*_BASE_STRATEGIES, *AGGREGATOR_STEPS)
STRATEGIES: tuple[str, ...] = (*DEFAULT_STRATEGIES, *TORCHJD_AGGREGATOR_STEPS)
# The peers' full pipelines: "TorchJD's best" is the fastest of these in a setting.
TORCHJD_PIPELINES = ("torchjd-mgda", "torchjd-upgrad", "torchjd-autogram-upgrad")
LR = 1e-4
# A provider whose first step takes longer than this is dropped from the setting (with the
# time as its reason): it would take the whole run.
MAX_STEP_S = 90.0


class PhaseTimer:
    """Accumulates wall time per phase, synchronising the device at every boundary."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.acc: dict[str, float] = defaultdict(float)
        self._t = 0.0

    def start(self) -> None:
        synchronize(self.device)
        self._t = time.perf_counter()

    def lap(self, phase: str) -> None:
        synchronize(self.device)
        now = time.perf_counter()
        self.acc[phase] += now - self._t
        self._t = now


@dataclass(frozen=True)
class StrategySetting:
    trunk: str
    T: int
    batch: int
    image: int


def _adam(params: list[nn.Parameter], device: torch.device) -> torch.optim.Adam:
    try:
        return torch.optim.Adam(params, lr=LR, fused=True)
    except (RuntimeError, ValueError):
        return torch.optim.Adam(params, lr=LR, foreach=True)


class _Problem:
    """Trunk, T linear heads, a synthetic batch and the per-task losses."""

    def __init__(self, s: StrategySetting, device: torch.device) -> None:
        torch.manual_seed(0)
        self.trunk, feats = make_trunk(s.trunk, s.image)
        self.trunk.to(device)
        self.heads = nn.ModuleList(nn.Linear(feats, 1) for _ in range(s.T)).to(device)
        self.x, self.y = synthetic_batch(s.trunk, s.batch, s.image, s.T, device)
        self.T = s.T
        self.shared = [p for p in self.trunk.parameters() if p.requires_grad]
        self.head_params = list(self.heads.parameters())

    def copy(self) -> _Problem:
        """The same model (weights copied) and batch, with its own parameters."""
        other = copy.copy(self)
        other.trunk = copy.deepcopy(self.trunk)
        other.heads = copy.deepcopy(self.heads)
        other.shared = [p for p in other.trunk.parameters() if p.requires_grad]
        other.head_params = list(other.heads.parameters())
        return other

    def losses_from(
        self, z: torch.Tensor, tasks: range | list[int] | None = None
    ) -> list[torch.Tensor]:
        ids = range(self.T) if tasks is None else tasks
        return [nn.functional.mse_loss(self.heads[t](z).squeeze(1), self.y[:, t]) for t in ids]

    def timed_losses(
        self, tm: PhaseTimer, tasks: range | list[int] | None = None
    ) -> list[torch.Tensor]:
        """The losses of one forward pass through trunk and heads; its time goes to "forward"."""
        losses = self.losses_from(self.trunk(self.x), tasks)
        tm.lap("forward")
        return losses

    def zero_grad(self) -> None:
        for p in self.shared + self.head_params:
            p.grad = None


Step = Callable[[PhaseTimer], None]


def _torchjd_aggregator(name: str, T: int) -> Any:
    """TorchJD's aggregator for ``torchjd-<name>`` (its CAGrad and NashMTL need cvxpy)."""
    from torchjd import aggregation as a

    makers: dict[str, Callable[[], Any]] = {
        "mgda": a.MGDA,
        "upgrad": a.UPGrad,
        "pcgrad": a.PCGrad,
        "imtlg": a.IMTLG,
        "cagrad": lambda: a.CAGrad(c=0.5),
        "nashmtl": lambda: a.NashMTL(n_tasks=T),
        "alignedmtl": a.AlignedMTL,
        "config": a.ConFIG,
    }
    return makers[name]()


def _optimizer_step(
    opt: torch.optim.Optimizer, tm: PhaseTimer, phase: str = "optimizer", set_to_none: bool = True
) -> None:
    """``opt`` steps and zeroes its gradients; the time goes to ``phase``."""
    opt.step()
    opt.zero_grad(set_to_none=set_to_none)
    tm.lap(phase)


def _make_step(name: str, prob: _Problem, device: torch.device) -> Step:
    T = prob.T
    if name in ("sum", "floor"):
        opt = _adam(prob.shared + prob.head_params, device)

        def step(tm: PhaseTimer) -> None:
            losses = prob.timed_losses(tm)
            if name == "sum":
                torch.stack(losses).sum().backward()
            else:
                for t, loss in enumerate(losses):
                    loss.backward(retain_graph=t < T - 1)
            tm.lap("backward")
            _optimizer_step(opt, tm)

        return step

    if name in ("mgda", "mgda-batched", "mgda-ub", "upgrad", *AGGREGATOR_STEPS):
        from mtl_fast import strategies as st

        opt = _adam(prob.shared + prob.head_params, device)
        cls: Any = {
            "mgda-ub": st.MGDAUB,
            "upgrad": st.UPGrad,
            "pcgrad": st.PCGrad,
            "imtlg": st.IMTLG,
            "cagrad": partial(st.CAGrad, c=0.5),
            "nashmtl": st.NashMTL,
            "alignedmtl": st.AlignedMTL,
            "config": st.ConFIG,
        }.get(name, st.MGDA)
        strategy = cls(prob.shared, prob.head_params, num_tasks=T, batched=name == "mgda-batched")

        def step(tm: PhaseTimer) -> None:
            strategy._phase = tm.lap
            z = prob.trunk(prob.x)
            losses = prob.losses_from(z)
            tm.lap("forward")
            strategy.backward(losses, features=z)
            _optimizer_step(opt, tm)

        step.strategy = strategy  # type: ignore[attr-defined]
        return step

    if name in (
        "mgda-fused",
        "torchjd-mgda-arena",
        "torchjd-upgrad-arena",
        *TORCHJD_AGGREGATOR_STEPS,
    ):
        arena = mtl_fast.TaskGradients(prob.shared, num_tasks=T)
        head_opt = _adam(prob.head_params, device)
        combine: Step
        if name == "mgda-fused":
            flat = mtl_fast.flatten_parameters(prob.shared)
            m, v = torch.zeros_like(flat), torch.zeros_like(flat)
            n = torch.zeros(1, dtype=torch.float32, device=device)

            def combine(tm: PhaseTimer) -> None:
                K = mtl_fast.gram(arena.J)
                tm.lap("gram")
                w = mtl_fast.min_norm(K)
                tm.lap("solve")
                mtl_fast.combine_adam(arena.J, w, flat, m, v, n, lr=LR)
                tm.lap("combine_adam")

        else:
            peer = _torchjd_aggregator(name.removeprefix("torchjd-").removesuffix("-arena"), T)
            shared_opt = _adam(prob.shared, device)

            def combine(tm: PhaseTimer) -> None:
                with torch.no_grad():
                    d = peer(arena.J)
                tm.lap("aggregate")
                arena.assign_grad(d)
                _optimizer_step(shared_opt, tm, "shared_optimizer")

        def arena_step(tm: PhaseTimer) -> None:
            arena.backward(prob.timed_losses(tm))
            tm.lap("backward")
            combine(tm)
            _optimizer_step(head_opt, tm, "head_optimizer")

        arena_step.arena = arena  # type: ignore[attr-defined]
        return arena_step

    if name in ("torchjd-mgda", "torchjd-upgrad"):
        from torchjd.autojac import jac_to_grad, mtl_backward

        opt = _adam(prob.shared + prob.head_params, device)
        aggregator = _torchjd_aggregator(name.removeprefix("torchjd-"), T)
        trunk_params = list(prob.trunk.parameters())

        def step(tm: PhaseTimer) -> None:
            features = prob.trunk(prob.x)
            losses = prob.losses_from(features)
            tm.lap("forward")
            mtl_backward(losses, features=features)
            tm.lap("backward")
            jac_to_grad(trunk_params, aggregator)
            tm.lap("aggregate")
            _optimizer_step(opt, tm)

        return step

    if name == "torchjd-autogram-upgrad":
        from torchjd.aggregation import UPGradWeighting
        from torchjd.autogram import Engine

        opt = _adam(prob.shared + prob.head_params, device)
        # batch_dim=None: the T losses are batch means (and BatchNorm forbids a batch_dim).
        engine = Engine(prob.trunk, batch_dim=None)
        weighting = UPGradWeighting()

        def step(tm: PhaseTimer) -> None:
            losses = torch.stack(prob.losses_from(prob.trunk(prob.x)))
            tm.lap("forward")
            gramian = engine.compute_gramian(losses)
            tm.lap("backward")
            weights = weighting(gramian)
            tm.lap("aggregate")
            losses.backward(weights)
            tm.lap("backward")
            _optimizer_step(opt, tm)

        step.engine = engine  # type: ignore[attr-defined]
        return step

    if name == "libmtl-mgda":
        host = _libmtl_host(prob, device)
        opt = _adam(prob.shared + prob.head_params, device)

        def step(tm: PhaseTimer) -> None:
            losses = prob.timed_losses(tm)
            host.backward(losses, mgda_gn="none")  # T backward passes, solve, shared .grad
            tm.lap("backward")
            # LibMTL's trainer keeps the zeroed .grad.
            _optimizer_step(opt, tm, set_to_none=False)

        return step

    if name in ("multi-adam", "per-task"):
        arena = mtl_fast.TaskGradients(prob.shared, num_tasks=T)
        multi = mtl_fast.MultiAdam(prob.shared, num_tasks=T, lr=LR)
        head_opt = _adam(prob.head_params, device)
        if name == "multi-adam":

            def step(tm: PhaseTimer) -> None:
                arena.backward(prob.timed_losses(tm))
                tm.lap("backward")
                multi.step(arena)
                _optimizer_step(head_opt, tm)

            return step

        def per_task(tm: PhaseTimer) -> None:
            for t in range(T):
                (loss,) = prob.timed_losses(tm, [t])
                with arena.task(t):
                    loss.backward()
                tm.lap("backward")
                multi.step(arena, tasks=[t])
                _optimizer_step(head_opt, tm)

        return per_task
    raise ValueError(f"strategy must be one of {STRATEGIES}, got {name!r}")


def _libmtl_host(prob: _Problem, device: torch.device) -> Any:
    """LibMTL's MGDA weighting hosted as LibMTL's trainer hosts it (the weighting is a mixin of
    the model: it reads ``task_num``, ``device``, ``rep_grad``, ``get_share_params()`` and
    ``zero_grad_share_params()`` from ``self``)."""
    LibMTLMGDA = _libmtl_mgda_class()
    trunk = prob.trunk

    class _Host(LibMTLMGDA):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            super().__init__()
            self.task_num = prob.T
            self.device = device
            self.rep_grad = False

        def get_share_params(self) -> Any:
            return trunk.parameters()

        def zero_grad_share_params(self) -> None:
            trunk.zero_grad(set_to_none=False)

    return _Host()


def _libmtl_mgda_class() -> Any:
    """LibMTL's ``MGDA`` weighting class, imported without running LibMTL's package
    ``__init__``: that of LibMTL 1.1.5 imports ``torchvision.models.utils`` (removed in
    torchvision 0.13) for its ResNet backbones; the weighting modules need only torch."""
    import importlib
    import importlib.util
    import sys
    import types

    done = sys.modules.get("LibMTL.weighting.MGDA")
    if done is not None:
        return done.MGDA
    spec = importlib.util.find_spec("LibMTL")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("No module named 'LibMTL'")
    root = next(iter(spec.submodule_search_locations))
    for pkg, path in (("LibMTL", root), ("LibMTL.weighting", f"{root}/weighting")):
        if pkg not in sys.modules:
            module = types.ModuleType(pkg)
            module.__path__ = [path]
            sys.modules[pkg] = module
    return importlib.import_module("LibMTL.weighting.MGDA").MGDA


def peer_reason(name: str) -> str | None:
    """Why the peer behind ``name`` cannot run here, or None."""
    if name.startswith("torchjd"):
        return torchjd_reason()
    if name.startswith("libmtl"):
        try:
            _libmtl_mgda_class()
        except ImportError as exc:
            return f"LibMTL is not installed ({exc}): pip install LibMTL"
    return None


def make_strategy_step(
    name: str, setting: StrategySetting, device: torch.device
) -> Callable[[], None]:
    """One full training step of strategy ``name`` as a zero-argument callable (for timing
    loops such as pytest-benchmark's); the model and data are built once, here."""
    if (reason := peer_reason(name)) is not None:
        raise RuntimeError(reason)
    prob = _Problem(setting, device)
    step = _make_step(name, prob, device)

    def run() -> None:
        tm = PhaseTimer(device)
        tm.start()
        step(tm)

    run.problem = prob  # type: ignore[attr-defined]  # keep the model alive with the closure
    return run


_PHASE_OF = {
    "gram": "combination",
    "solve": "combination",
    "solve_ub": "combination",
    "aggregate": "combination",
    "combination": "combination",
    "combine_adam": "optimizer",
    "shared_optimizer": "optimizer",
    "head_optimizer": "optimizer",
}


def torchjd_reason() -> str | None:
    try:
        import torchjd  # noqa: F401
    except ImportError:
        return "TorchJD is not installed (pip install 'mtl-fast[peers]')"
    return None


def _status_bytes(field: str) -> int | None:
    """A size in the process's ``/proc`` status ("VmRSS", "VmHWM"), in bytes; None off Linux."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _rss_bytes() -> int | None:
    return _status_bytes("VmRSS")


def _hwm_bytes() -> int | None:
    return _status_bytes("VmHWM")


class PeakMemory:
    """Growth of the peak memory while the block runs, in bytes (``peak``; None when it cannot
    be read here). GPU: ``torch.cuda.max_memory_allocated`` over what was allocated on entry.
    CPU (Linux): the resident set's high-water mark (reset on entry through
    ``/proc/self/clear_refs``, after returning freed heap to the system) over the resident set
    on entry: it counts pages touched, so memory the allocator reuses from earlier blocks is not
    counted twice, and a provider's persistent buffers (arena, moments) are."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak: int | None = None
        self._base: int | None = None

    def __enter__(self) -> PeakMemory:
        gc.collect()
        if self.device.type == "cuda":
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            return self
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            return self
        self._base = _rss_bytes()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._base is None:
            return
        if self.device.type == "cuda":
            synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - self._base
        else:
            hwm = _hwm_bytes()
            self.peak = None if hwm is None else max(0, hwm - self._base)


def _one_step(step: Step, device: torch.device) -> dict[str, float]:
    tm = PhaseTimer(device)
    tm.start()
    step(tm)
    return dict(tm.acc)


def run_setting(
    s: StrategySetting,
    strategies: list[str],
    device: torch.device,
    report: Report,
    *,
    steps: int,
    warmup: int,
    timing: dict[str, Any],
) -> None:
    """Time every strategy on one (trunk, T), interleaved step by step, then the combination
    alone on the real gradients."""
    base = _Problem(s, device)
    P = sum(p.numel() for p in base.shared)
    shape = {"trunk": s.trunk, "T": s.T, "P": P, "batch": s.batch, "image": s.image}
    dname = str(next(base.trunk.parameters()).dtype).replace("torch.", "")

    def row(name: str, metric: str, unit: str, value: float, **kw: Any) -> None:
        report.rows.append(
            Row("strategy", "step", name, dict(shape), dname, metric, unit, value, **kw)
        )

    # 1. Alone, one after another: does it run, how long is one step, how much memory. A
    # throwaway summed step first, so that the process's one-time allocations (thread pools,
    # kernel caches) are not counted against the first provider.
    warm = base.copy()
    _one_step(_make_step("sum", warm, device), device)
    del warm
    peaks: dict[str, int | None] = {}
    for name in strategies:
        if (reason := peer_reason(name)) is not None:
            report.skip("strategy", "step", name, shape, reason)
            continue
        try:
            with PeakMemory(device) as mem:
                prob = base.copy()
                step = _make_step(name, prob, device)
                t0 = time.perf_counter()
                _one_step(step, device)
                first = time.perf_counter() - t0
                if first <= MAX_STEP_S:
                    _one_step(step, device)
        except Exception as exc:  # a peer that cannot run this model, OOM
            report.skip("strategy", "step", name, shape, f"raised {type(exc).__name__}: {exc}")
            continue
        finally:
            step = prob = None  # type: ignore[assignment]
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()  # after an OOM, leave the next provider the memory
        if first > MAX_STEP_S:
            report.skip(
                "strategy", "step", name, shape, f"one step took {first:.0f} s (> {MAX_STEP_S} s)"
            )
            continue
        peaks[name] = mem.peak
    # 2. Interleaved: every provider takes its step in turn, so the machine's load hits all.
    live: dict[str, Step] = {}
    keep: dict[str, _Problem] = {}
    for name in peaks:
        keep[name] = base.copy()
        live[name] = _make_step(name, keep[name], device)
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in live}
    # The process's page faults and kernel time per step, on the CPU (the heap's part: see
    # _malloc); on a GPU the host's counters say little about the step.
    counted = device.type == "cpu" and KernelCounters.AVAILABLE
    kernel: dict[str, list[KernelCounters]] = {name: [] for name in live}
    for i in range(warmup + steps):
        for name in list(live):
            k0 = KernelCounters.now() if counted else None
            try:
                acc = _one_step(live[name], device)
            except Exception as exc:
                report.skip("strategy", "step", name, shape, f"raised {type(exc).__name__}: {exc}")
                del live[name]
                samples.pop(name, None)
                continue
            if i >= warmup:
                samples[name].append(acc)
                if k0 is not None:
                    kernel[name].append(KernelCounters.now().since(k0))
    totals: dict[str, float] = {}
    note = f"median of {steps} interleaved steps after {warmup} warm-up"
    for name, smp in samples.items():
        keys = sorted({k for x in smp for k in x})
        med = {k: statistics.median(x.get(k, 0.0) for x in smp) for k in keys}
        phases: dict[str, float] = defaultdict(float)
        for k, v in med.items():
            phases[_PHASE_OF.get(k, k)] += v
        for ph in ("forward", "backward", "combination", "optimizer"):
            phases.setdefault(ph, 0.0)
        phases["total"] = statistics.median(sum(x.values()) for x in smp)
        totals[name] = phases["total"]
        sub = [(k, v) for k, v in med.items() if k in _PHASE_OF and k != "combination"]
        for k, v in list(phases.items()) + sub:
            q = {}
            if k == "total":
                q = {"q20": _quantile(smp, 0.2), "q80": _quantile(smp, 0.8)}
            row(name, f"{k}_ms", "ms", v * 1e3, note=note, **q)
        if counted:
            faults = statistics.median(k.faults for k in kernel[name])
            row(name, "page_faults", "count", faults, note="minor page faults per step, median")
            sys_ms = statistics.median(k.sys_s for k in kernel[name]) * 1e3
            row(name, "sys_ms", "ms", sys_ms, note="system CPU time per step, median")
        peak = peaks.get(name)
        if peak is not None:
            note_peak = "growth of the peak while built and stepped twice, alone"
            row(name, "peak_memory_MB", "MB", peak / 2**20, note=note_peak)
        if phases["combination"] > 0 and name in ("mgda", "mgda-fused"):
            share = phases["combination"] / (phases["forward"] + phases["backward"])
            note_share = f"{name} combination / (forward + backward)"
            row(name, "combination_share_of_fwd_bwd", "fraction", share, note=note_share)
        strategy = getattr(live.get(name), "strategy", None)
        arena = getattr(strategy, "_arena_cache", None)
        if name == "mgda-batched" and arena is not None and arena.batched_fallback:
            report.skip(
                "strategy",
                "batched",
                name,
                shape,
                f"vmap fell back to sequential: {arena.batched_fallback}",
            )
    best = min((totals[n] for n in TORCHJD_PIPELINES if n in totals), default=None)
    for name, tot in totals.items():
        for metric, ref in (
            ("overhead_vs_sum", totals.get("sum")),
            ("vs_floor", totals.get("floor")),
            ("vs_torchjd_best", best),
        ):
            if ref:
                row(name, metric, "×", tot / ref)
        if "floor" in samples and name != "floor":
            # Each step over the floor's step of the same round: drift of the machine between
            # rounds cancels; q20-q80 shows how far single steps scatter.
            paired = sorted(
                sum(x.values()) / sum(f.values())
                for x, f in zip(samples[name], samples["floor"], strict=True)
            )
            row(
                name,
                "vs_floor_paired",
                "×",
                statistics.median(paired),
                q20=_pick(paired, 0.2),
                q80=_pick(paired, 0.8),
                note="median over rounds of the step / the floor's step of the same round",
            )
    mgda_J = None
    for name in ("mgda", "mgda-fused"):
        provider = live.get(name)
        arena = getattr(getattr(provider, "strategy", None), "_arena_cache", None)
        arena = arena if arena is not None else getattr(provider, "arena", None)
        if arena is not None:
            mgda_J = arena.J
            break
    upgrad_J = None
    upgrad_arena = getattr(getattr(live.get("upgrad"), "strategy", None), "_arena_cache", None)
    if upgrad_arena is not None:
        upgrad_J = upgrad_arena.J
    live.clear()
    gc.collect()
    if mgda_J is not None:
        run_case(combination_case(mgda_J, shape, device), report, timing)
    if upgrad_J is not None:
        run_case(upgrad_combination_case(upgrad_J, shape, device), report, timing)
    del keep, base, mgda_J, upgrad_J
    gc.collect()


def _pick(ordered: list[float], q: float) -> float:
    """The element of the sorted ``ordered`` nearest the q-quantile."""
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def _quantile(samples: list[dict[str, float]], q: float) -> float:
    return _pick(sorted(sum(x.values()) for x in samples), q) * 1e3


def _mgda_combination(J: torch.Tensor, backend: str) -> torch.Tensor:
    K = mtl_fast.gram(J, backend=backend, check_finite=False)
    w = mtl_fast.min_norm(K, backend=backend, check_finite=False)
    return mtl_fast.combine(J, w, backend=backend)


def _combination_case(
    name: str,
    op: str,
    step: Callable[[torch.Tensor, str], torch.Tensor],
    J: torch.Tensor,
    shape: dict[str, Any],
    device: torch.device,
    baseline: str,
) -> OpCase:
    """A gradient combination on real trunk gradients: ``step(J, backend)`` per backend of
    ``op``, the case's other providers left to the caller."""
    T, P = J.shape
    names, skipped = op_backends(op, device)
    case = OpCase(
        name,
        {"trunk": shape["trunk"], "T": T, "P": P},
        J.dtype,
        device,
        # Two reads of J (gram, combine) and one write of d: what the unfused sequence moves.
        2 * J.numel() * J.element_size() + P * J.element_size(),
        baseline,
    )
    case.skipped = skipped
    for backend in names:
        case.providers[backend] = partial(step, J, backend)
    return case


def _torchjd_peers(case: OpCase, J: torch.Tensor, aggregators: tuple[str, ...]) -> bool:
    """TorchJD's ``aggregators`` (default arguments) on J, as providers "torchjd <name>";
    False, with the reason in ``case.skipped``, when TorchJD is not installed."""
    reason = torchjd_reason()
    if reason is not None:
        case.skipped["torchjd"] = reason
        return False
    import torchjd.aggregation

    for name in aggregators:
        label = f"torchjd {name}"
        try:
            peer = getattr(torchjd.aggregation, name)()
        except ImportError as exc:  # an optional solver of TorchJD's is missing
            case.skipped[label] = f"ImportError: {exc}"
        else:
            case.providers[label] = partial(peer, J)
    return True


def combination_case(J: torch.Tensor, shape: dict[str, Any], device: torch.device) -> OpCase:
    """MGDA's gradient combination on real trunk gradients: ``combine(J, min_norm(gram(J)))``
    per backend, against ``torch.mm(J, J.T)`` + ``w @ J`` (the floor any implementation pays on
    the same framework) and, when installed, TorchJD's MGDA and UPGrad aggregators."""
    floor_name = "torch.mm + w @ J"
    case = _combination_case(
        "mgda_combination", "gram", _mgda_combination, J, shape, device, floor_name
    )
    w = torch.full((J.shape[0],), 1.0 / J.shape[0], dtype=J.dtype, device=device)

    def floor() -> torch.Tensor:
        torch.mm(J, J.T)
        return w @ J

    case.providers[floor_name] = floor
    _torchjd_peers(case, J, ("MGDA", "UPGrad"))
    return case


def _upgrad_combination(J: torch.Tensor, backend: str) -> torch.Tensor:
    K = mtl_fast.gram(J, backend=backend if backend != "cpu" else None, check_finite=False)
    w = mtl_fast.upgrad_weights(K, backend=backend, check_finite=False)
    return mtl_fast.combine(J, w, backend=backend if backend != "cpu" else None)


def upgrad_combination_case(J: torch.Tensor, shape: dict[str, Any], device: torch.device) -> OpCase:
    """UPGrad's gradient combination on real trunk gradients, ``combine(J, upgrad_weights(
    gram(J)))`` per backend of the solve ("cpu" solves; its Gram and combination run on "auto"),
    against TorchJD's ``UPGrad()`` aggregator on the same J (when installed)."""
    case = _combination_case(
        "upgrad_combination", "dual_cone", _upgrad_combination, J, shape, device, "torchjd UPGrad"
    )
    if not _torchjd_peers(case, J, ("UPGrad",)):
        case.baseline = ""
    return case
