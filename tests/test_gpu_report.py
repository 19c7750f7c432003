"""The GPU report (benchmarks/gpu_report.sh): its parsing and time slicing, and a whole dry run
on the CPU that writes the same set of files as a GPU run."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from mtl_fast.tools.gpu_report import _driver, _env, _plan, _preference, _sanitizer, _summary

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_report.sh"
SUFFIXES = ("report.json", "report.md", "log.txt", "bench.json", "bench.md", "bench.png")
STATUSES = {"passed", "failed", "timed out", "skipped"}

JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" tests="5">
<testcase classname="tests.test_triton" name="test_a" file="tests/test_triton.py"/>
<testcase classname="tests.test_triton" name="test_b" file="tests/test_triton.py">
  <failure message="AssertionError: 3 != 4&#10;more">trace</failure></testcase>
<testcase classname="tests.test_cuda_ops" name="test_c">
  <skipped message="needs a CUDA device">skip</skipped></testcase>
<testcase classname="tests.test_cuda_ops" name="test_d">
  <skipped message="needs a CUDA device">skip</skipped></testcase>
<testcase classname="tests.test_cuda_ops" name="test_e"><error message="boom"/></testcase>
</testsuite></testsuites>
"""


def test_junit_is_summarised_per_file_with_failures_and_skip_reasons(tmp_path: Path) -> None:
    path = tmp_path / "junit.xml"
    path.write_text(JUNIT)
    s = _summary.parse_junit(path)
    assert s["counts"] == {"passed": 1, "failed": 1, "errors": 1, "skipped": 2, "total": 5}
    assert s["files"]["tests/test_triton.py"]["failed"] == 1
    assert s["files"]["tests/test_cuda_ops.py"] == {
        "passed": 0,
        "failed": 0,
        "errors": 1,
        "skipped": 2,
    }
    assert s["failures"][0] == {
        "test": "tests/test_triton.py::test_b",
        "message": "AssertionError: 3 != 4",
    }
    assert s["skip_reasons"] == {"needs a CUDA device": 2}


def test_time_slices_share_the_budget_and_pass_unused_time_on(tmp_path: Path) -> None:
    args = SimpleNamespace(dry_run=False, out=tmp_path, verbose=False, budget=400.0)
    run = _driver.Run(args)  # type: ignore[arg-type]
    weighted = [s.name for s in _plan.STAGES if s.gpu_weight > 0]
    first = run.slice_for(weighted[0])
    total = sum(s.gpu_weight for s in _plan.STAGES)
    expected = (400 - _driver.RESERVE_S) * _plan.STAGES[0].gpu_weight / total
    assert first == pytest.approx(expected, rel=0.02)
    # With half of the budget gone, the last stage gets everything that is left.
    run.deadline = time.monotonic() + 200
    assert run.slice_for(weighted[-1]) == pytest.approx(200 - _driver.RESERVE_S, abs=1)
    assert set(_plan.TESTS) <= set(_plan.STAGE_NAMES)
    shutil.rmtree(run.tmp)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--budget", "abc"], "argument --budget: expected seconds, got 'abc'"),
        (["--budget", "nan"], "argument --budget: expected a finite number of seconds above"),
        (["--budget", "-5"], "argument --budget: expected a finite number of seconds above"),
        (["--budget", str(_driver.RESERVE_S)], "argument --budget: expected a finite number"),
        (["--out", "{file}"], "argument --out: {file} exists and is not a folder"),
        (["--preference", "{missing}"], "argument --preference: no such file: {missing}"),
    ],
)
def test_bad_options_are_refused_by_name_before_anything_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    names = {"file": str(tmp_path / "a-file"), "missing": str(tmp_path / "none.json")}
    (tmp_path / "a-file").write_text("")
    argv = [a.format(**names) for a in argv]
    with pytest.raises(SystemExit) as info:
        _driver.main(argv)
    assert info.value.code == 2
    assert message.format(**names) in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]  # nothing was written


def test_good_options_parse() -> None:
    args = _driver.build_parser().parse_args(["--budget", "120", "--out", "x"])
    assert (args.budget, args.out) == (120.0, Path("x"))


def test_names_and_runtime_kinds() -> None:
    assert _driver._slug("NVIDIA H200") == "h200"
    assert _driver._slug("NVIDIA H100 80GB HBM3") == "h100-80gb-hbm3"
    assert _env.runtime_kind("6.18.44-fc-v236-gpu") == "firecracker"
    assert _env.runtime_kind("4.4.0") == "gvisor"
    assert _env.runtime_kind("6.8.0-45-generic") == "other"


