"""The parameters a strategy is given: one rule for every strategy, checked at construction.

Every entry of ``shared_params`` and ``task_params`` must be a leaf tensor that requires grad
(an ``nn.Parameter``), listed once in one of the two lists. A frozen parameter
(``requires_grad=False``) is refused, naming it and its shape: a strategy would never write its
gradient, and whether that is meant cannot be told from here. Leave frozen parameters out, e.g.
``[p for p in model.trunk.parameters() if p.requires_grad]``. The shared parameters are also
held to the flat buffer's rule (:func:`mtl_fast._core.flat.check_params`: floating, one dtype,
one device, at least one).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from mtl_fast._core.flat import check_params

EXCLUDE_FROZEN = "[p for p in module.parameters() if p.requires_grad]"


def _as_list(params: object, what: str) -> list[object]:
    if isinstance(params, torch.Tensor):
        raise TypeError(
            f"{what} must be an iterable of tensors (e.g. module.parameters() or [p]), got one "
            f"tensor of shape {tuple(params.shape)}"
        )
    if isinstance(params, (str, bytes)) or not isinstance(params, Iterable):
        raise TypeError(
            f"{what} must be an iterable of tensors (e.g. module.parameters()), got "
            f"{type(params).__name__}"
        )
    return list(params)


def check_entry(p: object, name: str) -> torch.Tensor:
    """One parameter: a leaf tensor that requires grad; the error names it and its shape."""
    if not isinstance(p, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(p).__name__}")
    shape = tuple(p.shape)
    if not p.requires_grad:
        raise ValueError(
            f"{name} (shape {shape}) does not require grad (a frozen parameter): a strategy "
            f"takes trainable parameters only; leave it out, e.g. {EXCLUDE_FROZEN}"
        )
    if not p.is_leaf:
        raise ValueError(
            f"{name} (shape {shape}) is not a leaf tensor (it was computed from other "
            "tensors, so its .grad is never written): pass the parameters themselves"
        )
    return p


def check_strategy_params(
    shared_params: Iterable[torch.Tensor], task_params: Iterable[torch.Tensor]
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """``(shared, task)`` as lists, by the rule of the module docstring.

    Raises:
        TypeError: a list is a single tensor or not iterable, or an entry is not a tensor.
        ValueError: an entry is frozen or not a leaf, is listed twice, or ``shared_params`` is
            empty (and :func:`~mtl_fast._core.flat.check_params`'s rules).
    """
    lists = {
        "shared_params": _as_list(shared_params, "shared_params"),
        "task_params": _as_list(task_params, "task_params"),
    }
    seen: dict[int, str] = {}
    for what, entries in lists.items():
        for i, p in enumerate(entries):
            name = f"{what}[{i}]"
            check_entry(p, name)
            first = seen.setdefault(id(p), name)
            if first != name:
                raise ValueError(f"{name} is the same tensor as {first}: list each parameter once")
    shared = check_params(lists["shared_params"], "shared_params")  # type: ignore[arg-type]
    task: list[torch.Tensor] = lists["task_params"]  # type: ignore[assignment]
    return shared, task


def first_frozen(params: list[torch.Tensor], what: str) -> str | None:
    """Why a step cannot run when a parameter was frozen after construction, or None."""
    for i, p in enumerate(params):
        if not p.requires_grad:
            return (
                f"{what}[{i}] (shape {tuple(p.shape)}) no longer requires grad: it was frozen "
                "after the strategy was built; build a new strategy without it"
            )
    return None
