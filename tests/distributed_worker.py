"""One rank of the distributed tests (run by tests/test_distributed.py, one process per rank).

Every scenario trains a tiny float64 model (a 468-parameter trunk, three linear heads) for a few
steps with a distributed strategy, each rank on its share of a global batch of 12, and compares
the parameters after every step with the single-process strategy on the concatenated batch,
which this process also runs. Results go to ``<out>/rank<r>.json``.

Usage: python tests/distributed_worker.py <rank> <world> <store file> <out dir> [scenario ...]
"""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

T, B, STEPS, LR = 3, 12, 3, 1e-2

COMBINE = (
    "ls",
    "mgda",
    "mgda-normalized",
    "upgrad",
    "dualproj",
    "mgda-ub",
    "pcgrad",
    "cagrad",
    "nashmtl",
)
SEQUENTIAL = ("pertask", "pertask-grouped", "stgu")
# name: (strategy, options of the distributed form)
SCENARIOS: dict[str, tuple[str, dict[str, Any]]] = {
    **{s: (s, {}) for s in (*COMBINE, *SEQUENTIAL)},
    "mgda-all-reduce": ("mgda", {"exchange": "all_reduce"}),
    "mgda-all-to-all": ("mgda", {"reduce_scatter": "all_to_all"}),
    "mgda-rs-by-all-reduce": ("mgda", {"reduce_scatter": "all_reduce"}),
    "mgda-sharded-adam": ("mgda", {"sharded": 1}),
    "upgrad-sharded-multi-adam": ("upgrad", {"sharded": T}),
    "mgda-ddp": ("mgda", {"ddp": True}),
    "mgda-ub-ddp": ("mgda-ub", {"ddp": True}),
    "ls-ddp": ("ls", {"ddp": True}),
    "stgu-ddp": ("stgu", {"ddp": True}),
    "mgda-local-gram": ("mgda", {"exchange": "local_gram"}),  # biased: must differ
}
RESUMED = ("mgda", "mgda-sharded-adam", "upgrad", "mgda-ub", "ls", "pertask-grouped", "stgu")
RESUMED += ("pcgrad", "nashmtl")  # the wrapped method's state: PCGrad's generator, Nash-MTL's α


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(6, 24), nn.Tanh(), nn.Linear(24, 12), nn.Tanh())
        self.heads = nn.ModuleList(nn.Linear(12, 1) for _ in range(T))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        z = self.trunk(x)
        return z, [h(z).squeeze(-1) for h in self.heads]


def data(steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1234)
    x = torch.randn(steps, B, 6, generator=g, dtype=torch.float64)
    y = torch.randn(steps, B, T, generator=g, dtype=torch.float64)
    y[..., 1] = -y[..., 0] + 0.3 * y[..., 1]  # conflicting tasks: MGDA's weights are interior
    return x, y


def task_losses(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, poison: bool
) -> tuple[list[torch.Tensor], torch.Tensor]:
    z, outs = model(x)
    losses = [((o - y[:, t]) ** 2).mean() for t, o in enumerate(outs)]
    if poison:  # finite losses, NaN gradients: d/dz 0·sqrt(0·Σz) = 0·∞
        bad = 0 * torch.sqrt(0 * z.sum())
        losses = [loss + bad for loss in losses]
    return losses, z


