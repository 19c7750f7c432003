"""The command line: info, verify and demo run end to end; a missing extra is named in one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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


# ---- user mistakes: one line on stderr naming the flag, status 2, no traceback -------------


def _refused(argv: list[str], capsys: pytest.CaptureFixture[str], flag: str) -> str:
    assert main(argv) == 2, argv
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith(f"mtl-fast {argv[0]}: error: "), lines[0]
    assert flag in lines[0], lines[0]
    assert "Traceback" not in captured.err
    return lines[0]


def _gpu_count() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


BAD_FLAGS: list[tuple[list[str], str]] = [
    (["train", "--device", "cuda:7"], "--device"),
    (["train", "--device", "tpu"], "--device"),
    (["train", "--device", "not a device"], "--device"),
    (["train", "--threads", "0"], "--threads"),
    (["train", "--epochs", "-1"], "--epochs"),
    (["train", "--batch-size", "0"], "--batch-size"),
    (["train", "--n-train", "-5"], "--n-train"),
    (["train", "--lr", "nan"], "--lr"),
    (["train", "--lr", "fast"], "--lr"),
    (["train", "--seed", "-3"], "--seed"),
    (["train", "--stgu-beta", "2"], "--stgu-beta"),
    (["train", "--diagnostics-every", "-1"], "--diagnostics-every"),
    (["train", "--backend", "foo"], "--backend"),
    (["train", "--strategy", "gradnorm"], "--strategy"),
    (["train", "--baselines", "missing-baselines.json"], "--baselines"),
    (["train", "--out", "a-file/sub"], "--out"),
    (["bench", "--P", "0"], "--P"),
    (["bench", "--T", "2,-8"], "--T"),
    (["bench", "--tasks", "two"], "--tasks"),
    (["bench", "--dtypes", "float8"], "--dtypes"),
    (["bench", "--threads", "0"], "--threads"),
    (["bench", "--ops", "gram,foo"], "--ops"),
    (["bench", "--strategies", "gradnorm"], "--strategies"),
    (["bench", "--trunks", "vgg"], "--trunks"),
    (["bench", "--batch", "-1"], "--batch"),
    (["bench", "--tag", "a/b"], "--tag"),
    (["bench", "--device", "cuda:7"], "--device"),
    (["verify", "--device", "cuda:7"], "--device"),
    (["verify", "--backend", "foo"], "--backend"),
    (["verify", "--json", "no-such-folder/checks.json"], "--json"),
    (["demo", "--epochs", "0"], "--epochs"),
    (["demo", "--device", "cuda:7"], "--device"),
    (["demo", "--strategy", "ls", "gradnorm"], "--strategy"),
]


@pytest.mark.parametrize(
    ("argv", "flag"), BAD_FLAGS, ids=lambda v: " ".join(v) if isinstance(v, list) else v
)
def test_a_bad_flag_value_is_one_line_and_status_2(
    argv: list[str],
    flag: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    if "cuda:7" in argv and _gpu_count() > 7:
        pytest.skip("this machine has a cuda:7")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a-file").write_text("")
    _refused(argv, capsys, flag)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]  # nothing was created


def test_cuda_without_a_gpu_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    if _gpu_count():
        pytest.skip("a CUDA device is visible")
    line = _refused(["train", "--device", "cuda"], capsys, "--device")
    assert "no CUDA device" in line


def test_a_baselines_file_of_the_wrong_shape_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for text in ("not json", '{"rows": []}', '{"seeds": {"zero": {"test": {}}}}'):
        path = tmp_path / "baselines.json"
        path.write_text(text)
        line = _refused(["train", "--baselines", str(path)], capsys, "--baselines")
        assert "--single-task" in line


def test_an_unwritable_out_folder_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """(The tests may run as root, for whom every folder is writable: os.access is faked.)"""
    from mtl_fast.tools.cli import _types

    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(
        _types.os, "access", lambda p, mode: Path(p) != locked and real_access(p, mode)
    )
    for argv in (["train", "--out"], ["bench", "--out"], ["demo", "--out"]):
        line = _refused([*argv, str(locked / "run")], capsys, "--out")
        assert "not writable" in line and str(locked) in line
    assert list(locked.iterdir()) == []


def test_a_backend_that_cannot_run_is_refused_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Found when the strategy is built on the run's device, before any data or output."""
    if _gpu_count():
        pytest.skip("the cuda backend may run here")
    out = tmp_path / "runs"
    argv = ["train", "--strategy", "mgda", "--backend", "cuda", "--out", str(out), "--no-plots"]
    line = _refused(argv, capsys, "--backend")
    assert "cuda" in line
    assert not out.exists()


def test_a_failed_run_leaves_no_output_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error after parsing (here: the data cannot be made) leaves no empty folder behind,
    neither --out nor the demo's temporary one."""
    import tempfile

    from mtl_fast.tools import data

    def broken(*args: object, **kwargs: object) -> object:
        raise RuntimeError("no data")

    monkeypatch.setattr(data, "multi_digit", broken)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    out = tmp_path / "runs"
    with pytest.raises(RuntimeError, match="no data"):
        main(["train", "--out", str(out), "--no-plots", "--no-progress"])
    assert not out.exists()
    with pytest.raises(RuntimeError, match="no data"):
        main(["demo", "--step-trunk", "none"])
    assert list((tmp_path / "tmp").glob("mtl-fast-demo-*")) == []


def test_the_installed_command_reports_in_one_line() -> None:
    """The real entry point, in a process of its own: status 2, one line, no traceback."""
    done = subprocess.run(
        [sys.executable, "-m", "mtl_fast", "bench", "--P", "0"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parent.parent,  # this checkout's mtl_fast
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "--P" in lines[0] and "Traceback" not in done.stderr
