"""Bitwise snapshots of everything a refused call must leave alone: parameters, an optimizer's
state dict, an arena, plain tensors. ``take`` clones every tensor it reaches (through dicts,
lists and tuples); ``assert_same`` compares tensors bit for bit (so a NaN that was there must
still be there, with its payload) and everything else with ``==``."""

from __future__ import annotations

import math
from typing import Any

import torch


def take(obj: Any) -> Any:
    """A deep copy of ``obj`` in which every tensor is cloned (detached)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {k: take(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(take(v) for v in obj)
    return obj


_BITS = {2: torch.int16, 4: torch.int32, 8: torch.int64}


def _equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype or a.device != b.device:
        return False
    if a.is_complex():
        a, b = torch.view_as_real(a.contiguous()), torch.view_as_real(b.contiguous())
    if a.is_floating_point():  # bit for bit: NaN equals the same NaN
        bits = _BITS[a.element_size()]
        return torch.equal(a.contiguous().view(bits), b.contiguous().view(bits))
    return torch.equal(a, b)


def assert_same(before: Any, after: Any, where: str = "state") -> None:
    """``after`` (a fresh :func:`take`) equals ``before`` bitwise, tensor by tensor."""
    if isinstance(before, torch.Tensor):
        assert isinstance(after, torch.Tensor) and _equal(before, after), f"{where} changed"
    elif isinstance(before, dict):
        assert isinstance(after, dict) and before.keys() == after.keys(), f"{where}: keys changed"
        for k in before:
            assert_same(before[k], after[k], f"{where}[{k!r}]")
    elif isinstance(before, (list, tuple)):
        assert len(before) == len(after), f"{where}: length changed"
        for i, (x, y) in enumerate(zip(before, after)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(before, float) and math.isnan(before):
        assert isinstance(after, float) and math.isnan(after), f"{where}: nan became {after!r}"
    else:
        assert before == after, f"{where}: {before!r} became {after!r}"


def optimizer_state(opt: Any, params: list[torch.Tensor]) -> dict[str, Any]:
    """What a MultiAdam (or any optimizer) refusal must keep: params, state dict, groups."""
    groups = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
    return take({"params": list(params), "state": opt.state_dict(), "groups": groups})
