"""The command line: info, verify and demo run end to end; a missing extra is named in one line."""

from __future__ import annotations

import sys

import pytest
import torch

from mtl_fast._core import extras
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


@pytest.mark.parametrize(
    "argv,hidden",
    [
        (["demo"], "sklearn"),
        (["demo"], "tqdm"),
        (["train", "--epochs", "1"], "matplotlib"),
        (["bench", "--quick", "--ops", "none", "--strategies", "none"], "matplotlib"),
    ],
)
def test_missing_extra_is_named_in_one_line(
    argv: list[str],
    hidden: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: object,
) -> None:
    """Without a package of the [train] extra: one line on stderr naming the extra, status 2,
    no traceback, and nothing run before (the check comes first)."""
    monkeypatch.setitem(sys.modules, hidden, None)  # find_spec and import now fail for it
    monkeypatch.chdir(tmp_path)  # type: ignore[arg-type]
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith(f"mtl-fast {argv[0]}: ")
    assert "[train] extra" in lines[0] and 'pip install "mtl-fast[train]"' in lines[0]
    assert extras.EXTRAS["train"][hidden] in lines[0]
    assert "Traceback" not in captured.err and captured.out == ""


def test_commands_without_an_extra_run_without_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for module in extras.EXTRAS["train"]:
        monkeypatch.setitem(sys.modules, module, None)
    assert main(["info"]) == 0
    assert extras.missing("train") == list(extras.EXTRAS["train"].values())
    with pytest.raises(extras.MissingExtraError, match=r"\[train\] extra"):
        extras.require("train", "x", ["sklearn"])
