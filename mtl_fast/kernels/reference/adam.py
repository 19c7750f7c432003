"""Reference multi-state Adam step and fused combine + single-state Adam step.

Math, per task t in the stepped subset S with weight w_t and its own step count n_t:

    n_t ← n_t + 1
    m_t ← β1 m_t + (1 − β1) g_t
    v_t ← β2 v_t + (1 − β2) g_t²
    u_t = (m_t / (1 − β1^n_t)) / (sqrt(v_t / (1 − β2^n_t)) + ε)
    p   ← p · (1 − lr · λ)          (decoupled weight decay, once per step, when λ > 0)
    p   ← p − lr · Σ_{t∈S} w_t u_t

The operations follow torch.optim.Adam's own order (lerp for m, addcmul for v, the sqrt of v
divided by sqrt of the bias correction, plus ε), so S = {t}, w = 1 matches T separate Adam
instances to fp32 rounding. Tasks outside S keep m, v and n unchanged, as torch does for a
parameter whose grad is None. Bias corrections are computed in fp64 from the step tensor, with
tensor arithmetic only: no value is read back to the host.
"""

from __future__ import annotations

import torch

from mtl_fast._core.contracts import AdamHyper, AdamRows, AdamState
from mtl_fast.kernels.reference.combine import combine


def _as_tensor(x: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(x, dtype=torch.float64, device=like.device)


def _fused_cpu_applies(
    param: torch.Tensor,
    grads: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    lr: float | torch.Tensor,
) -> bool:
    # torch's fused CPU kernel silently computes wrong values on non-contiguous tensors
    # (seen with torch 2.14 and a column-strided gradient): the states and p must be contiguous,
    # and each gradient row is made contiguous before the call.
    return (
        param.device.type == "cpu"
        and param.dtype in (torch.float32, torch.float64)
        and grads.dtype == param.dtype == exp_avg.dtype
        and param.is_contiguous()
        and exp_avg.is_contiguous()
        and exp_avg_sq.is_contiguous()
        and not (isinstance(lr, torch.Tensor) and lr.device.type != "cpu")
    )


def multi_adam(
    state: AdamState, rows: AdamRows, hyper: AdamHyper, /, *, fused: bool | None = None
) -> None:
    """One multi-state Adam step, in place.

    Args:
        state: the parameters (P,), per-task moments (T, P) and step counts (T,).
        rows: the gradient rows (R, P), the row (S,) and weight (S,) of each stepped task (S,).
        hyper: lr (a float or a 0-d tensor), betas, eps, decoupled weight decay.
        fused: run each task's update through torch's fused CPU Adam kernel with lr · w_t: one
            pass per task over (p, g, m, v) instead of the ~8 of the explicit formula (measured
            on a 2-core CPU at T = 10, P = 2²¹: 19 ms against 196 ms). ``None``: whenever that
            kernel applies (CPU; fp32/fp64 parameters, gradients and states of one dtype;
            contiguous p and states). ``False``: the explicit formula, in torch.optim.Adam's
            order of operations, on any device and dtype: the definition the fused path is
            tested against.
    """
    grads, grad_rows, tasks, weights = rows.grads, rows.grad_rows, rows.tasks, rows.weights
    param, exp_avg, exp_avg_sq, step = state.param, state.exp_avg, state.exp_avg_sq, state.step
    lr, beta1, beta2, eps = hyper.lr, hyper.beta1, hyper.beta2, hyper.eps
    weight_decay = hyper.weight_decay
    if fused is None:
        # Not under torch.compile: the fused call reads lr, the rows and the weights back to the
        # host, which would break the graph; the explicit formula traces as one graph.
        fused = (
            _fused_cpu_applies(param, grads, exp_avg, exp_avg_sq, lr)
            and not torch.compiler.is_compiling()
        )
    if fused:
        from torch.optim.adam import adam as torch_adam

        lr_f = float(lr)
        if weight_decay != 0:
            param.mul_(1 - lr_f * weight_decay)
        for t, row, w in zip(tasks.tolist(), grad_rows.tolist(), weights.tolist()):
            torch_adam(
                [param],
                [grads[row].contiguous()],
                [exp_avg[t]],
                [exp_avg_sq[t]],
                [],
                [step[t]],
                fused=True,
                amsgrad=False,
                beta1=beta1,
                beta2=beta2,
                lr=lr_f * w,
                weight_decay=0.0,
                eps=eps,
                maximize=False,
            )
        return
    lr_t = _as_tensor(lr, param)
    step.index_add_(0, tasks, torch.ones_like(tasks, dtype=step.dtype))
    if weight_decay != 0:
        param.mul_((1 - lr_t * weight_decay).to(param.dtype))
    n = step.index_select(0, tasks).to(torch.float64)
    bc1 = 1 - beta1**n
    bc2_sqrt = (1 - beta2**n).sqrt()
    coef = (-lr_t / bc1 * weights).to(param.dtype)
    for i in range(tasks.shape[0]):
        t = tasks[i]
        g = grads[grad_rows[i]].to(exp_avg.dtype)
        m = exp_avg[t]
        v = exp_avg_sq[t]
        m.lerp_(g, 1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        denom = (v.sqrt() / bc2_sqrt[i].to(v.dtype)).add_(eps)
        param.add_(coef[i] * m / denom)


def combine_adam(state: AdamState, J: torch.Tensor, w: torch.Tensor, hyper: AdamHyper, /) -> None:
    """d = Σ_t w_t J_t, then one ordinary (single-state) Adam step with d, in place.

    Args:
        state: the parameters (P,) and the single Adam state: moments (1, P), step count (1,).
        J: (T, P) per-task gradients.
        w: (T,) combination weights in the accumulation dtype.
        hyper: the hyperparameters.
    """
    d = combine(J.unsqueeze(0), w.unsqueeze(0))
    param, exp_avg, exp_avg_sq, step = state.param, state.exp_avg, state.exp_avg_sq, state.step
    if (
        _fused_cpu_applies(param, d, exp_avg, exp_avg_sq, hyper.lr)
        and not torch.compiler.is_compiling()
    ):
        zero = torch.zeros(1, dtype=torch.int64, device=J.device)
        one = torch.ones(1, dtype=torch.float64, device=J.device)
        multi_adam(state, AdamRows(d, zero, zero, one), hyper, fused=True)
        return
    # The explicit formula for the one state, without index tensors (under torch.compile an
    # index read from a tensor is data-dependent): the same operations as multi_adam's loop.
    beta1, beta2, eps = hyper.beta1, hyper.beta2, hyper.eps
    lr_t = _as_tensor(hyper.lr, param)
    step.add_(1)
    if hyper.weight_decay != 0:
        param.mul_((1 - lr_t * hyper.weight_decay).to(param.dtype))
    n = step.to(torch.float64)
    bc1 = 1 - beta1**n
    bc2_sqrt = (1 - beta2**n).sqrt()
    coef = (-lr_t / bc1).to(param.dtype)
    g = d[0].to(exp_avg.dtype)
    m, v = exp_avg[0], exp_avg_sq[0]
    m.lerp_(g, 1 - beta1)
    v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
    denom = (v.sqrt() / bc2_sqrt.to(v.dtype)).add_(eps)
    param.add_(coef * m / denom)
