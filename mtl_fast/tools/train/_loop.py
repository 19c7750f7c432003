"""The training loop behind ``mtl-fast train``: any strategy on the multi-digit set."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from mtl_fast.strategies import (
    IMTLG,
    MGDA,
    MGDAUB,
    AlignedMTL,
    CAGrad,
    CombineStrategy,
    ConFIG,
    DualProj,
    LinearScalarization,
    NashMTL,
    PCGrad,
    PerTaskUpdates,
    SelectiveTaskGroupUpdates,
    SequentialStrategy,
    Strategy,
    UPGrad,
)
from mtl_fast.tools.data import TASKS, MultiDigit, TaskSpec, multi_digit
from mtl_fast.tools.train import _distributed
from mtl_fast.tools.train._metrics import delta_m
from mtl_fast.tools.train._model import MultiDigitNet, task_error_sum, task_loss

# The Gram-space aggregators (mtl_fast.strategies.PCGrad, ...), combine-then-step like MGDA.
AGGREGATORS: tuple[str, ...] = ("pcgrad", "imtlg", "cagrad", "nashmtl", "alignedmtl", "config")
STRATEGIES: tuple[str, ...] = (
    "ls",
    "mgda",
    "mgda-ub",
    "upgrad",
    "dualproj",
    "pertask",
    "pertask-grouped",
    "stgu",
    *AGGREGATORS,
)
SEQUENTIAL = ("pertask", "pertask-grouped", "stgu")


@dataclass
class TrainConfig:
    """Everything that defines a run (recorded in its JSON)."""

    strategy: str = "ls"
    optimizer: str = "adam"
    lr: float = 1e-3
    epochs: int = 5
    batch_size: int = 128
    seed: int = 0
    data_seed: int = 0
    device: str = "cpu"
    n_train: int = 6000
    n_val: int = 1000
    n_test: int = 2000
    hidden: int = 128
    features: int = 64
    normalization: str = "none"
    apply_to: str = "raw"
    group_size: int = 2
    redraw: bool = False
    stgu_warmup: int = 100
    stgu_beta: float = 1e-3
    stgu_crediting: str = "corrected"
    cagrad_c: float = 0.5
    nash_max_norm: float = 1.0
    aligned_scale_mode: str = "min"
    diagnostics_every: int = 25
    backend: str | None = None
    tasks: list[int] = field(default_factory=lambda: list(range(len(TASKS))))

    def check(self) -> None:
        if self.strategy not in (*STRATEGIES, "single"):
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer must be 'adam' or 'sgd', got {self.optimizer!r}")
        if self.optimizer != "adam" and self.strategy in SEQUENTIAL:
            raise ValueError(
                f"strategy {self.strategy!r} uses per-task Adam states by definition; "
                "optimizer must be 'adam'"
            )
        for name in ("epochs", "batch_size", "n_train", "n_val", "n_test"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be ≥ 1, got {getattr(self, name)!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if not self.cagrad_c >= 0 or not self.nash_max_norm >= 0:
            raise ValueError("cagrad_c and nash_max_norm must be ≥ 0")
        if self.aligned_scale_mode not in ("min", "median", "rmse"):
            raise ValueError(
                f"aligned_scale_mode must be min, median or rmse, got {self.aligned_scale_mode!r}"
            )
        if not self.tasks or any(not 0 <= t < len(TASKS) for t in self.tasks):
            raise ValueError(f"tasks must be a non-empty list of indices into {len(TASKS)} tasks")


def _strategy_class(config: TrainConfig) -> tuple[Callable[..., Strategy], dict[str, Any]]:
    """The strategy class of ``config.strategy`` and its own keyword arguments from ``config``
    (beyond the parameters, ``num_tasks`` and ``diagnostics_every``)."""
    c = config
    adam = {"lr": c.lr, "seed": c.seed}
    mgda = {"normalization": c.normalization, "apply_to": c.apply_to}
    classes: dict[str, tuple[Callable[..., Strategy], dict[str, Any]]] = {
        "ls": (LinearScalarization, {}),
        "single": (LinearScalarization, {}),
        "mgda": (MGDA, mgda),
        "mgda-ub": (MGDAUB, mgda),
        "upgrad": (UPGrad, {}),
        "dualproj": (DualProj, {}),
        "pertask": (PerTaskUpdates, {"group_size": 1, **adam}),
        "pertask-grouped": (
            PerTaskUpdates,
            {"group_size": c.group_size, "redraw": c.redraw, **adam},
        ),
        "stgu": (
            SelectiveTaskGroupUpdates,
            {"beta": c.stgu_beta, "warmup": c.stgu_warmup, "crediting": c.stgu_crediting, **adam},
        ),
        "pcgrad": (PCGrad, {"seed": c.seed}),
        "imtlg": (IMTLG, {}),
        "cagrad": (CAGrad, {"c": c.cagrad_c}),
        "nashmtl": (NashMTL, {"max_norm": c.nash_max_norm}),
        # scale_mode is checked by TrainConfig.check.
        "alignedmtl": (AlignedMTL, {"scale_mode": c.aligned_scale_mode}),
        "config": (ConFIG, {}),
    }
    if c.strategy not in classes:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {c.strategy!r}")
    cls, options = classes[c.strategy]
    if cls is not LinearScalarization:
        options = {**options, "backend": c.backend}
    return cls, options


def build_strategy(
    config: TrainConfig, model: MultiDigitNet
) -> tuple[Strategy, torch.optim.Optimizer | None]:
    """The strategy for ``config.strategy`` and, for combine-then-step ones, the optimizer."""
    cls, options = _strategy_class(config)
    strategy = cls(
        list(model.trunk.parameters()),
        list(model.heads.parameters()),
        num_tasks=len(model.heads),
        diagnostics_every=config.diagnostics_every,
        **options,
    )
    if config.strategy in SEQUENTIAL:
        return strategy, None
    params = list(model.parameters())
    opt: torch.optim.Optimizer
    if config.optimizer == "adam":
        opt = torch.optim.Adam(params, lr=config.lr)
    else:
        opt = torch.optim.SGD(params, lr=config.lr, momentum=0.9)
    return strategy, opt


@torch.no_grad()
def evaluate(
    model: MultiDigitNet, split: MultiDigit, tasks: Sequence[TaskSpec], batch_size: int = 1000
) -> dict[str, float]:
    """Per-task metric on a split (accuracy / MAE / MSE), keyed by task name."""
    model.eval()
    targets = split.targets()
    sums = [0.0] * len(tasks)
    n = len(split)
    for start in range(0, n, batch_size):
        _, outs = model(split.images[start : start + batch_size])
        for i, spec in enumerate(tasks):
            y = targets[TASKS.index(spec)][start : start + batch_size]
            sums[i] += task_error_sum(spec, outs[i], y)
    model.train()
    return {spec.name: s / n for spec, s in zip(tasks, sums)}


def train(
    config: TrainConfig,
    *,
    data: dict[str, MultiDigit] | None = None,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    baselines: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Train one model and return the JSON-ready record of the run.

    Args:
        config: the run (``strategy="single"`` with one task in ``tasks`` trains a single-task
            baseline).
        data: the splits (built from ``config.data_seed`` when None).
        progress: show a tqdm progress bar per epoch.
        log: called with one line per epoch (per-task validation metrics).
        baselines: single-task test metrics by task name; when given, Δm is recorded.
    """
    config.check()
    device = torch.device(config.device)
    if data is None:
        data = multi_digit(
            config.data_seed, n_train=config.n_train, n_val=config.n_val, n_test=config.n_test
        )
    splits = {k: v.to(device) for k, v in data.items()}
    tasks = [TASKS[t] for t in config.tasks]
    task_index = [TASKS.index(spec) for spec in tasks]
    T = len(tasks)
    torch.manual_seed(config.seed)
    model = MultiDigitNet(tasks, hidden=config.hidden, features=config.features).to(device)
    strategy, opt = build_strategy(config, model)
    strategy = _distributed.distributed(strategy)  # itself unless torchrun started W > 1 ranks
    train_split = splits["train"]
    targets = train_split.targets()
    gen = torch.Generator().manual_seed(config.seed)
    N = len(train_split)
    steps_per_epoch = -(-N // config.batch_size)

    history: list[dict[str, Any]] = []
    weights_trace: list[list[float]] = []
    groups_trace: list[list[list[int]]] = []
    diagnostics: list[dict[str, Any]] = []
    train_time = 0.0
    step = 0
    bar_cls: Any = None
    if progress:
        from tqdm.auto import tqdm

        bar_cls = tqdm
    for epoch in range(1, config.epochs + 1):
        perm = torch.randperm(N, generator=gen).to(device)
        loss_sums = torch.zeros(T, dtype=torch.float64)
        batches = range(steps_per_epoch)
        bar = (
            bar_cls(
                batches,
                desc=f"{config.strategy} epoch {epoch}/{config.epochs}",
                leave=False,
                disable=None,  # no bar when stderr is not a terminal
            )
            if bar_cls is not None
            else None
        )
        t0 = time.perf_counter()
        for b in bar if bar is not None else batches:
            idx = perm[b * config.batch_size : (b + 1) * config.batch_size]
            if not _distributed.every_share_nonempty(len(idx)):
                continue  # a last batch smaller than the world: skipped on every rank
            idx = _distributed.local_share(idx)
            x = train_split.images[idx]
            ys = [targets[i][idx] for i in task_index]

            def losses_and_features(
                x: torch.Tensor = x, ys: list[torch.Tensor] = ys
            ) -> tuple[list[torch.Tensor], torch.Tensor]:
                z, outs = model(x)
                return [task_loss(s, o, y) for s, o, y in zip(tasks, outs, ys)], z

            first: torch.Tensor | None
            if isinstance(strategy, SequentialStrategy):

                def closure(
                    f: Callable[[], tuple[list[torch.Tensor], torch.Tensor]] = losses_and_features,
                ) -> list[torch.Tensor]:
                    return f()[0]

                first = strategy.step(closure)
            else:
                assert isinstance(strategy, CombineStrategy) and opt is not None
                opt.zero_grad(set_to_none=True)
                losses, z = losses_and_features()
                strategy.backward(losses, features=z)
                opt.step()
                first = strategy.last.losses
            step += 1
            assert first is not None
            loss_sums += first.double().cpu()
            last = strategy.last
            if last.loss_scales is not None:
                weights_trace.append([round(float(v), 6) for v in last.loss_scales])
            if last.groups is not None:
                groups_trace.append(last.groups)
            if last.diagnostics is not None:
                diagnostics.append(last.diagnostics.to_dict())
            if bar is not None and b % 10 == 0:
                bar.set_postfix(loss=f"{float(first.sum()):.3f}")
        if bar is not None:
            bar.close()
        train_time += time.perf_counter() - t0
        val = evaluate(model, splits["val"], tasks)
        entry = {
            "epoch": epoch,
            "step": step,
            "train_loss": {s.name: float(v) / steps_per_epoch for s, v in zip(tasks, loss_sums)},
            "val": val,
            "train_time_s": train_time,
        }
        history.append(entry)
        if log is not None:
            log(
                f"[{config.strategy}] epoch {epoch:3d}  "
                + "  ".join(f"{s.name} {s.metric}={val[s.name]:.4f}" for s in tasks)
                + f"  ({train_time:.1f} s)"
            )
    test = evaluate(model, splits["test"], tasks)
    record: dict[str, Any] = {
        "config": asdict(config),
        "tasks": [asdict(s) for s in tasks],
        "steps": step,
        "train_time_s": train_time,
        "history": history,
        "val": history[-1]["val"],
        "test": test,
        "path_length": strategy.path_length,
        "weights_trace": weights_trace,
        "groups_trace": groups_trace,
        "diagnostics": diagnostics,
        "torch": torch.__version__,
        "world_size": _distributed.world()[1],
        "device_name": _device_name(device),
    }
    if isinstance(strategy, SelectiveTaskGroupUpdates):
        record["affinity"] = strategy.affinity.tolist()
        record["regroup_failures"] = strategy.regroup_failures
    if baselines is not None:
        record["baselines"] = {s.name: baselines[s.name] for s in tasks}
        record["delta_m"] = delta_m(
            [test[s.name] for s in tasks],
            [baselines[s.name] for s in tasks],
            [s.higher_is_better for s in tasks],
        )
    return record


def train_baselines(
    config: TrainConfig,
    *,
    data: dict[str, MultiDigit] | None = None,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """One single-task model per task (same budget, Adam); returns their records and metrics."""
    runs = {}
    for t in config.tasks:
        single = TrainConfig(**{**asdict(config), "strategy": "single", "tasks": [t]})
        single.diagnostics_every = 0
        runs[TASKS[t].name] = train(single, data=data, progress=progress, log=log)
    return {
        "test": {name: r["test"][name] for name, r in runs.items()},
        "val": {name: r["val"][name] for name, r in runs.items()},
        "train_time_s": sum(r["train_time_s"] for r in runs.values()),
        "runs": runs,
    }


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"cpu: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
