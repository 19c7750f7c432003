"""Measurement library behind ``mtl-fast bench`` and ``benchmarks/``.

- :func:`measure` — warm-up, then timed calls (CUDA events on a GPU), median and quantiles;
- ``*_bytes`` — the bytes each op must move (the formulas, in :mod:`mtl_fast.tools.bench._traffic`);
- :func:`copy_bandwidth` / :func:`spec_bandwidth` — the yardsticks of achieved bandwidth;
- :func:`loop_min_norm` — the published Python-loop MGDA solver, re-implemented as a baseline;
- :func:`upgrad_case` — UPGrad weights per backend against TorchJD's ``QuadprogProjector``, on
  synthetic Gram families and on real trunk gradients (:func:`upgrad_grams`);
- op cases (``gram_case``, ...) and strategy settings, and :func:`run` / :func:`write_all`,
  which produce the JSON, Markdown and PNG of a run.
"""

from mtl_fast.tools.bench._device import copy_bandwidth, run_metadata, spec_bandwidth
from mtl_fast.tools.bench._ops import (
    UPGRAD_FAMILIES,
    OpCase,
    OpGrid,
    combine_adam_case,
    combine_case,
    gram_case,
    min_norm_case,
    multi_adam_case,
    op_backends,
    run_case,
    synthetic_gradients,
    trunk_gradient_grams,
    upgrad_case,
    upgrad_grams,
)
from mtl_fast.tools.bench._report import Report, Row, markdown
from mtl_fast.tools.bench._run import (
    OPS,
    BenchConfig,
    default_config,
    evaluate_targets,
    run,
    write_all,
)
from mtl_fast.tools.bench._strategies import (
    STRATEGIES,
    StrategySetting,
    combination_case,
    make_strategy_step,
    run_setting,
    torchjd_reason,
    upgrad_combination_case,
)
from mtl_fast.tools.bench._timing import Timing, measure, measure_interleaved
from mtl_fast.tools.bench._traffic import (
    combine_adam_bytes,
    combine_bytes,
    gram_bytes,
    min_norm_bytes,
    multi_adam_bytes,
)
from mtl_fast.tools.bench.mgda_loop import loop_min_norm, loop_min_norm_one

__all__ = [
    "OPS",
    "STRATEGIES",
    "UPGRAD_FAMILIES",
    "BenchConfig",
    "OpCase",
    "OpGrid",
    "Report",
    "Row",
    "StrategySetting",
    "Timing",
    "combination_case",
    "combine_adam_bytes",
    "combine_adam_case",
    "combine_bytes",
    "combine_case",
    "copy_bandwidth",
    "default_config",
    "evaluate_targets",
    "gram_bytes",
    "gram_case",
    "loop_min_norm",
    "loop_min_norm_one",
    "make_strategy_step",
    "markdown",
    "measure",
    "measure_interleaved",
    "min_norm_bytes",
    "min_norm_case",
    "multi_adam_bytes",
    "multi_adam_case",
    "op_backends",
    "run",
    "run_case",
    "run_metadata",
    "run_setting",
    "spec_bandwidth",
    "synthetic_gradients",
    "torchjd_reason",
    "trunk_gradient_grams",
    "upgrad_case",
    "upgrad_combination_case",
    "upgrad_grams",
    "write_all",
]
