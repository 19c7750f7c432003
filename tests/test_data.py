"""The multi-digit dataset: deterministic, disjoint sources, consistent targets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from mtl_fast.tools.data import TASKS, multi_digit


def small(seed: int):
    return multi_digit(seed, n_train=300, n_val=100, n_test=100)


def test_same_seed_same_data_other_seed_other_data():
    a, b, c = small(0), small(0), small(1)
    for split in ("train", "val", "test"):
        assert torch.equal(a[split].images, b[split].images)
        assert torch.equal(a[split].left, b[split].left)
    assert not torch.equal(a["train"].images, c["train"].images)


def test_shapes_ranges_and_targets():
    data = small(0)
    tr = data["train"]
    assert tr.images.shape == (300, 1, 10, 14) and tr.images.dtype == torch.float32
    assert float(tr.images.min()) >= 0 and float(tr.images.max()) <= 1
    assert torch.equal(tr.total, (tr.left + tr.right).float())
    assert set(tr.left.tolist()) == set(range(10)) and set(tr.right.tolist()) == set(range(10))
    targets = tr.targets()
    assert len(targets) == len(TASKS)
    for spec, y in zip(TASKS, targets):
        if spec.kind == "reconstruction":
            assert y.shape == (300, spec.out_dim)


def test_splits_draw_from_disjoint_source_digits_with_their_labels():
    labels = np.asarray(load_digits().target)
    data = multi_digit(3, n_train=400, n_val=100, n_test=100)
    used = {split: set(d.sources.reshape(-1).tolist()) for split, d in data.items()}
    assert not used["train"] & used["test"]
    assert not used["train"] & used["val"]
    assert not used["val"] & used["test"]
    for d in data.values():
        assert d.left.tolist() == labels[d.sources[:, 0].numpy()].tolist()
        assert d.right.tolist() == labels[d.sources[:, 1].numpy()].tolist()


def test_image_is_the_overlay_of_its_two_digits():
    digits = (load_digits().images / 16.0).astype(np.float32)
    d = multi_digit(0, n_train=50, n_val=5, n_test=5)["train"]
    for img, (a, b) in zip(d.images[:, 0].numpy(), d.sources.tolist()):
        # Some placement of the two source digits reproduces the image exactly.
        ok = False
        for dya in range(3):
            for dxa in range(2):
                for dyb in range(3):
                    for dxb in (5, 6):
                        left = np.zeros((10, 14), np.float32)
                        right = np.zeros((10, 14), np.float32)
                        left[dya : dya + 8, dxa : dxa + 8] = digits[a]
                        right[dyb : dyb + 8, dxb : dxb + 8] = digits[b]
                        ok = ok or bool(np.array_equal(np.maximum(left, right), img))
        assert ok


def test_bad_sizes_raise():
    with pytest.raises(ValueError, match="n_train"):
        multi_digit(0, n_train=0)
