"""One benchmark run: configuration per device, op cases, strategy settings, targets, files."""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import torch

from mtl_fast.tools.bench._device import (
    copy_bandwidth,
    cpu_fma_rate,
    run_metadata,
    spec_bandwidth,
)
from mtl_fast.tools.bench._malloc import MODES, steady_malloc
from mtl_fast.tools.bench._ops import UPGRAD_FAMILIES, OpGrid, op_cases, run_case
from mtl_fast.tools.bench._report import Report, write_json, write_markdown, write_plot
from mtl_fast.tools.bench._strategies import (
    DEFAULT_STRATEGIES,
    StrategySetting,
    run_setting,
)
from mtl_fast.tools.bench._traffic import combine_bytes

OPS = ("gram", "combine", "min_norm", "multi_adam", "combine_adam", "upgrad", "aggregators")
# The CPU default: the whole-step comparison (the arena variants, MultiAdam and per-task steps
# are there by name; each extra arena holds T·P more floats).
CPU_STRATEGIES = (
    "sum",
    "floor",
    "mgda",
    "mgda-batched",
    "mgda-ub",
    "upgrad",
    "torchjd-mgda",
    "torchjd-upgrad",
    "torchjd-autogram-upgrad",
    "libmtl-mgda",
)


@dataclass
class BenchConfig:
    """Everything a run measures. :func:`default_config` gives the per-device defaults."""

    device: torch.device
    quick: bool
    grid: OpGrid
    ops: tuple[str, ...] = OPS
    strategies: tuple[str, ...] = DEFAULT_STRATEGIES
    trunks: tuple[str, ...] = ("resnet18", "vit-s")
    tasks: tuple[int, ...] = (2, 10)
    batch: int = 4
    image: int = 64
    steps: int = 3
    warmup: int = 1
    timing: dict[str, Any] = field(default_factory=dict)
    loop_timing: dict[str, Any] = field(default_factory=dict)
    copy_bytes: int | None = None
    # "steady": glibc keeps freed heap memory for every provider alike (see _malloc).
    malloc: str = MODES[0]
    # UPGrad weights vs TorchJD (providers interleaved on the CPU; see upgrad_case).
    upgrad_timing: dict[str, Any] = field(
        default_factory=lambda: {"warmup": 1, "min_repeat": 5, "max_repeat": 40, "min_time": 0.3}
    )


def default_config(device: torch.device, quick: bool) -> BenchConfig:
    """Defaults sized so that on a 2-core CPU the full run takes a few minutes, ``quick`` < 1."""
    # The Python loop: once when a call takes seconds, repeated up to 1 s when it is quick.
    loop_timing = {"warmup": 0, "min_repeat": 1, "max_repeat": 20, "min_time": 1.0}
    if device.type == "cuda":
        grid = OpGrid(
            Ps=(2**16, 2**20, 2**22, 2**24, 2**26) if not quick else (2**20, 2**24),
            Ts=(2, 8, 32) if not quick else (2, 8),
            adam_Ts=(1, 2, 8) if not quick else (2,),
            solver=((1, 8), (1024, 2), (1024, 8), (1024, 40), (16384, 8))
            if not quick
            else ((1, 8), (1024, 8)),
            loop_problems=256 if not quick else 32,
            dtypes=(torch.float32, torch.bfloat16) if not quick else (torch.float32,),
            aggregator_Ts=(2, 10, 40) if not quick else (10,),
            aggregator_batches=(1, 1024) if not quick else (1,),
            aggregator_rounds=50 if not quick else 10,
            upgrad=((1, 2), (1, 10), (1, 40), (1, 128), (256, 10), (64, 40), (8, 128))
            if not quick
            else ((1, 10), (1, 40)),
            upgrad_families=UPGRAD_FAMILIES if not quick else ("agree", "gauss"),
        )
        return BenchConfig(
            device,
            quick,
            grid,
            tasks=(2, 3, 10, 40) if not quick else (10,),
            trunks=("resnet18", "vit-s") if not quick else ("resnet18",),
            batch=32,
            image=224,
            steps=10 if not quick else 3,
            warmup=3 if not quick else 1,
            timing={"warmup": 3, "min_repeat": 10, "max_repeat": 200, "min_time": 0.2},
            loop_timing=loop_timing,
        )
    if quick:
        grid = OpGrid(
            Ps=(2**16, 2**20),
            Ts=(2, 8),
            adam_Ts=(2,),
            solver=((1, 8), (1024, 8)),
            loop_problems=64,
            dtypes=(torch.float32,),
            aggregator_Ts=(10,),
            aggregator_batches=(1,),
            aggregator_rounds=5,
            upgrad=((1, 2), (1, 10)),
            upgrad_families=("agree", "gauss"),
        )
        return BenchConfig(
            device,
            quick,
            grid,
            strategies=("sum", "floor", "mgda", "torchjd-mgda"),
            trunks=("resnet18",),
            tasks=(2,),
            batch=2,
            image=32,
            steps=1,
            warmup=1,
            timing={"warmup": 1, "min_repeat": 2, "max_repeat": 20, "min_time": 0.05},
            loop_timing=loop_timing,
            copy_bytes=2**26,
        )
    grid = OpGrid(
        Ps=(2**16, 2**18, 2**20, 2**22),
        Ts=(2, 8, 32),
        adam_Ts=(2, 8),
        solver=((1, 8), (1, 10), (1, 64), (1024, 2), (1024, 8), (64, 40)),
        loop_problems=None,
        dtypes=(torch.float32,),
        # T ∈ {2, 10, 40, 128}: one problem and a batch (TorchJD loops: 4 Grams take it ~2 s
        # at T = 128).
        upgrad=((1, 2), (16, 2), (1, 10), (16, 10), (1, 40), (16, 40), (1, 128), (4, 128)),
    )
    return BenchConfig(
        device,
        quick,
        grid,
        strategies=CPU_STRATEGIES,
        batch=8,
        image=32,
        steps=5,
        timing={"warmup": 1, "min_repeat": 3, "max_repeat": 50, "min_time": 0.2},
        loop_timing=loop_timing,
    )


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:48]


