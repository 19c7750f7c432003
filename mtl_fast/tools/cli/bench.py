"""``mtl-fast bench``: microbenchmark every op and every strategy, against the baselines users
would pick instead; writes JSON + Markdown + PNG and prints the table."""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from pathlib import Path

import torch

NAME = "bench"
HELP = (
    "time every op (per backend, vs torch.mm / torch Adam / the Python-loop MGDA solver) and one "
    "training step of every strategy; write JSON, Markdown and a PNG plot"
)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _ints(text: str) -> tuple[int, ...]:
    """'2,8,32' or '2**20,2**23' → integers."""
    out = []
    for part in text.split(","):
        part = part.strip()
        if "**" in part:
            base, exp = part.split("**")
            out.append(int(base) ** int(exp))
        elif part:
            out.append(int(part))
    return tuple(out)


def _names(text: str) -> tuple[str, ...]:
    return () if text.strip() in ("", "none") else tuple(p.strip() for p in text.split(","))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=None, help="default: cuda if visible, else cpu")
    parser.add_argument("--quick", action="store_true", help="small sizes: under a minute on a CPU")
    parser.add_argument(
        "--out", type=Path, default=Path("bench-results"), help="directory for the result files"
    )
    parser.add_argument("--ops", help="comma list of ops, or 'none' (default: all)")
    parser.add_argument("--strategies", help="comma list of strategies, or 'none' (default: all)")
    parser.add_argument("--trunks", help="comma list of resnet18, vit-s, mlp")
    parser.add_argument("--tasks", help="task counts T of the strategy bench, e.g. 2,3,10,40")
    parser.add_argument("--batch", type=int, help="batch size of the strategy bench")
    parser.add_argument("--image", type=int, help="image side of the strategy bench")
    parser.add_argument("--steps", type=int, help="timed training steps per strategy")
    parser.add_argument("--P", dest="Ps", help="shared sizes of the op bench, e.g. 2**16,2**20")
    parser.add_argument("--T", dest="Ts", help="task counts of gram/combine, e.g. 2,8,32")
    parser.add_argument("--dtypes", help=f"comma list of {', '.join(_DTYPES)}")
    parser.add_argument(
        "--threads",
        type=int,
        help="torch CPU threads (default: torch's); 1 gives steadier CPU timings on a shared "
        "machine, where OpenMP threads wait for each other",
    )
    parser.add_argument("--tag", default="", help="suffix of the result file names")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG")


def run(args: argparse.Namespace) -> int:
    from mtl_fast._core.extras import require
    from mtl_fast.tools.bench import OPS, STRATEGIES, default_config, markdown, write_all
    from mtl_fast.tools.bench import run as run_bench

    if not args.no_plot:
        require("train", "the plot (--no-plot skips it)", ["matplotlib"])
    if args.device is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if args.threads is not None:
        if args.threads < 1:
            print("--threads must be ≥ 1", file=sys.stderr)
            return 2
        torch.set_num_threads(args.threads)
    cfg = default_config(device, args.quick)
    if args.ops is not None:
        cfg.ops = _names(args.ops)
        bad = set(cfg.ops) - set(OPS)
        if bad:
            print(f"--ops: unknown {sorted(bad)}; choose from {', '.join(OPS)}", file=sys.stderr)
            return 2
    if args.strategies is not None:
        cfg.strategies = _names(args.strategies)
        bad = set(cfg.strategies) - set(STRATEGIES)
        if bad:
            print(
                f"--strategies: unknown {sorted(bad)}; choose from {', '.join(STRATEGIES)}",
                file=sys.stderr,
            )
            return 2
    if args.trunks is not None:
        cfg.trunks = _names(args.trunks)
    if args.tasks is not None:
        cfg.tasks = _ints(args.tasks)
    for name in ("batch", "image", "steps"):
        if getattr(args, name) is not None:
            setattr(cfg, name, getattr(args, name))
    grid = cfg.grid
    if args.Ps is not None:
        grid = dataclasses.replace(grid, Ps=_ints(args.Ps))
    if args.Ts is not None:
        grid = dataclasses.replace(grid, Ts=_ints(args.Ts))
    if args.dtypes is not None:
        grid = dataclasses.replace(grid, dtypes=tuple(_DTYPES[d] for d in _names(args.dtypes)))
    cfg.grid = grid
    command = "mtl-fast bench " + " ".join(shlex.quote(a) for a in sys.argv[2:])
    report = run_bench(cfg, command=command.strip())
    paths = write_all(report, args.out, plot=not args.no_plot, tag=args.tag)
    print(markdown(report))
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0
