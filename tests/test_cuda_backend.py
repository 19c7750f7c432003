"""The CUDA backend's packaging: no build at import, clear reasons, locks that cannot go stale,
stamps that reject stale libraries, and (when the extension has been built, e.g. by
``.ci/compile_cuda.sh``) op registration and fake implementations. None of this needs a GPU."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
import torch

import mtl_fast
from mtl_fast.kernels.cuda import _build


def _run_python(code: str, env: dict[str, str]) -> str:
    full_env = {**os.environ, **env}
    full_env.pop("MTL_FAST_CUDA_JIT", None)
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return out.stdout.strip()


def test_import_and_backends_never_build(tmp_path: Path) -> None:
    build_dir = tmp_path / "build"
    out = _run_python(
        """
        import sys, time
        import torch
        before = "torch.utils.cpp_extension" in sys.modules
        start = time.monotonic()
        import mtl_fast, mtl_fast.kernels.cuda
        status = mtl_fast.backends()["cuda"]
        print(before, "torch.utils.cpp_extension" in sys.modules, status.available,
              round(time.monotonic() - start, 1))
        print(status.reason)
        """,
        {"MTL_FAST_CUDA_BUILD_DIR": str(build_dir)},
    )
    first, reason = out.splitlines()[0].split(), out.splitlines()[1]
    before, after, available, seconds = first[0], first[1], first[2], float(first[3])
    assert after == before, (
        "importing mtl_fast.kernels.cuda or asking for backends() loaded the compiler"
    )
    assert not build_dir.exists(), "asking for backends() created a build directory"
    assert seconds < 60  # a build takes minutes
    if available == "False":
        assert reason and reason != "None"
        if _build._prebuilt() is None:
            assert "no compiled CUDA extension found" in reason
            assert "MTL_FAST_CUDA_JIT=1" in reason


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only machine's message")
def test_backends_reports_why_cuda_is_missing() -> None:
    status = mtl_fast.backends()["cuda"]
    assert not status.available
    assert status.reason is not None
    assert ("no compiled CUDA extension" in status.reason) or ("no CUDA device" in status.reason)
    assert mtl_fast.backends()["reference"].available


def test_explicit_cuda_on_cpu_tensors_raises_with_reason() -> None:
    J = torch.randn(3, 5)
    with pytest.raises(mtl_fast.BackendUnavailableError, match="backend='cuda'"):
        mtl_fast.gram(J, backend="cuda")
    K = J @ J.T
    with pytest.raises(mtl_fast.BackendUnavailableError, match="backend='cuda'"):
        mtl_fast.min_norm(K, backend="cuda")
    # "auto" never fails for want of a backend: the reference answers on the CPU.
    assert torch.allclose(mtl_fast.gram(J, backend="auto"), K, rtol=1e-5, atol=1e-5)


def test_min_norm_rejects_too_many_tasks_by_name() -> None:
    import mtl_fast.kernels.cuda as cuda

    K = torch.empty(1, 2049, 2049)
    with pytest.raises(ValueError, match=r"T ≤ 2048.*T = 2049"):
        cuda.min_norm(K, max_iter=10, tol=1e-6, sync_free=True)


def test_dispatch_knows_the_task_limit() -> None:
    import mtl_fast.kernels.cuda as cuda
    from mtl_fast._core import dispatch as _dispatch

    assert _dispatch._task_limit_reason(cuda, "min_norm", 2048) is None
    reason = _dispatch._task_limit_reason(cuda, "min_norm", 2049)
    assert reason is not None and "T ≤ 2048" in reason
    assert _dispatch._task_limit_reason(cuda, "gram", 100_000) is None  # gram has no limit


def test_build_dir_is_per_torch_and_cuda_version(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MTL_FAST_CUDA_BUILD_DIR", raising=False)
    name = _build.build_dir().name
    assert torch.__version__.replace("+", "_") in name
    assert str(torch.version.cuda) in name
    monkeypatch.setattr(_build, "_writable", lambda directory: False)  # read-only home
    assert Path(tempfile.gettempdir()) in _build.build_dir().parents
    monkeypatch.setenv("MTL_FAST_CUDA_BUILD_DIR", "/somewhere/else")
    assert _build.build_dir() == Path("/somewhere/else")


def test_stale_or_missing_stamp_is_not_loaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MTL_FAST_CUDA_BUILD_DIR", str(tmp_path))
    lib = tmp_path / f"{_build.LIBRARY_NAME}.so"
    stamp = tmp_path / f"{_build.LIBRARY_NAME}.stamp"
    lib.write_bytes(b"not a library")
    assert _build._current_jit_library() is None  # no stamp: an interrupted build
    stamp.write_text(f"{'0' * 64} 9.0\n")
    assert _build._current_jit_library() is None  # sources changed since
    stamp.write_text(f"{_build.source_hash('9.0')} 9.0\n")
    assert _build._current_jit_library() == lib
    # The digest covers the architectures too.
    assert _build.source_hash("9.0") != _build.source_hash("8.0")


_HOLD_LOCK = """
import fcntl, sys, time
f = open(sys.argv[1], "a+")
fcntl.flock(f.fileno(), fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(120)
"""


def test_build_lock_times_out_and_dies_with_its_holder(tmp_path: Path) -> None:
    lock = tmp_path / "mtl_fast_build.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, str(lock)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        start = time.monotonic()
        with (
            pytest.raises(_build.BuildTimeoutError, match="MTL_FAST_CUDA_JIT_TIMEOUT"),
            _build.exclusive_lock(lock, timeout=0.5),
        ):
            pass
        assert time.monotonic() - start < 10
    finally:
        holder.kill()  # an interrupted build: SIGKILL, no clean-up code runs
        holder.wait()
    with _build.exclusive_lock(lock, timeout=5.0):
        pass  # the kernel released the dead holder's lock: nothing stale is left behind


def test_failed_jit_build_is_reported_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    import mtl_fast.kernels.cuda as cuda

    def broken(allow_build: bool = False) -> str:
        raise RuntimeError("Error building extension 'mtl_fast_cuda'\nninja: build stopped")

    monkeypatch.setattr(_build, "load", broken)
    reason = cuda.unavailable_reason()
    assert reason is not None and "build failed" in reason and "mtl_fast_cuda" in reason


# ---- the built library, when there is one (no GPU needed) ----------------------------------


@pytest.fixture(scope="module")
def cuda_ops() -> object:
    try:
        _build.load(allow_build=False)
    except _build.ExtensionUnavailable as exc:
        pytest.skip(f"the CUDA extension is not built here ({exc})")
    return torch.ops.mtl_fast_cuda


def test_ops_are_registered_with_alias_annotations(cuda_ops: object) -> None:
    ops = torch.ops.mtl_fast_cuda
    import mtl_fast.kernels.cuda as cuda

    for name in cuda.OPS:
        assert hasattr(ops, name), name
    schema = ops.multi_adam.default._schema
    written = [
        a.name for a in schema.arguments if a.alias_info is not None and a.alias_info.is_write
    ]
    assert written == ["param", "exp_avg", "exp_avg_sq", "step"]
    schema = ops.combine_adam.default._schema
    written = [
        a.name for a in schema.arguments if a.alias_info is not None and a.alias_info.is_write
    ]
    assert written == ["param", "exp_avg", "exp_avg_sq", "step"]


def test_compiled_archs_are_reported(cuda_ops: object) -> None:
    archs = list(torch.ops.mtl_fast_cuda.compiled_archs())
    assert archs and all(isinstance(a, int) and a >= 50 for a in archs)
    wanted = os.environ.get("TORCH_CUDA_ARCH_LIST")
    if wanted == "9.0":
        assert archs == [90]


@pytest.mark.parametrize(
    "dtype,acc",
    [
        (torch.float16, torch.float32),
        (torch.bfloat16, torch.float32),
        (torch.float32, torch.float32),
        (torch.float64, torch.float64),
    ],
)
def test_fake_implementations_give_shapes_and_dtypes(
    cuda_ops: object, dtype: torch.dtype, acc: torch.dtype
) -> None:
    ops = torch.ops.mtl_fast_cuda
    J = torch.empty(2, 3, 1000, dtype=dtype, device="meta")
    K = ops.gram(J)
    assert K.shape == (2, 3, 3) and K.dtype == acc and K.device.type == "meta"
    K1 = ops.gram_list([torch.empty(3, 7, dtype=dtype, device="meta")] * 2)
    assert K1.shape == (3, 3) and K1.dtype == acc
    w = ops.min_norm(torch.empty(4, 5, 5, dtype=acc, device="meta"), 100, 1e-6)
    assert w.shape == (4, 5) and w.dtype == acc
    d = ops.combine(J, torch.empty(2, 3, dtype=acc, device="meta"))
    assert d.shape == (2, 1000) and d.dtype == dtype
    C = ops.sign_conflict(J)
    assert C.shape == (2, 3, 3) and C.dtype == torch.float64


def test_cpu_tensors_have_no_kernel(cuda_ops: object) -> None:
    with pytest.raises((NotImplementedError, RuntimeError), match=r"CPU|CUDA"):
        torch.ops.mtl_fast_cuda.gram(torch.randn(1, 2, 3))


def test_ops_trace_and_functionalize_on_fake_cuda_tensors(cuda_ops: object) -> None:
    """What torch.compile relies on, checked without a GPU: fake CUDA tensors flow through the
    fake implementations, and the in-place Adam op is functionalized with its four mutated
    arguments (torch.export runs the same tracing and functionalization passes)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    ops = torch.ops.mtl_fast_cuda

    class Step(torch.nn.Module):
        def forward(self, J, p, m, v, s):  # type: ignore[no-untyped-def]
            K = ops.gram(J.unsqueeze(0))
            w = ops.min_norm(K, 200, 1e-6)[0]
            ops.combine_adam(p, J, w, m, v, s, None, 1e-3, 0.9, 0.999, 1e-8, 0.0)
            return w

    with FakeTensorMode(allow_non_fake_inputs=True):
        J = torch.empty(6, 100, device="cuda", dtype=torch.bfloat16)
        state = tuple(torch.empty(n, device="cuda") for n in (100, 100, 100, 1))
        exported = torch.export.export(Step(), (J, *state))
    functional = exported.run_decompositions()
    code = functional.graph_module.code
    assert "mtl_fast_cuda.gram.default" in code
    assert "mtl_fast_cuda.min_norm.default" in code
    assert "auto_functionalized" in code and "mtl_fast_cuda.combine_adam.default" in code
    outputs = next(iter(functional.graph.find_nodes(op="output"))).args[0]
    assert len(outputs) == 5  # w plus the four updated states (param, m, v, step)
