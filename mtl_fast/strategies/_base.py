"""What every strategy shares: the step record, diagnostics cadence, path length, state."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from mtl_fast._core.validate import NonFiniteError, require_choice, require_positive_int
from mtl_fast.diagnostics import GradientDiagnostics, PathLength, gradient_diagnostics
from mtl_fast.ops.gram import gram
from mtl_fast.strategies._params import check_strategy_params, first_frozen

_ON_NONFINITE = ("raise", "skip", "ignore")


@dataclass
class StepRecord:
    """What a strategy decided in its last step (tensors detached).

    Attributes:
        step: the number of strategy steps taken so far (after this one).
        losses: (T,) the task losses of the step's first forward pass.
        weights: (T,) the weights the method chose (MGDA: the min-norm point on the simplex of
            the possibly normalised gradients; linear scalarisation: the fixed weights), or None.
        loss_scales: (T,) the coefficients c_t actually applied, i.e. the gradients written are
            those of Σ_t c_t L_t (differs from ``weights`` when normalising), or None.
        groups: the task groups stepped, in order (sequential strategies), or None.
        affinity: (T, T) the inter-task affinity matrix (selective task-group updates), or None.
        diagnostics: gradient diagnostics when this step was a diagnostics step, else None.
        skipped: the tasks (or groups' tasks) whose step was refused for NaN/Inf gradients.
    """

    step: int = 0
    losses: torch.Tensor | None = None
    weights: torch.Tensor | None = None
    loss_scales: torch.Tensor | None = None
    groups: list[list[int]] | None = None
    affinity: torch.Tensor | None = None
    diagnostics: GradientDiagnostics | None = None
    skipped: list[int] = field(default_factory=list)


def check_losses(losses: Sequence[torch.Tensor], num_tasks: int) -> list[torch.Tensor]:
    """A list of T scalar floating tensors on one device that require grad; the error names the
    offending entry. Nothing is computed before every entry has passed."""
    if isinstance(losses, torch.Tensor) or not isinstance(losses, Iterable):
        raise TypeError(
            f"losses must be a list of {num_tasks} scalar tensors (one per task), got "
            f"{type(losses).__name__}"
            + (f" of shape {tuple(losses.shape)}" if isinstance(losses, torch.Tensor) else "")
        )
    out = list(losses)
    if len(out) != num_tasks:
        raise ValueError(f"losses has {len(out)} entries, expected num_tasks={num_tasks}")
    for t, loss in enumerate(out):
        if not isinstance(loss, torch.Tensor):
            raise TypeError(f"losses[{t}] must be a scalar tensor, got {type(loss).__name__}")
        if loss.numel() != 1:
            raise ValueError(
                f"losses[{t}] must be a scalar tensor, got shape {tuple(loss.shape)} (reduce it, "
                "e.g. with .mean())"
            )
        if not loss.is_floating_point():
            raise TypeError(f"losses[{t}] must be floating, got dtype {loss.dtype}")
        if not loss.requires_grad:
            raise ValueError(f"losses[{t}] does not require grad (was it computed under no_grad?)")
        if loss.device != out[0].device:
            raise ValueError(f"losses[{t}] is on {loss.device} but losses[0] is on {out[0].device}")
    return out


def loss_vector(losses: Sequence[torch.Tensor]) -> torch.Tensor:
    """(T,) detached fp32 (fp64 for fp64 losses) stack of scalar losses, on their device.

    One stack under no_grad (three ops whatever T; detaching each loss first was 2T + 1)."""
    with torch.no_grad():
        try:
            v = torch.stack(list(losses)).reshape(-1)
        except RuntimeError:  # shapes () and (1,) mixed
            v = torch.stack([loss.reshape(()) for loss in losses])
    return v if v.dtype in (torch.float32, torch.float64) else v.float()


def raise_or_skip(mode: str, what: str, bad: list[int]) -> None:
    if mode == "raise":
        raise NonFiniteError(what, bad)


def check_strategy_options(num_tasks: object, **options: object) -> int:
    """``num_tasks`` and the options every strategy takes (``diagnostics_every``,
    ``on_nonfinite``) among ``options`` as given (a default is valid; other names are left to
    their owners); returns num_tasks. Subclasses call it before their own checks that depend on
    T, so that every argument is judged before anything is built."""
    require_positive_int("num_tasks", num_tasks, 1)
    if "diagnostics_every" in options:
        require_positive_int("diagnostics_every", options["diagnostics_every"], 0)
    if "on_nonfinite" in options:
        require_choice("on_nonfinite", options["on_nonfinite"], _ON_NONFINITE)
    assert isinstance(num_tasks, int)
    return num_tasks


class Strategy:
    """Base of all strategies.

    Args:
        shared_params: the parameters every task uses (the trunk).
        task_params: the task-specific parameters (the heads); may be empty. Every entry of
            both lists is a leaf tensor that requires grad, listed once: a frozen parameter is
            refused with its name and shape (leave it out; see docs/strategies.md).
        num_tasks: T ≥ 1.
        diagnostics_every: take :class:`~mtl_fast.diagnostics.GradientDiagnostics` every this
            many steps (0: never). The path length of the shared parameters is tracked on every
            step when this is > 0 (one (P,) copy per step).
        on_nonfinite: "raise" (:class:`~mtl_fast.NonFiniteError`, nothing written or stepped)
            or "skip" (the step is refused, parameters and optimizer states stay as they were,
            ``last.skipped`` names the tasks). Checking reads one flag back to the host per
            step (per group step for the sequential strategies); "ignore" skips the checks, for
            a GPU loop that must not synchronise.
    """

    def __init__(
        self,
        shared_params: Iterable[torch.Tensor],
        task_params: Iterable[torch.Tensor],
        num_tasks: int,
        *,
        diagnostics_every: int = 0,
        on_nonfinite: str = "raise",
    ) -> None:
        check_strategy_options(
            num_tasks, diagnostics_every=diagnostics_every, on_nonfinite=on_nonfinite
        )
        self.shared_params, self.task_params = check_strategy_params(shared_params, task_params)
        self.num_tasks = num_tasks
        self.diagnostics_every = diagnostics_every
        self.on_nonfinite = on_nonfinite
        self.num_steps = 0
        self.last = StepRecord()
        self.path = PathLength(self.shared_params) if diagnostics_every > 0 else None

    def _check_trainable(self) -> None:
        """Refuse a step, before anything changes, when a parameter was frozen since
        construction (one attribute read per parameter)."""
        reason = first_frozen(self.shared_params, "shared_params") or first_frozen(
            self.task_params, "task_params"
        )
        if reason is not None:
            raise ValueError(reason)

    # -- diagnostics -----------------------------------------------------------------------
    def _diagnostics_due(self) -> bool:
        """Whether the step about to be taken (number ``num_steps + 1``) takes diagnostics."""
        every = self.diagnostics_every
        return every > 0 and (self.num_steps + 1) % every == 0

    def _diagnose(
        self, J: torch.Tensor, K: torch.Tensor | None = None, space: str = "parameters"
    ) -> GradientDiagnostics:
        if K is None:
            K = gram(J, check_finite=False)
        return gradient_diagnostics(
            K,
            J,
            step=self.num_steps + 1,
            path_length=None if self.path is None else self.path.total,
            space=space,
            # Checked already by the step's refusal (or on_nonfinite="ignore" asked for none):
            # with "ignore", NaN gradients give NaN diagnostics instead of an error.
            check_finite=False,
        )

    def _track_path(self) -> None:
        if self.path is not None:
            self.path.update()

    @property
    def path_length(self) -> float | None:
        """Σ‖Δθ_shared‖ so far (None unless ``diagnostics_every > 0``)."""
        return None if self.path is None else self.path.total

    # -- state -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed for a resumed run to continue exactly (not the model itself)."""
        return {
            "num_tasks": self.num_tasks,
            "num_steps": self.num_steps,
            "path": None if self.path is None else self.path.state_dict(),
        }

    def _check_state(self, state: dict[str, Any]) -> None:
        """Raise unless ``state`` is for this strategy's number of tasks."""
        if state.get("num_tasks") != self.num_tasks:
            raise ValueError(
                f"state is for num_tasks={state.get('num_tasks')}, this strategy has "
                f"{self.num_tasks}"
            )

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` taken from a strategy built the same way."""
        self._check_state(state)
        self.num_steps = int(state["num_steps"])
        if self.path is not None and state.get("path") is not None:
            self.path.load_state_dict(state["path"])
