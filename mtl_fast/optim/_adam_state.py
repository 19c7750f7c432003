"""The checks of a saved MultiAdam state before any of it is loaded: keys, counts, shapes,
dtypes, devices, values and hyperparameters. Loading then only assigns, so it cannot fail half-way.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from mtl_fast._core.adam_checks import check_group
from mtl_fast._core.contracts import AdamHyper
from mtl_fast._core.validate import all_finite, require_tensor

KEYS = ("num_tasks", "num_params", "param_group", "exp_avg", "exp_avg_sq", "steps")


def _check_tensor(
    name: str, x: object, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    x = require_tensor(f"state_dict[{name!r}]", x)
    if tuple(x.shape) != shape:
        raise ValueError(
            f"state_dict[{name!r}] must have shape {shape}, got {tuple(x.shape)} (no broadcasting)"
        )
    if x.dtype != dtype:
        raise TypeError(f"state_dict[{name!r}] must have dtype {dtype}, got {x.dtype}")
    if x.device != device and x.device.type != "cpu":
        raise ValueError(f"state_dict[{name!r}] is on {x.device}, expected {device} or the CPU")
    if not all_finite(x):
        raise ValueError(f"state_dict[{name!r}] holds NaN or Inf")
    return x


def check_state_dict(
    state_dict: object,
    *,
    num_tasks: int,
    num_params: int,
    state_dtype: torch.dtype,
    device: torch.device,
) -> tuple[dict[str, torch.Tensor], AdamHyper, dict[str, Any]]:
    """Validate a :meth:`MultiAdam.state_dict` for an optimizer of ``num_tasks`` tasks over
    ``num_params`` scalars whose moments are ``state_dtype`` on ``device``.

    Returns:
        the three state tensors by key ((T, P) moments, (T,) float32 steps), the checked
        hyperparameters, and the saved param group (extra keys, such as a scheduler's
        ``initial_lr``, included).
    """
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a dict, got {type(state_dict).__name__}")
    missing = [k for k in KEYS if k not in state_dict]
    extra = [k for k in state_dict if k not in KEYS]
    if missing or extra:
        raise ValueError(
            f"state_dict must hold exactly the keys {list(KEYS)}; missing {missing}, "
            f"unexpected {extra}"
        )
    for key, ours in (("num_tasks", num_tasks), ("num_params", num_params)):
        theirs = state_dict[key]
        if isinstance(theirs, bool) or theirs != ours:
            raise ValueError(f"state_dict is for {key}={theirs!r}, this optimizer has {ours}")
    T, P = num_tasks, num_params
    tensors = {
        "exp_avg": _check_tensor("exp_avg", state_dict["exp_avg"], (T, P), state_dtype, device),
        "exp_avg_sq": _check_tensor(
            "exp_avg_sq", state_dict["exp_avg_sq"], (T, P), state_dtype, device
        ),
        "steps": _check_tensor("steps", state_dict["steps"], (T,), torch.float32, device),
    }
    if bool((tensors["exp_avg_sq"] < 0).any()):
        raise ValueError("state_dict['exp_avg_sq'] holds negative values")
    steps = tensors["steps"]
    if bool((steps < 0).any()) or not torch.equal(steps, steps.round()):
        raise ValueError(f"state_dict['steps'] must hold whole numbers ≥ 0, got {steps.tolist()}")
    group = state_dict["param_group"]
    if isinstance(group, Mapping) and isinstance(group.get("lr"), torch.Tensor):
        group = {**group, "lr": group["lr"].to(device)}  # a checkpoint loaded onto the CPU
    hyper = check_group(group, device, read_value=True)
    if "params" in group:
        raise ValueError("state_dict['param_group'] must not hold 'params'")
    return tensors, hyper, dict(group)
