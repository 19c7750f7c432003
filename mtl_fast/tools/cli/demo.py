"""``mtl-fast demo``: a short CPU comparison of three strategies on the multi-digit set."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

NAME = "demo"
HELP = (
    "a short CPU run of linear scalarisation, MGDA and per-task Adam updates on the "
    "multi-digit set, with single-task baselines and a comparison table (about 20 s on a 2-core CPU)"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--strategy",
        nargs="+",
        default=["ls", "mgda", "pertask"],
        help="strategies to compare (default: ls mgda pertask)",
    )
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--n-train", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--out", type=Path, default=None, help="output folder (default: a temporary folder)"
    )


def run(args: argparse.Namespace) -> int:
    import time

    from mtl_fast._core.extras import require
    from mtl_fast.tools.cli import build_parser

    require("train", "this command")

    out = args.out if args.out is not None else Path(tempfile.mkdtemp(prefix="mtl-fast-demo-"))
    argv = [
        "train",
        "--strategy",
        *args.strategy,
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
    print(f"demo finished in {time.perf_counter() - start:.1f} s")
    return code
