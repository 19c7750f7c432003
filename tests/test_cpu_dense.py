"""The compiled CPU Gram and combination (backend "cpu", csrc/cpu/dense.cpp), and the proof that
MGDA's combination-and-optimizer part compiles as one graph on the CPU."""

from __future__ import annotations

import ctypes
import math

import numpy as np
import pytest
import torch

import mtl_fast
from mtl_fast._core import dispatch as _dispatch
from mtl_fast.kernels import cpu
from mtl_fast.kernels.cpu import dense, loader
from mtl_fast.kernels.reference import combine as ref_combine
from mtl_fast.kernels.reference import gram as ref_gram

needs_kernels = pytest.mark.skipif(
    isinstance(loader.dense_kernels(), str),
    reason=f"compiled CPU kernels unavailable: {loader.dense_kernels()}",
)


def _isas() -> tuple[str, ...]:
    return () if isinstance(loader.dense_kernels(), str) else dense.available_isas()


@needs_kernels
@pytest.mark.parametrize("isa", _isas())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    ("B", "T", "P"),
    [
        (1, 1, 1),
        (1, 2, 7),
        (2, 3, 513),
        (1, 6, 53),
        (1, 10, 5003),
        (3, 13, 1031),
        (2, 24, 4113),
        (1, 41, 2050),
        # several of the Gram's prefetch blocks (8,192-16,384 columns here), the last partial
        (1, 5, 40003),
        (2, 10, 20011),
    ],
)
def test_gram_and_combine_match_the_reference(
    isa: str, dtype: torch.dtype, B: int, T: int, P: int
) -> None:
    """Every instruction set the processor has (the portable kernels included): edge tiles of
    every size, partial blocks (of the fp32 sums and of the prefetch) and partial vectors."""
    gen = torch.Generator().manual_seed(B * 100 + T)
    J = torch.randn(B, T, P, generator=gen, dtype=dtype)
    w = torch.rand(B, T, generator=gen, dtype=dtype)
    with dense.use_isa(isa):
        assert dense.isa() == isa
        K = cpu.gram(J)
        d = cpu.combine(J, w)
    assert K.dtype == dtype and K.shape == (B, T, T)
    assert torch.equal(K, K.mT)  # exactly symmetric
    tol = {"rtol": 1e-5, "atol": 1e-4} if dtype == torch.float32 else {"rtol": 1e-12, "atol": 1e-10}
    torch.testing.assert_close(K, ref_gram(J.double()).to(dtype), **tol)
    torch.testing.assert_close(d, ref_combine(J, w), **tol)


@needs_kernels
def test_use_isa_refuses_what_the_processor_lacks_and_restores() -> None:
    best = dense.isa()
    assert best == dense.available_isas()[-1] and dense.available_isas()[0] == "portable"
    with pytest.raises(ValueError, match="isa must be one of"):
        with dense.use_isa("sse9"):
            pass
    with pytest.raises(RuntimeError):
        with dense.use_isa("portable"):
            raise RuntimeError
    assert dense.isa() == best


@needs_kernels
@pytest.mark.parametrize("isa", _isas())
def test_fma_burst_does_the_fmas_it_counts(isa: str) -> None:
    """The FMA-rate loop on every instruction set: it reports chains × lanes FMAs per step, with
    at least 8 chains (to cover the FMA latency on two pipes), and its accumulators hold what
    that many steps of acc ← acc · ½ + ¼ in fp32 give; bad arguments are refused."""
    burst = loader.dense_kernels()["fma_burst_f32"]
    lanes = 16 if isa == "avx512" else 8
    out = (ctypes.c_double * 2)()
    with dense.use_isa(isa):
        assert burst(1, ctypes.addressof(out)) == 0
        per_step = int(out[0])
        assert per_step % lanes == 0 and per_step // lanes >= 8
        for steps in (0, 3, 40):
            assert burst(steps, ctypes.addressof(out)) == 0
            acc = np.float32(0.0)
            for _ in range(steps):
                acc = np.float32(acc * np.float32(0.5) + np.float32(0.25))
            assert out[0] == steps * per_step
            assert out[1] == per_step * float(acc)
        assert burst(-1, ctypes.addressof(out)) == 1
        assert burst(1, None) == 1
        rate = dense.fma_rate(min_time=0.0)  # still one timed burst
    assert rate > 0 and math.isfinite(rate)


@needs_kernels
def test_strided_rows_batches_and_out_buffer() -> None:
    gen = torch.Generator().manual_seed(0)
    big = torch.randn(4, 9, 300, generator=gen)
    J = big[:, :5, 10:290]  # rows 300 apart, batches 2,700 apart: copied to contiguous
    w = torch.rand(4, 5, generator=gen)
    torch.testing.assert_close(cpu.gram(J), ref_gram(J), rtol=1e-5, atol=1e-4)
    out = torch.empty(4, 280)
    d = cpu.combine(J, w, out=out)
    assert d.data_ptr() == out.data_ptr()
    torch.testing.assert_close(out, ref_combine(J, w), rtol=1e-5, atol=1e-5)
    Jt = torch.randn(40, 6, generator=gen).T  # unit stride along T, not P
    torch.testing.assert_close(cpu.gram(Jt[None]), ref_gram(Jt[None]), rtol=1e-5, atol=1e-4)
    # bf16/fp16 go to the reference (the kernels take fp32 and fp64).
    Jh = J.to(torch.bfloat16)
    torch.testing.assert_close(cpu.gram(Jh), ref_gram(Jh))


