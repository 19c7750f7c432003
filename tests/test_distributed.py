"""mtl_fast.distributed on the CPU with gloo: 2 and 3 processes, each a rank of
tests/distributed_worker.py (which also runs the single-process step it is compared with).

One launch per world size runs every scenario; the tests below read its results. A launch that
hangs is killed after TIMEOUT seconds and fails the tests instead of blocking the run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "distributed_worker.py"
TIMEOUT = 120
ROUNDING = 1e-12  # float64 parameters of order 1

sys.path.insert(0, str(ROOT / "tests"))
from distributed_worker import COMBINE, RESUMED, SCENARIOS, SEQUENTIAL  # noqa: E402

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
    reason="torch.distributed with gloo is not available",
)
THREE_RANKS = ("mgda", "upgrad", "mgda-ub", "mgda-sharded-adam", "mgda-all-to-all", "stgu")


def launch(world: int, tmp: Path, scenarios: list[str]) -> list[dict[str, Any]]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(WORKER),
                str(r),
                str(world),
                str(tmp / "store"),
                str(tmp),
                *scenarios,
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in range(world)
    ]
    logs = []
    try:
        for p in procs:
            out, _ = p.communicate(timeout=TIMEOUT)
            logs.append(out)
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        pytest.fail(f"{world} ranks did not finish within {TIMEOUT} s (a hang)")
    for r, p in enumerate(procs):
        assert p.returncode == 0, f"rank {r} exited with {p.returncode}:\n{logs[r][-3000:]}"
    return [json.loads((tmp / f"rank{r}.json").read_text()) for r in range(world)]


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return launch(2, tmp_path_factory.mktemp("w2"), [])


@pytest.fixture(scope="module")
def three(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return launch(3, tmp_path_factory.mktemp("w3"), list(THREE_RANKS))


def result(ranks: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    out = [r[key] for r in ranks]
    for rank, r in enumerate(out):
        assert "error" not in r, f"rank {rank}, {key}: {r['error']}"
    return out


EXACT = [s for s in SCENARIOS if s != "mgda-local-gram"]


@pytest.mark.parametrize("name", EXACT)
def test_each_step_equals_the_single_process_step_on_the_whole_batch(two, name):
    for r in result(two, name):
        assert all(r["taken"])
        assert max(r["diffs"]) < ROUNDING, r["diffs"]
        assert all(r["agree"]), "the ranks' parameters differ"


@pytest.mark.parametrize("name", THREE_RANKS)
def test_three_ranks(three, name):
    for r in result(three, name):
        assert max(r["diffs"]) < ROUNDING and all(r["agree"]), r["diffs"]


def test_the_mean_of_the_ranks_grams_is_biased(two):
    """The comparison has power: averaging the per-rank Grams changes MGDA's step."""
    for r in result(two, "mgda-local-gram"):
        assert min(r["diffs"]) > 1e-4 and all(r["agree"])


@pytest.mark.parametrize("name", [*COMBINE, *SEQUENTIAL, "mgda-ddp"])
def test_a_nan_gradient_on_one_rank_is_refused_by_every_rank(two, name):
    ranks = result(two, f"nan:{name}")
    for r in ranks:
        assert r["taken"] == [True, False, True], r["taken"]
        assert r["moved"][1] == 0.0  # the refused step moved nothing (reference)
        assert max(r["diffs"]) < ROUNDING and all(r["agree"])


@pytest.mark.parametrize("name", RESUMED)
def test_resume_from_a_checkpoint_equals_the_uninterrupted_run(two, name):
    for r in result(two, f"resume:{name}"):
        assert r["diff"] == 0.0


def test_bytes_sent_are_those_of_the_collectives_issued(two):
    """Per step and rank (W = 2, fp64, P = 468 shared, 39 head scalars, T = 3): the exact path
    reduce-scatters T·P, all-reduces T² + T, all-gathers P and all-reduces the heads."""
    T, P, H, e, W = 3, 468, 39, 8, 2
    half = (W - 1) / W
    rs = result(two, "mgda")[0]["sent"][0]
    assert rs == {
        "reduce_scatter": int(half * T * P * e),
        "all_reduce": int(2 * half * (T * T + T) * e) + int(2 * half * H * e),
        "all_gather": int(half * P * e),
    }
    zero = result(two, "mgda-sharded-adam")[0]["sent"][0]  # parameters all-gathered instead
    assert zero == rs
    a2a = result(two, "mgda-all-to-all")[0]["sent"][0]
    assert a2a["all_to_all"] == rs["reduce_scatter"]
    by_ar = result(two, "mgda-rs-by-all-reduce")[0]["sent"][0]
    assert by_ar["all_reduce"] == rs["all_reduce"] + 2 * rs["reduce_scatter"]
    full = result(two, "mgda-all-reduce")[0]["sent"][0]
    assert full == {"all_reduce": int(2 * half * (T * P + T + H) * e)}
    ub = result(two, "mgda-ub")[0]["sent"][0]
    assert ub == {"all_reduce": int(2 * half * (T * T + T + P + H) * e)}
    assert result(two, "mgda-ub-ddp")[0]["sent"][0] == {"all_reduce": int(2 * half * 12 * e)}


def test_fsdp_is_refused_with_the_reason():
    from mtl_fast.distributed import FSDP_REASON, check_module

    class FullyShardedDataParallel(torch.nn.Module):  # what check_module looks for
        pass

    with pytest.raises(ValueError, match="FSDP is not supported") as info:
        check_module(FullyShardedDataParallel())
    assert str(info.value) == FSDP_REASON
    assert check_module(torch.nn.Linear(2, 2)) is None
    with pytest.raises(TypeError, match="module"):
        check_module("model")  # type: ignore[arg-type]


def test_shard_layout_packs_columns_by_rank():
    from mtl_fast.distributed import ShardLayout

    lay = ShardLayout(7, 3)
    assert (lay.shard, lay.padded) == (3, 9)
    assert [lay.bounds(r) for r in range(3)] == [(0, 3), (3, 6), (6, 7)]
    J = torch.arange(14.0).view(2, 7)
    out = lay.pack(J, torch.full((3, 2, 3), -1.0))
    assert out[2].tolist() == [[6.0, 0.0, 0.0], [13.0, 0.0, 0.0]]
    assert torch.equal(out[1], J[:, 3:6])
    with pytest.raises(ValueError, match="numel"):
        ShardLayout(0, 2)


def test_ring_byte_model():
    from mtl_fast.distributed import sent_per_rank

    assert sent_per_rank("all_reduce", 800, 4) == 1200
    assert sent_per_rank("reduce_scatter", 800, 4) == 600
    assert sent_per_rank("all_gather", 800, 1) == 0
    with pytest.raises(ValueError, match="op"):
        sent_per_rank("gossip", 8, 2)


def test_communicator_needs_a_process_group():
    from mtl_fast.distributed import Communicator

    if torch.distributed.is_initialized():
        pytest.skip("a process group exists in this process")
    with pytest.raises(RuntimeError, match="group"):
        Communicator()
