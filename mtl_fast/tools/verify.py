"""Reference-vs-backend verification: every available backend, every op, shapes × dtypes.

The truth is computed in float64 from the very inputs the backend sees (already rounded to the
dtype under test); the tolerance rule is :mod:`mtl_fast._core.precision`'s.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch

from mtl_fast._core.contracts import (
    AdamHyper,
    AdamRows,
    AdamState,
    AlignedMTLHyper,
    CAGradHyper,
    DualConeHyper,
    NashMTLHyper,
    PinvHyper,
)
from mtl_fast._core.dispatch import BACKEND_NAMES, _load
from mtl_fast._core.dual_cone_problem import kkt_residual
from mtl_fast._core.precision import (
    ADAM_TOL,
    AGGREGATOR_TOL,
    DUAL_CONE_TOL,
    MIN_NORM_TOL,
    relative_error,
    tolerance,
)
from mtl_fast.kernels import reference as ref
from mtl_fast.kernels.reference.dual_cone import project


@dataclass(frozen=True)
class Check:
    """One row of the verification table."""

    backend: str
    op: str
    case: str
    dtype: str
    error: float
    tolerance: float

    @property
    def passed(self) -> bool:
        return self.error <= self.tolerance  # NaN fails


def _name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _gram_cases(quick: bool) -> list[tuple[int, int, int]]:
    cases = [(1, 1, 1), (1, 2, 7), (1, 3, 1000), (2, 5, 4099)]
    if not quick:
        cases += [(1, 8, 65537), (1, 17, 333), (1, 40, 1000), (1, 64, 129)]
    return cases


def _dtypes(quick: bool) -> list[torch.dtype]:
    return (
        [torch.float32, torch.bfloat16]
        if quick
        else [torch.float32, torch.float16, torch.bfloat16, torch.float64]
    )


def _jacobians(
    quick: bool, seed: int
) -> Iterator[tuple[str, torch.dtype, torch.Tensor, torch.Generator]]:
    """(case, dtype, J, gen) for every Gram case and dtype: J a (B, T, P) normal draw rounded to
    the dtype, gen the generator it came from (for the check's further draws)."""
    gen = torch.Generator().manual_seed(seed)
    for B, T, P in _gram_cases(quick):
        for dtype in _dtypes(quick):
            yield f"B={B} T={T} P={P}", dtype, torch.randn(B, T, P, generator=gen).to(dtype), gen


def _tolerance(
    backend: str, ref_err: float, dtype: torch.dtype, out_dtype: torch.dtype | None = None
) -> float:
    """The reference is held to ATOL, every other backend to 2× the reference's error + ATOL."""
    return tolerance(0.0 if backend == "reference" else ref_err, dtype, out_dtype)


def _relative_check(
    backend: str,
    op: str,
    case: str,
    dtype: torch.dtype,
    got: torch.Tensor,
    reference: torch.Tensor,
    truth: torch.Tensor,
    out_dtype: torch.dtype | None = None,
) -> Check:
    """The backend's answer ``got`` against the fp64 ``truth``, held to the tolerance that the
    reference's answer ``reference`` sets (:func:`_tolerance`)."""
    ref_err = relative_error(reference, truth)
    tol = _tolerance(backend, ref_err, dtype, out_dtype)
    return Check(backend, op, case, _name(dtype), relative_error(got, truth), tol)


def _check_gram(backend: str, fn: Callable, device: torch.device, quick: bool) -> Iterable[Check]:
    for case, dtype, J, _ in _jacobians(quick, seed=0):
        truth = J.double() @ J.double().transpose(-1, -2)
        K = fn(J.to(device)).cpu()
        yield _relative_check(backend, "gram", case, dtype, K, ref.gram(J), truth)


def _check_gram_list(
    backend: str, fn: Callable, device: torch.device, quick: bool
) -> Iterable[Check]:
    gen = torch.Generator().manual_seed(1)
    for T, shapes in [(3, [(7,), (4, 5), (1,)]), (5, [(1000,), (3, 3, 3)])]:
        for dtype in _dtypes(quick):
            blocks = [torch.randn(T, *s, generator=gen).to(dtype) for s in shapes]
            flat = [b.reshape(T, -1) for b in blocks]
            Jd = torch.cat([f.double() for f in flat], dim=1)
            truth = Jd @ Jd.T
            K = fn([f.to(device) for f in flat]).cpu()
            case = f"T={T} blocks={shapes}"
            yield _relative_check(backend, "gram_list", case, dtype, K, ref.gram_list(flat), truth)


def _check_combine(
    backend: str, fn: Callable, device: torch.device, quick: bool
) -> Iterable[Check]:
    for case, dtype, J, gen in _jacobians(quick, seed=2):
        w = torch.rand(*J.shape[:2], generator=gen)
        w = w / w.sum(-1, keepdim=True)
        truth = torch.einsum("bt,btp->bp", w.double(), J.double())
        d = fn(J.to(device), w.to(device)).cpu()
        yield _relative_check(
            backend, "combine", case, dtype, d, ref.combine(J, w), truth, out_dtype=dtype
        )


def gram_samples(T: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Named (T, T) PSD test matrices in fp64: generic, rank-1 conflicting, zero, duplicated."""
    P = max(2 * T, 8)
    J = torch.randn(T, P, generator=gen, dtype=torch.float64)
    u = torch.randn(P, generator=gen, dtype=torch.float64)
    signs = torch.where(torch.arange(T) % 2 == 0, 1.0, -1.0).to(torch.float64)[:, None]
    near = signs * u + 1e-3 * torch.randn(T, P, generator=gen, dtype=torch.float64)
    dup = J.clone()
    dup[T // 2 :] = J[: T - T // 2]
    return {
        "full-rank": J @ J.T,
        "near-rank-1 conflicting": near @ near.T,
        "zero": torch.zeros(T, T, dtype=torch.float64),
        "duplicated rows": dup @ dup.T,
    }


def _check_min_norm(
    backend: str, fn: Callable, device: torch.device, quick: bool
) -> Iterable[Check]:
    gen = torch.Generator().manual_seed(3)
    sizes = [2, 3, 8, 17] if quick else [2, 3, 5, 8, 17, 40, 64]
    for T in sizes:
        samples = gram_samples(T, gen)
        Kd = torch.stack(list(samples.values()))
        w_star = ref.min_norm(Kd, max_iter=1000, tol=1e-12, sync_free=False)
        f_star = torch.einsum("bi,bij,bj->b", w_star, Kd, w_star)
        scale = Kd.diagonal(dim1=-2, dim2=-1).amax(-1).clamp_min(1e-300)
        for dtype in (torch.float32, torch.float64):
            K = Kd.to(dtype)
            w = fn(K.to(device), max_iter=1000, tol=1e-7, sync_free=True).cpu().double()
            f = torch.einsum("bi,bij,bj->b", w, Kd, w)
            excess = ((f - f_star) / scale).max().item()
            off_simplex = max((w.sum(-1) - 1).abs().max().item(), (-w).clamp_min(0).max().item())
            err = max(excess, off_simplex) if torch.isfinite(w).all() else float("nan")
            case = f"T={T} ×{len(samples)} kinds"
            yield Check(backend, "min_norm", case, _name(dtype), err, MIN_NORM_TOL)


def dual_cone_samples(T: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """:func:`gram_samples` plus a rank-T/3 Gram (the solver's slowest family) and gradients
    whose norms span e^±6."""
    samples = gram_samples(T, gen)
    A = torch.randn(T, max(1, T // 3), generator=gen, dtype=torch.float64)
    J = torch.randn(T, 2 * T + 3, generator=gen, dtype=torch.float64)
    J = J * torch.exp(torch.empty(T, 1, dtype=torch.float64).uniform_(-6, 6, generator=gen))
    return {**samples, "rank T/3": A @ A.T, "norms e^±6": J @ J.T}


def _check_dual_cone(
    backend: str, fn: Callable, device: torch.device, quick: bool
) -> Iterable[Check]:
    """UPGrad rows e_i/T, the DualProj row 1/T and random rows against every sample Gram: the
    per-row error against the fp64 reference on the same rounded Gram, and (fp64) the KKT
    residual."""
    gen = torch.Generator().manual_seed(7)
    sizes = [1, 2, 3, 8, 17] if quick else [1, 2, 3, 5, 8, 17, 40, 64, 128]
    loaded = _load(backend)
    limit = None if isinstance(loaded, str) else getattr(loaded, "TASK_LIMITS", {}).get("dual_cone")
    eps = {"norm_eps": 1e-4, "reg_eps": 1e-4}
    for T in sizes:
        if limit is not None and T > limit:
            continue
        samples = dual_cone_samples(T, gen)
        Gd = torch.stack(list(samples.values()))
        n = len(samples)
        U = torch.cat(
            [
                torch.eye(T, dtype=torch.float64) / T,
                torch.full((1, T), 1.0 / T, dtype=torch.float64),
                torch.randn(2, T, generator=gen, dtype=torch.float64),
            ]
        ).expand(n, T + 3, T)
        for dtype in (torch.float32, torch.float64):
            G = Gd.to(dtype)
            truth, _, _ = project(
                U, G.double(), DualConeHyper(max_iter=256, tol=1e-13, sync_free=False, **eps)
            )
            # The form each device runs by default: on the CPU the reference's sync-free form
            # would pay its whole budget of masked factorisations (minutes at T = 128).
            sync_free = device.type != "cpu"
            hyper = DualConeHyper(max_iter=64, tol=1e-10, sync_free=sync_free, **eps)
            W = fn(U.to(device), G.to(device), hyper)
            W = W.cpu().double()
            scale = truth.abs().amax(dim=-1, keepdim=True).clamp_min(1e-300)
            err = ((W - truth).abs() / scale).max().item()
            if dtype == torch.float64:
                err = max(err, kkt_residual(U, G, W, **eps).max().item())
            if not torch.isfinite(W).all():
                err = float("nan")
            case = f"T={T} ×{n} kinds ×{T + 3} rows"
            yield Check(backend, "dual_cone", case, _name(dtype), err, DUAL_CONE_TOL[dtype])


def _adam_state(P: int, T: int, seed: int, device: torch.device) -> AdamState:
    p = torch.randn(P, generator=torch.Generator().manual_seed(seed))
    zeros = torch.zeros(T, P, device=device)
    return AdamState(p.to(device), zeros, zeros.clone(), torch.zeros(T, device=device))


def _state_error(ours: AdamState, theirs: AdamState) -> float:
    return max(
        relative_error(a.cpu(), b.double())
        for a, b in zip(vars(ours).values(), vars(theirs).values())
    )


def _check_multi_adam(
    backend: str, fn: Callable, device: torch.device, quick: bool
) -> Iterable[Check]:
    gen = torch.Generator().manual_seed(4)
    T = 3
    schedule = [[0], [2], [0, 1, 2], [1], [0, 2]]
    for P in [1, 7, 1000] if quick else [1, 7, 1000, 65537]:
        for wd in (0.0, 0.01):
            hyper = AdamHyper(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=wd)
            ours = _adam_state(P, T, P, device)
            theirs = _adam_state(P, T, P, torch.device("cpu"))
            for tasks in schedule:
                G = torch.randn(T, P, generator=gen)
                idx = torch.tensor(tasks)
                w = torch.rand(len(tasks), generator=gen, dtype=torch.float64) + 0.5
                # The explicit formula is the definition (the CPU reference takes a fused path).
                ref.multi_adam(theirs, AdamRows(G, idx, idx, w), hyper, fused=False)
                d = idx.to(device)
                fn(ours, AdamRows(G.to(device), d, d, w.to(device)), hyper)
            yield Check(
                backend,
                "multi_adam",
                f"T={T} P={P} wd={wd} 5 steps",
                "float32",
                _state_error(ours, theirs),
                ADAM_TOL,
            )


def _check_combine_adam(
    backend: str, fn: Callable, device: torch.device, quick: bool
) -> Iterable[Check]:
    gen = torch.Generator().manual_seed(5)
    T = 4
    hyper = AdamHyper(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01)
    for P in [1, 7, 1000] if quick else [1, 7, 1000, 65537]:
        ours = _adam_state(P, 1, P, device)
        theirs = _adam_state(P, 1, P, torch.device("cpu"))
        for _ in range(4):
            J = torch.randn(T, P, generator=gen)
            w = torch.rand(T, generator=gen)
            ref.combine_adam(theirs, J, w, hyper)
            fn(ours, J.to(device), w.to(device), hyper)
        err = _state_error(ours, theirs)
        yield Check(backend, "combine_adam", f"T={T} P={P} 4 steps", "float32", err, ADAM_TOL)


def _check_sign_conflict(
    backend: str, fn: Callable, device: torch.device, quick: bool
) -> Iterable[Check]:
    """Counts are exact: the truth is a direct elementwise count in fp64."""
    for case, dtype, J, _ in _jacobians(quick, seed=6):
        J[..., ::5] = 0  # zero coordinates never count as conflicts
        s = torch.sign(J.double())
        truth = (s.unsqueeze(2) * s.unsqueeze(1) < 0).double().mean(-1)
        C = fn(J.to(device)).cpu()
        err = (C.double() - truth).abs().max().item()
        yield Check(backend, "sign_conflict", case, _name(dtype), err, 1e-12)


def aggregator_samples(T: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Named (T, T) fp64 Grams on which every aggregator's answer is unique and well posed:
    independent, conflicting (near-parallel, both signs), acute-angled gradients, and zero."""
    P = 2 * T + 8
    J = torch.randn(T, P, generator=gen, dtype=torch.float64)
    signs = torch.where(torch.arange(T) % 2 == 0, 1.0, -1.0).to(torch.float64)[:, None]
    u = torch.randn(P, generator=gen, dtype=torch.float64)
    conflicting = signs * u + 0.3 * torch.randn(T, P, generator=gen, dtype=torch.float64)
    positive = torch.randn(T, P, generator=gen, dtype=torch.float64).abs()
    return {
        "independent": J @ J.T,
        "conflicting": conflicting @ conflicting.T,
        "acute": positive @ positive.T,
        "zero": torch.zeros(T, T, dtype=torch.float64),
    }


def _aggregator_call(
    op: str, fn: Callable, K: torch.Tensor, extra: dict[str, torch.Tensor]
) -> torch.Tensor:
    """One backend call of ``op`` with the settings verify uses, as one (B, ·) tensor."""
    T = K.shape[-1]
    eps = T * torch.finfo(K.dtype).eps
    if op == "pcgrad":
        out: torch.Tensor = fn(K, extra["order"])
    elif op == "imtlg":
        out = fn(K, PinvHyper(eps))
    elif op == "cagrad":
        out = fn(
            K, CAGradHyper(c=0.5, norm_eps=1e-4, rescale=0, max_iter=100, tol=1e-12, sync_free=True)
        )
    elif op == "nash_mtl":
        nash = NashMTLHyper(max_norm=1.0, max_iter=50, tol=1e-10, sync_free=True)
        weights, alpha = fn(K, extra["alpha"], nash)
        out = torch.cat([weights, alpha], dim=-1)
    elif op == "aligned_mtl":
        out = torch.cat(
            [fn(K, extra["pref"], AlignedMTLHyper(m, eps)) for m in ("min", "median", "rmse")],
            dim=-1,
        )
    else:
        out = fn(K, extra["pref"], PinvHyper(eps))
    return out


def _check_aggregator(op: str) -> Callable[[str, Callable, torch.device, bool], Iterable[Check]]:
    def check(backend: str, fn: Callable, device: torch.device, quick: bool) -> Iterable[Check]:
        gen = torch.Generator().manual_seed(7)
        limit = 64 if backend == "triton" else 1024
        sizes = [2, 3, 8, 17] if quick else [2, 3, 5, 8, 17, 40, 64]
        for T in (t for t in sizes if t <= limit):
            samples = aggregator_samples(T, gen)
            Kd = torch.stack(list(samples.values()))
            B = Kd.shape[0]
            extra = {
                "order": torch.rand(B, T, T, generator=gen, dtype=torch.float64).argsort(-1),
                "alpha": torch.ones(B, T, dtype=torch.float64),
                "pref": torch.rand(B, T, generator=gen, dtype=torch.float64) + 0.5,
            }
            for dtype in (torch.float32, torch.float64):
                K = Kd.to(dtype)
                # The truth: the reference in fp64 on the very (rounded) K the backend sees.
                truth = _aggregator_call(op, getattr(ref, op), K.double(), extra)
                got = _aggregator_call(
                    op, fn, K.to(device), {k: v.to(device) for k, v in extra.items()}
                )
                got = got.cpu().double()
                scale = truth.abs().amax(dim=-1).clamp_min(1.0)
                diff = ((got - truth).abs().amax(dim=-1) / scale).max().item()
                err = diff if torch.isfinite(got).all() else float("nan")
                case = f"T={T} ×{len(samples)} kinds"
                yield Check(backend, op, case, _name(dtype), err, AGGREGATOR_TOL[dtype])

    return check


CHECKS: dict[str, Callable[[str, Callable, torch.device, bool], Iterable[Check]]] = {
    "gram": _check_gram,
    "gram_list": _check_gram_list,
    "combine": _check_combine,
    "min_norm": _check_min_norm,
    "dual_cone": _check_dual_cone,
    "multi_adam": _check_multi_adam,
    "combine_adam": _check_combine_adam,
    "sign_conflict": _check_sign_conflict,
    "pcgrad": _check_aggregator("pcgrad"),
    "imtlg": _check_aggregator("imtlg"),
    "cagrad": _check_aggregator("cagrad"),
    "nash_mtl": _check_aggregator("nash_mtl"),
    "aligned_mtl": _check_aggregator("aligned_mtl"),
    "config": _check_aggregator("config"),
}


def run(
    backends: Iterable[str] | None = None,
    device: str | torch.device | None = None,
    quick: bool = False,
    ops: Iterable[str] | None = None,
) -> tuple[list[Check], list[str]]:
    """Run the verification matrix (of the ``ops`` given, else of every op).

    Returns:
        (checks, skipped): every check made, and a line for each backend that was skipped and why.
    """
    dev = (
        torch.device(device)
        if device is not None
        else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    )
    checks: list[Check] = []
    skipped: list[str] = []
    for name in backends or BACKEND_NAMES:
        loaded = _load(name)
        if isinstance(loaded, str):
            skipped.append(f"{name}: {loaded}")
            continue
        reason = loaded.device_reason(dev)
        if reason is not None:
            skipped.append(f"{name}: cannot run on {dev}: {reason}")
            continue
        wanted = set(CHECKS) if ops is None else set(ops)
        for op in sorted(loaded.OPS):
            if op in CHECKS and op in wanted:
                checks.extend(CHECKS[op](name, getattr(loaded, op), dev, quick))
    return checks, skipped


def format_table(checks: list[Check]) -> str:
    """A fixed-width table of the checks, one row each."""
    header = f"{'backend':<10} {'op':<13} {'case':<36} {'dtype':<9} {'max error':>10} {'tolerance':>10}  result"
    lines = [header, "-" * len(header)]
    for c in checks:
        lines.append(
            f"{c.backend:<10} {c.op:<13} {c.case[:36]:<36} {c.dtype:<9} {c.error:>10.2e} "
            f"{c.tolerance:>10.2e}  {'pass' if c.passed else 'FAIL'}"
        )
    return "\n".join(lines)
