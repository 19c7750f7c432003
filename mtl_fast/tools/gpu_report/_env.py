"""What a GPU report ran on: device, driver, CUDA, torch, triton, commit, runtime kind.

The light helpers (``nvidia-smi``, ``uname``, the commit, tool versions) use subprocesses and
files only, so the driver calls them before anything imports torch on the GPU. :func:`collect`
adds what torch and the Python packages say; the driver runs it as a subprocess
(``python -m mtl_fast.tools.gpu_report._env --json FILE``) so that a broken install is a
reason in the report, not a crash of the driver.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[3]
# Written next to the sources before they travel to a machine without git (docs/gpu.md):
# `git describe --always --dirty --abbrev=40 > .gpu-report-commit`.
COMMIT_FILE = ".gpu-report-commit"
_SOURCE_SUFFIXES = (".py", ".cu", ".cuh", ".h", ".cpp", ".sh", ".toml")


def _run(cmd: list[str], timeout: float = 10.0) -> tuple[int, str]:
    """(exit status, stdout + stderr) of ``cmd``; (127, reason) when it cannot run."""
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError:
        return 127, f"{cmd[0]} not found"
    except subprocess.TimeoutExpired:
        return 124, f"{cmd[0]} timed out after {timeout:.0f} s"
    except OSError as exc:
        return 126, f"{cmd[0]}: {exc}"
    return out.returncode, (out.stdout + out.stderr).strip()


def nvidia_smi() -> tuple[list[dict[str, str]], str | None]:
    """The visible GPUs as ``nvidia-smi`` lists them, or ([], why not)."""
    fields = ("name", "driver_version", "memory.total", "compute_cap", "clocks.max.sm")
    code, text = _run(
        ["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader"], timeout=20
    )
    if code != 0:
        return [], f"nvidia-smi: {text.splitlines()[0] if text else f'exit status {code}'}"
    gpus = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == len(fields):
            gpus.append(dict(zip(fields, parts)))
    return (gpus, None) if gpus else ([], f"nvidia-smi lists no GPU ({text[:200]!r})")


def runtime_kind(release: str | None = None) -> str:
    """The machine runtime, read from the kernel release: Firecracker microVMs report e.g.
    ``6.18.44-fc-v236-gpu``, gVisor reports ``4.4.0``."""
    rel = platform.release() if release is None else release
    if "-fc" in rel or ".fc-" in rel:
        return "firecracker"
    if rel.startswith("4.4.0"):
        return "gvisor"
    return "other"


def find_tool(name: str) -> str | None:
    """``name`` on PATH, else in the CUDA toolkit (``$CUDA_HOME/bin``, ``/usr/local/cuda``)."""
    found = shutil.which(name)
    if found:
        return found
    homes = [os.environ.get("CUDA_HOME", ""), os.environ.get("CUDA_PATH", ""), "/usr/local/cuda"]
    for home in filter(None, homes):
        for sub in ("bin", name):  # compute-sanitizer also lives in <toolkit>/compute-sanitizer/
            candidate = Path(home) / sub / name
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
    return None


def tool_version(name: str) -> str | None:
    """The last non-empty line of ``name --version`` (nvcc, compute-sanitizer), or None."""
    path = find_tool(name)
    if path is None:
        return None
    code, text = _run([path, "--version"])
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if code != 0 or not lines:
        return None
    for ln in lines:  # nvcc: "Cuda compilation tools, release 13.0, V13.0.88"
        if "release" in ln.lower() or "version" in ln.lower():
            return ln
    return lines[-1]


def git_commit() -> str:
    """The commit of the sources (+ ``-dirty``): git, else :data:`COMMIT_FILE`, else
    ``MTL_FAST_GIT_COMMIT``, else ``"unknown"`` (the device machine has no ``.git``)."""
    code, sha = _run(["git", "-C", str(REPO), "rev-parse", "HEAD"])
    if code == 0 and sha and " " not in sha:
        code2, status = _run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"]
        )
        return sha + ("-dirty" if code2 == 0 and status else "")
    path = REPO / COMMIT_FILE
    if path.is_file():
        text = path.read_text().strip().split()
        if text:
            return text[0]
    return os.environ.get("MTL_FAST_GIT_COMMIT", "").strip() or "unknown"


def source_digest() -> str:
    """SHA-256 (16 hex digits) of the package, kernels, tests and benchmarks as they are here:
    identifies the sources even where there is no git."""
    h = hashlib.sha256()
    for top in ("mtl_fast", "csrc", "tests", "benchmarks"):
        root = REPO / top
        if not root.is_dir():
            continue
        for path in sorted(root.rglob("*")):
            if path.suffix in _SOURCE_SUFFIXES and "__pycache__" not in path.parts:
                h.update(str(path.relative_to(REPO)).encode() + b"\0")
                h.update(path.read_bytes())
    return h.hexdigest()[:16]


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _torch_info() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cuda_available": torch.cuda.is_available(),
        "devices": [],
    }
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            prop = torch.cuda.get_device_properties(i)
            info["devices"].append(
                {
                    "name": prop.name,
                    "capability": f"{prop.major}.{prop.minor}",
                    "sms": prop.multi_processor_count,
                    "memory_GiB": round(prop.total_memory / 2**30, 1),
                    "l2_MiB": round(getattr(prop, "L2_cache_size", 0) / 2**20, 1) or None,
                }
            )
    return info


def collect() -> dict[str, Any]:
    """Everything the report's ``env`` section holds; a part that cannot be read says why."""
    info: dict[str, Any] = {}

    def attempt(key: str, fn: Callable[[], Any]) -> None:
        try:
            value = fn()
        except Exception as exc:  # one unreadable item must not lose the others
            value = f"unavailable: {type(exc).__name__}: {exc}"
        info[key] = value

    attempt("python", platform.python_version)
    attempt("platform", platform.platform)
    attempt("kernel", platform.release)
    attempt("runtime", runtime_kind)
    attempt("cpu", _cpu_model)
    attempt("cpu_count", os.cpu_count)
    gpus, why = nvidia_smi()
    info["nvidia_smi"] = gpus if gpus else why
    try:
        info.update(_torch_info())
    except Exception as exc:
        info["torch"] = f"unavailable: {type(exc).__name__}: {exc}"
    for dist in ("triton", "numpy", "pytest", "pytest-xdist", "pytest-timeout", "torchjd"):
        info[dist.replace("-", "_")] = _version(dist)
    for dist in ("quadprog", "qpsolvers", "matplotlib", "scipy"):
        info[dist] = _version(dist)
    attempt("nvcc", lambda: tool_version("nvcc"))
    attempt("compute_sanitizer", lambda: tool_version("compute-sanitizer"))
    attempt("git_commit", git_commit)
    attempt("source_digest", source_digest)
    try:
        import mtl_fast

        info["mtl_fast"] = mtl_fast.__version__
    except Exception as exc:
        info["mtl_fast"] = f"import failed: {type(exc).__name__}: {exc}"
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="write the environment of a GPU report")
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args(argv)
    info = collect()
    args.json.write_text(json.dumps(info, indent=1, default=str) + "\n")
    print(json.dumps(info, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
