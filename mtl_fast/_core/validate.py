"""Input checks shared by the public ops: errors name the argument and the expected shape."""

from __future__ import annotations

from collections.abc import Sequence

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class NonFiniteError(ValueError):
    """A gradient or Gram matrix holds NaN or Inf. ``tasks`` lists the offending task indices."""

    def __init__(self, what: str, tasks: Sequence[int], consequence: str = "") -> None:
        self.tasks = [int(t) for t in tasks]
        super().__init__(
            f"{what} is not finite (NaN or Inf) for task(s) {self.tasks}"
            + (f"; {consequence}" if consequence else "")
        )


def require_tensor(name: str, x: object) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    return x


def require_float(
    name: str, x: torch.Tensor, allowed: Sequence[torch.dtype] = FLOAT_DTYPES
) -> None:
    if x.dtype not in allowed:
        names = ", ".join(str(d).replace("torch.", "") for d in allowed)
        raise TypeError(f"{name} must have dtype in ({names}), got {x.dtype}")


def require_min_dim(name: str, x: torch.Tensor, n: int, shape: str) -> None:
    if x.dim() < n:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(x.shape)}")


def require_same_device(name: str, x: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    if x.device != ref.device:
        raise ValueError(f"{name} is on {x.device} but {ref_name} is on {ref.device}")


def require_positive_int(name: str, x: object, minimum: int = 0) -> int:
    if isinstance(x, bool) or not isinstance(x, int) or x < minimum:
        raise ValueError(f"{name} must be an int ≥ {minimum}, got {x!r}")
    return x


def require_nonneg_float(name: str, x: object) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not x >= 0:
        raise ValueError(f"{name} must be a finite number ≥ 0, got {x!r}")
    return float(x)


def should_check(check_finite: bool | None, device: torch.device) -> bool:
    """``None`` means: check on the CPU (free there); skip on a GPU (it would sync the host), and
    inside ``torch.compile`` (reading the answer back would break the graph)."""
    if check_finite is None:
        return device.type == "cpu" and not torch.compiler.is_compiling()
    return bool(check_finite)


def all_finite(x: torch.Tensor) -> bool:
    """True when ``x`` holds no NaN or Inf (one host sync).

    One summing pass decides: NaN and ±Inf always make the sum non-finite. Only when it is not
    finite (NaN/Inf, or finite values whose sum overflows) does the exact elementwise check run.
    Measured on a 2-core CPU over 10 × 11.2 M fp32 values: 14 ms, against 600–830 ms for
    ``isfinite(x).all()``/``.any()``, which materialise a boolean tensor first.
    """
    if x.numel() == 0 or bool(torch.isfinite(x.sum())):
        return True
    return bool(torch.isfinite(x).all())


def nonfinite_rows(x: torch.Tensor, rows: Sequence[int] | None = None) -> list[int]:
    """Rows (dim -2 of a (..., T, N) tensor) that hold a NaN or Inf anywhere, by the same
    sum-then-confirm rule as :func:`all_finite`.

    With ``rows`` (x must then be 2-D), only those rows are checked, without copying them, and
    the result lists positions into ``rows``.
    """
    if rows is not None:
        sums = torch.stack([x[r].sum() for r in rows]) if rows else x.new_zeros(0)
        suspects = torch.nonzero(~torch.isfinite(sums)).flatten().tolist()
        return [i for i in suspects if not bool(torch.isfinite(x[rows[i]]).all())]
    T = x.shape[-2]
    sums = x.sum(dim=-1).reshape(-1, T)
    suspects = torch.nonzero((~torch.isfinite(sums)).any(dim=0)).flatten().tolist()
    return [t for t in suspects if not bool(torch.isfinite(x[..., t, :]).all())]
