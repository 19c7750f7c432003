"""The benchmark stages of the GPU report, in the benchmark result format (JSON, MD, PNG).

``python -m mtl_fast.tools.gpu_report._bench --part ops|strategies --json F --md F --png F``
runs :mod:`mtl_fast.tools.bench` with the headline configuration below and rewrites the
result files after every case, so a stage stopped at its time slice keeps what it measured.
The strategies part adds its rows to the file the ops part wrote (one result file per run).

Exit status: 0 done; 3 stopped at ``--soft-limit-s`` (the rest not measured); 1 failed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from mtl_fast.tools.bench import BenchConfig, OpGrid, Report, Row, default_config, evaluate_targets
from mtl_fast.tools.bench import run as run_bench
from mtl_fast.tools.bench._report import write_json, write_markdown, write_plot

STOPPED = 3
PEERS = ("torchjd-mgda", "torchjd-upgrad")  # measured when TorchJD's wheels travelled


def headline_config(device: torch.device, part: str, dry_run: bool) -> BenchConfig:
    """The GPU headline shapes (or the dry run's tiny ones) of ``part`` ("ops" or
    "strategies"): the benchmark's own defaults for the device (quick ones for the dry run) with
    the report's grid, strategies and the settings below."""
    strategies = ("sum", "mgda", "mgda-ub", *PEERS)
    changes: dict[str, Any]
    if dry_run:
        grid = OpGrid(
            Ps=(2**8, 2**10),  # two sizes: the plot needs two points per line
            Ts=(2,),
            adam_Ts=(2,),
            solver=((1, 4), (8, 4)),
            loop_problems=4,
            dtypes=(torch.float32,),
        )
        # The quick run's model steps (T = 2, batch 2, one step) on the MLP trunk at 16 px.
        changes = {
            "trunks": ("mlp",),
            "image": 16,
            "timing": {"warmup": 1, "min_repeat": 2, "max_repeat": 5, "min_time": 0.0},
            "loop_timing": {"warmup": 0, "min_repeat": 1, "max_repeat": 2, "min_time": 0.0},
            "copy_bytes": 2**20,
        }
    else:
        grid = OpGrid(
            Ps=(2**22, 2**26),
            Ts=(2, 8, 32),
            adam_Ts=(8,),
            adam_Ps=(2**24,),
            solver=((1, 10), (1, 64), (1024, 8)),
            loop_problems=64,
            dtypes=(torch.float32, torch.bfloat16),
        )
        # The GPU defaults' trunks (ResNet-18, ViT-S) at batch 32 and 224 px, fewer T and steps.
        changes = {
            "tasks": (2, 10),
            "steps": 5,
            "warmup": 2,
            "timing": {"warmup": 3, "min_repeat": 10, "max_repeat": 100, "min_time": 0.1},
            "loop_timing": {"warmup": 0, "min_repeat": 1, "max_repeat": 5, "min_time": 0.5},
        }
    base = default_config(device, quick=dry_run)
    cfg = dataclasses.replace(base, grid=grid, strategies=strategies, **changes)
    if part == "ops":
        cfg.strategies = ()
    else:
        cfg.ops = ()
    return cfg


def load_report(path: Path) -> Report | None:
    """A report written by :func:`write_json` (rows back into :class:`Row`), or None."""
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    fields = {f.name for f in dataclasses.fields(Row)}
    rows = [Row(**{k: v for k, v in r.items() if k in fields}) for r in data.get("rows", [])]
    return Report(dict(data.get("meta", {})), rows, list(data.get("skipped", [])))


class _OutOfTime(Exception):
    pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="one benchmark stage of the GPU report")
    parser.add_argument("--part", choices=("ops", "strategies"), required=True)
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--md", type=Path, required=True)
    parser.add_argument("--png", type=Path, required=True)
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--soft-limit-s", type=float, default=None)
    args = parser.parse_args(argv)
    start = time.monotonic()
    if args.dry_run:
        torch.set_num_threads(1)  # steadier on a small shared machine
        device = torch.device("cpu")
    else:
        if not torch.cuda.is_available():
            print("no CUDA device visible", file=sys.stderr)
            return 1
        device = torch.device("cuda", torch.cuda.current_device())
    cfg = headline_config(device, args.part, args.dry_run)
    prior = load_report(args.json) if args.part == "strategies" else None
    commit = os.environ.get("MTL_FAST_GIT_COMMIT")
    state: dict[str, Any] = {"report": None, "cases": 0, "stopped": []}

    def merged(report: Report) -> Report:
        if prior is None:
            out = Report(dict(report.meta), list(report.rows), list(report.skipped))
        else:
            meta = dict(prior.meta)
            meta["strategies_meta"] = {
                k: report.meta.get(k) for k in ("date", "wall_s", "copy_bandwidth_GBps")
            }
            out = Report(meta, prior.rows + report.rows, prior.skipped + report.skipped)
        stopped = [*(prior.meta.get("stopped_early", []) if prior else []), *state["stopped"]]
        if stopped:
            out.meta["stopped_early"] = stopped
        if not out.meta.get("git_commit") and commit:
            out.meta["git_commit"] = commit
        out.meta["command"] = "bash benchmarks/gpu_report.sh" + (
            " --dry-run" if args.dry_run else ""
        )
        out.meta["headline"] = (
            "gpu_report dry run (tiny CPU shapes)" if args.dry_run else "gpu_report"
        )
        out.targets = evaluate_targets(out)
        return out

    def write(report: Report, plot: bool) -> None:
        full = merged(report)
        write_json(full, args.json)
        write_markdown(full, args.md)
        if plot:
            write_plot(full, args.png)

    def progress(report: Report) -> None:
        state["report"] = report
        state["cases"] += 1
        write(report, plot=False)
        if args.soft_limit_s is not None and time.monotonic() - start > args.soft_limit_s:
            raise _OutOfTime

    code = 0
    try:
        report = run_bench(cfg, command="gpu_report", progress=progress)
    except _OutOfTime:
        report = state["report"]
        note = f"{args.part}: stopped at the stage's time slice after {state['cases']} cases"
        state["stopped"].append(note)
        print(note, file=sys.stderr)
        code = STOPPED
    write(report, plot=True)
    print(f"{args.part}: {len(report.rows)} rows in {time.monotonic() - start:.0f} s")
    return code


if __name__ == "__main__":
    sys.exit(main())
