"""The tables of the GPU report: its stages with their time weights, and the test selections.

This is the one place to edit when the test tree moves (today ``tests/ops/test_<op>.py``
parametrized over backends with GPU-only tests marked ``gpu``): change the pytest arguments
in :data:`TESTS`, nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StagePlan:
    """One stage: its name, what it does, and its share of the time budget.

    ``gpu_weight`` / ``dry_weight``: relative shares of the budget on a GPU and in the dry run.
    A stage's time slice is the time left × its weight / the weights of the stages still to
    run, so time a stage does not use passes on to the later ones.
    """

    name: str
    what: str
    gpu_weight: float
    dry_weight: float


# In running order. The CUDA build has no weight: it runs in the background from the start
# (during env and tests-triton) until BUILD_SHARE of the budget, and tests-cuda waits for it.
STAGES: tuple[StagePlan, ...] = (
    StagePlan("env", "device, driver, CUDA, torch, triton, git commit, runtime kind", 4, 13),
    StagePlan("build", "the CUDA extension, all cores, in the background", 0, 0),
    StagePlan("tests-triton", "Triton kernels against the references, GPU-only tests", 21, 11),
    StagePlan("tests-cuda", "CUDA kernels against the references, GPU-only tests", 16, 11),
    StagePlan("verify", "mtl-fast verify, every backend that runs", 10, 11),
    StagePlan("sanitizer", "compute-sanitizer memcheck, racecheck, synccheck", 16, 15),
    StagePlan("bench-ops", "op benchmarks at the headline shapes", 18, 19),
    StagePlan("bench-strategies", "one training step per strategy, ResNet-18 and ViT-S", 15, 20),
)
STAGE_NAMES: tuple[str, ...] = tuple(s.name for s in STAGES)

# Default --budget (seconds of stage time): on an H200 the whole call then ends within
# 8 minutes with a margin; the dry run ends within 2 minutes on a loaded 2-core machine.
GPU_BUDGET_S = 420.0
DRY_BUDGET_S = 100.0
# The background CUDA build is stopped at this fraction of the budget if it has not finished.
BUILD_SHARE = 0.6
# The compute-sanitizer probe (a tiny program under memcheck) may take this long.
PROBE_TIMEOUT_S = 45.0
# Shares of the sanitizer stage's slice per tool; synccheck runs only if 15 s are left for it.
SANITIZER_TOOLS: tuple[tuple[str, float], ...] = (
    ("memcheck", 0.45),
    ("racecheck", 0.35),
    ("synccheck", 0.20),
)


@dataclass(frozen=True)
class TestSelection:
    """The pytest arguments (paths, ``-m``/``-k`` expressions) of a test stage."""

    gpu: tuple[str, ...]
    dry_run: tuple[str, ...]


# Run with MTL_FAST_TEST_DEVICE=cuda on the GPU (cpu in the dry run). `gpu or not slow` keeps
# the GPU-only tests (T·P > 2³¹ included: marked gpu) and drops the CPU-only slow ones (the
# ahead-of-time sm_90 compile of every Triton variant, which a GPU run does not need).
TESTS: dict[str, TestSelection] = {
    # tests/ops/test_<op>.py are parametrized over backends; the parameter ids name the backend.
    # tests/test_cuda_graph.py: the whole MGDA training step captured in one CUDA graph.
    "tests-triton": TestSelection(
        gpu=(
            "tests/ops",
            "tests/test_cuda_graph.py",
            "-k",
            "triton or test_cuda_graph",
            "-m",
            "gpu or not slow",
        ),
        dry_run=("tests/ops/test_combine.py", "-k", "test_combine_strided and triton"),
    ),
    "tests-cuda": TestSelection(
        gpu=(
            "tests/ops",
            "tests/test_cuda_backend.py",
            "-k",
            "cuda and not emulated or test_cuda_backend",
            "-m",
            "gpu or not slow",
        ),
        dry_run=("tests/ops/test_combine.py", "-k", "test_combine_strided and cuda"),
    ),
}