def single(name: str, model: Net, sharded: int = 0) -> tuple[Any, Any]:
    """The single-process strategy and its optimizer (None for the sequential ones)."""
    from mtl_fast import strategies as S

    shared, heads = list(model.trunk.parameters()), list(model.heads.parameters())
    kw: dict[str, Any] = {"num_tasks": T, "on_nonfinite": "skip"}
    seq = {"lr": LR, "seed": 7, **kw}
    s: Any
    if name == "ls":
        s = S.LinearScalarization(shared, heads, weights=[1.0, 0.5, 2.0], **kw)
    elif name == "mgda":
        s = S.MGDA(shared, heads, tol=1e-12, **kw)
    elif name == "mgda-normalized":
        s = S.MGDA(shared, heads, normalization="loss+", apply_to="normalized", tol=1e-12, **kw)
    elif name == "upgrad":
        s = S.UPGrad(shared, heads, **kw)
    elif name == "dualproj":
        s = S.DualProj(shared, heads, **kw)
    elif name == "mgda-ub":
        s = S.MGDAUB(shared, heads, normalization="l2", tol=1e-12, **kw)
    elif name == "pcgrad":  # random projection orders: the same seed draws the same on every rank
        s = S.PCGrad(shared, heads, seed=3, **kw)
    elif name == "cagrad":
        s = S.CAGrad(shared, heads, c=0.5, **kw)
    elif name == "nashmtl":  # stateful: α carries over from step to step
        s = S.NashMTL(shared, heads, **kw)
    elif name == "pertask":
        return S.PerTaskUpdates(shared, heads, **seq), None
    elif name == "pertask-grouped":
        return S.PerTaskUpdates(shared, heads, group_size=2, redraw=True, **seq), None
    elif name == "stgu":
        return S.SelectiveTaskGroupUpdates(shared, heads, warmup=1, beta=0.5, **seq), None
    else:
        raise ValueError(name)
    if sharded:
        from mtl_fast import MultiAdam

        trunk_opt: Any = (
            torch.optim.Adam(shared, lr=LR) if sharded == 1 else MultiAdam(shared, T, lr=LR)
        )
        return s, (trunk_opt, torch.optim.Adam(heads, lr=LR))
    return s, torch.optim.Adam(model.parameters(), lr=LR)


def flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def reference_run(name: str, opts: dict[str, Any], steps: int, poison_step: int) -> list[Any]:
    """Parameters after each single-process step on the concatenated batch."""
    torch.manual_seed(0)
    model = Net().double()
    s, opt = single(name, model, opts.get("sharded", 0))
    x, y = data(steps)
    out = []
    for i in range(steps):
        poison = i == poison_step

        def closure(i: int = i, poison: bool = poison) -> list[torch.Tensor]:
            return task_losses(model, x[i], y[i], poison)[0]

        if opt is None:
            s.step(closure)
        elif isinstance(opt, tuple):  # the trunk's optimizer reads the arena (sharded forms)
            for o in opt:
                o.zero_grad(set_to_none=True)
            losses, z = task_losses(model, x[i], y[i], poison)
            if s.backward(losses, features=z):
                J, c = s._arena().J, s.last.loss_scales
                if isinstance(opt[0], torch.optim.Adam):
                    for p, v in zip(s.shared_params, s._arena()._views(J.T @ c.to(J.dtype))):
                        p.grad = v.clone()
                    opt[0].step()
                else:
                    opt[0].step(J, weights=c)
                opt[1].step()
        else:
            opt.zero_grad(set_to_none=True)
            losses, z = task_losses(model, x[i], y[i], poison)
            if s.backward(losses, features=z):
                opt.step()
        out.append(flat(model))
    return out


class Run:
    """A distributed model, strategy and optimizers on this rank."""

    def __init__(self, name: str, opts: dict[str, Any], init_seed: int = 0) -> None:
        from mtl_fast.distributed import Communicator, ShardedAdam, distribute

        torch.manual_seed(init_seed)
        self.net = Net().double()
        self.model: nn.Module = self.net
        if opts.get("ddp"):
            self.model = nn.parallel.DistributedDataParallel(self.net)
        self.name = name
        sharded = opts.get("sharded", 0)
        base, opt = single(name, self.net, 0)
        self.opt = opt
        self.sharded: Any = None
        dopts = {k: v for k, v in opts.items() if k in ("exchange", "reduce_scatter")}
        if sharded:
            self.sharded = ShardedAdam(
                base.shared_params, Communicator(), num_states=sharded, lr=LR
            )
            self.opt = torch.optim.Adam(base.task_params, lr=LR)
            dopts["optimizer"] = self.sharded
        module = self.model if opts.get("ddp") else None
        self.strategy: Any = distribute(base, module=module, **dopts)

    def step(self, x: torch.Tensor, y: torch.Tensor, poison: bool) -> bool:
        s = self.strategy
        if self.opt is None:
            skipped = len(s.last.skipped) if s.num_steps else 0

            def closure() -> list[torch.Tensor]:
                return task_losses(self.model, x, y, poison)[0]

            s.step(closure)
            return not s.last.skipped or len(s.last.skipped) == skipped
        self.opt.zero_grad(set_to_none=True)
        with s.no_sync():
            losses, z = task_losses(self.model, x, y, poison)
            ok = bool(s.backward(losses, features=z))
        if ok:
            self.opt.step()
        return ok

    def state(self) -> bytes:
        buf = io.BytesIO()
        torch.save(
            {
                "model": self.net.state_dict(),
                "strategy": self.strategy.state_dict(),
                "opt": None if self.opt is None else self.opt.state_dict(),
                "sharded": None if self.sharded is None else self.sharded.state_dict(),
            },
            buf,
        )
        return buf.getvalue()

    def load(self, blob: bytes) -> None:
        state = torch.load(io.BytesIO(blob), weights_only=False)
        self.net.load_state_dict(state["model"])
        self.strategy.load_state_dict(state["strategy"])
        if self.opt is not None:
            self.opt.load_state_dict(state["opt"])
        if self.sharded is not None:
            self.sharded.load_state_dict(state["sharded"])


