"""Public Gram-space aggregators: PCGrad, IMTL-G, CAGrad, Nash-MTL, Aligned-MTL, ConFIG.

Every method chooses task coefficients c from the T×T Gram matrix K = JJᵀ of the task gradients
(the rows g_i of J) alone, and the update is d = Jᵀc (:func:`mtl_fast.combine`). Each function
maps K of shape (..., T, T) to c of shape (..., T), batched over the leading dimensions,
computes in float64 inside and returns K's dtype (float32 for float16/bfloat16 input). The
hyperparameters are those of TorchJD 0.18's Weightings, which users swap for these
(:mod:`mtl_fast.integrations.torchjd`).

==============================  ===============================================================
function                        method
==============================  ===============================================================
:func:`pcgrad_weights`          PCGrad, Yu et al., "Gradient Surgery for Multi-Task Learning",
                                NeurIPS 2020
:func:`imtlg_weights`           IMTL-G, Liu et al., "Towards Impartial Multi-task Learning",
                                ICLR 2021 (TorchJD's pseudo-inverse generalisation)
:func:`cagrad_weights`          CAGrad, Liu et al., "Conflict-Averse Gradient Descent for
                                Multi-task Learning", NeurIPS 2021
:func:`nash_mtl_weights`        Nash-MTL, Navon et al., "Multi-Task Learning as a Bargaining
                                Game", ICML 2022 (stateful: :func:`nash_mtl_step`)
:func:`aligned_mtl_weights`     Aligned-MTL, Senushkin et al., "Independent Component Alignment
                                for Multi-Task Learning", CVPR 2023
:func:`config_weights`          ConFIG, Liu et al., "ConFIG: Towards Conflict-free Training of
                                Physics Informed Neural Networks", ICLR 2025 (arXiv 2408.11104)
==============================  ===============================================================

Backends (``backend=``): "reference" (batched PyTorch), "cpu" (the compiled library: one
problem in microseconds, which "auto" prefers on CPU tensors), "triton" (one program per
problem, T ≤ 64; PCGrad, CAGrad and Nash-MTL). The iterative methods take ``sync_free``: on a
GPU (the default there) they run a fixed budget with per-problem masks and never read a value
back to the host. The formulas, deviations from the reference implementations and the measured
agreement are in docs/aggregators.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, NamedTuple

import torch
from torch import Tensor

from mtl_fast._core.contracts import ALIGNED_MTL_SCALE_MODES as SCALE_MODES
from mtl_fast._core.contracts import AlignedMTLHyper, CAGradHyper, NashMTLHyper, PinvHyper
from mtl_fast._core.dispatch import resolve
from mtl_fast._core.options import spells
from mtl_fast._core.validate import (
    NonFiniteError,
    all_finite,
    nonfinite_rows,
    require_gram,
    require_positive_int,
    should_check,
)
from mtl_fast.ops._options import BackendKwargs, BackendOptions

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = [
    "NashMTLStep",
    "aligned_mtl_weights",
    "cagrad_weights",
    "config_weights",
    "imtlg_weights",
    "nash_mtl_clip",
    "nash_mtl_solve",
    "nash_mtl_step",
    "nash_mtl_weights",
    "pcgrad_order",
    "pcgrad_weights",
]

ScaleMode = Literal["min", "median", "rmse"]

# CAGrad: TorchJD's threshold, and the inner solver's budget and Frank-Wolfe gap (relative to
# trace K = 1). Measured iterations to the early-exit result: T = 10 ≤ 6, T = 40 ≤ 34,
# T = 64 ≤ 80 (15 problems each of random/conflicting/low-rank/duplicated/positive Grams).
CAGRAD_NORM_EPS = 1e-4
CAGRAD_MAX_ITER = 100
CAGRAD_TOL = 1e-12
# Nash-MTL: Newton budget and Newton-decrement tolerance. Measured Newton iterations: 4-12 for
# T ≤ 10, 6-25 for T = 40; a problem that has no solution never converges.
NASH_MAX_ITER = 50
NASH_TOL = 1e-10
NASH_MAX_NORM = 1.0

_INT_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


class NashMTLStep(NamedTuple):
    """One Nash-MTL update: the clipped ``weights`` to apply and ``alpha``, the next state."""

    weights: Tensor
    alpha: Tensor


# ----------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------


def _check_gram(K: object, check_finite: bool | None) -> tuple[Tensor, tuple[int, ...], bool]:
    """Validated K as a (B, T, T) fp32/fp64 batch, its batch shape, and whether to check values.

    Raises TypeError/ValueError naming K; with the finiteness check on (default on the CPU),
    :class:`NonFiniteError` naming the tasks whose row of K holds NaN/Inf, and ValueError for a
    negative diagonal entry (K_ii = ‖g_i‖² ≥ 0 for a Gram matrix).
    """
    K = require_gram("K", K)
    T = K.shape[-1]
    check = should_check(check_finite, K.device)
    if check and K.numel() > 0:
        diag = K.diagonal(dim1=-2, dim2=-1)
        # Two reads decide for valid K: NaN/Inf make the sum non-finite, and the smallest
        # diagonal entry shows a negative one. Measured at T = 2 on one thread: 4.7 µs, against
        # 14 µs for all_finite plus an elementwise test of the diagonal.
        if not math.isfinite(K.sum().item()) and not all_finite(K):
            rows = diag.reshape(-1, T)
            bad = torch.nonzero((~torch.isfinite(rows)).any(dim=0)).flatten().tolist()
            raise NonFiniteError("Gram matrix K", bad or nonfinite_rows(K))
        if diag.amin().item() < 0:
            rows = diag.reshape(-1, T)
            bad = torch.nonzero((rows < 0).any(dim=0)).flatten().tolist()
            raise ValueError(
                f"K has a negative diagonal entry for task(s) {bad}: a Gram matrix has "
                "K_ii = ‖g_i‖² ≥ 0"
            )
    work = K if K.dtype in (torch.float32, torch.float64) else K.float()
    return work.reshape(-1, T, T), tuple(K.shape[:-2]), check


def _finite_float(name: str, x: object, *, positive: bool = False) -> float:
    if (
        isinstance(x, bool)
        or not isinstance(x, (int, float))
        or not math.isfinite(x)
        or x < 0
        or (positive and x == 0)
    ):
        bound = "> 0" if positive else "≥ 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {x!r}")
    return float(x)


def _vector_arg(
    name: str, x: object, T: int, batch: tuple[int, ...], K: Tensor, check: bool
) -> Tensor:
    """A (..., T) per-task vector broadcast to K's batch, as a contiguous (B, T) fp64 tensor."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or None, got {type(x).__name__}")
    if not (x.is_floating_point() or x.dtype in _INT_DTYPES):
        raise TypeError(f"{name} must be a real tensor, got dtype {x.dtype}")
    if x.dim() < 1 or x.shape[-1] != T:
        raise ValueError(
            f"{name} must have shape (..., {T}) (one entry per task), got {tuple(x.shape)}"
        )
    if x.device != K.device:
        raise ValueError(f"{name} is on {x.device} but K is on {K.device}")
    try:
        xb = torch.broadcast_to(x, (*batch, T))
    except RuntimeError as err:
        raise ValueError(
            f"{name} of shape {tuple(x.shape)} does not broadcast to K's batch shape {batch}"
        ) from err
    if check and x.numel() > 0 and not all_finite(x.double()):
        raise ValueError(f"{name} holds NaN or Inf")
    return xb.to(torch.float64).reshape(-1, T).contiguous()


