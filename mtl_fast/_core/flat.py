"""Shared parameters as views of one flat buffer (the layout the fused kernels work on)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch


def check_params(params: Iterable[torch.Tensor], what: str = "params") -> list[torch.Tensor]:
    """A non-empty list of floating tensors of one dtype and device; errors name the index.

    A single tensor is refused (iterating it would give its rows, not parameters)."""
    if isinstance(params, torch.Tensor):
        raise TypeError(f"{what} must be an iterable of tensors, got a single tensor")
    if not isinstance(params, Iterable):
        raise TypeError(f"{what} must be an iterable of tensors, got {type(params).__name__}")
    out = list(params)
    if not out:
        raise ValueError(f"{what} is empty: pass at least one shared parameter")
    first = out[0]
    for i, p in enumerate(out):
        if not isinstance(p, torch.Tensor):
            raise TypeError(f"{what}[{i}] must be a torch.Tensor, got {type(p).__name__}")
        if not p.is_floating_point():
            raise TypeError(f"{what}[{i}] has dtype {p.dtype}; shared parameters must be floating")
        if p.dtype != first.dtype:
            raise TypeError(
                f"{what}[{i}] has dtype {p.dtype} but {what}[0] has {first.dtype}: one flat "
                "buffer holds one dtype (split the parameters by dtype)"
            )
        if p.device != first.device:
            raise ValueError(
                f"{what}[{i}] is on {p.device} but {what}[0] is on {first.device}: one flat "
                "buffer lives on one device"
            )
    if len({id(p) for p in out}) != len(out):
        raise ValueError(f"{what} lists the same parameter more than once")
    return out


def offsets(params: Sequence[torch.Tensor]) -> list[int]:
    """Start offset of each parameter in the flat layout, plus the total P at the end."""
    out = [0]
    for p in params:
        out.append(out[-1] + p.numel())
    return out


def _already_flat(params: Sequence[torch.Tensor]) -> bool:
    first = params[0]
    storage = first.untyped_storage().data_ptr()
    start = first.storage_offset()
    for p, off in zip(params, offsets(params)):
        if (
            not p.is_contiguous()
            or p.untyped_storage().data_ptr() != storage
            or p.storage_offset() != start + off
        ):
            return False
    return True


def flatten_parameters(params: Iterable[torch.Tensor]) -> torch.Tensor:
    """Make ``params`` views of one contiguous (P,) buffer, in order, and return the buffer.

    Values are preserved and the Parameter objects stay the same (only their ``.data`` is
    re-pointed, as apex's flat master weights do), so modules and other optimizers holding them
    keep working. Idempotent: parameters that already are consecutive views of one buffer are
    left as they are.
    """
    plist = check_params(params)
    total = offsets(plist)[-1]
    first = plist[0]
    if _already_flat(plist):
        base = torch.empty(0, dtype=first.dtype, device=first.device)
        return base.set_(first.untyped_storage(), first.storage_offset(), (total,), (1,))
    flat = torch.empty(total, dtype=first.dtype, device=first.device)
    for p, off in zip(plist, offsets(plist)):
        flat[off : off + p.numel()].copy_(p.detach().reshape(-1))
        p.data = flat[off : off + p.numel()].view_as(p)
    return flat


def layout_signature(params: Sequence[torch.Tensor]) -> tuple[tuple[int, int], ...]:
    """(id, numel) of each parameter, in order: equal for two holders of the same parameter
    objects in the same order, hence the same flat layout. Holders keep their parameters alive,
    so an id cannot be reused while both exist. Compared on the host, with no device access."""
    return tuple((id(p), p.numel()) for p in params)
