"""Baseline: the published Python-loop MGDA solver, re-implemented to be timed against.

This is a faithful re-implementation, written for this project, of ``MinNormSolver.
find_min_norm_element`` from the code released with Sener & Koltun, "Multi-Task Learning as
Multi-Objective Optimization" (NeurIPS 2018), fed with a Gram matrix K instead of the gradients
(its ``dps`` table of inner products is filled from K). It is **a baseline, not a reference**:
``mtl_fast.min_norm`` is the solver this project trusts (docs/math.md).

The algorithm, per problem, in Python and numpy:

1. Best pair: for every i < j, the closed-form min-norm point of the segment [x_i, x_j]; start
   from the pair of least cost. The 2-point closed form clamps γ to [0.001, 0.999] at the ends.
2. For T ≥ 3, projected-gradient iterations: from the current w, step along the centred
   negative gradient −Kw as far as the simplex box allows, project onto the simplex (sort-based),
   then line-search on the segment between w and that point with the same clamped closed form,
   re-computing the three inner products with a T² Python loop over the table.
3. Stop when the L1 change of w is below ``STOP_CRIT``.

Quirks of the original kept, because they set its cost and its answer:

- the γ clamp to [0.001, 0.999] (a weight never reaches 0 or 1 inside the line search);
- on convergence it returns the iterate *before* the last update;
- the best pair is searched starting from a cost of 1e8: when every pair costs more than that,
  the original fails (no solution is bound); here that raises ``ValueError``;
- O(T²) Python arithmetic per iteration, one problem at a time;
- ``STOP_CRIT = 1e-5`` (the PyTorch variant's value; the numpy variant uses 1e-6).

Quirk *not* kept: the original loop is ``while iter_count < MAX_ITER`` but ``iter_count`` is
never incremented, so the cap never fires and a problem that does not reach ``STOP_CRIT`` runs
forever. Here a real cap, ``SAFETY_CAP`` iterations, ends such a problem (counted in
:class:`LoopResult`), so a benchmark always terminates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

STOP_CRIT = 1e-5
SAFETY_CAP = 10_000
_FIRST_COST = 1e8


@dataclass(frozen=True)
class LoopResult:
    """Weights, the cost the solver reports, iterations run, and whether the cap ended it."""

    w: np.ndarray
    cost: float
    iterations: int
    capped: bool


def _segment(v11: float, v12: float, v22: float) -> tuple[float, float]:
    """argmin_c |c x1 + (1−c) x2|² from the inner products, with the original's clamp."""
    if v12 >= v11:
        return 0.999, v11
    if v12 >= v22:
        return 0.001, v22
    gamma = -1.0 * ((v12 - v22) / (v11 + v22 - 2 * v12))
    return gamma, v22 + gamma * (v12 - v22)


def _best_pair(n: int, dps: dict[tuple[int, int], float]) -> tuple[tuple[int, int], float, float]:
    best: tuple[tuple[int, int], float, float] | None = None
    dmin = _FIRST_COST
    for i in range(n):
        for j in range(i + 1, n):
            c, d = _segment(dps[(i, i)], dps[(i, j)], dps[(j, j)])
            if d < dmin:
                dmin = d
                best = ((i, j), c, d)
    if best is None:
        raise ValueError(
            "every pair costs ≥ 1e8: the original solver has no starting pair here "
            "(scale the gradients down)"
        )
    return best


def _project_to_simplex(y: np.ndarray) -> np.ndarray:
    m = len(y)
    sorted_y = np.flip(np.sort(y), axis=0)
    tmpsum = 0.0
    tmax_f = (np.sum(y) - 1.0) / m
    for i in range(m - 1):
        tmpsum += sorted_y[i]
        tmax = (tmpsum - 1) / (i + 1.0)
        if tmax > sorted_y[i + 1]:
            tmax_f = tmax
            break
    return np.maximum(y - tmax_f, np.zeros(y.shape))


def _next_point(cur: np.ndarray, grad: np.ndarray, n: int) -> np.ndarray:
    proj_grad = grad - (np.sum(grad) / n)
    neg, pos = proj_grad < 0, proj_grad > 0
    tm1 = -1.0 * cur[neg] / proj_grad[neg]
    tm2 = (1.0 - cur[pos]) / proj_grad[pos]
    t = 1.0
    if len(tm1[tm1 > 1e-7]) > 0:
        t = float(np.min(tm1[tm1 > 1e-7]))
    if len(tm2[tm2 > 1e-7]) > 0:
        t = min(t, float(np.min(tm2[tm2 > 1e-7])))
    return _project_to_simplex(proj_grad * t + cur)


def loop_min_norm_one(K: list[list[float]], *, cap: int = SAFETY_CAP) -> LoopResult:
    """Solve one problem from its Gram matrix (a T×T nested list of floats).

    Example:
        >>> r = loop_min_norm_one([[1.0, -1.0], [-1.0, 1.0]])
        >>> [round(float(x), 3) for x in r.w]
        [0.5, 0.5]
    """
    n = len(K)
    if n == 1:
        return LoopResult(np.ones(1), float(K[0][0]), 0, False)
    dps = {(i, j): K[i][j] for i in range(n) for j in range(n)}
    (i0, j0), c0, d0 = _best_pair(n, dps)
    sol = np.zeros(n)
    sol[i0] = c0
    sol[j0] = 1 - c0
    if n < 3:
        return LoopResult(sol, d0, 0, False)
    grad_mat = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            grad_mat[i, j] = dps[(i, j)]
    nd = d0
    for it in range(cap):
        grad_dir = -1.0 * np.dot(grad_mat, sol)
        new_point = _next_point(sol, grad_dir, n)
        v11 = v12 = v22 = 0.0
        for i in range(n):
            for j in range(n):
                v11 += sol[i] * sol[j] * dps[(i, j)]
                v12 += sol[i] * new_point[j] * dps[(i, j)]
                v22 += new_point[i] * new_point[j] * dps[(i, j)]
        nc, nd = _segment(v11, v12, v22)
        new_sol = nc * sol + (1 - nc) * new_point
        if np.sum(np.abs(new_sol - sol)) < STOP_CRIT:
            return LoopResult(sol, nd, it + 1, False)
        sol = new_sol
    return LoopResult(sol, nd, cap, True)


def loop_min_norm(K: torch.Tensor, *, cap: int = SAFETY_CAP) -> tuple[torch.Tensor, int]:
    """Solve a batch (B, T, T) problem by problem, as the original would be called in a loop.

    K is read back to the host (the original reads every inner product with ``.item()``).

    Returns:
        (B, T) float64 weights on K's device, and the number of problems the cap ended.
    """
    if K.dim() != 3 or K.shape[-1] != K.shape[-2]:
        raise ValueError(f"K must have shape (B, T, T), got {tuple(K.shape)}")
    rows = []
    capped = 0
    for Kb in K.detach().to("cpu", torch.float64).tolist():
        r = loop_min_norm_one(Kb, cap=cap)
        rows.append(r.w)
        capped += int(r.capped)
    w = torch.tensor(np.stack(rows), dtype=torch.float64, device=K.device)
    return w, capped
