"""Multi-digit: a MultiMNIST-style multi-task set built from scikit-learn's handwritten digits.

The source is the UCI optical-recognition digits bundled with scikit-learn
(``sklearn.datasets.load_digits``: 1,797 real handwritten 8×8 images with 17 grey levels), so
nothing is downloaded. Each example overlays two digits in a 10×14 canvas, one shifted to the
left and one to the right so that they overlap by 2–4 columns (pixel-wise maximum, as
MultiMNIST does), with a random vertical offset of 0–2 rows each.

Tasks of different natures, so the magnitudes of their losses and gradients genuinely differ:

- ``left``  — class of the left digit (10-way classification; cross-entropy; accuracy ↑);
- ``right`` — class of the right digit (10-way classification; cross-entropy; accuracy ↑);
- ``sum``   — the sum of the two digits, 0..18 (regression on the raw scale; squared error;
  mean absolute error ↓);
- ``recon`` — reconstruct the 140-pixel image in [0, 1] (squared error; mean squared error ↓).

Splits: the 1,797 source images are first split (by a seeded permutation) into disjoint
train/validation/test pools (60/20/20 %), and each split's pairs are drawn from its own pool
only, so no handwritten digit of the test set is ever seen in training. Everything is a pure
function of ``seed``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mtl_fast._core.extras import require
from mtl_fast._core.validate import require_positive_int

H, W = 10, 14
IMAGE_SHAPE = (1, H, W)


@dataclass(frozen=True)
class TaskSpec:
    """One task: its name, head output size, loss kind and evaluation metric."""

    name: str
    kind: str  # "classification" | "regression" | "reconstruction"
    out_dim: int
    metric: str
    higher_is_better: bool


TASKS: tuple[TaskSpec, ...] = (
    TaskSpec("left", "classification", 10, "accuracy", True),
    TaskSpec("right", "classification", 10, "accuracy", True),
    TaskSpec("sum", "regression", 1, "mae", False),
    TaskSpec("recon", "reconstruction", H * W, "mse", False),
)


@dataclass
class MultiDigit:
    """One split.

    Attributes:
        images: (N, 1, 10, 14) float32 in [0, 1].
        left, right: (N,) int64 digit classes.
        total: (N,) float32, left + right.
        sources: (N, 2) int64 indices of the left and right digits in ``load_digits()``.
    """

    images: torch.Tensor
    left: torch.Tensor
    right: torch.Tensor
    total: torch.Tensor
    sources: torch.Tensor

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def targets(self) -> list[torch.Tensor]:
        """The targets of :data:`TASKS`, in order (recon's target is the flattened image)."""
        return [self.left, self.right, self.total, self.images.reshape(len(self), -1)]

    def to(self, device: torch.device | str) -> MultiDigit:
        return MultiDigit(
            self.images.to(device),
            self.left.to(device),
            self.right.to(device),
            self.total.to(device),
            self.sources,
        )


def _compose(
    digits: np.ndarray, labels: np.ndarray, pool: np.ndarray, n: int, rng: np.random.Generator
) -> MultiDigit:
    a = rng.choice(pool, size=n)
    b = rng.choice(pool, size=n)
    canvas = np.zeros((n, H, W), dtype=np.float32)
    right = np.zeros((n, H, W), dtype=np.float32)
    dy_a = rng.integers(0, 3, size=n)
    dy_b = rng.integers(0, 3, size=n)
    dx_a = rng.integers(0, 2, size=n)  # left digit spans columns 0..8
    dx_b = rng.integers(5, 7, size=n)  # right digit spans columns 5..13: 2..4 columns overlap
    for i in range(n):
        canvas[i, dy_a[i] : dy_a[i] + 8, dx_a[i] : dx_a[i] + 8] = digits[a[i]]
        right[i, dy_b[i] : dy_b[i] + 8, dx_b[i] : dx_b[i] + 8] = digits[b[i]]
    images = np.maximum(canvas, right)[:, None]
    la = labels[a].astype(np.int64)
    lb = labels[b].astype(np.int64)
    return MultiDigit(
        torch.from_numpy(images),
        torch.from_numpy(la),
        torch.from_numpy(lb),
        torch.from_numpy((la + lb).astype(np.float32)),
        torch.from_numpy(np.stack([a, b], axis=1).astype(np.int64)),
    )


def multi_digit(
    seed: int = 0, *, n_train: int = 6000, n_val: int = 1000, n_test: int = 2000
) -> dict[str, MultiDigit]:
    """The train/val/test splits of the multi-digit set, a deterministic function of ``seed``.

    Args:
        seed: seeds the source-image pools, the pairs and the offsets.
        n_train, n_val, n_test: number of composed examples per split (≥ 1 each).

    Returns:
        {"train": ..., "val": ..., "test": ...}, CPU tensors.

    Example:
        >>> data = multi_digit(0, n_train=10, n_val=5, n_test=5)
        >>> data["train"].images.shape
        torch.Size([10, 1, 10, 14])
    """
    require("train", "the multi-digit data set (scikit-learn's digits)", ["sklearn"])
    from sklearn.datasets import load_digits

    for name, n in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
        require_positive_int(name, n, 1)
    source = load_digits()
    digits = (source.images / 16.0).astype(np.float32)  # (1797, 8, 8) in [0, 1]
    labels = np.asarray(source.target)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(digits))
    n_tr = int(0.6 * len(perm))
    n_va = int(0.2 * len(perm))
    pools = {"train": perm[:n_tr], "val": perm[n_tr : n_tr + n_va], "test": perm[n_tr + n_va :]}
    sizes = {"train": n_train, "val": n_val, "test": n_test}
    return {
        split: _compose(digits, labels, pools[split], sizes[split], rng)
        for split in ("train", "val", "test")
    }
