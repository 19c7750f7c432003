"""The Triton kernels compiled for an H100 without a GPU: the interpreter checks their arithmetic
(tests/ops/), this compiles each launch with ptxas for sm_90."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

triton = pytest.importorskip("triton")


def _bundled_ptxas() -> Path:
    return Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"


@pytest.mark.slow
@pytest.mark.skipif(not _bundled_ptxas().exists(), reason="this Triton wheel ships no ptxas")
def test_every_kernel_compiles_for_sm90() -> None:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run(
        [sys.executable, "-m", "mtl_fast.kernels.triton.aot", "--arch", "90", "--quick"],
        capture_output=True,
        text=True,
        env=env,
        cwd=Path(__file__).resolve().parents[1],
        timeout=900,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "specializations compiled for sm_90" in out.stdout
