"""compute-sanitizer: does it work on this runtime, and a small program that calls every kernel.

- ``python -m mtl_fast.tools.gpu_report._sanitizer probe --json FILE``: compile a tiny CUDA
  program (or, without nvcc, run a tiny torch one) under ``compute-sanitizer --tool memcheck``
  and record whether the runtime allows it. Seen here: it works on Firecracker microVMs and is
  refused on gVisor («Device not supported», then error 999 at the first allocation).
- ``python -m mtl_fast.tools.gpu_report._sanitizer ops --backends cuda,triton --device cuda``:
  call every op of each backend once on tiny inputs, covering each kernel instantiation (every
  dtype; the 16/32/64-row Gram tiles and T > 64; the min-norm solver's shared- and
  global-memory scratch; tensor and float learning rates). Inputs are made on the CPU and
  copied, so the kernels under the sanitizer are almost only the library's. The dry run calls
  it with ``--backends reference --device cpu`` so that the program cannot rot unnoticed.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from mtl_fast.tools.gpu_report._env import find_tool

ERROR_EXIT = 97  # --error-exitcode: the sanitizer found something

_PROBE_CU = r"""
#include <cstdio>
__global__ void touch(int* p) { p[threadIdx.x] = static_cast<int>(threadIdx.x); }
int main() {
  int* p = nullptr;
  cudaError_t e = cudaMalloc(&p, 32 * sizeof(int));
  if (e != cudaSuccess) { std::printf("cudaMalloc: %s\n", cudaGetErrorString(e)); return 2; }
  touch<<<1, 32>>>(p);
  e = cudaDeviceSynchronize();
  std::printf("probe kernel: %s\n", cudaGetErrorString(e));
  cudaFree(p);
  return e == cudaSuccess ? 0 : 3;
}
"""
_PROBE_PY = (
    "import torch; x = torch.ones(32, device='cuda'); torch.cuda.synchronize(); "
    "print('probe kernel:', float(x.sum()))"
)


def parse_summary(text: str) -> dict[str, Any]:
    """Error count (``ERROR SUMMARY: N errors``) and racecheck's hazard line, if printed."""
    found = re.findall(r"ERROR SUMMARY:\s*(\d+)\s+error", text)
    hazards = re.findall(r"RACECHECK SUMMARY:[^\n]*", text)
    return {
        "errors": int(found[-1]) if found else None,
        "hazards": hazards[-1].strip() if hazards else None,
    }


def _first_lines(text: str, n: int = 3) -> str:
    """The lines that say what went wrong (sanitizer errors first), joined."""
    lines = [ln.strip(" =\t") for ln in text.splitlines() if ln.strip(" =\t")]
    keys = ("not supported", "error", "fail", "refused", "denied")
    picked = [ln for ln in lines if any(k in ln.lower() for k in keys)] or lines
    return " | ".join(picked[:n])[:400]


