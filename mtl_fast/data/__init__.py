"""Datasets that need no network access."""

from mtl_fast.data._multi_digit import TASKS, MultiDigit, TaskSpec, multi_digit

__all__ = ["TASKS", "MultiDigit", "TaskSpec", "multi_digit"]