@needs_kernels
def test_threads_split_columns_with_the_same_answer() -> None:
    gen = torch.Generator().manual_seed(1)
    J = torch.randn(1, 4, 300_000, generator=gen, dtype=torch.float64)
    kernels = loader.dense_kernels()
    assert not isinstance(kernels, str)
    K1, K3 = torch.empty(1, 4, 4, dtype=torch.float64), torch.empty(1, 4, 4, dtype=torch.float64)
    for K, threads in ((K1, 1), (K3, 3)):
        assert kernels["gram_f64"](J.data_ptr(), 1, 4, 300_000, 300_000, K.data_ptr(), threads) == 0
    torch.testing.assert_close(K1, K3, rtol=1e-13, atol=1e-9)
    d1, d3 = (
        torch.empty(1, 300_000, dtype=torch.float64),
        torch.empty(1, 300_000, dtype=torch.float64),
    )
    w = torch.rand(1, 4, generator=gen, dtype=torch.float64)
    for d, threads in ((d1, 1), (d3, 3)):
        assert (
            kernels["combine_f64"](
                J.data_ptr(), w.data_ptr(), 1, 4, 300_000, 300_000, d.data_ptr(), threads
            )
            == 0
        )
    assert torch.equal(d1, d3)
    # Bad arguments are refused with a status, nothing read.
    assert kernels["gram_f64"](None, 1, 0, 3, 3, None, 1) == 1
    assert kernels["gram_f64"](J.data_ptr(), 1, 4, 10, 5, K1.data_ptr(), 1) == 1  # ld < P
    assert kernels["combine_f64"](None, None, 0, 4, 3, 3, None, 1) == 0  # an empty batch


@needs_kernels
def test_auto_picks_the_kernels_on_cpu_and_custom_ops_check() -> None:
    assert _dispatch.resolve_name("gram", "auto", torch.device("cpu")) == "cpu"
    gen = torch.Generator().manual_seed(3)
    J = torch.randn(2, 4, 33, generator=gen)
    torch.library.opcheck(torch.ops.mtl_fast_cpu.gram.default, (J,))
    torch.library.opcheck(torch.ops.mtl_fast_cpu.combine.default, (J, torch.rand(2, 4)))


@needs_kernels
@pytest.mark.parametrize("compiler", ["eager", "aot_eager"])
def test_combination_and_optimizer_compile_as_one_graph(compiler: str) -> None:
    """MGDA's whole combination-and-optimizer part on CPU tensors in torch.compile(fullgraph=True):
    gram → min_norm → combine, and gram → min_norm → combine_adam (lr a tensor): no graph break,
    no host read (a read would break the graph or fail under fullgraph)."""
    gen = torch.Generator().manual_seed(7)
    T, P = 4, 257
    J = torch.randn(T, P, generator=gen)

    def combination(J: torch.Tensor) -> torch.Tensor:
        w = mtl_fast.min_norm(mtl_fast.gram(J))
        return mtl_fast.combine(J, w)

    def step(
        J: torch.Tensor,
        p: torch.Tensor,
        m: torch.Tensor,
        v: torch.Tensor,
        n: torch.Tensor,
        lr: torch.Tensor,
    ) -> None:
        w = mtl_fast.min_norm(mtl_fast.gram(J))
        mtl_fast.combine_adam(J, w, p, m, v, n, lr=lr)

    torch._dynamo.reset()
    try:
        explained = torch._dynamo.explain(combination)(J)
        assert explained.graph_break_count == 0
        code = explained.graphs[0].code
        assert "mtl_fast_cpu.gram" in code and "mtl_fast_cpu.min_norm" in code
        assert "mtl_fast_cpu.combine" in code
        torch.testing.assert_close(
            torch.compile(combination, fullgraph=True, backend=compiler)(J), combination(J)
        )
        state = [torch.randn(P, generator=gen), torch.zeros(P), torch.zeros(P), torch.zeros(1)]
        eager = [x.clone() for x in state]
        lr = torch.tensor(1e-2)
        compiled = torch.compile(step, fullgraph=True, backend=compiler)
        for _ in range(3):
            compiled(J, *state, lr)
            step(J, *eager, lr)
        for a, b in zip(state, eager):
            torch.testing.assert_close(a, b)
        assert torch._dynamo.explain(step)(J, *eager, lr).graph_break_count == 0
    finally:
        torch._dynamo.reset()
