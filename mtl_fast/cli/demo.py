"""``mtl-fast demo``: a small multi-task model trained on the CPU with the gradient arena, gram,
min_norm, combine and MultiAdam, with per-task losses and timings."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from torch import nn

NAME = "demo"
HELP = "train a small multi-task model on the CPU with MGDA + per-task Adam and print timings"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")


def _data(n: int, gen: torch.Generator) -> tuple[torch.Tensor, list[torch.Tensor]]:
    x = torch.randn(n, 16, generator=gen)
    y_reg = x[:, :4].sum(1, keepdim=True) * 3.0  # a large-magnitude regression task
    y_cls = (x[:, 4] * x[:, 5] > 0).long()  # an XOR-like classification task
    y_small = torch.sin(x[:, 6:7]) * 0.1  # a small-magnitude regression task
    return x, [y_reg, y_cls, y_small]


def run(args: argparse.Namespace) -> int:
    import mtl_fast

    torch.manual_seed(args.seed)
    dev = torch.device(args.device)
    gen = torch.Generator().manual_seed(args.seed)
    x, ys = _data(2048, gen)
    x, ys = x.to(dev), [y.to(dev) for y in ys]
    trunk = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU()).to(dev)
    heads = nn.ModuleList([nn.Linear(64, 1), nn.Linear(64, 2), nn.Linear(64, 1)]).to(dev)
    losses_fn: list[Callable[..., torch.Tensor]] = [
        nn.functional.mse_loss,
        nn.functional.cross_entropy,
        nn.functional.mse_loss,
    ]
    T = len(heads)
    arena = mtl_fast.TaskGradients(list(trunk.parameters()), num_tasks=T)
    shared_opt = mtl_fast.MultiAdam(list(trunk.parameters()), num_tasks=T, lr=2e-3)
    head_opt = torch.optim.Adam(heads.parameters(), lr=2e-3)
    timings = {"forward": 0.0, "backward": 0.0, "gram": 0.0, "min_norm": 0.0, "step": 0.0}
    print(
        f"mtl-fast demo: {T} tasks, P={arena.num_params} shared parameters, {args.steps} steps "
        f"on {dev}; MGDA weights, one Adam state per task for the trunk"
    )
    print(f"backends: {', '.join(n for n, s in mtl_fast.backends().items() if s.available)}")
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        idx = torch.randint(0, x.shape[0], (128,), generator=gen).to(dev)
        t0 = time.perf_counter()
        z = trunk(x[idx])
        losses = [fn(h(z), y[idx]) for fn, h, y in zip(losses_fn, heads, ys)]
        t1 = time.perf_counter()
        head_opt.zero_grad()
        arena.backward(losses)
        t2 = time.perf_counter()
        K = mtl_fast.gram(arena.J)
        t3 = time.perf_counter()
        w = mtl_fast.min_norm(K)
        t4 = time.perf_counter()
        # MGDA direction d = Σ w_t g_t through per-task moments: each task's Adam state sees
        # its own gradient, the update sums the tasks' directions with the MGDA weights.
        shared_opt.step(arena, weights=w)
        head_opt.step()
        t5 = time.perf_counter()
        for k, dt in zip(timings, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
            timings[k] += dt
        if step % 50 == 0 or step == 1:
            d = mtl_fast.combine(arena.J, w)
            print(
                f"step {step:4d}  losses "
                + " ".join(f"{loss.item():8.4f}" for loss in losses)
                + f"  weights {[round(v, 3) for v in w.tolist()]}  |d|={d.norm():.3e}"
            )
    total = time.perf_counter() - start
    print(
        f"done in {total:.2f} s; mean per step: "
        + ", ".join(f"{k} {1e3 * v / args.steps:.3f} ms" for k, v in timings.items())
    )
    return 0
