"""Optimizer-side building blocks over flattened shared parameters: the gradient arena
(:class:`TaskGradients`) and the multi-state Adam (:class:`MultiAdam`)."""

from mtl_fast.optim.multi_adam import MultiAdam
from mtl_fast.optim.task_gradients import TaskGradients

__all__ = ["MultiAdam", "TaskGradients"]
