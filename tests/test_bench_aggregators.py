"""The aggregator benchmarks: the interleaved op cases against TorchJD and the strategy steps."""

from __future__ import annotations

import torch

from mtl_fast.tools.bench import _strategies
from mtl_fast.tools.bench._aggregators import METHODS, aggregator_case, run_interleaved
from mtl_fast.tools.bench._report import Report, markdown


def test_interleaved_cases_time_every_provider_and_compare_with_torchjd() -> None:
    report = Report({})
    cpu = torch.device("cpu")
    for method in METHODS:
        run_interleaved(aggregator_case(method, 3, 1, cpu, rounds=2), report)
        run_interleaved(aggregator_case(method, 3, 4, cpu, rounds=2), report)
    providers = {(r.op, r.provider) for r in report.rows if r.metric == "time_ms"}
    for method in METHODS:
        assert (method, "reference") in providers
    assert ("config", "reference J→d") in providers
    assert all(r.value > 0 for r in report.rows if r.metric in ("time_ms", "cpu_time_ms"))
    speedups = [r for r in report.rows if r.metric == "speedup_vs_baseline"]
    peers = {r.op for r in report.rows if r.provider == "torchjd"}
    assert {r.op for r in speedups} == peers  # TorchJD (where installed) is the baseline
    skipped_peers = {s["op"] for s in report.skipped if s["provider"] == "torchjd"}
    assert peers | skipped_peers == set(METHODS)
    assert "thread-CPU ms" in markdown(report)


def test_strategy_steps_of_the_aggregators_run() -> None:
    report = Report({})
    setting = _strategies.StrategySetting("mlp", 3, 8, 0)
    names = ["sum", *_strategies.AGGREGATOR_STEPS, "torchjd-pcgrad", "torchjd-cagrad"]
    _strategies.run_setting(
        setting, names, torch.device("cpu"), report, steps=1, warmup=0, timing={}
    )
    timed = {r.provider for r in report.rows if r.metric == "total_ms"}
    assert set(_strategies.AGGREGATOR_STEPS) <= timed
    for name in ("torchjd-pcgrad", "torchjd-cagrad"):  # timed, or skipped with the reason
        assert name in timed or any(s["provider"] == name for s in report.skipped)
