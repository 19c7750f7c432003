"""The backend contract of every op, written once.

A backend is a package under :mod:`mtl_fast.kernels` that exposes, besides ``OPS``,
``unavailable_reason()`` and ``device_reason(device)`` (see :mod:`mtl_fast._core.dispatch`), one
function per op it implements, named after the op and defined in the file :data:`OP_FILES` names.
Each function's signature is the ``__call__`` of the op's Protocol below; a test holds every
backend to it. Inputs reach a backend already validated by the public op (shapes, dtypes,
devices, finiteness where asked), with the leading batch dimensions flattened into one.

An op with hyperparameters takes them as one frozen dataclass, positional after the tensors
(:class:`AdamHyper`, :class:`DualConeHyper`, ...); the optimizer ops take their tensors as
:class:`AdamState` and a multi-state step's gradient rows as :class:`AdamRows`, so the calling
convention is one short line everywhere; the public op checks the values before they reach a
backend. The one exception is ``min_norm``, whose three scalars (``max_iter``, ``tol``,
``sync_free``) stay keyword-only: it is the op a training step calls once per step, and the
MGDA strategies and the compiled ops (whose schemas take the scalars) pass them straight
through.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

Tensor = torch.Tensor


@dataclass(frozen=True)
class AdamHyper:
    """Adam(W) hyperparameters; ``lr`` may be a 0-d tensor on the device (CUDA graphs).

    ``weight_decay`` is decoupled (AdamW): p ← p (1 − lr λ) once per step.
    """

    lr: float | Tensor
    beta1: float
    beta2: float
    eps: float
    weight_decay: float


@dataclass(frozen=True)
class AdamState:
    """The tensors an Adam step updates in place, for R state rows (R = T tasks, or 1).

    Attributes:
        param: (P,) flat parameters, contiguous.
        exp_avg, exp_avg_sq: (R, P) first and second moments, one row per task, contiguous
            along P; fp32 for fp16/bf16/fp32 parameters, fp64 for fp64.
        step: (R,) float32 step counts (device tensors: a step reads nothing back to the host).
    """

    param: Tensor
    exp_avg: Tensor
    exp_avg_sq: Tensor
    step: Tensor


@dataclass(frozen=True)
class AdamRows:
    """The gradients of one multi-state Adam step, for the S tasks it steps.

    Attributes:
        grads: (R, P) gradient rows; rows may alias one another (e.g. an expanded view of one
            gradient).
        grad_rows: (S,) int64 rows of ``grads``: task ``tasks[i]`` takes ``grads[grad_rows[i]]``.
        tasks: (S,) int64 distinct task ids being stepped.
        weights: (S,) fp64 weights w_t of the tasks' directions.
    """

    grads: Tensor
    grad_rows: Tensor
    tasks: Tensor
    weights: Tensor


class GramOp(Protocol):
    """J: (B, T, P) fp16/bf16/fp32/fp64, P ≥ 1 → K = J Jᵀ (B, T, T) in the accumulation dtype,
    exactly symmetric."""

    def __call__(self, J: Tensor, /) -> Tensor: ...


class GramListOp(Protocol):
    """grads: non-empty list of (T, n_i) blocks of one dtype (n_i ≥ 1, rows may be strided) →
    Σ_i G_i G_iᵀ (T, T) in the accumulation dtype."""

    def __call__(self, grads: Sequence[Tensor], /) -> Tensor: ...


class MinNormOp(Protocol):
    """K: (B, T, T) fp32/fp64, T ≥ 2 → (B, T) min-norm weights on the simplex, in K's dtype.
    ``sync_free``: run the whole budget with per-problem masks, no host read-back."""

    def __call__(self, K: Tensor, /, *, max_iter: int, tol: float, sync_free: bool) -> Tensor: ...


@dataclass(frozen=True)
class DualConeHyper:
    """The dual-cone solver's settings: the normalisation G̃ = G / tr G + reg_eps·I (reg_eps·I
    when tr G < norm_eps), at most ``max_iter`` factorisations per row, the stopping rule's
    ``tol``, and ``sync_free``: no host read-back (a fixed budget with per-row masks where the
    backend needs one)."""

    norm_eps: float
    reg_eps: float
    max_iter: int
    tol: float
    sync_free: bool


class DualConeOp(Protocol):
    """U: (B, R, T) and G: (B, T, T), each fp32/fp64 (they may differ), T ≥ 1 → W: (B, R, T) in
    G's dtype, W[b, r] = argmin_{v ≥ U[b, r]} vᵀG̃[b]v (G̃ as :class:`DualConeHyper` says),
    W ≥ U exactly; NaN rows for non-finite input."""

    def __call__(self, U: Tensor, G: Tensor, hyper: DualConeHyper, /) -> Tensor: ...


class CombineOp(Protocol):
    """J: (B, T, P), w: (B, T) in the accumulation dtype → d = Σ_t w_t J_t (B, P) in J's dtype."""

    def __call__(self, J: Tensor, w: Tensor, /) -> Tensor: ...


class SignConflictOp(Protocol):
    """J: (B, T, P), P ≥ 1 → (B, T, T) fp64, the fraction of coordinates whose signs differ."""

    def __call__(self, J: Tensor, /) -> Tensor: ...


