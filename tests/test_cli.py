"""The command line: info, verify and demo run end to end."""

from __future__ import annotations

import pytest
import torch

from mtl_fast.tools.cli import main


def test_info(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "torch" in out and "reference  available" in out


def test_verify_reference_quick(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", "--backend", "reference", "--quick", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "FAIL" not in out and " 0 failed" in out
    for op in ("gram", "gram_list", "combine", "min_norm", "multi_adam", "combine_adam"):
        assert f"reference  {op}" in out


def test_verify_fails_loudly_on_a_wrong_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    """A backend whose gram is off by a little must make verify exit non-zero."""
    from mtl_fast.kernels import reference

    monkeypatch.setattr(reference, "gram", _scaled_gram)
    from mtl_fast.tools import verify

    checks, _ = verify.run(["reference"], "cpu", quick=True)
    assert any(not c.passed for c in checks if c.op == "gram")


def _scaled_gram(J: torch.Tensor) -> torch.Tensor:
    Ja = J.to(torch.float64 if J.dtype == torch.float64 else torch.float32)
    return (Ja @ Ja.transpose(-1, -2)) * 1.001
