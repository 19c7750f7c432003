"""``mtl-fast demo``: a short CPU comparison of three strategies on the multi-digit set, then the
cost of one whole training step of each method, measured here, against the peers' pipelines."""

from __future__ import annotations

import argparse
import contextlib
import tempfile
from pathlib import Path

from mtl_fast.tools.cli._types import device, int_at_least, out_dir, seed

NAME = "demo"
HELP = (
    "a short CPU run of linear scalarisation, MGDA and per-task Adam updates on the "
    "multi-digit set, with single-task baselines and a comparison table, then a whole-step "
    "timing table (summed step, MGDA, MGDA-UB, TorchJD's pipelines when installed) measured on "
    "this machine (well under 2 minutes on a 2-core CPU)"
)

# The whole-step table: summed step, the floor, mtl_fast's MGDA and MGDA-UB and, when TorchJD is
# installed, its autojac (MGDA, UPGrad) and autogram (UPGrad) pipelines, interleaved.
STEP_PROVIDERS = (
    "sum",
    "floor",
    "mgda",
    "mgda-ub",
    "torchjd-mgda",
    "torchjd-upgrad",
    "torchjd-autogram-upgrad",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from mtl_fast.tools.cli.train import strategy_names

    positive = int_at_least(1)
    parser.add_argument(
        "--strategy",
        nargs="+",
        type=strategy_names,
        default=[["ls", "mgda", "pertask"]],
        help="strategies to compare (default: ls mgda pertask)",
    )
    parser.add_argument("--epochs", type=positive, default=8)
    parser.add_argument("--n-train", type=positive, default=4000)
    parser.add_argument("--seed", type=seed, default=0)
    parser.add_argument("--device", type=device, default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument(
        "--out", type=out_dir, default=None, help="output folder (default: a temporary folder)"
    )
    parser.add_argument(
        "--step-trunk",
        default="mlp",
        choices=["mlp", "resnet18", "vit-s", "none"],
        help="trunk of the whole-step table (default mlp: seconds; resnet18: about a minute on "
        "a 2-core CPU; none: skip the table)",
    )
    parser.add_argument("--step-tasks", type=positive, default=10, help="T of the whole-step table")
    parser.add_argument("--step-steps", type=positive, default=15, help="timed steps per provider")


def whole_step_table(
    trunk: str, T: int, steps: int, device: str = "cpu", threads: int | None = 1
) -> str:
    """Time one training step of each provider of :data:`STEP_PROVIDERS` (interleaved, median)
    on ``trunk`` with T tasks and return a Markdown table with the ratios to the summed step."""
    import torch

    from mtl_fast.tools.bench import Report, StrategySetting, run_setting

    if threads is not None:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    report = Report({"device_type": dev.type})
    setting = StrategySetting(trunk, T, batch=8, image=32)
    run_setting(setting, list(STEP_PROVIDERS), dev, report, steps=steps, warmup=1, timing={})
    rows = {
        (r.provider, r.metric): r.value
        for r in report.rows
        if r.section == "strategy" and r.shape.get("T") == T
    }
    P = next((r.shape.get("P") for r in report.rows if r.section == "strategy"), None)
    lines = [
        f"Whole training step, {trunk} trunk (P = {P:,}), T = {T}, batch 8, "
        f"{torch.get_num_threads()} thread(s), median of {steps} interleaved steps:",
        "",
        "| provider | ms / step | × summed step | peak MB |",
        "|---|---|---|---|",
    ]
    for name in STEP_PROVIDERS:
        total = rows.get((name, "total_ms"))
        if total is None:
            continue
        ratio = rows.get((name, "overhead_vs_sum"))
        peak = rows.get((name, "peak_memory_MB"))
        lines.append(
            f"| {name} | {total:.3g} | {'' if ratio is None else f'{ratio:.2f}×'} | "
            f"{'' if peak is None else f'{peak:.3g}'} |"
        )
    skipped = sorted({s["provider"] for s in report.skipped if s["section"] == "strategy"})
    if skipped:
        lines += [
            "",
            "not run: " + ", ".join(skipped) + " (TorchJD: pip install 'mtl-fast[peers]')",
        ]
    lines += [
        "",
        "floor: one forward, T backward passes and one Adam step, the least any per-task-gradient "
        "method pays; torchjd-*: TorchJD's own pipelines on the same model (autojac "
        "mtl_backward + jac_to_grad, autogram Engine + UPGradWeighting).",
    ]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from mtl_fast._core.extras import require

    require("train", "this command")

    from mtl_fast.tools.cli.train import strategies_from

    made = args.out is None  # --out is created by the first result written, if any
    out = args.out if args.out is not None else Path(tempfile.mkdtemp(prefix="mtl-fast-demo-"))
    try:
        return _run(args, out, strategies_from(args.strategy))
    finally:
        if made:
            with contextlib.suppress(OSError):
                out.rmdir()  # only if nothing was written: a failed run leaves no empty folder


def _run(args: argparse.Namespace, out: Path, strategies: list[str]) -> int:
    import time

    from mtl_fast.tools.cli import build_parser

    argv = [
        "train",
        "--strategy",
        *strategies,
        "--epochs",
        str(args.epochs),
        "--n-train",
        str(args.n_train),
        "--seed",
        str(args.seed),
        "--device",
        args.device,
        "--single-task",
        "--diagnostics-every",
        "50",
        "--out",
        str(out),
    ]
    print("mtl-fast demo = mtl-fast " + " ".join(argv))
    start = time.perf_counter()
    train_args = build_parser().parse_args(argv)
    code: int = train_args._run(train_args)
    if code == 0 and args.step_trunk != "none":
        t0 = time.perf_counter()
        table = whole_step_table(args.step_trunk, args.step_tasks, args.step_steps, args.device)
        print()
        print(table)
        print(f"(whole-step table: {time.perf_counter() - t0:.1f} s)")
        (out / "whole_step.md").write_text(table + "\n")
    print(f"demo finished in {time.perf_counter() - start:.1f} s")
    return code
