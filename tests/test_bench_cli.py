"""Smoke test of ``mtl-fast bench`` on tiny sizes: the files it writes, their fields, and that
every figure is a positive finite number. Speed targets are never asserted here."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from mtl_fast.tools.cli import main


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, list[Path]]:
    out = tmp_path_factory.mktemp("bench")
    threads = torch.get_num_threads()
    try:
        code = _run_bench(out)
    finally:
        torch.set_num_threads(threads)  # --threads changes the whole process
    assert code == 0
    files = sorted(out.iterdir())
    js = [f for f in files if f.suffix == ".json"]
    assert len(js) == 1
    return json.loads(js[0].read_text()), files


def _run_bench(out: Path) -> int:
    return main(
        [
            "bench",
            "--device",
            "cpu",
            "--threads",
            "1",
            "--quick",
            "--P",
            "2**10,2**12",
            "--T",
            "2,3",
            "--trunks",
            "mlp",
            "--tasks",
            "2,3",
            "--strategies",
            "sum,mgda,upgrad,mgda-ub,multi-adam,per-task,torchjd-mgda",
            "--out",
            str(out),
        ]
    )


def test_writes_json_markdown_png(result: tuple[dict, list[Path]]) -> None:
    _, files = result
    suffixes = sorted(f.suffix for f in files)
    assert suffixes == [".json", ".md", ".png"]
    for f in files:
        assert f.stat().st_size > 0
        assert f.name.startswith("bench-") and "-quick" in f.name


def test_metadata(result: tuple[dict, list[Path]]) -> None:
    data, _ = result
    meta = data["meta"]
    for key in ("device", "date", "mtl_fast", "git_commit", "torch", "backends", "command"):
        assert key in meta
    assert meta["device_type"] == "cpu"
    assert meta["copy_bandwidth_GBps"] > 0 and math.isfinite(meta["copy_bandwidth_GBps"])
    assert meta["spec_bandwidth_GBps"] is None  # no spec sheet for a CPU
    assert meta["backends"]["reference"] is None  # available
    assert meta["malloc"] == "default"


def test_rows_cover_ops_and_strategies(result: tuple[dict, list[Path]]) -> None:
    data, _ = result
    rows = data["rows"]
    ops = {r["op"] for r in rows if r["section"] == "op"}
    assert ops >= {
        "gram",
        "combine",
        "min_norm",
        "multi_adam",
        "combine_adam",
        "mgda_combination",
        "upgrad_weights",
        "upgrad_combination",
    }
    providers = {(r["op"], r["provider"]) for r in rows}
    assert ("gram", "torch.mm") in providers and ("gram", "reference") in providers
    assert ("min_norm", "python-loop") in providers
    assert ("multi_adam", "torch Adam ×T") in providers
    strategies = {r["provider"] for r in rows if r["section"] == "strategy"}
    assert strategies >= {"sum", "mgda", "upgrad", "mgda-ub", "multi-adam", "per-task"}
    assert ("upgrad_weights", "cpu") in providers or ("upgrad_weights", "reference") in providers
    for r in rows:
        for key in (
            "op",
            "provider",
            "shape",
            "dtype",
            "metric",
            "unit",
            "value",
            "device",
            "date",
        ):
            assert key in r


def test_figures_positive_and_finite(result: tuple[dict, list[Path]]) -> None:
    data, _ = result
    for r in data["rows"]:
        v = r["value"]
        assert math.isfinite(v), r
        if r["metric"] in ("objective_excess_max", "max_rel_error_vs_torchjd"):
            assert v >= 0, r
        elif r["metric"] in ("combination_ms", "combination_share_of_fwd_bwd"):
            assert v >= 0, r  # strategies without a combination phase report 0
        elif r["metric"] in ("page_faults", "sys_ms"):
            assert v >= 0, r  # a step that faults nothing in
        else:
            assert v > 0, r


def test_bytes_and_bandwidth_consistent(result: tuple[dict, list[Path]]) -> None:
    data, _ = result
    by_key: dict[tuple, dict[str, float]] = {}
    for r in data["rows"]:
        key = (r["op"], r["provider"], json.dumps(r["shape"], sort_keys=True), r["dtype"])
        by_key.setdefault(key, {})[r["metric"]] = r["value"]
    checked = 0
    for metrics in by_key.values():
        if {"bytes", "time_ms", "bandwidth_GBps"} <= metrics.keys():
            expect = metrics["bytes"] / (metrics["time_ms"] / 1e3) / 1e9
            assert metrics["bandwidth_GBps"] == pytest.approx(expect, rel=1e-9)
            checked += 1
    assert checked > 0


def test_skips_carry_reasons(result: tuple[dict, list[Path]]) -> None:
    data, _ = result
    for s in data["skipped"]:
        assert s["reason"], s
    # On the CPU the Triton interpreter is never timed.
    assert any(s["provider"] == "triton" for s in data["skipped"])
    assert all(r["provider"] != "triton" for r in data["rows"])


def test_targets_are_reported_not_asserted(result: tuple[dict, list[Path]]) -> None:
    data, _ = result
    names = [t["name"] for t in data["targets"]]
    assert any("Python loop" in n for n in names)
    for t in data["targets"]:
        assert t["met"] in (True, False, None)


def test_no_machine_paths_in_files(result: tuple[dict, list[Path]]) -> None:
    _, files = result
    home = str(Path.home())
    repo = str(Path(__file__).resolve().parents[1])
    for f in files:
        if f.suffix in (".json", ".md"):
            text = f.read_text()
            assert repo not in text
            if len(home) > 1:
                assert home + "/" not in text
