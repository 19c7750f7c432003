"""Selective Task Group Updates (Jeong & Yoon, ICLR 2025)."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from mtl_fast._core.extras import require
from mtl_fast._core.options import spells
from mtl_fast._core.validate import (
    require_choice,
    require_positive_int,
    require_real,
    require_seed,
)
from mtl_fast.strategies._base import check_strategy_options, loss_vector
from mtl_fast.strategies._options import SequentialKwargs
from mtl_fast.strategies._sequential import Closure, SequentialStrategy

if TYPE_CHECKING:
    from typing_extensions import Unpack

CREDITING = ("corrected", "reference")


def loss_ratios(previous: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
    """r_t = 1 − L_t / L_t^prev (the relative decrease), on the device; 0 where L_t^prev = 0 or
    either loss is not finite (no information about the step)."""
    ok = (previous != 0) & torch.isfinite(previous) & torch.isfinite(current)
    safe = torch.where(ok, previous, torch.ones_like(previous))
    return torch.where(ok, 1 - torch.where(ok, current, safe) / safe, torch.zeros_like(current))


def affinity_update(
    A: torch.Tensor, r: torch.Tensor, group: Sequence[int], *, beta: float
) -> torch.Tensor:
    """The proximal inter-task affinity update for one group step, in place (no host sync).

    With r the loss ratios caused by the step of ``group`` g, for each s in g and each task t:

    - t ∉ g:           a = r_t / |g|;
    - t = s:           a = r_s / |g|, and A[s, s] is updated only when r_s ≥ 0;
    - t ∈ g, t ≠ s:    a = r_t / |g| if r_t · r_s ≥ 0, else −max(r_t, r_s) / |g|;

    then A[s, t] ← (1 − β) A[s, t] + β a (Jeong & Yoon, "Selective Task Group Updates for
    Multi-Task Optimization", ICLR 2025).

    Args:
        A: (T, T) affinity, fp32/fp64, updated in place and returned.
        r: (T,) loss ratios.
        group: the tasks of the group that stepped.
        beta: EMA rate (0.001 in the paper, 1e-4 for many tasks).
    """
    T = A.shape[0]
    k = len(group)
    r = r.to(A.dtype)
    in_g = torch.zeros(T, dtype=torch.bool, device=A.device)
    in_g[list(group)] = True
    for s in group:
        rs = r[s]
        inside = torch.where(r * rs >= 0, r / k, -torch.maximum(r, rs) / k)
        a = torch.where(in_g, inside, r / k)
        new = (1 - beta) * A[s] + beta * a
        new[s] = torch.where(rs >= 0, new[s], A[s, s])
        A[s] = new
    return A


DAMPING_RANGE = (0.5, 1.0)  # scikit-learn's AffinityPropagation: damping in [0.5, 1)


def check_clustering(
    damping: object,
    max_iter: object,
    seed: object,
    *,
    max_iter_name: str = "ap_max_iter",
    seed_name: str = "seed",
) -> None:
    """The clustering's options, judged where they are given (not at the first regrouping), and
    scikit-learn, which does the clustering (the ``[train]`` extra)."""
    require_real("damping", damping, low=DAMPING_RANGE[0], high=DAMPING_RANGE[1], high_open=True)
    require_positive_int(max_iter_name, max_iter, 1)
    require_seed(seed_name, seed)
    require("train", "affinity_groups (the STGU strategy's clustering)", ["sklearn"])


def affinity_groups(
    A: torch.Tensor,
    previous: Sequence[Sequence[int]],
    *,
    damping: float = 0.5,
    max_iter: int = 200,
    random_state: int = 0,
) -> tuple[list[list[int]], bool]:
    """Task groups from the affinity matrix by affinity propagation (one host round trip).

    X[s, t] = A[s, t] / A[t, t] (columns with A[t, t] = 0 are left unscaled), symmetrised
    (X + Xᵀ)/2 and clustered with scikit-learn's AffinityPropagation (precomputed similarity,
    median preference, ``damping``). Clustering fails — and ``previous`` is returned with
    False — when the similarities are not finite, when they are all equal (affinity
    propagation would return an arbitrary answer), or when it does not converge.

    Returns:
        (groups, ok): groups ordered by their smallest task; ok is False when ``previous`` was
        kept.
    """
    check_clustering(
        damping, max_iter, random_state, max_iter_name="max_iter", seed_name="random_state"
    )
    from sklearn.cluster import AffinityPropagation
    from sklearn.exceptions import ConvergenceWarning

    keep = [list(g) for g in previous]
    X = A.detach().to(device="cpu", dtype=torch.float64)
    d = X.diagonal().clone()
    X = X / torch.where(d != 0, d, torch.ones_like(d)).unsqueeze(0)
    S = 0.5 * (X + X.T)
    if not bool(torch.isfinite(S).all()) or float(S.max() - S.min()) <= 0:
        return keep, False
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ap = AffinityPropagation(
            affinity="precomputed",
            damping=damping,
            max_iter=max_iter,
            random_state=random_state,
        ).fit(S.numpy())
    labels = np.asarray(ap.labels_)
    if any(issubclass(w.category, ConvergenceWarning) for w in caught) or (labels < 0).any():
        return keep, False
    groups: dict[int, list[int]] = {}
    for t, label in enumerate(labels.tolist()):
        groups.setdefault(int(label), []).append(t)
    return sorted(groups.values(), key=lambda g: g[0]), True


@spells(SequentialStrategy.__init__, SequentialKwargs)
class SelectiveTaskGroupUpdates(SequentialStrategy):
    """Selective Task Group Updates (Jeong & Yoon, ICLR 2025).

    Every iteration (batch) the tasks are updated group by group in a shuffled order, each
    group with a fresh forward pass and its own optimizer step on the sum of its losses. A T×T
    proximal inter-task affinity A (kept on the device) is updated from the relative loss
    decrease r each group step causes on *all* tasks (:func:`affinity_update`). During the first
    ``warmup`` iterations the groups are singletons; afterwards the tasks are regrouped at the
    start of every iteration by affinity propagation on A (:func:`affinity_groups`), keeping
    the previous grouping when clustering fails (counted in ``regroup_failures``).

    Crediting: the ratio measured by the forward pass before group j+1's step was caused by
    group j's step. ``crediting="corrected"`` (default) credits it to group j, and measures the
    last group's effect with one extra forward pass (under ``torch.no_grad``) at the end of the
    iteration. ``crediting="reference"`` reproduces the official code's off-by-one: the ratio
    is credited to group j+1 (the group about to step), the first group of an iteration gets
    no credit and the last group's effect is never measured. A ratio caused by a step that was
    refused for NaN/Inf gradients (``on_nonfinite="skip"``) is not credited.

    Optimizer states: one Adam state per task for the shared parameters
    (:class:`~mtl_fast.MultiAdam`); a group's gradient is fed to each member's state and the
    directions are averaged (weights 1/|g|), so a singleton group is Pascal et al.'s per-task
    step. Heads use ordinary Adam; the paper lets task-specific parameters use lr × T: pass
    ``head_lr=lr * num_tasks`` for that.

    Example: see :class:`~mtl_fast.strategies.PerTaskUpdates`.

    Args:
        shared_params, task_params, num_tasks, diagnostics_every, on_nonfinite: see
            :class:`~mtl_fast.strategies.Strategy`.
        beta: the affinity's EMA rate, in (0, 1].
        warmup: iterations with singleton groups before the first regrouping (≥ 0).
        crediting: "corrected" (default) or "reference".
        damping, ap_max_iter: affinity propagation's damping, in [0.5, 1), and iteration limit
            (≥ 1); checked here, not at the first regrouping.
        seed: seeds the group order and the clustering (an int in [0, 2**32)).
        lr, betas, eps, weight_decay, head_lr, backend: as in
            :class:`~mtl_fast.strategies.PerTaskUpdates`.
    """

    def __init__(
        self,
        shared_params: Iterable[torch.Tensor],
        task_params: Iterable[torch.Tensor] = (),
        num_tasks: int = 2,
        *,
        beta: float = 1e-3,
        warmup: int = 100,
        crediting: str = "corrected",
        damping: float = 0.5,
        ap_max_iter: int = 200,
        seed: int = 0,
        **options: Unpack[SequentialKwargs],
    ) -> None:
        num_tasks = check_strategy_options(num_tasks, **options)
        # Judged before the parameters are flattened, and not at the first regrouping.
        require_real("beta", beta, low=0.0, high=1.0, low_open=True)
        require_positive_int("warmup", warmup, 0)
        require_choice("crediting", crediting, CREDITING)
        check_clustering(damping, ap_max_iter, seed)
        super().__init__(
            shared_params, task_params, num_tasks, num_states=num_tasks, seed=seed, **options
        )
        self.beta = beta
        self.warmup = warmup
        self.crediting = crediting
        self.damping = damping
        self.ap_max_iter = ap_max_iter
        dev = self.shared_params[0].device
        self.affinity = torch.zeros(num_tasks, num_tasks, dtype=torch.float32, device=dev)
        self.groups = [[t] for t in range(num_tasks)]
        self.regroup_failures = 0

    def _credit(self, previous: torch.Tensor, current: torch.Tensor, group: list[int]) -> None:
        affinity_update(self.affinity, loss_ratios(previous, current), group, beta=self.beta)

    def step(self, closure: Closure) -> torch.Tensor:
        """One iteration on a batch; ``closure()`` returns the T losses on it.

        Returns:
            (T,) the losses of the first forward pass (detached).
        """
        pending: list[torch.Tensor] | None = self._first_forward(closure)
        self._start()
        if self.num_steps >= self.warmup:
            self.groups, ok = affinity_groups(
                self.affinity,
                self.groups,
                damping=self.damping,
                max_iter=self.ap_max_iter,
                random_state=self.seed,
            )
            self.regroup_failures += not ok
        else:
            self.groups = [[t] for t in range(self.num_tasks)]
        order = [list(g) for g in self.groups]
        self.rng.shuffle(order)
        if self._diagnostics_due():
            assert pending is not None
            self._extra_diagnostics(pending)  # its own forward pass: the first one
            pending = None
        first: torch.Tensor | None = None
        previous: torch.Tensor | None = None
        stepped = False  # whether the previous group's step was taken (not refused)
        for j, g in enumerate(order):
            losses = pending if pending is not None else self._forward(closure)
            pending = None
            current = loss_vector(losses)
            if previous is None:
                first = current
            elif stepped:  # a refused step changed nothing: there is nothing to credit
                credited = order[j - 1 if self.crediting == "corrected" else j]
                self._credit(previous, current, credited)
            stepped = self._group_step(losses, g, g, [1.0 / len(g)] * len(g))
            previous = current
        if self.crediting == "corrected" and stepped:
            assert previous is not None
            with torch.no_grad():
                after = loss_vector(list(closure()))
            self._credit(previous, after, order[-1])
        assert first is not None
        self._record(first, order)
        self.last.affinity = self.affinity.clone()
        return first

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["affinity"] = self.affinity.clone()
        state["regroup_failures"] = self.regroup_failures
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.affinity.copy_(state["affinity"])
        self.regroup_failures = int(state["regroup_failures"])
