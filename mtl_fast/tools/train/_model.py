"""The small shared-trunk model used by ``mtl-fast train`` and its per-task losses and metrics."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mtl_fast.tools.data import TaskSpec
from mtl_fast.tools.data._multi_digit import H, W


class MultiDigitNet(nn.Module):
    """An MLP trunk on the 10×14 image (140 → hidden → features) and one linear head per task.

    Args:
        tasks: the task specs; head t outputs ``tasks[t].out_dim`` values.
        hidden, features: widths of the trunk.
    """

    def __init__(self, tasks: Sequence[TaskSpec], *, hidden: int = 128, features: int = 64) -> None:
        super().__init__()
        self.tasks = list(tasks)
        self.trunk = nn.Sequential(
            nn.Flatten(),
            nn.Linear(H * W, hidden),
            nn.ReLU(),
            nn.Linear(hidden, features),
            nn.ReLU(),
        )
        self.heads = nn.ModuleList(nn.Linear(features, spec.out_dim) for spec in self.tasks)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(features Z (B, features), per-task outputs)."""
        z = self.trunk(x)
        return z, [head(z) for head in self.heads]


def task_loss(spec: TaskSpec, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy for classification, squared error on the raw scale for the sum,
    squared error of sigmoid outputs for the reconstruction."""
    if spec.kind == "classification":
        return nn.functional.cross_entropy(out, target)
    if spec.kind == "regression":
        return nn.functional.mse_loss(out.squeeze(1), target)
    return nn.functional.mse_loss(torch.sigmoid(out), target)


def task_error_sum(spec: TaskSpec, out: torch.Tensor, target: torch.Tensor) -> float:
    """Sum over the batch of the per-example metric (correct count, |error|, per-pixel MSE)."""
    if spec.kind == "classification":
        return float((out.argmax(1) == target).sum())
    if spec.kind == "regression":
        return float((out.squeeze(1) - target).abs().sum())
    return float((torch.sigmoid(out) - target).pow(2).mean(1).sum())
