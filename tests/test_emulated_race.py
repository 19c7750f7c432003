"""The CUDA kernels' device code has no data race: the CPU stand-in for compute-sanitizer's
racecheck. Every kernel's device code, emulated (tests/emulated_cuda.py), built with
ThreadSanitizer; the driver first shows that a missing barrier is reported."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.emulated_cuda import CXX, EMULATE, TORCH_INCLUDE, compiler_reason


@pytest.mark.skipif(CXX is None, reason=compiler_reason() or "")
def test_kernels_have_no_data_race_under_threadsanitizer(tmp_path: Path) -> None:
    assert CXX is not None
    flags = ["-std=c++20", "-O1", "-g", "-fsanitize=thread", "-pthread", TORCH_INCLUDE]
    probe = tmp_path / "probe.cpp"
    probe.write_text(
        f'#include "{EMULATE / "cuda_emulator.h"}"\n'
        "double out[32];\n"
        "void k() { __shared__ double b[32]; b[threadIdx.x] = threadIdx.x;\n"
        "  out[threadIdx.x] = b[(threadIdx.x + 1) % 32]; }\n"
        "int main() { warp_emulator::run_grid({1, 1, 1}, 32, k); return 0; }\n"
    )
    built = subprocess.run(
        [CXX, *flags, str(probe), "-o", str(tmp_path / "probe")], capture_output=True
    )
    if built.returncode != 0:
        pytest.skip(f"no ThreadSanitizer runtime here: {built.stderr.decode()[:200]}")
    racy = subprocess.run([str(tmp_path / "probe")], capture_output=True, text=True, timeout=60)
    assert "ThreadSanitizer: data race" in racy.stderr  # the sanitizer does see a missing barrier
    names = ("race_main.cpp", "min_norm_host.cpp", "gram_host.cpp", "adam_host.cpp")
    exe = tmp_path / "race_main"
    subprocess.run(
        [CXX, *flags, *(str(EMULATE / n) for n in names), "-o", str(exe)], check=True, timeout=600
    )
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=300)
    assert "ThreadSanitizer" not in run.stderr, run.stderr[:4000]
    assert run.returncode == 0
    assert "sum(w)=1.000000000000" in run.stdout