def _pref_arg(pref: object, fill: float, batch: tuple[int, ...], K3: Tensor, check: bool) -> Tensor:
    """``pref`` as a contiguous (B, T) fp64 tensor (:func:`_vector_arg`); None: ``fill``."""
    B, T, _ = K3.shape
    if pref is None:
        return torch.full((B, T), fill, dtype=torch.float64, device=K3.device)
    return _vector_arg("pref", pref, T, batch, K3, check)


def _finish(c: Tensor, batch: tuple[int, ...]) -> Tensor:
    return c.reshape(*batch, c.shape[-1])


def _run(op: str, backend: str | None, K3: Tensor, batch: tuple[int, ...], *args: object) -> Tensor:
    """The backend's ``op`` on the validated (B, T, T) batch K3 and ``args`` (the op's other
    tensors and its hyperparameters), in K's batch shape; zeros for an empty batch."""
    B, T, _ = K3.shape
    if B == 0:
        return K3.new_zeros(*batch, T)
    fn = resolve(op, backend, K3.device, tasks=T)
    return _finish(fn(K3, *args), batch)


def _default_rtol(rtol: float | None, T: int, dtype: torch.dtype) -> float:
    """The pseudo-inverse cut-off: ``torch.linalg.pinv``'s T·eps of the input dtype."""
    return T * torch.finfo(dtype).eps if rtol is None else _finite_float("rtol", rtol)


