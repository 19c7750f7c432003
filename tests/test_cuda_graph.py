"""The whole MGDA training step in one CUDA graph (docs/strategies.md, "The whole step in one
CUDA graph"): forward, per-task backward passes into the arena, Gram, min-norm (sync-free),
combine + Adam (lr a device tensor) and the heads' Adam, captured once with static inputs and
replayed step after step, against the same steps run eagerly on an identical model.

Needs a CUDA device (marked ``gpu``; skipped with the reason elsewhere). Every op here must
neither read a value back to the host nor allocate outside the graph's pool while capturing.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import nn

import mtl_fast

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available(), reason="needs a CUDA device (none visible on this machine)"
    ),
]

T, B, D_IN, D_Z = 4, 32, 16, 24


@dataclass
class Setup:
    trunk: nn.Module
    heads: nn.ModuleList
    arena: mtl_fast.TaskGradients
    flat: torch.Tensor
    m: torch.Tensor
    v: torch.Tensor
    n: torch.Tensor
    lr: torch.Tensor
    head_opt: torch.optim.Optimizer
    x: torch.Tensor  # static inputs: every replay reads these addresses
    y: torch.Tensor

    def step(self) -> torch.Tensor:
        """One MGDA step; returns the (T,) weights (a tensor of the graph's pool when captured)."""
        z = self.trunk(self.x)
        losses = [
            nn.functional.mse_loss(h(z).squeeze(1), self.y[:, t]) for t, h in enumerate(self.heads)
        ]
        # Rows only (heads untouched); the graph is kept for the heads' pass below.
        self.arena.backward(losses, retain_graph=True, batched=False, accumulate_others=False)
        K = mtl_fast.gram(self.arena.J, check_finite=False)
        w = mtl_fast.min_norm(K, sync_free=True, check_finite=False)
        # The heads: ∇ Σ_t w_t L_t, one pass through the heads only.
        head_params = list(self.heads.parameters())
        grads = [wt.reshape(()) for wt in w.to(losses[0].dtype).unbind()]
        torch.autograd.backward(losses, grad_tensors=grads, inputs=head_params)
        mtl_fast.combine_adam(self.arena.J, w, self.flat, self.m, self.v, self.n, lr=self.lr)
        self.head_opt.step()
        return w


def build(device: torch.device) -> Setup:
    torch.manual_seed(0)
    trunk = nn.Sequential(nn.Linear(D_IN, 64), nn.Tanh(), nn.Linear(64, D_Z), nn.Tanh()).to(device)
    heads = nn.ModuleList(nn.Linear(D_Z, 1) for _ in range(T)).to(device)
    shared = list(trunk.parameters())
    flat = mtl_fast.flatten_parameters(shared)  # the trunk as one (P,) buffer
    arena = mtl_fast.TaskGradients(shared, num_tasks=T)
    return Setup(
        trunk=trunk,
        heads=heads,
        arena=arena,
        flat=flat,
        m=torch.zeros_like(flat),
        v=torch.zeros_like(flat),
        n=torch.zeros(1, dtype=torch.float32, device=device),
        lr=torch.tensor(1e-2, device=device),
        head_opt=torch.optim.Adam(heads.parameters(), lr=1e-2, capturable=device.type == "cuda"),
        x=torch.zeros(B, D_IN, device=device),
        y=torch.zeros(B, T, device=device),
    )


def batches(device: torch.device, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    return [
        (
            torch.randn(B, D_IN, generator=gen).to(device),
            torch.randn(B, T, generator=gen).to(device),
        )
        for _ in range(count)
    ]


def state_of(s: Setup) -> list[torch.Tensor]:
    return [s.flat, s.m, s.v, s.n, *[p.detach() for p in s.heads.parameters()]]


def test_whole_mgda_step_captured_once_and_replayed_matches_eager() -> None:
    device = torch.device("cuda")
    data = batches(device, 12)
    warm, replays = 3, 8
    eager, graphed = build(device), build(device)

    # Warm-up on a side stream (Triton compiles its kernels, Adam creates its state), as in the
    # CUDA-graph recipe of torch.cuda.graphs; the eager model takes the same steps.
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for i in range(warm):
            for s in (eager, graphed):
                s.x.copy_(data[i][0])
                s.y.copy_(data[i][1])
                s.head_opt.zero_grad(set_to_none=True)
                s.step()
    torch.cuda.current_stream().wait_stream(side)

    graph = torch.cuda.CUDAGraph()
    graphed.head_opt.zero_grad(set_to_none=True)  # the heads' .grad then live in the graph pool
    with torch.cuda.graph(graph):
        static_w = graphed.step()

    for i in range(warm, warm + replays):
        x, y = data[i]
        graphed.x.copy_(x)
        graphed.y.copy_(y)
        if i == warm + replays // 2:
            graphed.lr.fill_(5e-3)  # a new learning rate, without recapturing
            eager.lr.fill_(5e-3)
        graph.replay()
        eager.x.copy_(x)
        eager.y.copy_(y)
        eager.head_opt.zero_grad(set_to_none=True)
        w = eager.step()
        torch.cuda.synchronize()
        torch.testing.assert_close(static_w, w, rtol=1e-4, atol=1e-5)
    assert float(graphed.n) == float(eager.n) == warm + replays
    for a, b in zip(state_of(graphed), state_of(eager)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    # The trunk's parameters are views of the flat buffer the graph updated.
    assert graphed.trunk[0].weight.data_ptr() == graphed.flat.data_ptr()


def test_capture_reads_nothing_back_to_the_host() -> None:
    """A host read during capture raises (cudaErrorStreamCaptureUnsupported); the step has none."""
    device = torch.device("cuda")
    s = build(device)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        s.head_opt.zero_grad(set_to_none=True)
        s.step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    s.head_opt.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        s.step()
    graph.replay()
    torch.cuda.synchronize()
    assert torch.isfinite(s.flat).all()
