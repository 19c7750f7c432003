"""One full training step of each strategy on the benchmark trunks (ResNet-18-sized ≈ 11 M and
ViT-S-sized ≈ 22 M shared parameters), synthetic inputs. ``mtl-fast bench`` gives the same step
split into forward / backward / combination / optimizer; this suite times whole steps."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from bench_common import CONFIG, DEVICE

from mtl_fast.tools.bench import STRATEGIES, StrategySetting, make_strategy_step, torchjd_reason
from mtl_fast.tools.bench._device import device_name

SETTINGS = list(itertools.product(CONFIG.trunks, CONFIG.tasks))


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize(("trunk", "T"), SETTINGS)
def test_strategy_step(benchmark: Any, trunk: str, T: int, strategy: str) -> None:
    if strategy.startswith("torchjd") and (reason := torchjd_reason()):
        pytest.skip(reason)
    setting = StrategySetting(trunk, T, CONFIG.batch, CONFIG.image)
    try:
        step = make_strategy_step(strategy, setting, DEVICE)
    except ImportError as exc:  # TorchJD's CAGrad and NashMTL need cvxpy
        pytest.skip(str(exc))
    benchmark.group = f"step {trunk} T={T}"
    benchmark.extra_info.update(
        {
            "strategy": strategy,
            "trunk": trunk,
            "T": T,
            "batch": CONFIG.batch,
            "image": CONFIG.image,
            "device": device_name(DEVICE),
        }
    )
    benchmark.pedantic(step, rounds=CONFIG.steps, iterations=1, warmup_rounds=CONFIG.warmup)
