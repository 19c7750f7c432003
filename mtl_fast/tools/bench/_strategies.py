"""Strategy-level benchmark: the full cost of one training step of each MTL strategy on a
shared trunk of realistic size, split into phases, as overhead over the plain summed-loss step.

Every strategy is written with the public ``mtl_fast`` API (the gradient arena, ``gram``,
``min_norm``, ``combine_adam``, ``MultiAdam``), so it measures what a user of the library pays:

- ``sum``: one forward, ``backward(Σ_t L_t)``, one Adam step (the baseline);
- ``mgda``: one forward, T backwards into the (T, P) arena, Gram + min-norm weights on the raw
  gradients (no normalisation), then ``combine_adam`` (d = Σ w_t g_t and Adam, fused) on the
  flat trunk and Adam on the heads;
- ``mgda-ub``: one forward; T head-only backwards to the trunk output Z; Gram over the ∇_Z L_t
  (batch included) + min-norm; one trunk backward of Σ w_t L_t (the weights applied to the raw
  losses, as the official code does, but without its second forward: the trunk graph is kept);
  one Adam step;
- ``upgrad``: like ``mgda`` with UPGrad's weights (:func:`mtl_fast.upgrad_weights`, the
  dual-cone solver) instead of the min-norm point;
- ``multi-adam``: one forward, T backwards into the arena, one ``MultiAdam`` step over all
  tasks (separate moments, summed directions);
- ``per-task``: Pascal et al. with groups of one task: T × (fresh forward, backward of L_t,
  ``MultiAdam`` step of task t);
- ``torchjd-mgda`` / ``torchjd-upgrad`` (when TorchJD is installed): like ``mgda``, with the
  combination done by TorchJD's aggregator on the same arena, then one Adam step.

Phases (device-synchronised at their boundaries): forward, backward (every backward pass),
combination (Gram + solve, or the peer's aggregation), optimizer (every parameter update).
"""

from __future__ import annotations

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
from mtl_fast.tools.bench._models import make_trunk, synthetic_batch
from mtl_fast.tools.bench._ops import OpCase, op_backends, run_case
from mtl_fast.tools.bench._report import Report, Row
from mtl_fast.tools.bench._timing import synchronize

STRATEGIES = (
    "sum",
    "mgda",
    "upgrad",
    "mgda-ub",
    "multi-adam",
    "per-task",
    "torchjd-mgda",
    "torchjd-upgrad",
)
LR = 1e-4


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

    def losses_from(
        self, z: torch.Tensor, tasks: range | list[int] | None = None
    ) -> list[torch.Tensor]:
        ids = range(self.T) if tasks is None else tasks
        return [nn.functional.mse_loss(self.heads[t](z).squeeze(1), self.y[:, t]) for t in ids]

    def zero_grad(self) -> None:
        for p in self.shared + self.head_params:
            p.grad = None