class MultiAdamOp(Protocol):
    """One multi-state Adam step in place for the tasks ``rows.tasks`` ((S,) int64, distinct):
    task ``rows.tasks[i]`` takes gradient row ``rows.grads[rows.grad_rows[i]]`` ((R, P); rows may
    alias) and weight ``rows.weights[i]`` ((S,) fp64); ``state`` has T rows."""

    def __call__(self, state: AdamState, rows: AdamRows, hyper: AdamHyper, /) -> None: ...


class CombineAdamOp(Protocol):
    """d = Σ_t w_t J_t (J: (T, P), w: (T,) in the accumulation dtype) and one single-state
    Adam(W) step with d, in place; ``state`` has one row."""

    def __call__(self, state: AdamState, J: Tensor, w: Tensor, hyper: AdamHyper, /) -> None: ...


class PCGradOp(Protocol):
    """K: (B, T, T) fp32/fp64, order: (B, T, T) int64 (row i a permutation of range(T), task
    i's projection order) → (B, T) PCGrad weights in K's dtype."""

    def __call__(self, K: Tensor, order: Tensor, /) -> Tensor: ...


@dataclass(frozen=True)
class PinvHyper:
    """A pseudo-inverse's cut-off: eigenvalues |λ| ≤ ``rtol``·max|λ| count as zero."""

    rtol: float


class IMTLGOp(Protocol):
    """K: (B, T, T) fp32/fp64 → (B, T) IMTL-G weights in K's dtype; the pseudo-inverse is that
    of K / max_i K_ii."""

    def __call__(self, K: Tensor, hyper: PinvHyper, /) -> Tensor: ...


@dataclass(frozen=True)
class CAGradHyper:
    """CAGrad's settings (see :func:`mtl_fast.ops.aggregators.cagrad_weights`): the radius scale
    ``c``, the zero rules' threshold ``norm_eps``, the final ``rescale`` (0, 1 or 2), and the
    inner solve's budget, duality gap and ``sync_free``."""

    c: float
    norm_eps: float
    rescale: int
    max_iter: int
    tol: float
    sync_free: bool


class CAGradOp(Protocol):
    """K: (B, T, T) fp32/fp64 → (B, T) CAGrad weights in K's dtype."""

    def __call__(self, K: Tensor, hyper: CAGradHyper, /) -> Tensor: ...


@dataclass(frozen=True)
class NashMTLHyper:
    """Nash-MTL's settings: the clipping norm ``max_norm`` (0: none), the Newton budget
    ``max_iter`` and decrement tolerance ``tol``, and ``sync_free``."""

    max_norm: float
    max_iter: int
    tol: float
    sync_free: bool


class NashMTLOp(Protocol):
    """K: (B, T, T) fp32/fp64, prev_alpha: (B, T) fp64 state → (weights, alpha), both (B, T) in
    K's dtype: the clipped Nash-MTL weights and the new state."""

    def __call__(
        self, K: Tensor, prev_alpha: Tensor, hyper: NashMTLHyper, /
    ) -> tuple[Tensor, Tensor]: ...


@dataclass(frozen=True)
class AlignedMTLHyper:
    """Aligned-MTL's ``scale_mode`` ("min" | "median" | "rmse") and its rank cut-off ``rtol``,
    relative to the largest eigenvalue."""

    scale_mode: str
    rtol: float


class AlignedMTLOp(Protocol):
    """K: (B, T, T) fp32/fp64, pref: (B, T) fp64 → (B, T) Aligned-MTL weights in K's dtype."""

    def __call__(self, K: Tensor, pref: Tensor, hyper: AlignedMTLHyper, /) -> Tensor: ...


class ConFIGOp(Protocol):
    """K: (B, T, T) fp32/fp64, pref: (B, T) fp64 → (B, T) ConFIG weights in K's dtype; the
    pseudo-inverse is that of the cosine matrix."""

    def __call__(self, K: Tensor, pref: Tensor, hyper: PinvHyper, /) -> Tensor: ...


CONTRACTS: dict[str, type] = {
    "gram": GramOp,
    "gram_list": GramListOp,
    "min_norm": MinNormOp,
    "dual_cone": DualConeOp,
    "combine": CombineOp,
    "sign_conflict": SignConflictOp,
    "multi_adam": MultiAdamOp,
    "combine_adam": CombineAdamOp,
    "pcgrad": PCGradOp,
    "imtlg": IMTLGOp,
    "cagrad": CAGradOp,
    "nash_mtl": NashMTLOp,
    "aligned_mtl": AlignedMTLOp,
    "config": ConFIGOp,
}

# The file of each backend package that defines the op (the same name in every backend).
OP_FILES: dict[str, str] = {
    "gram": "gram",
    "gram_list": "gram",
    "min_norm": "min_norm",
    "dual_cone": "dual_cone",
    "combine": "combine",
    "sign_conflict": "sign_conflict",
    "multi_adam": "adam",
    "combine_adam": "adam",
    "pcgrad": "aggregators",
    "imtlg": "aggregators",
    "cagrad": "aggregators",
    "nash_mtl": "aggregators",
    "aligned_mtl": "aggregators",
    "config": "aggregators",
}

# The Gram-space aggregators (mtl_fast.ops.aggregators), one op each.
AGGREGATOR_OPS: tuple[str, ...] = ("pcgrad", "imtlg", "cagrad", "nash_mtl", "aligned_mtl", "config")
# Aligned-MTL's scale modes, in the order of the integer code the compiled kernels take.
ALIGNED_MTL_SCALE_MODES: tuple[str, ...] = ("min", "median", "rmse")