def local(x: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    n = x.shape[1] // world
    return x[:, rank * n : (rank + 1) * n]


def scenario(name: str, rank: int, world: int, poison_step: int = -1) -> dict[str, Any]:
    from mtl_fast.distributed import parameters_agree

    base, opts = SCENARIOS[name]
    ref = reference_run(base, opts, STEPS, poison_step)
    run = Run(base, opts)
    x, y = data(STEPS)
    xl, yl = local(x, rank, world), local(y, rank, world)
    diffs, taken, agree, sent = [], [], [], []
    for i in range(STEPS):
        run.strategy.comm.log.reset()
        poison = i == poison_step and rank == world - 1
        taken.append(run.step(xl[i], yl[i], poison))
        sent.append(run.strategy.comm.log.by_op())
        diffs.append(float((flat(run.net) - ref[i]).abs().max()))
        agree.append(parameters_agree(run.strategy.comm, list(run.net.parameters())))
    out: dict[str, Any] = {"diffs": diffs, "taken": taken, "agree": agree, "sent": sent}
    if poison_step >= 0:
        out["moved"] = [
            float((ref[i] - (ref[i - 1] if i else ref[i])).abs().max()) for i in range(STEPS)
        ]
    comm = run.strategy.comm
    out["reduce_scatter_used"] = getattr(comm, "reduce_scatter_used", None)
    return out


def resumed(name: str, rank: int, world: int) -> dict[str, Any]:
    base, opts = SCENARIOS[name]
    x, y = data(4)
    xl, yl = local(x, rank, world), local(y, rank, world)
    whole = Run(base, opts)
    for i in range(4):
        whole.step(xl[i], yl[i], False)
    first = Run(base, opts)
    for i in range(2):
        first.step(xl[i], yl[i], False)
    blob = first.state()
    second = Run(base, opts, init_seed=99)  # other initial values: the checkpoint must win
    second.load(blob)
    for i in range(2, 4):
        second.step(xl[i], yl[i], False)
    return {"diff": float((flat(whole.net) - flat(second.net)).abs().max())}


def main(argv: list[str]) -> int:
    rank, world, store, out = int(argv[0]), int(argv[1]), argv[2], Path(argv[3])
    wanted = argv[4:] or list(SCENARIOS)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    results: dict[str, Any] = {}
    jobs: list[tuple[str, Callable[[], dict[str, Any]]]] = []
    for name in wanted:
        jobs.append((name, lambda name=name: scenario(name, rank, world)))
    for name in wanted:
        if SCENARIOS[name][0] == name or name == "mgda-ddp":
            jobs.append((f"nan:{name}", lambda name=name: scenario(name, rank, world, 1)))
    for name in RESUMED:
        if name in wanted:
            jobs.append((f"resume:{name}", lambda name=name: resumed(name, rank, world)))
    for key, job in jobs:
        try:
            results[key] = job()
        except Exception as exc:  # recorded; the test names the scenario
            results[key] = {"error": f"{type(exc).__name__}: {exc}"}
            import traceback

            traceback.print_exc()
    (out / f"rank{rank}.json").write_text(json.dumps(results))
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
