"""Test configuration shared by the whole suite.

- Triton runs under its interpreter on a machine without a CUDA device: the variable must be set
  before anything imports triton, which is why it is set here.
- ``MTL_FAST_TEST_DEVICE`` (default: cpu) picks the device the device-generic tests run on, so
  the same suite runs in CI on the CPU and by hand on a GPU.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

DEVICE = torch.device(os.environ.get("MTL_FAST_TEST_DEVICE", "cpu"))


@pytest.fixture
def device() -> torch.device:
    return DEVICE


requires_cuda = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device (none visible on this machine)"
)
