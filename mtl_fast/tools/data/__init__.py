"""Datasets that need no network access."""

from mtl_fast.tools.data._multi_digit import TASKS, MultiDigit, TaskSpec, multi_digit

__all__ = ["TASKS", "MultiDigit", "TaskSpec", "multi_digit"]