def _make_step(name: str, prob: _Problem, device: torch.device) -> Callable[[PhaseTimer], None]:
    T = prob.T
    if name == "sum":
        opt = _adam(prob.shared + prob.head_params, device)

        def step(tm: PhaseTimer) -> None:
            losses = prob.losses_from(prob.trunk(prob.x))
            tm.lap("forward")
            torch.stack(losses).sum().backward()
            tm.lap("backward")
            opt.step()
            opt.zero_grad(set_to_none=True)
            tm.lap("optimizer")

        return step

    if name in ("mgda", "upgrad", "torchjd-mgda", "torchjd-upgrad"):
        arena = mtl_fast.TaskGradients(prob.shared, num_tasks=T)
        head_opt = _adam(prob.head_params, device)
        weights_of = mtl_fast.upgrad_weights if name == "upgrad" else mtl_fast.min_norm
        if name in ("mgda", "upgrad"):
            flat = mtl_fast.flatten_parameters(prob.shared)
            m, v = torch.zeros_like(flat), torch.zeros_like(flat)
            n = torch.zeros(1, dtype=torch.float32, device=device)
            aggregate = None
        else:
            from torchjd.aggregation import MGDA, UPGrad

            aggregate = MGDA() if name == "torchjd-mgda" else UPGrad()
            shared_opt = _adam(prob.shared, device)

        def step(tm: PhaseTimer) -> None:
            losses = prob.losses_from(prob.trunk(prob.x))
            tm.lap("forward")
            arena.backward(losses)
            tm.lap("backward")
            if aggregate is None:
                K = mtl_fast.gram(arena.J)
                tm.lap("gram")
                w = weights_of(K)
                tm.lap("solve")
                mtl_fast.combine_adam(arena.J, w, flat, m, v, n, lr=LR)
                tm.lap("combine_adam")
            else:
                d = aggregate(arena.J)
                tm.lap("aggregate")
                arena.assign_grad(d)
                shared_opt.step()
                shared_opt.zero_grad(set_to_none=True)
                tm.lap("shared_optimizer")
            head_opt.step()
            head_opt.zero_grad(set_to_none=True)
            tm.lap("head_optimizer")

        return step

    if name == "mgda-ub":
        opt = _adam(prob.shared + prob.head_params, device)

        def step(tm: PhaseTimer) -> None:
            z = prob.trunk(prob.x)
            zd = z.detach().requires_grad_()
            losses = prob.losses_from(zd)
            tm.lap("forward")
            G = torch.stack(
                [torch.autograd.grad(L, zd, retain_graph=True)[0].reshape(-1) for L in losses]
            )
            tm.lap("backward")
            w = mtl_fast.min_norm(mtl_fast.gram(G))
            tm.lap("solve_ub")
            total = (w.to(z.dtype) * torch.stack(losses)).sum()
            total.backward()
            z.backward(zd.grad)
            tm.lap("backward")
            opt.step()
            opt.zero_grad(set_to_none=True)
            tm.lap("optimizer")

        return step

    if name in ("multi-adam", "per-task"):
        arena = mtl_fast.TaskGradients(prob.shared, num_tasks=T)
        multi = mtl_fast.MultiAdam(prob.shared, num_tasks=T, lr=LR)
        head_opt = _adam(prob.head_params, device)
        if name == "multi-adam":

            def step(tm: PhaseTimer) -> None:
                losses = prob.losses_from(prob.trunk(prob.x))
                tm.lap("forward")
                arena.backward(losses)
                tm.lap("backward")
                multi.step(arena)
                head_opt.step()
                head_opt.zero_grad(set_to_none=True)
                tm.lap("optimizer")

            return step

        def per_task(tm: PhaseTimer) -> None:
            for t in range(T):
                (loss,) = prob.losses_from(prob.trunk(prob.x), [t])
                tm.lap("forward")
                with arena.task(t):
                    loss.backward()
                tm.lap("backward")
                multi.step(arena, tasks=[t])
                head_opt.step()
                head_opt.zero_grad(set_to_none=True)
                tm.lap("optimizer")

        return per_task
    raise ValueError(f"strategy must be one of {STRATEGIES}, got {name!r}")


def make_strategy_step(
    name: str, setting: StrategySetting, device: torch.device
) -> Callable[[], None]:
    """One full training step of strategy ``name`` as a zero-argument callable (for timing
    loops such as pytest-benchmark's); the model and data are built once, here."""
    if name.startswith("torchjd") and (reason := torchjd_reason()):
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
    """Time every strategy on one (trunk, T), then the combination alone on the real gradients."""
    prob = _Problem(s, device)
    P = sum(p.numel() for p in prob.shared)
    shape = {"trunk": s.trunk, "T": s.T, "P": P, "batch": s.batch, "image": s.image}
    dname = str(next(prob.trunk.parameters()).dtype).replace("torch.", "")
    totals: dict[str, float] = {}
    mgda_J: torch.Tensor | None = None
    upgrad_J: torch.Tensor | None = None
    for name in strategies:
        if name.startswith("torchjd") and (reason := torchjd_reason()):
            report.skip("strategy", "step", name, shape, reason)
            continue
        prob.zero_grad()
        samples: list[dict[str, float]] = []
        try:
            step = _make_step(name, prob, device)
            for i in range(warmup + steps):
                tm = PhaseTimer(device)
                tm.start()
                step(tm)
                if i >= warmup:
                    samples.append(dict(tm.acc))
        except Exception as exc:  # a peer's missing extra, a backend under development, OOM
            report.skip("strategy", "step", name, shape, f"raised {type(exc).__name__}: {exc}")
            prob.zero_grad()
            gc.collect()
            continue
        keys = sorted({k for smp in samples for k in smp})
        med: dict[str, float] = {}
        for k in keys:
            med[k] = statistics.median(smp.get(k, 0.0) for smp in samples)
        phases: dict[str, float] = defaultdict(float)
        for k, v in med.items():
            phases[_PHASE_OF.get(k, k)] += v
        phases["total"] = statistics.median(sum(smp.values()) for smp in samples)
        for ph in ("forward", "backward", "combination", "optimizer"):
            phases.setdefault(ph, 0.0)
        totals[name] = phases["total"]
        note = f"median of {steps} steps after {warmup} warm-up"
        for k, v in list(phases.items()) + [(k, v) for k, v in med.items() if k in _PHASE_OF]:
            report.rows.append(
                Row(
                    "strategy",
                    "step",
                    name,
                    dict(shape),
                    dname,
                    f"{k}_ms",
                    "ms",
                    v * 1e3,
                    note=note,
                )
            )
        if name == "upgrad":
            upgrad_J = _arena_of(step)
        if name == "mgda":
            # The whole gradient-combination part (gram + solve + combine + Adam) against the
            # forward + backward it serves.
            part = med.get("gram", 0.0) + med.get("solve", 0.0) + med.get("combine_adam", 0.0)
            fb = phases["forward"] + phases["backward"]
            report.rows.append(
                Row(
                    "strategy",
                    "step",
                    name,
                    dict(shape),
                    dname,
                    "combination_share_of_fwd_bwd",
                    "fraction",
                    part / fb,
                    note="mgda combination_share_of_fwd_bwd = (gram + solve + combine_adam) / (forward + backward)",
                )
            )
            mgda_J = _arena_of(step)
        del step
        gc.collect()
    if "sum" in totals:
        for name, tot in totals.items():
            report.rows.append(
                Row(
                    "strategy",
                    "step",
                    name,
                    dict(shape),
                    dname,
                    "overhead_vs_sum",
                    "×",
                    tot / totals["sum"],
                )
            )
    if mgda_J is not None:
        run_case(combination_case(mgda_J, shape, device), report, timing)
    if upgrad_J is not None:
        run_case(upgrad_combination_case(upgrad_J, shape, device), report, timing)
    del prob, mgda_J, upgrad_J
    gc.collect()


