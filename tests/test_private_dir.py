"""Folders that compiled code is loaded from must be private: planted folders are refused, with
a message naming the folder and the problem, and nothing is loaded from them."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch

from mtl_fast._core import private_dir
from mtl_fast._core.private_dir import (
    UnsafeDirectoryError,
    check_private_dir,
    check_private_file,
    make_private_dir,
)
from mtl_fast.kernels.cuda import _build


@pytest.fixture
def base(tmp_path: Path) -> Path:
    """A private folder to plant things in (pytest's own may have a permissive umask)."""
    os.chmod(tmp_path, 0o700)
    return tmp_path


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_make_private_dir_creates_owner_only_folders(base: Path) -> None:
    old = os.umask(0o000)  # even with the most permissive umask
    try:
        leaf = make_private_dir(base / "a" / "b" / "c")
    finally:
        os.umask(old)
    for folder in (base / "a", base / "a" / "b", leaf):
        assert _mode(folder) == 0o700, folder
    check_private_dir(leaf)  # and it passes its own check


@pytest.mark.parametrize("mode", [0o777, 0o775, 0o757, 0o1777])
def test_a_writable_folder_is_refused(base: Path, mode: int) -> None:
    """Group- or other-writable: refused, even with the sticky bit (the folder itself holds
    the library; only a parent may be a sticky /tmp)."""
    folder = base / "planted"
    folder.mkdir()
    os.chmod(folder, mode)
    with pytest.raises(UnsafeDirectoryError, match=r"writable \(mode") as info:
        check_private_dir(folder, "the test folder")
    assert str(folder) in str(info.value) and "the test folder" in str(info.value)
    with pytest.raises(UnsafeDirectoryError):  # an existing folder is checked, not loosened
        make_private_dir(folder)
    assert _mode(folder) == mode


def test_a_folder_under_a_group_writable_parent_is_refused(base: Path) -> None:
    parent = base / "shared"
    parent.mkdir()
    leaf = parent / "mine"
    leaf.mkdir(mode=0o700)
    os.chmod(parent, 0o770)
    with pytest.raises(UnsafeDirectoryError, match="parent") as info:
        check_private_dir(leaf)
    assert str(parent) in str(info.value) and "group-writable" in str(info.value)
    os.chmod(parent, 0o1770)  # a sticky parent cannot have its entries swapped: accepted
    check_private_dir(leaf)


def test_a_link_to_a_public_folder_is_refused(base: Path) -> None:
    public = base / "public"
    public.mkdir()
    os.chmod(public, 0o777)
    link = base / "link"
    link.symlink_to(public)
    with pytest.raises(UnsafeDirectoryError):
        check_private_dir(link)


def _owned_by(monkeypatch: pytest.MonkeyPatch, victim: Path, uid: int) -> None:
    """Make ``os.stat`` report ``victim`` as owned by ``uid`` (tests cannot chown)."""
    real_stat = os.stat

    def fake_stat(path: object, *args: object, **kwargs: object) -> os.stat_result:
        st = real_stat(path, *args, **kwargs)  # type: ignore[arg-type]
        if Path(os.fspath(path)) == victim:  # type: ignore[arg-type]
            fields = list(st)
            fields[stat.ST_UID] = uid
            return os.stat_result(fields)
        return st

    monkeypatch.setattr(private_dir.os, "stat", fake_stat)


def test_a_folder_owned_by_another_user_is_refused(
    base: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = make_private_dir(base / "theirs")
    _owned_by(monkeypatch, folder, 4242)
    with pytest.raises(UnsafeDirectoryError, match="owned by uid 4242"):
        check_private_dir(folder)


def test_a_parent_owned_by_another_user_is_refused(
    base: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = make_private_dir(base / "theirs" / "mine")
    _owned_by(monkeypatch, base / "theirs", 4242)
    with pytest.raises(UnsafeDirectoryError, match="its parent"):
        check_private_dir(folder)


def test_root_owned_parents_are_accepted_for_another_user(
    base: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As a non-root user, root-owned parents are fine; the folder must be the user's own."""
    folder = make_private_dir(base / "mine")
    monkeypatch.setattr(private_dir.os, "getuid", lambda: 4242)
    if folder.stat().st_uid == 0:  # the tests run as root: every folder is root's
        check_private_dir(folder)
    _owned_by(monkeypatch, folder, 1234)
    with pytest.raises(UnsafeDirectoryError, match="uid 1234"):
        check_private_dir(folder)


def test_a_writable_file_is_refused(base: Path) -> None:
    lib = base / "lib.so"
    lib.write_bytes(b"x")
    check_private_file(lib, "the library")
    os.chmod(lib, 0o666)
    with pytest.raises(UnsafeDirectoryError, match="the library"):
        check_private_file(lib, "the library")


# ---- the CUDA just-in-time build folder --------------------------------------------------


def _plant_library(folder: Path) -> Path:
    """A library with a matching stamp: what an attacker would leave in a shared folder."""
    lib = folder / f"{_build.LIBRARY_NAME}.so"
    lib.write_bytes(b"planted")
    (folder / f"{_build.LIBRARY_NAME}.stamp").write_text(f"{_build.source_hash('9.0')} 9.0\n")
    return lib


def test_cuda_library_in_a_private_folder_is_found(
    base: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = make_private_dir(base / "build")
    monkeypatch.setenv("MTL_FAST_CUDA_BUILD_DIR", str(folder))
    lib = _plant_library(folder)
    assert _build._current_jit_library() == lib


@pytest.mark.parametrize("where", ["folder", "parent", "library"])
def test_cuda_library_in_a_public_folder_is_never_loaded(
    base: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    folder = make_private_dir(base / "shared" / "build")
    lib = _plant_library(folder)
    victim = {"folder": folder, "parent": folder.parent, "library": lib}[where]
    os.chmod(victim, 0o777 if where != "library" else 0o666)
    monkeypatch.setenv("MTL_FAST_CUDA_BUILD_DIR", str(folder))
    loaded: list[str] = []
    monkeypatch.setattr(torch.ops, "load_library", loaded.append)
    monkeypatch.setattr(_build, "_prebuilt", lambda: None)
    monkeypatch.setattr(_build, "_loaded_path", None)
    with pytest.raises(_build.ExtensionUnavailable, match="writable") as info:
        _build._current_jit_library()
    assert str(victim) in str(info.value)
    if torch.version.cuda is not None:  # load() refuses before it looks at the stamp
        with pytest.raises(_build.ExtensionUnavailable, match="writable"):
            _build.load(allow_build=False)
    assert loaded == []


def test_cuda_build_folder_in_tmp_is_private(monkeypatch: pytest.MonkeyPatch, base: Path) -> None:
    """The fallback under the shared temporary folder: created 0o700, and refused when someone
    else created it first."""
    monkeypatch.delenv("MTL_FAST_CUDA_BUILD_DIR", raising=False)
    monkeypatch.setattr(_build, "_writable", lambda directory: False)  # read-only home
    monkeypatch.setattr(_build.tempfile, "gettempdir", lambda: str(base))
    folder = _build.private_build_dir(create=True)
    assert folder is not None and base in folder.parents
    for candidate in (folder, *folder.parents):
        if candidate == base:
            break
        assert _mode(candidate) == 0o700, candidate
    os.chmod(base / f"mtl_fast-{os.getuid()}", 0o777)  # planted by someone else
    with pytest.raises(_build.ExtensionUnavailable, match=f"mtl_fast-{os.getuid()}"):
        _build.private_build_dir()


def test_unavailable_reason_names_the_unsafe_folder(
    base: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mtl_fast.kernels.cuda as cuda

    if torch.version.cuda is None:
        pytest.skip("a CPU-only torch never looks at the build folder")
    folder = base / "public"
    folder.mkdir()
    os.chmod(folder, 0o777)
    _plant_library(folder)
    monkeypatch.setenv("MTL_FAST_CUDA_BUILD_DIR", str(folder))
    monkeypatch.setattr(_build, "_prebuilt", lambda: None)
    monkeypatch.setattr(_build, "_loaded_path", None)
    monkeypatch.delenv("MTL_FAST_CUDA_JIT", raising=False)
    reason = cuda.unavailable_reason()
    assert reason is not None and str(folder) in reason and "writable" in reason
