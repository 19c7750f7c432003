"""``mtl-fast bench``: microbenchmark every op and every strategy, against the baselines users
would pick instead; writes JSON + Markdown + PNG and prints the table."""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from pathlib import Path

import torch

from mtl_fast.tools.cli._types import device, int_at_least, int_list, names, out_dir, tag

NAME = "bench"
HELP = (
    "time every op (per backend, vs torch.mm / torch Adam / the Python-loop MGDA solver) and one "
    "training step of every strategy; write JSON, Markdown and a PNG plot"
)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from mtl_fast.tools.bench import OPS, STRATEGIES
    from mtl_fast.tools.bench._malloc import MODES
    from mtl_fast.tools.bench._models import TRUNKS

    positive = int_at_least(1)
    parser.add_argument(
        "--device", type=device, default=None, help="default: cuda if visible, else cpu"
    )
    parser.add_argument("--quick", action="store_true", help="small sizes: under a minute on a CPU")
    parser.add_argument(
        "--out",
        type=out_dir,
        default=Path("bench-results"),
        help="directory for the result files (created when they are written)",
    )
    parser.add_argument(
        "--ops", type=names(OPS), help="comma list of ops, or 'none' (default: all)"
    )
    parser.add_argument(
        "--strategies",
        type=names(STRATEGIES),
        help="comma list of strategies, or 'none' (default: all)",
    )
    parser.add_argument(
        "--trunks", type=names(TRUNKS, allow_none=False), help="comma list of resnet18, vit-s, mlp"
    )
    parser.add_argument(
        "--tasks", type=int_list(1), help="task counts T of the strategy bench, e.g. 2,3,10,40"
    )
    parser.add_argument("--batch", type=positive, help="batch size of the strategy bench")
    parser.add_argument("--image", type=positive, help="image side of the strategy bench")
    parser.add_argument("--steps", type=positive, help="timed training steps per strategy")
    parser.add_argument(
        "--P", dest="Ps", type=int_list(1), help="shared sizes of the op bench, e.g. 2**16,2**20"
    )
    parser.add_argument(
        "--T", dest="Ts", type=int_list(1), help="task counts of gram/combine, e.g. 2,8,32"
    )
    parser.add_argument(
        "--dtypes",
        type=names(tuple(_DTYPES), allow_none=False),
        help=f"comma list of {', '.join(_DTYPES)}",
    )
    parser.add_argument(
        "--threads",
        type=positive,
        help="torch CPU threads (default: torch's); 1 gives steadier CPU timings on a shared "
        "machine, where OpenMP threads wait for each other",
    )
    parser.add_argument(
        "--malloc",
        choices=MODES,
        default=MODES[0],
        help="steady: glibc keeps freed heap memory (mallopt), so the CPU steps stop paying page "
        "faults for gradients it returned to the kernel; the same for every provider",
    )
    parser.add_argument("--tag", type=tag, default="", help="suffix of the result file names")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG")


def run(args: argparse.Namespace) -> int:
    from mtl_fast._core.extras import require
    from mtl_fast.tools.bench import default_config, markdown, write_all
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
        torch.set_num_threads(args.threads)
    cfg = default_config(device, args.quick)
    if args.ops is not None:
        cfg.ops = args.ops
    if args.strategies is not None:
        cfg.strategies = args.strategies
    if args.trunks is not None:
        cfg.trunks = args.trunks
    if args.tasks is not None:
        cfg.tasks = args.tasks
    cfg.malloc = args.malloc
    for name in ("batch", "image", "steps"):
        if getattr(args, name) is not None:
            setattr(cfg, name, getattr(args, name))
    grid = cfg.grid
    if args.Ps is not None:
        grid = dataclasses.replace(grid, Ps=args.Ps)
    if args.Ts is not None:
        grid = dataclasses.replace(grid, Ts=args.Ts)
    if args.dtypes is not None:
        grid = dataclasses.replace(grid, dtypes=tuple(_DTYPES[d] for d in args.dtypes))
    cfg.grid = grid
    command = "mtl-fast bench " + " ".join(shlex.quote(a) for a in sys.argv[2:])
    report = run_bench(cfg, command=command.strip())
    paths = write_all(report, args.out, plot=not args.no_plot, tag=args.tag)
    print(markdown(report))
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0
