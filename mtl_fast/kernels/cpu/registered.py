"""The library calls as registered ops, ``torch.ops.mtl_fast_cpu.<name>``, so that torch.compile
(fullgraph), export and tensor subclasses see each call as one opaque node; eager calls on plain
tensors skip the dispatcher and call the library directly (:func:`traced` decides)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch


def traced(x: torch.Tensor) -> bool:
    """Under torch.compile (or export, or for a tensor subclass) the registered ops run instead
    of the direct ctypes calls, which dynamo cannot trace."""
    return torch.compiler.is_compiling() or type(x) is not torch.Tensor


def weights_like(K: torch.Tensor, *args: Any) -> torch.Tensor:
    """The fake of an op that maps K (B, T, T) to (B, T) weights in K's dtype."""
    torch._check(K.dim() == 3, lambda: f"K must have shape (B, T, T), got {tuple(K.shape)}")
    return K.new_empty((K.shape[0], K.shape[1]))


def register_constant_op(
    name: str, impl: Callable[..., Any], fake: Callable[..., Any] = weights_like
) -> None:
    """Registers ``impl`` (its schema from its annotations) as ``torch.ops.mtl_fast_cpu.<name>``
    with the fake implementation ``fake``.

    The outputs are a constant of the step, as on the direct path (no history there): no
    gradient flows back to the inputs, and autograd and torch.compile need no backward formula.
    """
    op = torch.library.custom_op(f"mtl_fast_cpu::{name}", impl, mutates_args=(), device_types="cpu")
    op.register_fake(fake)
    n_inputs = len(inspect.signature(impl).parameters)

    def setup(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        outs = output if isinstance(output, tuple) else (output,)
        ctx.mark_non_differentiable(*outs)

    def backward(ctx: Any, *grads: Any) -> tuple[None, ...]:
        return (None,) * n_inputs

    op.register_autograd(backward, setup_context=setup)