def evaluate_targets(report: Report) -> list[dict[str, Any]]:
    """The issue's targets, read from the rows (never asserted anywhere)."""
    on = report.meta.get("device_type")
    out: list[dict[str, Any]] = []

    def add(
        name: str, applies: str, measured: float | None, threshold: str, ok: bool | None
    ) -> None:
        met = None if measured is None or applies != on else ok
        out.append(
            {
                "name": name,
                "applies_to": applies,
                "measured": measured,
                "threshold": threshold,
                "met": met,
            }
        )

    s = report.value("op", "min_norm", "reference", "speedup_vs_baseline", B=1024, T=8)
    add(
        "batched reference solver vs Python loop, 1024 problems T=8 (× faster)",
        "cpu",
        s,
        "≥ 50",
        s is not None and s >= 50,
    )
    T_ref = 10
    for provider in ("reference",):
        r = report.value(
            "op", "mgda_combination", provider, "speedup_vs_baseline", trunk="resnet18", T=T_ref
        )
        ratio = None if r is None else 1.0 / r
        add(
            f"MGDA gram+solve+combine ({provider}) / (torch.mm + combine), resnet18 T={T_ref}",
            "cpu",
            ratio,
            "≤ 1.5",
            ratio is not None and ratio <= 1.5,
        )
    share = report.value(
        "strategy", "step", "mgda-fused", "combination_share_of_fwd_bwd", trunk="resnet18", T=T_ref
    )
    add(
        f"MGDA gram+solve+combine+Adam / forward+backward, resnet18 T={T_ref}",
        "cuda",
        share,
        "< 0.05",
        share is not None and share < 0.05,
    )
    best: float | None = None
    for provider in ("cuda", "triton", "reference"):
        ours = report.value(
            "op", "mgda_combination", provider, "time_ms", trunk="resnet18", T=T_ref
        )
        peer = report.value(
            "op", "mgda_combination", "torchjd MGDA", "time_ms", trunk="resnet18", T=T_ref
        )
        if ours is not None and peer is not None:
            best = max(best or 0.0, peer / ours)
    for family in UPGRAD_FAMILIES:
        best_up: float | None = None
        for provider in ("cpu", "triton", "reference"):
            s_up = report.value(
                "op", "upgrad_weights", provider, "speedup_vs_baseline", family=family, B=1, T=128
            )
            if s_up is not None:
                best_up = max(best_up or 0.0, s_up)
        add(
            f"UPGrad weights vs TorchJD's QuadprogProjector, one Gram, T=128, {family} (×)",
            "cpu",
            best_up,
            "≥ 100",
            best_up is not None and best_up >= 100,
        )
    add(
        f"TorchJD MGDA aggregation / ours on the same gradients, resnet18 T={T_ref} (×)",
        "cuda",
        best,
        "≥ 10",
        best is not None and best >= 10,
    )
    out.extend(whole_step_targets(report))
    return out


