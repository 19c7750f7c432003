"""``mtl-fast train``: train a shared-trunk model on the multi-digit set with any strategy."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from mtl_fast.tools.cli._types import (
    UsageError,
    backend,
    baselines_file,
    device,
    int_at_least,
    out_dir,
    real,
    seed,
)

NAME = "train"
HELP = (
    "train a shared-trunk model on the multi-digit set (real handwritten digits, no network) "
    "with one or more MTL strategies; writes JSON records and PNG plots"
)

DEFAULTS: dict[str, Any] = {
    "lr": 1e-3,
    "epochs": 15,
    "batch_size": 128,
    "hidden": 256,
}


def strategy_names(text: str) -> list[str]:
    """One --strategy value: a name, 'all', or a comma list of them."""
    from mtl_fast.tools.train import STRATEGIES

    out = []
    for name in (n.strip() for n in text.split(",")):
        if not name:
            continue
        if name != "all" and name not in STRATEGIES:
            raise argparse.ArgumentTypeError(
                f"unknown strategy {name!r}; choose from {', '.join(STRATEGIES)} or 'all'"
            )
        out.append(name)
    if not out:
        raise argparse.ArgumentTypeError("give at least one strategy")
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from mtl_fast.tools.train import STRATEGIES

    parser.add_argument(
        "--strategy",
        nargs="+",
        type=strategy_names,
        default=[["ls"]],
        metavar="NAME",
        help=f"one or more of {', '.join(STRATEGIES)}, or 'all' (default: ls)",
    )
    parser.add_argument(
        "--optimizer",
        choices=["adam", "sgd"],
        default="adam",
        help="optimizer of the combine-then-step strategies (the sequential ones always use "
        "per-task Adam states)",
    )
    positive = int_at_least(1)
    parser.add_argument("--lr", type=real(0.0, low_open=True), default=DEFAULTS["lr"])
    parser.add_argument("--epochs", type=positive, default=DEFAULTS["epochs"])
    parser.add_argument("--batch-size", type=positive, default=DEFAULTS["batch_size"])
    parser.add_argument("--seed", type=seed, nargs="+", default=[0], help="one run per seed")
    parser.add_argument("--data-seed", type=seed, default=0, help="seed of the dataset splits")
    parser.add_argument("--device", type=device, default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument(
        "--threads",
        type=positive,
        default=1,
        help="CPU threads for torch (default 1: this model is too small to gain from more, "
        "and timings stay comparable on a busy machine)",
    )
    parser.add_argument("--n-train", type=positive, default=6000)
    parser.add_argument("--n-val", type=positive, default=1000)
    parser.add_argument("--n-test", type=positive, default=2000)
    parser.add_argument("--hidden", type=positive, default=DEFAULTS["hidden"], help="trunk width")
    parser.add_argument(
        "--normalization",
        choices=["none", "l2", "loss", "loss+"],
        default="none",
        help="MGDA / MGDA-UB gradient normalisation",
    )
    parser.add_argument(
        "--apply-to",
        choices=["raw", "normalized"],
        default="raw",
        help="MGDA weights multiply the raw losses (official code) or the normalised ones",
    )
    parser.add_argument("--group-size", type=positive, default=2, help="k of pertask-grouped")
    parser.add_argument(
        "--redraw", action="store_true", help="pertask-grouped: draw a new partition every step"
    )
    parser.add_argument("--stgu-warmup", type=int_at_least(0), default=100)
    parser.add_argument("--stgu-beta", type=real(0.0, 1.0, low_open=True), default=1e-3)
    parser.add_argument("--stgu-crediting", choices=["corrected", "reference"], default="corrected")
    # (flag, type or the list of its choices, default, help)
    options: list[tuple[str, Any, object, str]] = [
        ("--cagrad-c", real(0.0), 0.5, "cagrad: radius scale c (official default 0.5)"),
        (
            "--nash-max-norm",
            real(0.0),
            1.0,
            "nashmtl: clip ‖d‖ of the shared update to this (0: no clipping; TorchJD's default 1)",
        ),
        (
            "--aligned-scale-mode",
            ["min", "median", "rmse"],
            "min",
            "alignedmtl: which eigenvalue sets the scale",
        ),
        ("--diagnostics-every", int_at_least(0), 25, "steps between diagnostics (0: none)"),
    ]
    for flag, kind, default, text in options:
        how = {"choices": kind} if isinstance(kind, list) else {"type": kind}
        parser.add_argument(flag, **how, default=default, help=text)
    parser.add_argument(
        "--single-task",
        action="store_true",
        help="also train one single-task model per task (same budget) and report Δm",
    )
    parser.add_argument(
        "--baselines",
        type=baselines_file,
        default=None,
        help="a baselines.json written by an earlier --single-task run (for Δm without retraining)",
    )
    parser.add_argument(
        "--backend", type=backend, default=None, help="auto, reference, cpu, triton or cuda"
    )
    parser.add_argument(
        "--out",
        type=out_dir,
        default=Path("runs") / "train",
        help="output folder (default runs/train; created when the first result is written)",
    )
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--no-progress", action="store_true")


def strategies_from(values: list[list[str]] | list[str]) -> list[str]:
    """The --strategy values (each parsed by :func:`strategy_names`, or plain names) as one
    list without repeats, 'all' expanded."""
    from mtl_fast.tools.train import STRATEGIES

    out: list[str] = []
    for item in values:
        for name in [item] if isinstance(item, str) else item:
            if name == "all":
                out.extend(s for s in STRATEGIES if s not in out)
            elif name not in out:
                out.append(name)
    return out


def config_from(args: argparse.Namespace, strategy: str, seed: int) -> Any:
    from mtl_fast.tools.train import TrainConfig

    return TrainConfig(
        strategy=strategy,
        optimizer=args.optimizer,
        lr=args.lr,
        epochs=args.epochs,
        batch_size=args.batch_size,
        seed=seed,
        data_seed=args.data_seed,
        device=args.device,
        n_train=args.n_train,
        n_val=args.n_val,
        n_test=args.n_test,
        hidden=args.hidden,
        normalization=args.normalization,
        apply_to=args.apply_to,
        group_size=args.group_size,
        redraw=args.redraw,
        stgu_warmup=args.stgu_warmup,
        stgu_beta=args.stgu_beta,
        stgu_crediting=args.stgu_crediting,
        cagrad_c=args.cagrad_c,
        nash_max_norm=args.nash_max_norm,
        aligned_scale_mode=args.aligned_scale_mode,
        diagnostics_every=args.diagnostics_every,
        backend=args.backend,
    )


def preflight(config: Any) -> None:
    """Refuse a configuration before any training: its checks, then the strategy built on a
    model of the run's shape on the run's device (an explicit --backend that cannot run there,
    for instance)."""
    from mtl_fast._core.dispatch import BackendUnavailableError
    from mtl_fast.tools.data import TASKS
    from mtl_fast.tools.train import MultiDigitNet, build_strategy

    try:
        config.check()
    except ValueError as exc:
        raise UsageError(None, str(exc)) from None
    tasks = [TASKS[t] for t in config.tasks]
    model = MultiDigitNet(tasks, hidden=config.hidden, features=config.features)
    try:
        build_strategy(config, model.to(config.device))
    except BackendUnavailableError as exc:
        raise UsageError("--backend", f"{config.backend} for {config.strategy}: {exc}") from None
    except (ValueError, TypeError) as exc:
        raise UsageError("--strategy", f"{config.strategy}: {exc}") from None


def run(args: argparse.Namespace) -> int:
    import torch

    from mtl_fast._core.extras import require
    from mtl_fast.tools.cli._torchrun import torchrun_ranks

    require(
        "train", "this command", ["sklearn", "tqdm"] + ([] if args.no_plots else ["matplotlib"])
    )
    strategies = strategies_from(args.strategy)
    for strategy in strategies:  # refuse bad combinations before training anything
        preflight(config_from(args, strategy, args.seed[0]))
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        with torchrun_ranks(args):  # under torchrun: one rank per process, rank 0 writes
            return _run(args, strategies)
    finally:
        torch.set_num_threads(threads)  # leave the process as it was (the CLI is also a library)


def _run(args: argparse.Namespace, strategies: list[str]) -> int:
    from tqdm.auto import tqdm

    from mtl_fast.tools.data import TASKS, multi_digit
    from mtl_fast.tools.train import SIGN_CONVENTION, train, train_baselines
    from mtl_fast.tools.train._report import (
        csv_rows,
        markdown_table,
        summarize,
        write_json,
        write_run,
    )

    out: Path = args.out  # created by the first result written: a failed run leaves none
    log = tqdm.write
    progress = not args.no_progress
    data = multi_digit(args.data_seed, n_train=args.n_train, n_val=args.n_val, n_test=args.n_test)
    print(
        f"multi-digit set (data seed {args.data_seed}): {args.n_train}/{args.n_val}/{args.n_test} "
        f"train/val/test; tasks: "
        + ", ".join(f"{t.name} ({t.metric} {'↑' if t.higher_is_better else '↓'})" for t in TASKS)
    )
    baselines: dict[int, dict[str, float]] = {}
    if args.baselines is not None:
        loaded = json.loads(Path(args.baselines).read_text())
        baselines = {int(k): v["test"] for k, v in loaded["seeds"].items()}
    if args.single_task:
        seeds_record: dict[str, Any] = {}
        for seed in args.seed:
            t0 = time.perf_counter()
            base = train_baselines(
                config_from(args, "single", seed), data=data, progress=progress, log=None
            )
            baselines[seed] = base["test"]
            seeds_record[str(seed)] = {k: v for k, v in base.items() if k != "runs"}
            for name, rec in base["runs"].items():
                write_run(rec, out / "single" / name / f"seed{seed}", plots=not args.no_plots)
            print(
                f"single-task baselines (seed {seed}, test, {time.perf_counter() - t0:.1f} s): "
                + "  ".join(f"{k}={v:.4f}" for k, v in base["test"].items())
            )
        write_json({"seeds": seeds_record}, out / "baselines.json")
    records = []
    for strategy in strategies:
        for seed in args.seed:
            config = config_from(args, strategy, seed)
            record = train(
                config,
                data=data,
                progress=progress,
                log=log,
                baselines=baselines.get(seed),
            )
            write_run(record, out / strategy / f"seed{seed}", plots=not args.no_plots)
            records.append(record)
            line = "  ".join(f"{k}={v:.4f}" for k, v in record["test"].items())
            dm = f"  Δm={record['delta_m']:+.2f} %" if "delta_m" in record else ""
            print(
                f"{strategy} seed {seed}: test {line}{dm}  "
                f"(train {record['train_time_s']:.1f} s, {record['steps']} steps)"
            )
    rows = summarize(records)
    tasks = records[0]["tasks"]
    table = markdown_table(rows, tasks)
    print()
    print(table)
    if any(row["delta_m"] for row in rows):
        print(f"\n{SIGN_CONVENTION}.")
    out.mkdir(parents=True, exist_ok=True)
    write_json({"rows": rows}, out / "summary.json")
    (out / "summary.md").write_text(table + "\n\n" + (SIGN_CONVENTION + ".\n" if baselines else ""))
    (out / "summary.csv").write_text(csv_rows(rows, tasks))
    per_run = "run.json" if args.no_plots else "run.json and plots"
    print(f"\nwrote {out}/ ({per_run} per run, summary.md/.csv/.json)")
    return 0