def test_sanitizer_summary_lines_are_parsed() -> None:
    text = (
        "========= RACECHECK SUMMARY: 0 hazards displayed (0 errors, 0 warnings)\n"
        "========= ERROR SUMMARY: 0 errors\n"
    )
    assert _sanitizer.parse_summary(text) == {
        "errors": 0,
        "hazards": "RACECHECK SUMMARY: 0 hazards displayed (0 errors, 0 warnings)",
    }
    assert _sanitizer.parse_summary("========= ERROR SUMMARY: 3 errors")["errors"] == 3
    assert _sanitizer.parse_summary("Device not supported")["errors"] is None


def _row(op: str, provider: str, ms: float, **shape: int) -> dict:
    return {
        "section": "op",
        "op": op,
        "provider": provider,
        "shape": shape,
        "dtype": "float32",
        "metric": "time_ms",
        "value": ms,
    }


def test_preference_follows_the_headline_medians() -> None:
    big = {"T": 8, "P": 2**26}
    bench = {
        "rows": [
            _row("gram", "triton", 2.0, **big),
            _row("gram", "cuda", 1.5, **big),
            _row("gram", "cuda", 9.0, T=8, P=2**22),  # not the headline shape: ignored
            _row("combine", "triton", 1.0, **big),
            _row("combine", "cuda", 1.01, **big),  # within the tie margin: order kept
            _row("min_norm", "triton", 0.2, B=1024, T=8),
        ]
    }
    pref = _preference.suggest(bench)
    assert pref["gram"]["order"] == ["cuda", "triton"]
    assert pref["gram_list"]["order"] == ["cuda", "triton"]  # follows gram
    assert pref["combine"]["order"] == ["triton", "cuda"]
    assert pref["min_norm"]["basis"].startswith("kept")  # cuda not measured
    text = _preference.as_python(pref)
    namespace: dict = {}
    exec(text, namespace)  # the printed table is valid Python
    assert namespace["AUTO_PREFERENCE"]["gram"] == ("cuda", "triton")


@pytest.mark.slow
def test_dry_run_writes_the_gpu_file_set(tmp_path: Path) -> None:
    """The whole script on the CPU: every stage reports a status, the same six files."""
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable}
    env.pop("MTL_FAST_TEST_DEVICE", None)
    start = time.monotonic()
    proc = subprocess.run(
        ["bash", str(SCRIPT), "--dry-run", "--budget", "400", "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    wall = time.monotonic() - start
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    files = sorted(p.name for p in out.iterdir())
    assert len(files) == len(SUFFIXES) <= 8, files
    stems = {f[: -len(s) - 1] for f in files for s in SUFFIXES if f.endswith(s)}
    assert len(stems) == 1 and re.fullmatch(r"gpu-\d{4}-\d\d-\d\d-cpu-dry-run", stems.pop())
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", f) for f in files)
    assert all(p.is_file() for p in out.iterdir())  # flat: no folders

    report = json.loads(next(out.glob("*-report.json")).read_text())
    assert report["schema"] == _summary.SCHEMA and report["dry_run"] is True
    for key in ("env", "stages", "tests", "verify", "sanitizer", "bench", "files", "wall_s"):
        assert key in report
    assert [s["name"] for s in report["stages"]] == list(_plan.STAGE_NAMES)
    by_name = {s["name"]: s for s in report["stages"]}
    assert all(s["status"] in ("passed", "skipped") for s in report["stages"]), by_name
    for name in ("build", "sanitizer"):  # GPU-only: skipped, with the reason
        assert by_name[name]["status"] == "skipped" and by_name[name]["reason"]
    assert report["tests"]["tests-triton"]["counts"]["passed"] >= 1
    assert report["verify"]["backends"]["reference"]["failed"] == 0
    assert report["bench"]["ops"]["gram"]["providers"]["reference"]["time_ms"] > 0
    assert sorted(report["files"]) == files
    for key in ("git_commit", "torch", "python", "runtime", "source_digest"):
        assert report["env"].get(key), key

    summary = next(out.glob("*-report.md")).read_text()
    assert proc.stdout.rstrip().endswith(summary.rstrip())  # printed last
    for stage in report["stages"]:
        assert re.search(rf"\| {stage['name']} \| {stage['status']} \|", summary), stage["name"]
    for f in files:
        if not f.endswith(".png"):
            assert str(REPO) not in (out / f).read_text(), f"machine path in {f}"
    print(f"dry run: {wall:.0f} s wall")