def probe(timeout: float) -> dict[str, Any]:
    """Whether ``compute-sanitizer --tool memcheck`` runs a trivial CUDA program here."""
    start = time.monotonic()
    tool = find_tool("compute-sanitizer")
    result: dict[str, Any] = {"tool": tool is not None, "works": False, "message": ""}
    if tool is None:
        result["message"] = "compute-sanitizer not found (PATH, $CUDA_HOME, /usr/local/cuda)"
        return result
    nvcc = find_tool("nvcc")
    with tempfile.TemporaryDirectory(prefix="sanitizer-probe-") as tmp:
        if nvcc is not None:
            src, exe = Path(tmp) / "probe.cu", Path(tmp) / "probe"
            src.write_text(_PROBE_CU)
            try:
                built = subprocess.run(
                    [nvcc, "-o", str(exe), str(src)],
                    capture_output=True,
                    text=True,
                    timeout=max(5.0, timeout / 2),
                )
            except subprocess.TimeoutExpired:
                built = None
            if built is None or built.returncode != 0:
                why = "timed out" if built is None else _first_lines(built.stdout + built.stderr)
                result["message"] = f"could not compile the probe with nvcc: {why}"
                nvcc = None
            else:
                target = [str(exe)]
                result["how"] = "nvcc-built probe under memcheck"
        if nvcc is None:
            target = [sys.executable, "-c", _PROBE_PY]
            result["how"] = "torch probe under memcheck"
        left = max(5.0, timeout - (time.monotonic() - start))
        cmd = [tool, "--tool", "memcheck", "--error-exitcode", str(ERROR_EXIT), *target]
        try:
            run = subprocess.run(cmd, capture_output=True, text=True, timeout=left)
        except subprocess.TimeoutExpired:
            result["message"] = f"the probe did not finish within {left:.0f} s"
            result["seconds"] = round(time.monotonic() - start, 1)
            return result
    text = run.stdout + run.stderr
    summary = parse_summary(text)
    result["works"] = run.returncode == 0 and summary["errors"] == 0 and "probe kernel" in text
    result["message"] = (
        "memcheck ran the probe: 0 errors"
        if result["works"]
        else f"exit status {run.returncode}: {_first_lines(text)}"
    )
    result["seconds"] = round(time.monotonic() - start, 1)
    return result


# ---- the program run under the sanitizer ---------------------------------------------------


def op_calls(
    backend: str, device: Any, *, quick: bool = False
) -> list[tuple[str, Callable[[], object]]]:
    """(label, call) for every op of the public API with ``backend``, on tiny inputs
    (``quick``: without the large-T cases, which the CPU reference solves slowly)."""
    import torch

    import mtl_fast
    from mtl_fast.diagnostics import sign_conflict

    gen = torch.Generator().manual_seed(0)
    dtypes = (torch.float32, torch.float16, torch.bfloat16, torch.float64)

    def rand(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype).to(device)

    def name(dtype: torch.dtype) -> str:
        return str(dtype).replace("torch.", "")

    def weights(*shape: int) -> torch.Tensor:  # on the simplex, made on the CPU
        return torch.rand(*shape, generator=gen, dtype=torch.float32).softmax(-1).to(device)

    calls: list[tuple[str, Callable[[], object]]] = []
    # gram: 16/32/64-row tiles in every dtype, several tiles (T > 64); B = 2, P over chunks.
    for T in (3, 20) if quick else (3, 20, 40, 70):
        for dt in dtypes if T < 64 else (torch.float32,):
            J = rand(2, T, 4099, dtype=dt)
            calls.append((f"gram T={T} {name(dt)}", partial(mtl_fast.gram, J, backend=backend)))
    for dt in (torch.float32, torch.bfloat16):
        blocks = [rand(5, 7, dtype=dt), rand(5, 4, 5, dtype=dt)]
        calls.append((f"gram_list {name(dt)}", partial(mtl_fast.gram, blocks, backend=backend)))
    for T, dt in ((5, torch.float32), (5, torch.float64), (40, torch.bfloat16)):
        J = rand(1, T, 1001, dtype=dt)
        calls.append(
            (f"sign_conflict T={T} {name(dt)}", partial(sign_conflict, J, backend=backend))
        )
    # min_norm: shared-memory scratch up to T = 64, global memory above (CUDA).
    for T in (2, 8) if quick else (2, 8, 64, 70):
        A = torch.randn(3, T, 2 * T + 3, generator=gen, dtype=torch.float64)
        K64 = A @ A.transpose(1, 2)
        for dt in (torch.float32, torch.float64):
            K = K64.to(dt).to(device)
            calls.append(
                (f"min_norm T={T} {name(dt)}", partial(mtl_fast.min_norm, K, backend=backend))
            )
    for dt in dtypes:
        J, w = rand(2, 5, 4099, dtype=dt), weights(2, 5)
        calls.append((f"combine {name(dt)}", partial(mtl_fast.combine, J, w, backend=backend)))

    def adam(pdtype: torch.dtype, lr: float | torch.Tensor) -> None:
        p = torch.nn.Parameter(rand(1000, dtype=pdtype))
        opt = mtl_fast.MultiAdam(
            [p], num_tasks=3, lr=lr, weight_decay=0.01, on_nonfinite="ignore", backend=backend
        )
        opt.step(rand(3, 1000, dtype=pdtype))
        opt.step(rand(2, 1000, dtype=pdtype), tasks=[0, 2], weights=[0.3, 0.7])

    lr_t = torch.tensor(1e-3, device=device)
    for pdt, lr in ((torch.float32, 1e-3), (torch.float32, lr_t), (torch.bfloat16, 1e-3)):
        label = f"multi_adam {name(pdt)} lr={'tensor' if isinstance(lr, torch.Tensor) else lr}"
        calls.append((label, partial(adam, pdt, lr)))

    def fused(pdtype: torch.dtype, jdtype: torch.dtype, lr: float | torch.Tensor) -> None:
        J, w = rand(4, 1001, dtype=jdtype), weights(4)
        p = rand(1001, dtype=pdtype)
        m, v = torch.zeros_like(p), torch.zeros_like(p)
        step = torch.zeros(1, device=device)
        for _ in range(2):
            mtl_fast.combine_adam(J, w, p, m, v, step, lr=lr, weight_decay=0.01, backend=backend)

    for pdt, jdt, lr in (
        (torch.float32, torch.float32, 1e-3),
        (torch.float32, torch.bfloat16, lr_t),
        (torch.float64, torch.float64, 1e-3),
    ):
        calls.append((f"combine_adam p={name(pdt)} J={name(jdt)}", partial(fused, pdt, jdt, lr)))
    return calls


