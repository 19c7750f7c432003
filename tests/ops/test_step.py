"""The ops together, as one MGDA step uses them: gram → min_norm → combine (or combine_adam),
on every backend; then, on a GPU, the whole verification matrix, torch.compile and CUDA-graph
capture of the step."""

from __future__ import annotations

import torch

import mtl_fast
from mtl_fast._core.contracts import AdamHyper, AdamState
from mtl_fast.tools import verify
from tests.backends import for_backends, gpu, requires_gpu
from tests.helpers import FP64


@for_backends("min_norm")
def test_mgda_direction_is_min_norm_point(backend) -> None:
    """combine(J, min_norm(gram(J))) is the min-norm point of the hull of the gradients: its
    inner product with every task gradient is at least its squared norm."""
    gen = torch.Generator().manual_seed(4)
    J = backend.to(torch.randn(6, 50, generator=gen, dtype=FP64))
    name = backend.dispatch
    dense = name if {"gram", "combine"} <= backend.info.ops else None  # a solver-only backend
    w = mtl_fast.min_norm(mtl_fast.gram(J, backend=dense), tol=1e-12, backend=name)
    d = mtl_fast.combine(J, w, backend=dense)
    assert ((J @ d) >= d @ d - 1e-9).all()


@gpu
@requires_gpu
@for_backends("gram", only=["triton", "cuda"])
def test_verify_matrix_passes(backend) -> None:
    """GPU only: ``mtl-fast verify``'s whole matrix (every op the backend implements, shapes ×
    dtypes) against the float64 reference."""
    checks, skipped = verify.run([backend.name], device=backend.device, quick=False)
    assert not skipped, skipped
    failed = [c for c in checks if not c.passed]
    assert not failed, verify.format_table(failed)
    assert {c.op for c in checks} == set(verify.CHECKS) & set(backend.info.ops)


@gpu
@requires_gpu
@for_backends("combine_adam", only=["cuda"])
def test_cuda_step_runs_under_torch_compile(backend) -> None:
    """cuda only: the registered ops (with fake implementations) compile in one graph and give
    the eager results bit for bit."""
    ops = torch.ops.mtl_fast_cuda

    def mgda_step(J, p, m, v, step):
        K = ops.gram(J.unsqueeze(0))
        w = ops.min_norm(K, 200, 1e-6)[0]
        ops.combine_adam(p, J, w, m, v, step, None, 1e-3, 0.9, 0.999, 1e-8, 0.0)
        return w

    dev = backend.device
    J = torch.randn(6, 10_000, device=dev)
    state = [torch.randn(10_000, device=dev)]
    state += [torch.zeros(10_000, device=dev), torch.zeros(10_000, device=dev)]
    state.append(torch.zeros(1, device=dev))
    eager = [x.clone() for x in state]
    compiled_state = [x.clone() for x in state]
    w_eager = mgda_step(J, *eager)
    w_comp = torch.compile(mgda_step, fullgraph=True)(J, *compiled_state)
    assert torch.equal(w_eager, w_comp)
    for a, b in zip(eager, compiled_state):
        assert torch.equal(a, b)


@gpu
@requires_gpu
@for_backends("combine_adam", only=["triton", "cuda"])
def test_whole_step_captures_in_a_cuda_graph(backend) -> None:
    """GPU only: gram → min_norm → combine_adam, then MultiAdam.step, captured once and replayed
    three times, equal bit for bit to the same steps run eagerly; lr is a device tensor."""
    dev, name = backend.device, backend.dispatch
    gen = torch.Generator().manual_seed(0)
    Tn, P = 5, 1_000_003
    J = torch.randn(Tn, P, generator=gen).to(dev)
    state = [torch.randn(P, generator=gen), torch.zeros(P), torch.zeros(P), torch.zeros(1)]
    state = [x.to(dev) for x in state]
    eager = [x.clone() for x in state]
    lr = torch.tensor(1e-3, device=dev)
    p = torch.nn.Parameter(torch.randn(P, generator=gen).to(dev))
    kw = dict(num_tasks=Tn, lr=lr, on_nonfinite="ignore", backend=name)
    opt = mtl_fast.MultiAdam([p], **kw)
    p_eager = torch.nn.Parameter(p.detach().clone())
    opt_eager = mtl_fast.MultiAdam([p_eager], **kw)

    def step(st: list[torch.Tensor], o: mtl_fast.MultiAdam) -> torch.Tensor:
        w = mtl_fast.min_norm(mtl_fast.gram(J, backend=name), backend=name)
        mtl_fast.combine_adam(J, w, *st, lr=lr, weight_decay=0.01, backend=name)
        o.step(J, weights=w)
        return w

    warm = mtl_fast.MultiAdam([torch.nn.Parameter(p.detach().clone())], **kw)
    step([x.clone() for x in state], warm)  # compiles / loads every kernel before the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step(state, opt)
    for _ in range(3):
        graph.replay()
        step(eager, opt_eager)
    torch.cuda.synchronize()
    assert state[3].item() == 3.0  # the capture itself does not run the step
    for a, b in zip(state, eager):
        assert torch.equal(a, b)
    assert torch.equal(p, p_eager) and torch.equal(opt.exp_avg, opt_eager.exp_avg)
    assert torch.equal(opt.steps, opt_eager.steps)


@gpu
@requires_gpu
@for_backends("combine_adam", only=["cuda"])
def test_cuda_backend_step_is_graph_capturable(backend) -> None:
    """cuda only, at the backend level: the launchers' step (gram, min_norm, combine_adam with
    an fp64 lr tensor) captured once; its weights equal the eager ones."""
    cuda = backend.module
    dev = backend.device
    J = torch.randn(5, 50_000, device=dev)
    p = torch.randn(50_000, device=dev)
    m, v = torch.zeros_like(p), torch.zeros_like(p)
    step = torch.zeros(1, device=dev)
    lr = torch.tensor(1e-3, dtype=FP64, device=dev)

    def run() -> torch.Tensor:
        K = cuda.gram(J.unsqueeze(0))
        w = cuda.min_norm(K, max_iter=200, tol=1e-6, sync_free=True)[0]
        hyper = AdamHyper(lr=lr, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0)
        cuda.combine_adam(AdamState(p, m[None], v[None], step), J, w, hyper)
        return w

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        run()  # warm-up (allocations, shared-memory attribute) outside the capture
    torch.cuda.current_stream().wait_stream(side)
    p_before = p.clone()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        w_graph = run()
    graph.replay()
    torch.cuda.synchronize()
    assert step.item() == 2.0  # warm-up + one replay (capture itself does not execute)
    assert not torch.equal(p, p_before)
    w_eager = cuda.min_norm(cuda.gram(J.unsqueeze(0)), max_iter=200, tol=1e-6, sync_free=True)[0]
    assert torch.equal(w_graph, w_eager)
