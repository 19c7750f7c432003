"""``torchrun --nproc-per-node 2 -m mtl_fast train``: two gloo ranks give the single-process
run's results (each rank takes half of every batch), and only rank 0 writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mtl_fast.tools.cli import main

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "--epochs", "1", "--n-train", "96", "--n-val", "32", "--n-test", "32", "--batch-size", "32",
    "--hidden", "16", "--stgu-warmup", "1", "--diagnostics-every", "2", "--no-progress",
    "--no-plots",
]  # fmt: skip
STRATEGIES = ["mgda", "stgu"]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed")
def test_train_under_torchrun_matches_one_process(tmp_path, capsys):
    pytest.importorskip("sklearn")
    out = tmp_path / "two"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "mtl_fast", "train", "--strategy", *STRATEGIES, "--out", str(out), *TINY,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert done.stdout.count("wrote ") == 1  # rank 0 alone prints and writes
    main(["train", "--strategy", *STRATEGIES, "--out", str(tmp_path / "one"), *TINY])
    capsys.readouterr()
    for strategy in STRATEGIES:
        two = json.loads((out / strategy / "seed0" / "run.json").read_text())
        one = json.loads((tmp_path / "one" / strategy / "seed0" / "run.json").read_text())
        assert (two["world_size"], one["world_size"]) == (2, 1)
        assert two["steps"] == one["steps"] == 3
        for name, value in one["test"].items():
            assert two["test"][name] == pytest.approx(value, rel=1e-4), (strategy, name)
