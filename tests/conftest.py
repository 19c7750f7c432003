"""Test configuration shared by the whole suite.

- Triton runs under its interpreter on a machine without a CUDA device: the variable must be set
  before anything imports triton, which is why it is set here.
- ``MTL_FAST_TEST_DEVICE`` (default: cpu) picks the device the device-generic tests run on, so
  the same suite runs in CI on the CPU and by hand on a GPU.
- ``backend``: the backend an op test runs on (see ``tests/backends.py``); ``emulated_cuda``: the
  CUDA device code compiled for the host once per session; ``aggregation``: TorchJD's
  aggregators, the test skipped without TorchJD.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import ModuleType

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from tests.backends import DEVICE, Backend, make_backend


@pytest.fixture
def device() -> torch.device:
    return DEVICE


@pytest.fixture
def backend(backend_name: str, request: pytest.FixtureRequest) -> Backend:
    """The backend named by the ``backend_name`` parameter (see ``for_backends``)."""
    return make_backend(backend_name, request)


@pytest.fixture
def aggregation() -> ModuleType:
    """TorchJD's ``torchjd.aggregation``; the test is skipped where TorchJD is not installed."""
    return pytest.importorskip("torchjd.aggregation")


@pytest.fixture(scope="session")
def emulated_cuda(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """``tests/emulated_cuda.py`` with its libraries compiled (once per session)."""
    from tests import emulated_cuda as module

    reason = module.compiler_reason()
    if reason is not None:
        pytest.skip(reason)
    if module.unavailable_reason() is not None:
        module.build(Path(tmp_path_factory.mktemp("emulated-cuda")))
    return module
