"""Compile every kernel specialization the launchers produce for a GPU target, with no GPU.

``python -m mtl_fast.kernels.triton.aot [--arch 90]`` runs each host launcher on small CPU tensors with
the kernels replaced by recorders, then compiles every recorded launch ahead of time with
Triton's compiler and ``ptxas`` for the target, and prints registers, spills and shared memory
per kernel (from ``cuobjdump``). It catches what the interpreter cannot: lowering errors, layout
or shared-memory limits, and register spills. Run it with TRITON_INTERPRET unset.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from mtl_fast._core.contracts import (
    AdamHyper,
    AdamRows,
    AdamState,
    CAGradHyper,
    DualConeHyper,
    NashMTLHyper,
)
from mtl_fast._core.precision import accumulation_dtype

_TORCH_TO_TRITON = {
    torch.float16: "fp16",
    torch.bfloat16: "bf16",
    torch.float32: "fp32",
    torch.float64: "fp64",
    torch.int32: "i32",
    torch.int64: "i64",
}


@dataclass
class Launch:
    kernel: Any
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


class _Recorder:
    def __init__(self, kernel: Any, sink: list[Launch]) -> None:
        self.kernel = kernel
        self.sink = sink

    def __getitem__(self, grid: Any) -> Callable[..., None]:
        def launch(*args: Any, **kwargs: Any) -> None:
            self.sink.append(Launch(self.kernel, args, kwargs))

        return launch


def _signature(launch: Launch) -> tuple[dict[str, str], dict[str, Any], dict[Any, Any], int]:
    fn = launch.kernel
    kwargs = dict(launch.kwargs)
    num_warps = int(kwargs.pop("num_warps", 4))
    signature: dict[str, str] = {}
    constexprs: dict[str, Any] = {}
    attrs: dict[Any, Any] = {}
    values = list(launch.args)
    for i, p in enumerate(fn.params):
        value = values[i] if i < len(values) else kwargs[p.name]
        if p.is_constexpr:
            signature[p.name] = "constexpr"
            constexprs[p.name] = value
        elif isinstance(value, torch.Tensor):
            signature[p.name] = "*" + _TORCH_TO_TRITON[value.dtype]
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif isinstance(value, bool):
            signature[p.name] = "i1"
        elif isinstance(value, int):
            signature[p.name] = "i32" if -(2**31) <= value < 2**31 else "i64"
        elif isinstance(value, float):
            signature[p.name] = p.annotation or "fp32"
        else:
            raise TypeError(f"{fn.__name__}: cannot type argument {p.name}={value!r}")
    return signature, constexprs, attrs, num_warps


def record(quick: bool = False) -> list[Launch]:
    """Run the launchers on representative CPU inputs, recording every kernel launch.

    ``quick`` keeps one case of each code path (both Gram inner products, one and two row
    tiles, every solver tile, each Adam variant) instead of every dtype and size. The dual-cone
    launches take U in fp64 and G in the dtype under test, as ``upgrad_weights`` passes them.
    """
    _adam, _combine, _gram, _min_norm, _agg, _dual_cone = (
        importlib.import_module(f"mtl_fast.kernels.triton.{name}")
        for name in ("adam", "combine", "gram", "min_norm", "aggregators", "dual_cone")
    )

    launches: list[Launch] = []
    for module in (_adam, _combine, _gram, _min_norm, _agg, _dual_cone):
        for name in dir(module):
            obj = getattr(module, name)
            if name.endswith("_kernel") and hasattr(obj, "params"):
                setattr(module, name, _Recorder(obj, launches))
    gram_dtypes: tuple[torch.dtype, ...] = (
        torch.float32,
        torch.bfloat16,
        torch.float16,
        torch.float64,
    )
    gram_sizes: tuple[int, ...] = (2, 3, 5, 8, 16, 17, 40, 64, 65)
    if quick:
        gram_dtypes, gram_sizes = (torch.float32, torch.bfloat16), (3, 16, 65)
    for dtype in gram_dtypes:
        for T in gram_sizes:
            J = torch.zeros(1, T, 1000, dtype=dtype)
            _gram.gram(J)
            _combine.combine(J, torch.zeros(1, T))
        _gram.gram_list([torch.zeros(3, 5, dtype=dtype), torch.zeros(3, 7, dtype=dtype)[:, ::2]])
    for dtype in (torch.float32,) if quick else (torch.float32, torch.float64):
        for T in (2, 16, 32, 64) if quick else (2, 3, 5, 8, 16, 17, 32, 40, 64):
            _min_norm.min_norm(
                torch.zeros(4, T, T, dtype=dtype), max_iter=10, tol=1e-6, sync_free=True
            )
    for dtype in (torch.float32,) if quick else (torch.float32, torch.float64):
        for T in (2, 16, 32, 64) if quick else (2, 3, 5, 8, 10, 16, 17, 32, 40, 64):
            K = torch.zeros(4, T, T, dtype=dtype)
            order = torch.zeros(4, T, T, dtype=torch.int64)
            _agg.pcgrad(K, order)
            _agg.cagrad(K, CAGradHyper(0.5, 1e-4, 0, max_iter=10, tol=1e-12, sync_free=True))
            nash = NashMTLHyper(max_norm=1.0, max_iter=10, tol=1e-10, sync_free=True)
            _agg.nash_mtl(K, torch.ones(4, T, dtype=torch.float64), nash)
    for dtype in (torch.float32,) if quick else (torch.float32, torch.float64):
        for T in (2, 16, 32, 64) if quick else (1, 2, 3, 5, 8, 16, 17, 32, 40, 64):
            _dual_cone.dual_cone(
                torch.zeros(2, 3, T, dtype=torch.float64),
                torch.zeros(2, T, T, dtype=dtype),
                DualConeHyper(1e-4, 1e-4, max_iter=64, tol=1e-10, sync_free=True),
            )
    for pdtype in (
        (torch.float32, torch.bfloat16) if quick else (torch.float32, torch.bfloat16, torch.float64)
    ):
        sdtype = accumulation_dtype(pdtype)
        P, T = 100, 3
        idx = torch.arange(2)
        for wd, lr in ((0.0, 1e-3), (0.01, torch.tensor(1e-3))):
            state = AdamState(
                torch.zeros(P, dtype=pdtype),
                torch.zeros(T, P, dtype=sdtype),
                torch.zeros(T, P, dtype=sdtype),
                torch.zeros(T),
            )
            hyper = AdamHyper(lr=lr, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=wd)
            rows = AdamRows(torch.zeros(T, P, dtype=pdtype), idx, idx, torch.ones(2).double())
            _adam.multi_adam(state, rows, hyper)
    for dtype in (torch.float32, torch.float64):
        state = AdamState(
            torch.zeros(100, dtype=dtype),
            torch.zeros(1, 100, dtype=dtype),
            torch.zeros(1, 100, dtype=dtype),
            torch.zeros(1),
        )
        hyper = AdamHyper(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01)
        _adam.combine_adam(
            state, torch.zeros(4, 100, dtype=dtype), torch.ones(4, dtype=dtype), hyper
        )
    return launches


def _resources(cubin: bytes) -> dict[str, int]:
    tool = os.path.join(os.path.dirname(_triton_file()), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run(
            [tool, "--dump-resource-usage", f.name], capture_output=True, text=True, check=True
        ).stdout
    found = dict(re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", out))
    return {k: int(v) for k, v in found.items()}


def _triton_file() -> str:
    import triton

    return str(triton.__file__)


def compile_all(arch: int = 90, quick: bool = False) -> Iterator[tuple[str, str, dict[str, int]]]:
    """Yield (kernel, specialization, resources) for every distinct recorded launch."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    seen = set()
    for launch in record(quick):
        signature, constexprs, attrs, num_warps = _signature(launch)
        key = (
            launch.kernel.__name__,
            tuple(sorted(signature.items())),
            repr(constexprs),
            num_warps,
        )
        if key in seen:
            continue
        seen.add(key)
        src = ASTSource(fn=launch.kernel, signature=signature, constexprs=constexprs, attrs=attrs)
        compiled = triton.compile(
            src, target=GPUTarget("cuda", arch, 32), options={"num_warps": num_warps}
        )
        spec = ", ".join(f"{k}={v}" for k, v in constexprs.items()) + f", warps={num_warps}"
        yield launch.kernel.__name__, spec, _resources(compiled.asm["cubin"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 80 or 90")
    parser.add_argument("--quick", action="store_true", help="one launch of each code path")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("unset TRITON_INTERPRET: the interpreter compiles nothing", file=sys.stderr)
        return 2
    n = 0
    for name, spec, res in compile_all(args.arch, args.quick):
        n += 1
        print(
            f"{name:<24} REG {res.get('REG', 0):>3} STACK {res.get('STACK', 0):>5} "
            f"SHARED {res.get('SHARED', 0):>6}  {spec}"
        )
    print(f"{n} specializations compiled for sm_{args.arch}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
