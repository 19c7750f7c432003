"""Training a shared-trunk model on the multi-digit set with any strategy (``mtl-fast train``)."""

from mtl_fast.tools.train._loop import (
    AGGREGATORS,
    SEQUENTIAL,
    STRATEGIES,
    TrainConfig,
    build_strategy,
    evaluate,
    train,
    train_baselines,
)
from mtl_fast.tools.train._metrics import SIGN_CONVENTION, delta_m
from mtl_fast.tools.train._model import MultiDigitNet, task_error_sum, task_loss

__all__ = [
    "AGGREGATORS",
    "SEQUENTIAL",
    "SIGN_CONVENTION",
    "STRATEGIES",
    "MultiDigitNet",
    "TrainConfig",
    "build_strategy",
    "delta_m",
    "evaluate",
    "task_error_sum",
    "task_loss",
    "train",
    "train_baselines",
]