# ----------------------------------------------------------------------------------------------
# PCGrad
# ----------------------------------------------------------------------------------------------


def pcgrad_order(
    batch_shape: tuple[int, ...] | torch.Size,
    T: int,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Random projection orders for :func:`pcgrad_weights`: one permutation per (problem, task).

    ``order[..., i, :]`` is a uniformly random permutation of ``range(T)``, the order in which
    task i's gradient is projected against the others, drawn as the argsort of float64 uniforms
    in one device-side call (capturable in a CUDA graph with a registered generator).

    Args:
        batch_shape: leading dimensions of the Gram batch.
        T: number of tasks (≥ 1).
        generator: source of randomness, on ``device``; None: that device's global generator.
        device: where the orders live (default: the CPU).

    Returns:
        int64 tensor of shape (*batch_shape, T, T).

    Example:
        >>> import torch, mtl_fast
        >>> order = mtl_fast.pcgrad_order((), 3, generator=torch.Generator().manual_seed(0))
        >>> order.shape, sorted(order[0].tolist())
        (torch.Size([3, 3]), [0, 1, 2])
    """
    require_positive_int("T", T, 1)
    keys = torch.rand(
        (*tuple(batch_shape), T, T), generator=generator, device=device, dtype=torch.float64
    )
    return keys.argsort(dim=-1)


def pcgrad_weights(
    K: Tensor,
    /,
    *,
    order: Tensor | None = None,
    generator: torch.Generator | None = None,
    backend: str | None = None,
    check_finite: bool | None = None,
) -> Tensor:
    r"""PCGrad ("projecting conflicting gradients") weights from the Gram matrix.

    Yu et al., "Gradient Surgery for Multi-Task Learning", NeurIPS 2020, Algorithm 1, in the
    form of TorchJD 0.18's ``PCGradWeighting``: each task's gradient is projected, in a random
    order of the other tasks, onto the normal plane of every original gradient g_j it
    conflicts with, and the projected gradients are summed. In coefficient space
    (g_i^PC = Jᵀc_i):

    .. math::
        c_i \leftarrow e_i;\quad \text{for } j \in \pi_i \setminus \{i\}:\;
        s = (K c_i)_j,\; \text{if } s < 0:\; c_{ij} \mathrel{-}= s / K_{jj};
        \qquad c = \textstyle\sum_i c_i.

    A fixed T-step computation with no host synchronisation. Given the same ``order``, every
    backend returns the same weights (to rounding).

    Args:
        K: (..., T, T) Gram matrices (symmetric PSD), fp16/bf16/fp32/fp64.
        order: (..., T, T) integer tensor broadcastable to K's batch; ``order[..., i, :]`` is a
            permutation of range(T), task i's projection order (entry i is skipped). TorchJD's
            orders are ``torch.stack([torch.randperm(T) for _ in range(T)])`` drawn after the
            same ``torch.manual_seed``: passing them reproduces its weights.
        generator: draws the orders with :func:`pcgrad_order` when ``order`` is None (None:
            the global generator of K's device). Not both.
        backend: "auto", "reference", "cpu" or "triton".
        check_finite: validate K's values (and ``order``); None: on the CPU only.

    Returns:
        (..., T) weights, fp32 (fp64 for fp64 K).

    Example:
        >>> import torch, mtl_fast
        >>> K = torch.tensor([[1.0, -0.5], [-0.5, 1.0]])
        >>> mtl_fast.pcgrad_weights(K, order=torch.tensor([[0, 1], [1, 0]]))
        tensor([1.5000, 1.5000])
    """
    K3, batch, check = _check_gram(K, check_finite)
    B, T, _ = K3.shape
    if order is not None and generator is not None:
        raise ValueError("pass either order or generator, not both")
    if order is None:
        ordr = pcgrad_order(batch, T, generator=generator, device=K3.device).reshape(B, T, T)
    else:
        if not isinstance(order, Tensor):
            raise TypeError(f"order must be a torch.Tensor or None, got {type(order).__name__}")
        if order.dtype not in _INT_DTYPES:
            raise TypeError(f"order must be an integer tensor, got dtype {order.dtype}")
        if order.dim() < 2 or tuple(order.shape[-2:]) != (T, T):
            raise ValueError(f"order must have shape (..., {T}, {T}), got {tuple(order.shape)}")
        if order.device != K3.device:
            raise ValueError(f"order is on {order.device} but K is on {K3.device}")
        try:
            ordr = torch.broadcast_to(order, (*batch, T, T)).reshape(B, T, T)
        except RuntimeError as err:
            raise ValueError(
                f"order of shape {tuple(order.shape)} does not broadcast to K's batch shape {batch}"
            ) from err
        ordr = ordr.to(torch.int64).contiguous()
        if check and ordr.numel() > 0:
            ref = torch.arange(T, device=ordr.device)
            if not bool((ordr.sort(dim=-1).values == ref).all()):
                raise ValueError("each order[..., i, :] must be a permutation of range(T)")
    return _run("pcgrad", backend, K3, batch, ordr)


# ----------------------------------------------------------------------------------------------
# IMTL-G
# ----------------------------------------------------------------------------------------------


def imtlg_weights(
    K: Tensor,
    /,
    *,
    rtol: float | None = None,
    backend: str | None = None,
    check_finite: bool | None = None,
) -> Tensor:
    r"""IMTL-G weights: the direction with equal projections onto every unit task gradient.

    Liu et al., "Towards Impartial Multi-task Learning", ICLR 2021 (IMTL-G, closed form), in
    the pseudo-inverse form of TorchJD 0.18's ``IMTLGWeighting`` (Quinton & Rey, "Jacobian
    Descent for Multi-Objective Optimization", 2024), which also covers dependent gradients:

    .. math::
        v = K^{+} \sqrt{\operatorname{diag} K}, \qquad
        c = v / \textstyle\sum_i v_i \quad (c = 0 \text{ when } |\textstyle\sum_i v_i| < 10^{-12}).

    When √diag K lies in the range of K, d = Jᵀc has g_iᵀd / ‖g_i‖ = 1 / Σv for every task,
    and Σc = 1 as in the paper. K⁺ is the eigen-pseudo-inverse of K / max_i K_ii with
    eigenvalues |λ| ≤ rtol·max|λ| treated as zero (``torch.linalg.pinv``'s rule), and the |Σv|
    threshold applies to that normalised K, so c does not depend on the scale of K (TorchJD
    applies it to K as given: its weights become 0 once every K_ii ≳ 1e24).

    Args:
        K: (..., T, T) Gram matrices, fp16/bf16/fp32/fp64.
        rtol: pseudo-inverse cut-off; default T·eps(K.dtype), as ``torch.linalg.pinv``.
        backend: "auto", "reference" or "cpu".
        check_finite: validate K's values; None: on the CPU only.

    Returns:
        (..., T) weights, fp32 (fp64 for fp64 K); 0 for K = 0 and for gradients with no
        direction of equal positive projection (e.g. two opposite ones).

    Example:
        >>> import torch, mtl_fast
        >>> mtl_fast.imtlg_weights(torch.tensor([[1.0, 0.0], [0.0, 4.0]]))
        tensor([0.6667, 0.3333])
    """
    K3, batch, _ = _check_gram(K, check_finite)
    hyper = PinvHyper(_default_rtol(rtol, K3.shape[-1], K.dtype))
    return _run("imtlg", backend, K3, batch, hyper)


# ----------------------------------------------------------------------------------------------
# Aligned-MTL
# ----------------------------------------------------------------------------------------------


def aligned_mtl_weights(
    K: Tensor,
    /,
    *,
    pref: Tensor | None = None,
    scale_mode: ScaleMode = "min",
    backend: str | None = None,
    check_finite: bool | None = None,
) -> Tensor:
    r"""Aligned-MTL weights: the preference vector mapped through the balance transformation.

    Senushkin et al., "Independent Component Alignment for Multi-Task Learning", CVPR 2023,
    Algorithm 1, as TorchJD 0.18's ``AlignedMTLWeighting``. With the eigendecomposition
    K = VΛVᵀ restricted to its numerical range (λ > T·eps(K.dtype)·max λ, r of them):

    .. math::
        B = \sqrt{\sigma}\; V_r \Lambda_r^{-1/2} V_r^\top, \qquad c = B\,p,

    where σ is the smallest retained eigenvalue (``"min"``), their lower median
    (``"median"``, as ``torch.median``) or their mean (``"rmse"``), and p the preference
    vector (default 1/T each, TorchJD's; the official code and LibMTL use ones, i.e. T times
    these weights). The balanced gradients JᵀB have Gram BKB = σ·V_rV_rᵀ: equal eigenvalues σ
    on the range. When no eigenvalue is retained (K = 0), c = p. c does not depend on the scale
    of K.

    Args:
        K: (..., T, T) Gram matrices, fp16/bf16/fp32/fp64.
        pref: (..., T) preference vector broadcastable to K's batch; None: 1/T each.
        scale_mode: "min", "median" or "rmse".
        backend: "auto", "reference" or "cpu".
        check_finite: validate K's values and ``pref``; None: on the CPU only.

    Returns:
        (..., T) weights, fp32 (fp64 for fp64 K).

    Example:
        >>> import torch, mtl_fast
        >>> mtl_fast.aligned_mtl_weights(torch.tensor([[4.0, 0.0], [0.0, 1.0]]))
        tensor([0.2500, 0.5000])
    """
    K3, batch, check = _check_gram(K, check_finite)
    T = K3.shape[-1]
    if scale_mode not in SCALE_MODES:
        raise ValueError(f"scale_mode must be one of {SCALE_MODES}, got {scale_mode!r}")
    p = _pref_arg(pref, 1.0 / T, batch, K3, check)
    hyper = AlignedMTLHyper(scale_mode, _default_rtol(None, T, K.dtype))
    return _run("aligned_mtl", backend, K3, batch, p, hyper)


# ----------------------------------------------------------------------------------------------
# ConFIG
# ----------------------------------------------------------------------------------------------


def config_weights(
    K: Tensor,
    /,
    *,
    pref: Tensor | None = None,
    rtol: float | None = None,
    backend: str | None = None,
    check_finite: bool | None = None,
) -> Tensor:
    r"""ConFIG weights: the conflict-free direction with its projection length, from K alone.

    Liu et al., "ConFIG: Towards Conflict-free Training of Physics Informed Neural Networks",
    ICLR 2025 (arXiv 2408.11104), Eq. 2, as the ``conflictfree`` package's ``ConFIG_update``
    (equal weights, ``ProjectionLength``) and TorchJD 0.18's ``ConFIG`` aggregator compute it
    on J. With the unit gradients U = D⁺J, D = diag(√K_ii) (a zero gradient gives a zero row),
    the direction is pinv(U)·p = Uᵀ(UUᵀ)⁺p, and UUᵀ = D⁺KD⁺ = C is the cosine matrix, so

    .. math::
        a = D^{+} C^{+} p,\qquad
        c = \frac{\mathbf 1^\top K a}{a^\top K a}\, a
        \quad\Big(J^\top c = \big(\textstyle\sum_i g_i^\top \hat u\big)\,\hat u,\;
        \hat u = J^\top a / \lVert J^\top a\rVert\Big).

    When p lies in the range of C, cos(g_i, d) ∝ p_i for every task: for the default p = 1 the
    cosines are equal and positive (no task conflicts with the update), and the length is
    Σ_i g_iᵀû. c = 0 when Jᵀa vanishes (p ⊥ range C, e.g. two opposite gradients; K = 0), and
    when the part of p in C's range is below max(rtol, T·eps)·‖p‖: there the J-form references
    normalise rounding noise. C⁺ drops eigenvalues ≤ rtol·max λ; the J-form pinv/lstsq drops
    singular values of U instead, so results can differ where C is nearly singular (a Gram
    cannot resolve below √eps of U's largest singular value).

    Args:
        K: (..., T, T) Gram matrices, fp16/bf16/fp32/fp64.
        pref: (..., T) target cosine weights broadcastable to K's batch; None: ones (both
            references' default).
        rtol: cut-off of C's pseudo-inverse; default T·eps(K.dtype).
        backend, check_finite: as in :func:`aligned_mtl_weights`.

    Returns:
        (..., T) weights, fp32 (fp64 for fp64 K).

    Example:
        >>> import torch, mtl_fast
        >>> mtl_fast.config_weights(torch.tensor([[1.0, 0.0], [0.0, 4.0]]))  # d = (1.5, 1.5)
        tensor([1.5000, 0.7500])
    """
    K3, batch, check = _check_gram(K, check_finite)
    hyper = PinvHyper(_default_rtol(rtol, K3.shape[-1], K.dtype))
    p = _pref_arg(pref, 1.0, batch, K3, check)
    return _run("config", backend, K3, batch, p, hyper)


# ----------------------------------------------------------------------------------------------
# CAGrad
# ----------------------------------------------------------------------------------------------


class CAGradKwargs(BackendKwargs, total=False):
    """:func:`cagrad_weights`' keyword options; the defaults are :class:`CAGradOptions`'."""

    norm_eps: float
    rescale: Literal[0, 1, 2]
    max_iter: int
    tol: float


@dataclass(frozen=True, kw_only=True)
class CAGradOptions(BackendOptions):
    """CAGrad's options but ``c``, with their defaults; checked once, here."""

    norm_eps: float = CAGRAD_NORM_EPS
    rescale: Literal[0, 1, 2] = 0
    max_iter: int = CAGRAD_MAX_ITER
    tol: float = CAGRAD_TOL

    def __post_init__(self) -> None:
        super().__post_init__()
        _finite_float("norm_eps", self.norm_eps)
        if isinstance(self.rescale, bool) or self.rescale not in (0, 1, 2):
            raise ValueError(f"rescale must be 0, 1 or 2, got {self.rescale!r}")
        require_positive_int("max_iter", self.max_iter)
        _finite_float("tol", self.tol)


@spells(CAGradOptions, CAGradKwargs)
def cagrad_weights(
    K: Tensor,
    /,
    *,
    c: float,
    **options: Unpack[CAGradKwargs],
) -> Tensor:
    r"""CAGrad weights: the best worst-task improvement within a ball around the mean gradient.

    Liu et al., "Conflict-Averse Gradient Descent for Multi-task Learning", NeurIPS 2021,
    Algorithm 1, as TorchJD 0.18's ``CAGradWeighting(c, norm_eps)`` computes it. With
    K̃ = K / trace K (K̃ = 0 when trace K < norm_eps), b = K̃1/T and φ = c·sqrt(1ᵀK̃1)/T:

    .. math::
        w^* = \arg\min_{w \in \Delta} b^\top w + \varphi \sqrt{w^\top \tilde K w},\qquad
        c_i = \tfrac1T + \frac{\varphi}{\sqrt{w^{*\top}\tilde K w^*}}\, w^*_i,

    and c = 0 when sqrt(w*ᵀK̃w*) < norm_eps (TorchJD's rule: "on the Pareto front"). With the
    normalised gradients g̃_i = g_i / sqrt(trace K) and their mean g̃₀, J̃ᵀc = g̃₀ + φ·g̃_w/‖g̃_w‖
    maximises min_i g̃_iᵀd over the ball ‖d − g̃₀‖ ≤ c‖g̃₀‖. TorchJD solves the inner problem
    with cvxpy/Clarabel on the CPU; here it is away-step Frank-Wolfe with exact line search and
    exact face corrections, stopped when its duality gap ≤ ``tol`` or after ``max_iter``
    iterations. For φ = 0 (c = 0, or a zero mean gradient) w* is uniform over argmin_i b_i.

    Args:
        K: (..., T, T) Gram matrices, fp16/bf16/fp32/fp64.
        c: radius scale, ≥ 0 (required, as in TorchJD; the official code uses 0.5, the paper
            0.4 in its MTL experiments).
        norm_eps: TorchJD's threshold, on trace K and on ‖g_w‖ of the normalised problem; 0
            disables both zero rules.
        rescale: the official code's final scaling: 0 none (TorchJD), 1 divide by 1 + c²,
            2 divide by 1 + c.
        max_iter: iteration budget of the inner solve.
        tol: Frank-Wolfe duality gap of the inner solve (on trace-normalised K).
        backend: "auto", "reference", "cpu" or "triton".
        check_finite: validate K's values; None: on the CPU only.
        sync_free: run the whole budget with masks and no host read-back (CUDA-graph
            capturable); None: True off the CPU. The kernels stop each problem on its own.

    Returns:
        (..., T) weights, fp32 (fp64 for fp64 K).

    Example:
        >>> import torch, mtl_fast
        >>> mtl_fast.cagrad_weights(torch.tensor([[1.0, -0.5], [-0.5, 1.0]]), c=0.5)
        tensor([0.7500, 0.7500])
    """
    given = CAGradOptions(**options)
    K3, batch, _ = _check_gram(K, given.check_finite)
    hyper = given.hyper(CAGradHyper, K3.device, c=_finite_float("c", c))
    return _run("cagrad", given.backend, K3, batch, hyper)


# ----------------------------------------------------------------------------------------------
# Nash-MTL
# ----------------------------------------------------------------------------------------------


class NashSolveKwargs(BackendKwargs, total=False):
    """:func:`nash_mtl_solve`'s keyword options; the defaults are :class:`NashMTLOptions`'."""

    prev_alpha: Tensor | None
    max_iter: int
    tol: float


class NashMTLKwargs(NashSolveKwargs, total=False):
    """:func:`nash_mtl_step`'s and :func:`nash_mtl_weights`' keyword options: the solve's and
    the clipping norm."""

    max_norm: float


@dataclass(frozen=True, kw_only=True)
class NashMTLOptions(BackendOptions):
    """Nash-MTL's options with their defaults; checked once, here (``prev_alpha`` against K,
    by :func:`nash_mtl_step`)."""

    prev_alpha: Tensor | None = None
    max_iter: int = NASH_MAX_ITER
    tol: float = NASH_TOL
    max_norm: float = NASH_MAX_NORM

    def __post_init__(self) -> None:
        super().__post_init__()
        _finite_float("max_norm", self.max_norm)
        require_positive_int("max_iter", self.max_iter)
        _finite_float("tol", self.tol)


@spells(NashMTLOptions, NashMTLKwargs)
def nash_mtl_step(K: Tensor, /, **options: Unpack[NashMTLKwargs]) -> NashMTLStep:
    r"""One Nash-MTL update: the weights to apply and the new state, in one call.

    Navon et al., "Multi-Task Learning as a Bargaining Game", ICML 2022, Algorithm 1. The Nash
    bargaining direction d = Jᵀα has g_iᵀd = 1/α_i for every task (Theorem 5.1): α > 0 solves
    Kα = 1/α elementwise, the unique minimiser of the self-concordant

    .. math::
        F(\alpha) = \tfrac12\,\alpha^\top K \alpha - \textstyle\sum_i \log \alpha_i ,

    which exists exactly when 0 is not in the convex hull of the gradients. It is computed on
    K̃ = K / max_i K_ii by damped Newton steps from ``prev_alpha`` (each followed by the exact
    minimisation along the ray through the origin), until the Newton decrement is ≤ ``tol``. A
    problem not solved within ``max_iter`` steps (in practice: one with no solution, e.g. two
    opposite gradients or a zero one) keeps ``prev_alpha``, as TorchJD and the official code
    keep their state when their solver fails. Those solve a sequence of convex approximations
    with cvxpy/ECOS and land on the same solution where they converge; here the result does
    not depend on the warm start except through that fallback. Then TorchJD's clipping: when
    max_norm > 0 and ‖Jᵀα‖ = sqrt(αᵀKα) > max_norm, the weights are α·max_norm/‖Jᵀα‖ (at the
    solution αᵀKα = T, so max_norm = 1 always clips for T ≥ 2).

    Args:
        K: (..., T, T) Gram matrices, fp16/bf16/fp32/fp64.
        prev_alpha: (..., T) positive state broadcastable to K's batch (the previous step's
            ``alpha``); None: ones (the references' initial state).
        max_norm: ≥ 0; 0 disables the clipping.
        max_iter: Newton budget; 0 returns the state (TorchJD's steps between updates,
            ``update_weights_every > 1``), clipped with the current K.
        tol: Newton-decrement tolerance.
        backend: "auto", "reference", "cpu" or "triton".
        check_finite: validate K's values and ``prev_alpha``; None: on the CPU only.
        sync_free: run the whole budget with masks and no host read-back; None: True off the
            CPU.

    Returns:
        :class:`NashMTLStep` (weights, alpha), both (..., T), fp32 (fp64 for fp64 K).

    Example:
        >>> import torch, mtl_fast
        >>> step = mtl_fast.nash_mtl_step(torch.tensor([[1.0, 0.0], [0.0, 4.0]]))
        >>> step.alpha, step.weights  # α_i = 1 / ‖g_i‖, then ‖Jᵀα‖ = √2 is clipped to 1
        (tensor([1.0000, 0.5000]), tensor([0.7071, 0.3536]))
    """
    given = NashMTLOptions(**options)
    K3, batch, check = _check_gram(K, given.check_finite)
    B, T, _ = K3.shape
    if given.prev_alpha is None:
        prev = torch.ones((B, T), dtype=torch.float64, device=K3.device)
    else:
        prev = _vector_arg("prev_alpha", given.prev_alpha, T, batch, K3, check)
        if check and prev.numel() > 0 and not bool((prev > 0).all()):
            raise ValueError("prev_alpha must be positive")
    if B == 0:
        empty = K3.new_zeros(*batch, T)
        return NashMTLStep(empty, empty.clone())
    fn = resolve("nash_mtl", given.backend, K3.device, tasks=T)
    weights, alpha = fn(K3, prev, given.hyper(NashMTLHyper, K3.device))
    return NashMTLStep(_finish(weights, batch), _finish(alpha, batch))


@spells(NashMTLOptions, NashMTLKwargs)
def nash_mtl_weights(K: Tensor, /, **options: Unpack[NashMTLKwargs]) -> Tensor:
    """Nash-MTL weights: ``nash_mtl_step(...).weights`` (see :func:`nash_mtl_step`).

    The method is stateful: to carry the state across steps, call :func:`nash_mtl_step` and
    pass its ``alpha`` as the next ``prev_alpha`` (the clipped weights are not the state).

    Example:
        >>> import torch, mtl_fast
        >>> mtl_fast.nash_mtl_weights(torch.tensor([[1.0, 0.0], [0.0, 4.0]]))
        tensor([0.7071, 0.3536])
    """
    return nash_mtl_step(K, **options).weights


@spells(NashMTLOptions, NashSolveKwargs)
def nash_mtl_solve(K: Tensor, /, **options: Unpack[NashSolveKwargs]) -> Tensor:
    """The Nash bargaining α (Kα = 1/α), or ``prev_alpha`` where there is none: the unclipped
    ``nash_mtl_step(...).alpha`` (see :func:`nash_mtl_step`).

    Example:
        >>> import torch, mtl_fast
        >>> mtl_fast.nash_mtl_solve(torch.tensor([[1.0, 0.0], [0.0, 4.0]]))  # α_i = 1 / ‖g_i‖
        tensor([1.0000, 0.5000])
    """
    # max_norm = 0: no clipping (a max_norm passed here is refused: "multiple values").
    return nash_mtl_step(K, **options, max_norm=0.0).alpha


def nash_mtl_clip(
    K: Tensor,
    alpha: Tensor,
    /,
    *,
    max_norm: float = NASH_MAX_NORM,
    check_finite: bool | None = None,
) -> Tensor:
    """Scale α so that ‖Jᵀα‖ = sqrt(αᵀKα) ≤ max_norm (Nash-MTL's clipping, TorchJD's rule).

    When max_norm > 0 and sqrt(αᵀKα) > max_norm, α ← α·max_norm/sqrt(αᵀKα); max_norm = 0
    disables the clipping. (The official code clips the summed gradient with
    ``clip_grad_norm_``, whose factor is max_norm/(‖·‖ + 1e-6).)

    Args:
        K: (..., T, T) Gram matrices.
        alpha: (..., T) coefficients broadcastable to K's batch.
        max_norm: ≥ 0.
        check_finite: validate K's values and ``alpha``; None: on the CPU only.

    Returns:
        (..., T) clipped coefficients, fp32 (fp64 for fp64 K).

    Example:
        >>> import torch, mtl_fast
        >>> mtl_fast.nash_mtl_clip(torch.tensor([[4.0]]), torch.tensor([1.0]))  # ‖g‖ = 2
        tensor([0.5000])
    """
    K3, batch, check = _check_gram(K, check_finite)
    B, T, _ = K3.shape
    norm = _finite_float("max_norm", max_norm)
    a = _vector_arg("alpha", alpha, T, batch, K3, check)
    if norm > 0 and B > 0:
        Kd = K3.to(torch.float64)
        length = torch.einsum("bi,bij,bj->b", a, Kd, a).clamp_min(0).sqrt()
        over = length > norm
        factor = torch.where(over, norm / torch.where(over, length, torch.ones_like(length)), 1.0)
        a = a * factor[:, None]
    return _finish(a.to(K3.dtype), batch)
