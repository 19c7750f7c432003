"""Finding, building and loading the compiled CUDA extension — never as a side effect of import.

Where the library comes from, in order:

1. ``mtl_fast._C``, built by ``MTL_FAST_BUILD_CUDA=1 pip install --no-build-isolation -e .``
   (see setup.py);
2. a just-in-time build in :func:`build_dir` whose stamp matches the current sources, torch and
   CUDA versions (made by :func:`build`: ``python -m mtl_fast.kernels.cuda``,
   ``.ci/compile_cuda.sh`` or an earlier ``MTL_FAST_CUDA_JIT=1`` run); and
3. with ``MTL_FAST_CUDA_JIT=1`` set, a fresh just-in-time build with ninja the first time the
   ``cuda`` backend is asked for (minutes).

The source list, flags, default architecture, CUDA_HOME guess and where the sources are found
(``csrc/`` in a checkout, ``mtl_fast/_csrc/`` in an installed copy) live in
:mod:`mtl_fast.kernels.cuda.settings`, which setup.py reads too.

A build holds an OS-level lock (``fcntl.flock``: the kernel releases it when the holder dies, so
an interrupted build never blocks later ones) and waits at most ``MTL_FAST_CUDA_JIT_TIMEOUT``
seconds (default 1800) for another process's build before raising :class:`BuildTimeoutError`.

The build folder is private (:mod:`mtl_fast._core.private_dir`): created with mode 0o700, and
checked — with every parent — before a build writes to it and before a library is loaded from
it, so that no other account can plant a library there. An unsafe folder is refused with
:class:`ExtensionUnavailable` naming it and the problem.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from mtl_fast._core.private_dir import (
    UnsafeDirectoryError,
    check_private_dir,
    check_private_file,
    make_private_dir,
)
from mtl_fast.kernels.cuda import settings
from mtl_fast.kernels.cuda.settings import (
    CUDA_FLAGS,
    CXX_FLAGS,
    EXTENSION_NAME,
    HEADERS,
    LIBRARY_NAME,
    SOURCES,
    source_dir,
)

DEFAULT_TIMEOUT_S = 1800.0


class ExtensionUnavailable(RuntimeError):
    """The compiled extension cannot be loaded here; the message says why and what to do."""


class BuildTimeoutError(TimeoutError):
    """Another process held the build lock for longer than the timeout."""


_loaded_path: str | None = None


def jit_requested() -> bool:
    """Whether ``MTL_FAST_CUDA_JIT=1`` allows a just-in-time build on first use."""
    return settings.env_flag("MTL_FAST_CUDA_JIT")


def arch_list() -> str:
    """The TORCH_CUDA_ARCH_LIST a build uses (the visible GPU's when unset, else sm_90)."""
    capability = torch.cuda.get_device_capability() if torch.cuda.is_available() else None
    return settings.arch_list(capability)


def build_dir() -> Path:
    """One build directory per torch, CUDA and Python version (``MTL_FAST_CUDA_BUILD_DIR``
    overrides it), so that a library is never loaded into a torch it was not built against.

    Under ``$XDG_CACHE_HOME`` (default ``~/.cache``), or, when that is not writable, under
    ``<tmp>/mtl_fast-<uid>``: a predictable name in a shared folder, which is why every use
    checks that the folder is private (:func:`private_build_dir`)."""
    override = os.environ.get("MTL_FAST_CUDA_BUILD_DIR", "").strip()
    if override:
        return Path(override)
    cache = Path(os.environ.get("XDG_CACHE_HOME", "") or Path.home() / ".cache")
    if not _writable(cache):  # e.g. a read-only home on a CI runner
        cache = Path(tempfile.gettempdir()) / f"mtl_fast-{os.getuid()}"
    tag = (
        f"torch{torch.__version__}-cuda{torch.version.cuda}"
        f"-py{sys.version_info.major}{sys.version_info.minor}"
    ).replace("+", "_")
    return cache / "mtl_fast" / tag


BUILD_DIR_WHAT = "the CUDA build folder"


def private_build_dir(create: bool = False) -> Path | None:
    """:func:`build_dir`, checked to be private (created with mode 0o700 when ``create``);
    None when it does not exist and ``create`` is False.

    Raises:
        ExtensionUnavailable: the folder or one of its parents could be changed by another user.
    """
    directory = build_dir()
    try:
        if create:
            return make_private_dir(directory, BUILD_DIR_WHAT)
        if not directory.exists():
            return None
        check_private_dir(directory, BUILD_DIR_WHAT)
    except UnsafeDirectoryError as exc:
        raise ExtensionUnavailable(f"{exc} (or set MTL_FAST_CUDA_BUILD_DIR)") from None
    return directory


def _writable(directory: Path) -> bool:
    """Whether ``directory`` (or its nearest existing ancestor) accepts new files."""
    for candidate in (directory, *directory.parents):
        if candidate.exists():
            return os.access(candidate, os.W_OK | os.X_OK)
    return False


def source_hash(arches: str | None = None) -> str:
    """A digest of everything a build depends on: sources, flags, versions, architectures."""
    h = hashlib.sha256()
    src = source_dir()
    for name in (*SOURCES, *HEADERS):
        h.update(name.encode())
        h.update((src / name).read_bytes())
    for part in (
        torch.__version__,
        str(torch.version.cuda),
        f"{sys.version_info.major}.{sys.version_info.minor}",
        arches if arches is not None else arch_list(),
        " ".join(CXX_FLAGS + CUDA_FLAGS),
    ):
        h.update(b"\0" + part.encode())
    return h.hexdigest()


def _library_file(directory: Path) -> Path:
    return directory / f"{LIBRARY_NAME}.so"


def _stamp_file(directory: Path) -> Path:
    return directory / f"{LIBRARY_NAME}.stamp"


def _current_jit_library() -> Path | None:
    """The JIT-built library if its stamp matches the current sources for *some* arch list.

    Raises:
        ExtensionUnavailable: the build folder, the library or its stamp could have been
            written by another user (nothing is read or loaded then).
    """
    directory = private_build_dir()
    if directory is None:
        return None
    lib, stamp = _library_file(directory), _stamp_file(directory)
    if not (lib.is_file() and stamp.is_file() and source_dir().is_dir()):
        return None
    try:
        check_private_file(lib, "the CUDA library")
        check_private_file(stamp, "the CUDA library's stamp")
    except UnsafeDirectoryError as exc:
        raise ExtensionUnavailable(str(exc)) from None
    try:
        recorded = stamp.read_text().split()
    except OSError:
        return None
    if len(recorded) != 2:
        return None
    digest, arches = recorded
    return lib if digest == source_hash(arches) else None


def _prebuilt() -> str | None:
    """Path of ``mtl_fast._C`` built by setup.py, if installed."""
    try:
        spec = importlib.util.find_spec(EXTENSION_NAME)
    except (ImportError, ValueError):
        return None
    return spec.origin if spec is not None and spec.origin else None


@contextlib.contextmanager
def exclusive_lock(path: Path, timeout: float) -> Iterator[None]:
    """Hold ``flock(path)`` exclusively; poll for at most ``timeout`` seconds.

    The kernel drops the lock when its holder exits or is killed, so a crashed or interrupted
    build can never leave a stale lock behind.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise BuildTimeoutError(
                        f"another process has been building the mtl_fast CUDA extension in "
                        f"{path.parent} for more than {timeout:.0f} s (lock {path}); wait for "
                        f"it, or raise MTL_FAST_CUDA_JIT_TIMEOUT"
                    ) from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _timeout() -> float:
    raw = os.environ.get("MTL_FAST_CUDA_JIT_TIMEOUT", "").strip()
    try:
        return float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError:
        raise ValueError(
            f"MTL_FAST_CUDA_JIT_TIMEOUT must be a number of seconds, got {raw!r}"
        ) from None


def build(verbose: bool = False, timeout: float | None = None) -> str:
    """Compile and link the extension with ninja into :func:`build_dir`, stamp it, and load it.

    Needs nvcc, ninja and a CUDA build of torch, but no GPU. Respects ``MAX_JOBS`` and
    ``TORCH_CUDA_ARCH_LIST`` (default: the visible GPU's architecture, else sm_90).

    Returns:
        The path of the loaded shared library.
    """
    global _loaded_path
    if _loaded_path is not None:
        raise ExtensionUnavailable(
            f"a CUDA extension is already loaded in this process ({_loaded_path}); "
            "build in a new process (e.g. python -m mtl_fast.kernels.cuda)"
        )
    if torch.version.cuda is None:
        raise ExtensionUnavailable("torch is a CPU-only build: the CUDA extension cannot be built")
    src = source_dir()
    missing = [n for n in (*SOURCES, *HEADERS) if not (src / n).is_file()]
    if missing:
        looked = " or ".join(str(d) for d in settings.source_dirs())
        raise ExtensionUnavailable(
            f"the CUDA sources are missing ({', '.join(missing)} not found in {looked}); "
            "reinstall mtl-fast from its wheel or sdist, or build from a source checkout"
        )
    if settings.ensure_cuda_home() is None:
        raise ExtensionUnavailable(
            "no CUDA toolkit found: install one (nvcc) or set CUDA_HOME to its directory"
        )
    arches = arch_list()
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", arches)
    directory = private_build_dir(create=True)
    assert directory is not None
    from torch.utils import cpp_extension  # heavy: only when a build was asked for

    limit = _timeout() if timeout is None else timeout
    with exclusive_lock(directory / "mtl_fast_build.lock", limit):
        digest = source_hash(arches)
        stamp = _stamp_file(directory)
        with contextlib.suppress(FileNotFoundError):
            stamp.unlink()  # a build that dies from here on leaves no valid stamp
        path = cpp_extension.load(
            name=LIBRARY_NAME,
            sources=[str(src / n) for n in SOURCES],
            extra_cflags=list(CXX_FLAGS),
            extra_cuda_cflags=list(CUDA_FLAGS),
            extra_include_paths=[str(src)],
            build_directory=str(directory),
            verbose=verbose,
            with_cuda=True,
            is_python_module=False,
        )
        stamp.write_text(f"{digest} {arches}\n")
    _finish_load(str(path))
    return str(path)


def _finish_load(path: str) -> None:
    global _loaded_path
    from mtl_fast.kernels.cuda import fake

    fake.register()
    _loaded_path = path


def load(allow_build: bool = False) -> str:
    """Load the extension into this process once and register its fake implementations.

    Args:
        allow_build: compile it just in time when no usable library exists.

    Returns:
        The path of the loaded library.

    Raises:
        ExtensionUnavailable: with the reason and what to do about it.
    """
    if _loaded_path is not None:
        return _loaded_path
    if torch.version.cuda is None:
        raise ExtensionUnavailable("torch is a CPU-only build (torch.version.cuda is None)")
    candidate = _prebuilt()
    if candidate is None:
        jit = _current_jit_library()
        candidate = str(jit) if jit is not None else None
    if candidate is None and allow_build:
        return build()
    if candidate is None:
        raise ExtensionUnavailable(
            "no compiled CUDA extension found: build it with "
            "`MTL_FAST_BUILD_CUDA=1 pip install --no-build-isolation -e .`, or set "
            "MTL_FAST_CUDA_JIT=1 to compile it just in time (ninja, a few minutes) on first "
            f"use of backend='cuda' (build directory {build_dir()})"
        )
    try:
        torch.ops.load_library(candidate)
    except OSError as exc:
        raise ExtensionUnavailable(
            f"the CUDA extension {candidate} could not be loaded ({exc}); rebuild it, it was "
            "probably built against another torch"
        ) from exc
    _finish_load(candidate)
    return candidate


def loaded_path() -> str | None:
    """Path of the library loaded into this process, if any."""
    return _loaded_path


def main(argv: list[str] | None = None) -> int:
    """``python -m mtl_fast.kernels.cuda [--verbose]``: compile, link and load the extension."""
    args = sys.argv[1:] if argv is None else argv
    start = time.monotonic()
    try:
        lib = build(verbose="--verbose" in args)
    except ExtensionUnavailable as exc:
        print(f"python -m mtl_fast.kernels.cuda: {exc}", file=sys.stderr)
        return 1
    archs = list(torch.ops.mtl_fast_cuda.compiled_archs())
    print(
        f"built and loaded {lib} in {time.monotonic() - start:.0f} s "
        f"(TORCH_CUDA_ARCH_LIST={arch_list()}, compiled archs {archs}, "
        f"MAX_JOBS={os.environ.get('MAX_JOBS', 'unset')})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
