"""Bytes per step and step time of the distributed strategies, W = 1, 2, 4 CPU processes (gloo).

    python benchmarks/bench_distributed.py [--worlds 1 2 4] [--steps 20] [--out DIR] [--tag TAG]

Each world size is one launch of W processes (one torch thread each). Per provider, the bytes
each rank sends per step are those of the collectives actually issued, counted as they are
issued (mtl_fast.distributed.Communicator's log; DDP's all-reduces through a counting comm hook),
with the ring model of docs/distributed.md; the step time is the median over ``--steps`` steps
after 3 warm-up steps, providers interleaved step by step. Writes
``bench-<date>-<cpu>-1-threads-distributed.json`` and ``.md`` into ``--out``
(default benchmarks/results/cpu).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

T, BATCH, D_IN, HIDDEN, FEATURES = 4, 32, 256, 512, 256
PROVIDERS = ("ddp-sum", "mgda-all-reduce-J", "mgda-exact", "mgda-exact-zero", "mgda-ub")
ROOT = Path(__file__).resolve().parents[1]


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Linear(D_IN, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, FEATURES), nn.ReLU()
        )
        self.heads = nn.ModuleList(nn.Linear(FEATURES, 1) for _ in range(T))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        z = self.trunk(x)
        return z, [h(z).squeeze(-1) for h in self.heads]


class Provider:
    """One way of taking a data-parallel step, with its byte counter."""

    def __init__(self, name: str) -> None:
        from mtl_fast.distributed import Communicator, ShardedAdam, distribute
        from mtl_fast.strategies import MGDA, MGDAUB

        torch.manual_seed(0)
        self.name = name
        self.net = Net()
        self.ddp_bytes = 0
        self.strategy: Any = None
        shared, heads = list(self.net.trunk.parameters()), list(self.net.heads.parameters())
        if name == "ddp-sum":
            self.model: nn.Module = nn.parallel.DistributedDataParallel(self.net)
            # DDP reads the hook's annotations: an unannotated function passes its check.
            self.model.register_comm_hook(None, lambda state, bucket: self._count(bucket))
            self.opt = torch.optim.Adam(self.net.parameters(), lr=1e-3)
            return
        self.model = self.net
        if name == "mgda-ub":
            self.strategy = distribute(MGDAUB(shared, heads, num_tasks=T))
        elif name == "mgda-exact-zero":
            sharded = ShardedAdam(shared, Communicator(), lr=1e-3)
            self.strategy = distribute(MGDA(shared, heads, num_tasks=T), optimizer=sharded)
            self.opt = torch.optim.Adam(heads, lr=1e-3)
            return
        else:
            exchange = "all_reduce" if name == "mgda-all-reduce-J" else "reduce_scatter"
            self.strategy = distribute(MGDA(shared, heads, num_tasks=T), exchange=exchange)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=1e-3)

    def _count(self, bucket: Any) -> torch.futures.Future[torch.Tensor]:
        buf = bucket.buffer()
        self.ddp_bytes += 2 * (W - 1) * buf.numel() * buf.element_size() // W
        buf.div_(W)
        fut = dist.all_reduce(buf, async_op=True).get_future()  # type: ignore[union-attr]
        return fut.then(lambda f: f.value()[0])

    def step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[float, int]:
        """(seconds, bytes this rank sent) of one step."""
        if self.strategy is not None:
            self.strategy.comm.log.reset()
        self.ddp_bytes = 0
        dist.barrier()
        t0 = time.perf_counter()
        self.opt.zero_grad(set_to_none=True)
        ctx = self.strategy.no_sync() if self.strategy is not None else _null()
        with ctx:
            z, outs = self.model(x)
            losses = [((o - y[:, t]) ** 2).mean() for t, o in enumerate(outs)]
            if self.strategy is None:
                sum(losses).backward()  # type: ignore[union-attr]
            else:
                self.strategy.backward(losses, features=z)
        self.opt.step()
        dt = time.perf_counter() - t0
        sent = self.ddp_bytes
        if self.strategy is not None:
            sent += self.strategy.comm.log.sent_bytes
        return dt, sent


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


W = 1


def rank_main(rank: int, world: int, store: str, steps: int, out: str) -> None:
    global W
    W = world
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    providers = [Provider(n) for n in PROVIDERS]
    g = torch.Generator().manual_seed(rank)
    local = BATCH // world
    times: dict[str, list[float]] = {n: [] for n in PROVIDERS}
    sent: dict[str, int] = {}
    for i in range(steps + 3):
        x = torch.randn(local, D_IN, generator=g)
        y = torch.randn(local, T, generator=g)
        for p in providers:
            dt, b = p.step(x, y)
            if i >= 3:
                times[p.name].append(dt)
                sent[p.name] = b
    # A step ends when the slowest rank ends: the maximum over ranks of each step's time.
    for name in PROVIDERS:
        t = torch.tensor(times[name], dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        times[name] = t.tolist()
    if rank == 0:
        P = sum(p.numel() for p in providers[0].net.trunk.parameters())
        H = sum(p.numel() for p in providers[0].net.heads.parameters())
        result = {
            "world": world,
            "P": P,
            "head_params": H,
            "median_ms": {n: 1e3 * statistics.median(times[n]) for n in PROVIDERS},
            "q20_ms": {n: 1e3 * statistics.quantiles(times[n], n=5)[0] for n in PROVIDERS},
            "q80_ms": {n: 1e3 * statistics.quantiles(times[n], n=5)[3] for n in PROVIDERS},
            "sent_bytes": sent,
        }
        Path(out).write_text(json.dumps(result))
    dist.barrier()
    dist.destroy_process_group()


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worlds", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "cpu")
    ap.add_argument("--tag", default="distributed")
    ap.add_argument("--rank-args", nargs=4, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rank_args is not None:
        rank, world, store, out = args.rank_args
        rank_main(int(rank), int(world), store, args.steps, out)
        return 0
    load = os.getloadavg()[0]
    runs = []
    for world in args.worlds:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "result.json"
            procs = [
                subprocess.Popen(
                    [
                        sys.executable,
                        __file__,
                        "--steps",
                        str(args.steps),
                        "--rank-args",
                        str(r),
                        str(world),
                        str(Path(tmp) / "store"),
                        str(out),
                    ],
                    env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)},
                )
                for r in range(world)
            ]
            for p in procs:
                if p.wait(timeout=900) != 0:
                    raise SystemExit(f"a rank of world {world} failed")
            runs.append(json.loads(out.read_text()))
            print(f"W={world}: " + json.dumps(runs[-1]["median_ms"]))
    write(args, runs, load)
    return 0


def write(args: argparse.Namespace, runs: list[dict[str, Any]], load: float) -> None:
    import mtl_fast

    date = datetime.datetime.now(datetime.timezone.utc)
    cpu = cpu_name()
    short = "-".join(cpu.lower().split()[:2]) if cpu else "cpu"
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False
    ).stdout.strip()
    P, H = runs[0]["P"], runs[0]["head_params"]
    meta = {
        "device": f"{cpu} (1 thread per rank)",
        "device_type": "cpu",
        "date": date.isoformat(timespec="seconds"),
        "mtl_fast": mtl_fast.__version__,
        "git_commit": commit,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "backend": "gloo",
        "reduce_scatter": "native (gloo's reduce_scatter, torch ≥ 2.6)",
        "cpu_count": os.cpu_count(),
        "load_average_1m": load,
        "command": "python benchmarks/bench_distributed.py "
        + " ".join(
            f"--{k.replace('_', '-')} {v}"
            for k, v in [("worlds", " ".join(map(str, args.worlds))), ("steps", args.steps)]
        ),
        "shapes": {
            "T": T,
            "global_batch": BATCH,
            "P": P,
            "head_params": H,
            "trunk": f"MLP {D_IN}-{HIDDEN}-{FEATURES}",
        },
        "dtype": "float32",
        "note": "median of the per-step maximum over ranks; providers interleaved step by step",
    }
    rows = []
    for run in runs:
        for name in PROVIDERS:
            shape = {"W": run["world"], "T": T, "P": P, "global_batch": BATCH}
            for metric, unit, value in (
                ("median_ms", "ms", run["median_ms"][name]),
                ("sent_bytes_per_rank", "B", run["sent_bytes"][name]),
            ):
                rows.append({"section": "distributed", "op": "step", "provider": name,
                             "shape": shape, "dtype": "float32", "metric": metric,
                             "unit": unit, "value": value})  # fmt: skip
    stem = f"bench-{date.date()}-{short}-1-threads-{args.tag}"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    lines = [
        f"# mtl_fast distributed step — {meta['device']}",
        "",
        f"- date: {meta['date']}; mtl_fast {meta['mtl_fast']} (commit {commit}); torch "
        f"{meta['torch']}; backend gloo, reduce-scatter {meta['reduce_scatter']}",
        f"- CPU load average when started: {load:.2f} on {os.cpu_count()} cores (W = 4 "
        "processes share them: the W = 4 times are oversubscribed)",
        f"- shapes: T = {T}, global batch {BATCH} split over the ranks, trunk "
        f"{meta['shapes']['trunk']} (P = {P:,} shared), {H} head parameters, float32",
        f"- command: `{meta['command']}`",
        "- bytes: sent per rank per step by the collectives issued (ring model; DDP's through a "
        "counting comm hook); time: median over steps of the slowest rank's step",
        "",
        "| W | provider | median ms | bytes sent per rank | × DDP's bytes | × all-reduce J |",
        "|---|---|---|---|---|---|",
    ]
    for run in runs:
        base, full = run["sent_bytes"]["ddp-sum"], run["sent_bytes"]["mgda-all-reduce-J"]
        for name in PROVIDERS:
            b = run["sent_bytes"][name]
            lines.append(
                f"| {run['world']} | {name} | {run['median_ms'][name]:.2f} | {b:,} | "
                + (f"{b / base:.2f} | {b / full:.2f} |" if base and full else "– | – |")
            )
    (args.out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out / stem}.json and .md")


if __name__ == "__main__":
    sys.exit(main())