def run_ops(backends: list[str], device_name: str, *, quick: bool = False) -> int:
    """Call every op of every backend once; 1 if any call failed (or nothing ran), else 0."""
    import torch

    import mtl_fast
    from mtl_fast._core.dispatch import BackendUnavailableError, _load

    device = torch.device(device_name)
    ran = failed = 0
    status = mtl_fast.backends()
    for backend in backends:
        if backend not in status or not status[backend].available:
            reason = status[backend].reason if backend in status else "no such backend"
            print(f"n/a   {backend:<9} every op: {reason}", flush=True)
            continue
        module = _load(backend)
        reason = "unavailable" if isinstance(module, str) else module.device_reason(device)
        if reason is not None:
            print(f"n/a   {backend:<9} every op on {device}: {reason}", flush=True)
            continue
        for label, call in op_calls(backend, device, quick=quick):
            try:
                call()
                if device.type == "cuda":
                    torch.cuda.synchronize()
            except BackendUnavailableError as exc:  # e.g. Triton's min_norm above T = 64
                print(f"n/a   {backend:<9} {label}: {str(exc).splitlines()[0]}", flush=True)
                continue
            except Exception as exc:
                failed += 1
                print(f"FAIL  {backend:<9} {label}: {type(exc).__name__}: {exc}", flush=True)
                traceback.print_exc()
                continue
            ran += 1
            print(f"ok    {backend:<9} {label}", flush=True)
    print(f"{ran} calls ran, {failed} failed", flush=True)
    return 1 if failed or not ran else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("probe", help="does compute-sanitizer work here?")
    p.add_argument("--json", type=Path, required=True)
    p.add_argument("--timeout", type=float, default=45.0)
    o = sub.add_parser("ops", help="call every op once (run under compute-sanitizer)")
    o.add_argument("--backends", default="cuda", help="comma list, e.g. cuda,triton")
    o.add_argument("--device", default="cuda")
    o.add_argument("--quick", action="store_true", help="no large-T cases (the CPU dry run)")
    args = parser.parse_args(argv)
    if args.what == "probe":
        result = probe(args.timeout)
        args.json.write_text(json.dumps(result, indent=1) + "\n")
        print(json.dumps(result))
        return 0
    return run_ops([b for b in args.backends.split(",") if b], args.device, quick=args.quick)


if __name__ == "__main__":
    sys.exit(main())
