"""The checks of Adam(W) hyperparameters, shared by MultiAdam (construction, every step, a loaded
state dict) and ``combine_adam``: each rule is written here once, and errors name the argument."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from mtl_fast._core.contracts import AdamHyper
from mtl_fast._core.validate import is_real, require_float, require_real

HYPER_KEYS = ("lr", "betas", "eps", "weight_decay")


def check_lr(
    lr: object, device: torch.device, *, read_value: bool, name: str = "lr"
) -> float | torch.Tensor:
    """A finite lr ≥ 0: a number, or a 0-d float tensor on ``device`` (for CUDA graphs).

    A tensor's value is read (one host sync on a GPU) only when ``read_value`` or on the CPU,
    where reading it is free, and never inside ``torch.compile``.
    """
    if not isinstance(lr, torch.Tensor):
        return require_real(name, lr, low=0.0)
    require_float(name, lr)
    if lr.dim() != 0:
        raise ValueError(f"{name} must be a number or a 0-d tensor, got shape {tuple(lr.shape)}")
    if lr.device != device:
        raise ValueError(f"{name} is on {lr.device} but the parameters are on {device}")
    # Not inside torch.compile: reading the value there is a graph break (an error with
    # fullgraph=True). The type, shape and device checks above still apply.
    if (read_value or lr.device.type == "cpu") and not torch.compiler.is_compiling():
        value = float(lr)
        if not (value >= 0 and value != float("inf")):
            raise ValueError(f"{name} must be a finite number ≥ 0, got tensor({value})")
    return lr


def check_betas(betas: object) -> tuple[float, float]:
    """Two numbers in [0, 1)."""
    if isinstance(betas, (str, bytes, torch.Tensor)) or not isinstance(betas, (tuple, list)):
        raise TypeError(f"betas must be a pair (beta1, beta2), got {type(betas).__name__}")
    if len(betas) != 2:
        raise ValueError(f"betas must be a pair (beta1, beta2), got {len(betas)} values {betas!r}")
    for i, b in enumerate(betas):
        if not is_real(b) or not 0 <= float(b) < 1:
            raise ValueError(f"betas must each be in [0, 1), got betas[{i}] = {b!r}")
    return float(betas[0]), float(betas[1])


def check_hyper(
    lr: object,
    betas: object,
    eps: object,
    weight_decay: object,
    device: torch.device,
    *,
    read_value: bool = True,
) -> AdamHyper:
    """Every Adam(W) hyperparameter at once: lr, eps and weight_decay finite and ≥ 0, betas in
    [0, 1). ``read_value``: see :func:`check_lr`."""
    lr = check_lr(lr, device, read_value=read_value)
    beta1, beta2 = check_betas(betas)
    eps_f = require_real("eps", eps, low=0.0)
    wd = require_real("weight_decay", weight_decay, low=0.0)
    return AdamHyper(lr, beta1, beta2, eps_f, wd)


def check_group(group: object, device: torch.device, *, read_value: bool) -> AdamHyper:
    """The hyperparameters of a parameter group or of a saved one (a mapping holding at least
    :data:`HYPER_KEYS`; other keys, such as a scheduler's ``initial_lr``, are kept as they are)."""
    if not isinstance(group, Mapping):
        raise TypeError(f"param_group must be a dict, got {type(group).__name__}")
    missing = [k for k in HYPER_KEYS if k not in group]
    if missing:
        raise ValueError(f"param_group lacks {missing} (it must hold {list(HYPER_KEYS)})")
    values: dict[str, Any] = {k: group[k] for k in HYPER_KEYS}
    return check_hyper(**values, device=device, read_value=read_value)