def whole_step_targets(report: Report) -> list[dict[str, Any]]:
    """The whole-step targets on the CPU, for every (trunk, T) the run measured: on the MLP,
    MGDA-UB ≤ 1.3× the summed step and MGDA ≤ TorchJD's best full pipeline; on ResNet-18 and
    ViT-S, MGDA ≤ 0.7× TorchJD's best and ≤ 1.1× the floor."""
    on = report.meta.get("device_type")
    out: list[dict[str, Any]] = []
    settings = sorted(
        {
            (str(r.shape.get("trunk")), int(r.shape.get("T", 0)))
            for r in report.rows
            if r.section == "strategy"
        }
    )

    def add(name: str, value: float | None, threshold: str, limit: float) -> None:
        met = None if value is None or on != "cpu" else value <= limit
        out.append(
            {
                "name": name,
                "applies_to": "cpu",
                "measured": value,
                "threshold": threshold,
                "met": met,
            }
        )

    for trunk, T in settings:

        def v(provider: str, metric: str, trunk: str = trunk, T: int = T) -> float | None:
            return report.value("strategy", "step", provider, metric, trunk=trunk, T=T)

        if trunk == "mlp":
            add(f"mlp T={T}: mgda-ub / summed step", v("mgda-ub", "overhead_vs_sum"), "≤ 1.3", 1.3)
            add(
                f"mlp T={T}: mgda / TorchJD's best pipeline",
                v("mgda", "vs_torchjd_best"),
                "≤ 1",
                1.0,
            )
        else:
            add(
                f"{trunk} T={T}: mgda / TorchJD's best pipeline",
                v("mgda", "vs_torchjd_best"),
                "≤ 0.7",
                0.7,
            )
            add(f"{trunk} T={T}: mgda / floor", v("mgda", "vs_floor"), "≤ 1.1", 1.1)
            floor_ms = v("floor", "total_ms")
            first = next(
                r
                for r in report.rows
                if r.section == "strategy"
                and r.shape.get("trunk") == trunk
                and r.shape.get("T") == T
            )
            if floor_ms is not None and on == "cpu" and first.dtype == "float32":
                add(
                    f"{trunk} T={T}: least mgda / floor on this core, exact fp32 Gram "
                    "(floor + the Gram's FMAs at the FMA rate + one read of J or one backward)",
                    least_mgda_vs_floor(
                        T,
                        int(first.shape["P"]),
                        floor_ms,
                        v("sum", "backward_ms"),
                        report.meta.get("fma_rate_GFMAps"),
                        report.meta.get("copy_bandwidth_GBps"),
                    ),
                    "≤ 1.1 (reachable)",
                    1.1,
                )
    return out


def least_mgda_vs_floor(
    T: int,
    P: int,
    floor_ms: float,
    sum_backward_ms: float | None,
    fma_GFMAps: float | None,
    copy_GBps: float | None,
) -> float | None:
    """The least (MGDA's step) / (the floor's step) that any MGDA with an exact fp32 Gram can
    reach on this core, against a floor measured at ``floor_ms``: on top of the floor's work
    (one forward, the T backward passes, the optimizer step) it must form the Gram entry by
    entry, T(T+1)/2 fp32 FMAs per column of J, at most at the core's FMA rate, and then touch
    every gradient once more for d = Jᵀw: the combination's least traffic (read the (T, P) fp32
    arena, write d: :func:`~mtl_fast.tools.bench._traffic.combine_bytes`) at the measured copy
    bandwidth, or one more backward pass of Σ w_t L_t, at least the summed step's backward pass
    (``sum_backward_ms``, when measured). Writing the rows, the solve and the memory traffic
    of the Gram are not counted, so the true least is higher. None when a rate is missing."""
    if fma_GFMAps is None or copy_GBps is None or floor_ms <= 0:
        return None
    gram_ms = T * (T + 1) / 2 * P / (fma_GFMAps * 1e9) * 1e3
    combine_ms = combine_bytes(1, T, P, torch.float32) / (copy_GBps * 1e9) * 1e3
    if sum_backward_ms is not None:
        combine_ms = min(combine_ms, sum_backward_ms)
    return (floor_ms + gram_ms + combine_ms) / floor_ms


