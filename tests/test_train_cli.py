"""``mtl-fast train`` end to end on a tiny budget, Δm, and the demo's wiring."""

from __future__ import annotations

import json

import pytest

from mtl_fast.tools.cli import main
from mtl_fast.tools.train import STRATEGIES, delta_m

TINY = [
    "--epochs", "2", "--n-train", "96", "--n-val", "32", "--n-test", "32", "--batch-size", "32",
    "--hidden", "16", "--stgu-warmup", "2", "--stgu-beta", "0.5", "--diagnostics-every", "2",
    "--no-progress",
]  # fmt: skip


def test_delta_m_definition_and_sign():
    # 10 % lower accuracy (higher is better) and 20 % lower error (lower is better).
    assert delta_m([0.9, 0.8], [1.0, 1.0], [True, False]) == pytest.approx((10 - 20) / 2)
    assert delta_m([1.0], [1.0], [True]) == 0.0
    with pytest.raises(ValueError, match="baseline"):
        delta_m([1.0], [0.0], [True])
    with pytest.raises(ValueError, match="same length"):
        delta_m([1.0], [1.0, 2.0], [True])


def test_train_all_strategies_end_to_end(tmp_path, capsys):
    out = tmp_path / "runs"
    code = main(["train", "--strategy", "all", "--single-task", "--out", str(out), *TINY])
    assert code == 0
    printed = capsys.readouterr().out
    assert "lower is better" in printed  # the sign convention of Δm is printed
    baselines = json.loads((out / "baselines.json").read_text())["seeds"]["0"]["test"]
    for strategy in STRATEGIES:
        run_dir = out / strategy / "seed0"
        record = json.loads((run_dir / "run.json").read_text())
        assert record["config"]["strategy"] == strategy
        assert len(record["history"]) == 2 and record["steps"] == 2 * 3
        specs = record["tasks"]
        expected = delta_m(
            [record["test"][s["name"]] for s in specs],
            [baselines[s["name"]] for s in specs],
            [s["higher_is_better"] for s in specs],
        )
        assert record["delta_m"] == pytest.approx(expected)
        assert (run_dir / "curves.png").stat().st_size > 1000
        assert record["diagnostics"], f"{strategy} took no diagnostics"
        assert (run_dir / "similarity.png").exists()
        assert (run_dir / "decisions.png").exists()
        for spec in specs:
            assert 0 <= record["test"][spec["name"]] < 1e3
        assert f"| {strategy} |" in printed
    stgu = json.loads((out / "stgu" / "seed0" / "run.json").read_text())
    assert len(stgu["affinity"]) == 4
    mgda = json.loads((out / "mgda" / "seed0" / "run.json").read_text())
    assert all(abs(sum(w) - 1) < 1e-4 for w in mgda["weights_trace"])  # c = w on the simplex
    summary = (out / "summary.csv").read_text().splitlines()
    assert len(summary) == 1 + len(STRATEGIES)


def test_train_reuses_baselines_and_is_deterministic(tmp_path):
    first = tmp_path / "a"
    main(["train", "--strategy", "pertask", "--single-task", "--out", str(first), *TINY])
    second = tmp_path / "b"
    main(
        ["train", "--strategy", "pertask", "--baselines", str(first / "baselines.json"),
         "--out", str(second), "--no-plots", *TINY]
    )  # fmt: skip
    a = json.loads((first / "pertask" / "seed0" / "run.json").read_text())
    b = json.loads((second / "pertask" / "seed0" / "run.json").read_text())
    assert a["test"] == b["test"] and a["delta_m"] == b["delta_m"]
    assert not (second / "pertask" / "seed0" / "curves.png").exists()


def test_bad_arguments_are_refused(tmp_path, capsys):
    out = tmp_path / "runs"
    for argv, match in (
        (["--epochs", "0"], "--epochs"),
        (["--strategy", "gradnorm"], "unknown strategy"),
        (["--strategy", "pertask", "--optimizer", "sgd"], "optimizer"),
    ):
        assert main(["train", "--out", str(out), *TINY, *argv]) == 2
        err = capsys.readouterr().err
        assert match in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()


def test_demo_runs_three_strategies_with_baselines(tmp_path, capsys):
    code = main(
        ["demo", "--epochs", "1", "--n-train", "64", "--out", str(tmp_path), "--step-steps", "2"]
    )
    assert code == 0
    printed = capsys.readouterr().out
    for strategy in ("ls", "mgda", "pertask"):
        assert f"| {strategy} |" in printed
        assert (tmp_path / strategy / "seed0" / "run.json").exists()
    assert "Δm" in printed and "lower is better" in printed
    # The whole-step table, measured in the same run.
    assert "Whole training step, mlp trunk" in printed
    for provider in ("sum", "floor", "mgda", "mgda-ub"):
        assert f"| {provider} |" in printed
    assert (tmp_path / "whole_step.md").exists()