def _arena_of(step: Callable[[PhaseTimer], None]) -> torch.Tensor | None:
    """The arena J an MGDA step closure filled (the real gradients of its last step)."""
    for cell in step.__closure__ or ():
        obj = cell.cell_contents
        if isinstance(obj, mtl_fast.TaskGradients):
            return obj.J
    return None


def _mgda_combination(J: torch.Tensor, backend: str) -> torch.Tensor:
    K = mtl_fast.gram(J, backend=backend, check_finite=False)
    w = mtl_fast.min_norm(K, backend=backend, check_finite=False)
    return mtl_fast.combine(J, w, backend=backend)


def combination_case(J: torch.Tensor, shape: dict[str, Any], device: torch.device) -> OpCase:
    """MGDA's gradient combination on real trunk gradients: ``combine(J, min_norm(gram(J)))``
    per backend, against ``torch.mm(J, J.T)`` + ``w @ J`` (the floor any implementation pays on
    the same framework) and, when installed, TorchJD's MGDA and UPGrad aggregators."""
    T, P = J.shape
    names, skipped = op_backends("gram", device)
    case = OpCase(
        "mgda_combination",
        {"trunk": shape["trunk"], "T": T, "P": P},
        J.dtype,
        device,
        # Two reads of J (gram, combine) and one write of d: what the unfused sequence moves.
        2 * J.numel() * J.element_size() + P * J.element_size(),
        "torch.mm + w @ J",
    )
    case.skipped = skipped
    for name in names:
        case.providers[name] = partial(_mgda_combination, J, name)
    w = torch.full((T,), 1.0 / T, dtype=J.dtype, device=device)

    def floor() -> torch.Tensor:
        torch.mm(J, J.T)
        return w @ J

    case.providers["torch.mm + w @ J"] = floor
    if torchjd_reason() is None:
        from torchjd.aggregation import MGDA, UPGrad

        mgda, upgrad = MGDA(), UPGrad()
        case.providers["torchjd MGDA"] = lambda: mgda(J)
        case.providers["torchjd UPGrad"] = lambda: upgrad(J)
    else:
        case.skipped["torchjd"] = torchjd_reason() or ""
    return case


def _upgrad_combination(J: torch.Tensor, backend: str) -> torch.Tensor:
    K = mtl_fast.gram(J, backend=backend if backend != "cpu" else None, check_finite=False)
    w = mtl_fast.upgrad_weights(K, backend=backend, check_finite=False)
    return mtl_fast.combine(J, w, backend=backend if backend != "cpu" else None)


def upgrad_combination_case(J: torch.Tensor, shape: dict[str, Any], device: torch.device) -> OpCase:
    """UPGrad's gradient combination on real trunk gradients, ``combine(J, upgrad_weights(
    gram(J)))`` per backend of the solve ("cpu" solves; its Gram and combination run on "auto"),
    against TorchJD's ``UPGrad()`` aggregator on the same J (when installed)."""
    T, P = J.shape
    names, skipped = op_backends("dual_cone", device)
    case = OpCase(
        "upgrad_combination",
        {"trunk": shape["trunk"], "T": T, "P": P},
        J.dtype,
        device,
        2 * J.numel() * J.element_size() + P * J.element_size(),
        "torchjd UPGrad",
    )
    case.skipped = skipped
    for name in names:
        case.providers[name] = partial(_upgrad_combination, J, name)
    if torchjd_reason() is None:
        from torchjd.aggregation import UPGrad

        upgrad = UPGrad()
        case.providers["torchjd UPGrad"] = lambda: upgrad(J)
    else:
        case.skipped["torchjd"] = torchjd_reason() or ""
        case.baseline = ""
    return case