def run(
    config: BenchConfig,
    *,
    log: TextIO = sys.stderr,
    command: str = "",
    progress: Callable[[Report], None] | None = None,
) -> Report:
    """Measure everything ``config`` asks for and return the report.

    ``progress(report)`` is called after every op case and every strategy setting (e.g. to
    write what is measured so far); an exception it raises ends the run there.
    """
    dev = config.device
    meta = run_metadata(dev)
    meta["command"] = command
    meta["quick"] = config.quick
    if config.malloc not in MODES:
        raise ValueError(f"malloc must be one of {MODES}, got {config.malloc!r}")
    meta["malloc"] = "default" if config.malloc == "default" else "steady: " + steady_malloc()
    t0 = time.perf_counter()
    meta["copy_bandwidth_GBps"] = copy_bandwidth(dev, nbytes=config.copy_bytes) / 1e9
    meta["fma_rate_GFMAps"] = cpu_fma_rate(dev)
    spec = spec_bandwidth(dev)
    meta["spec_bandwidth_GBps"] = None if spec is None else spec / 1e9
    meta["timing"] = {
        "ops": config.timing,
        "python_loop": config.loop_timing,
        "upgrad_weights": {**config.upgrad_timing, "clock": "thread CPU time, interleaved"},
    }
    print(f"device {meta['device']}: copy {meta['copy_bandwidth_GBps']:.1f} GB/s", file=log)
    load, cores = meta.get("load_average_1m"), meta.get("cpu_count")
    if load is not None and cores and torch.get_num_threads() > 1 and load > cores - 0.5:
        # Measured on a 2-core machine at load 6: a 65k-element Gram took 25 ms with 2 OpenMP
        # threads (they wait for each other's time slices) and 0.04 ms with 1.
        meta["warning"] = (
            f"load average {load:.1f} on {cores} cores with {torch.get_num_threads()} torch "
            "threads: OpenMP threads stall each other; --threads 1 gives steadier numbers"
        )
        print("warning: " + meta["warning"], file=log)
    report = Report(meta)
    for build in op_cases(config.grid, dev, set(config.ops)):
        try:
            case = build()
        except Exception as exc:  # e.g. out of memory for the largest shapes
            args = getattr(build, "args", ())
            report.skip(
                "op",
                getattr(getattr(build, "func", None), "__name__", "case"),
                "all",
                {"args": [str(a) for a in args]},
                f"raised {type(exc).__name__}: {exc}",
            )
            print(f"case {args} failed to build: {exc}", file=log)
            continue
        run_case(
            case,
            report,
            config.upgrad_timing if case.op == "upgrad_weights" else config.timing,
            baseline_timing=config.loop_timing if case.op == "min_norm" else None,
        )
        times = {
            r.provider: r.value
            for r in report.rows
            if r.op == case.op
            and r.shape == case.shape
            and r.metric == "time_ms"
            and r.dtype == str(case.dtype).replace("torch.", "")
        }
        print(
            f"{case.op:<13} {case.shape} " + ", ".join(f"{k} {v:.3g} ms" for k, v in times.items()),
            file=log,
        )
        del case
        if progress is not None:
            progress(report)
    for trunk in config.trunks:
        for T in config.tasks:
            if not config.strategies:
                break
            s = StrategySetting(trunk, T, config.batch, config.image)
            run_setting(
                s,
                list(config.strategies),
                dev,
                report,
                steps=config.steps,
                warmup=config.warmup,
                timing=config.timing,
            )
            tot = {
                r.provider: r.value
                for r in report.rows
                if r.section == "strategy"
                and r.shape.get("trunk") == trunk
                and r.shape.get("T") == T
                and r.metric == "total_ms"
            }
            print(
                f"step {trunk} T={T}: " + ", ".join(f"{k} {v:.4g} ms" for k, v in tot.items()),
                file=log,
            )
            if progress is not None:
                progress(report)
    report.targets = evaluate_targets(report)
    meta["wall_s"] = round(time.perf_counter() - t0, 1)
    return report


def write_all(report: Report, out: Path, *, plot: bool = True, tag: str = "") -> list[Path]:
    """JSON + Markdown (+ PNG) named bench-<date>-<device>[-quick][-<tag>] under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    date = str(report.meta.get("date", ""))[:10]
    stem = f"bench-{date}-{_slug(str(report.meta.get('device')))}"
    if report.meta.get("quick"):
        stem += "-quick"
    if tag:
        stem += "-" + _slug(tag)
    paths = [out / f"{stem}.json", out / f"{stem}.md"]
    write_json(report, paths[0])
    write_markdown(report, paths[1])
    if plot:
        png = out / f"{stem}.png"
        if write_plot(report, png):
            paths.append(png)
    return paths
