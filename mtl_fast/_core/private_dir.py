"""Private folders for compiled code: created owner-only, checked before anything is loaded.

A folder that the package loads a shared library from (the just-in-time CUDA build's) must not
be writable by anyone but the current user: otherwise another account could plant a library
whose stamp matches and have it loaded into this process. The rule, held in this one place:

- the folder itself, and the files loaded from it, are owned by the current user (or root) and
  are not group- or other-writable;
- every parent up to ``/`` is owned by the current user or root and is not group- or
  other-writable, unless it has the sticky bit (``/tmp``): there nobody can rename or remove an
  entry they do not own, so a folder below it cannot be swapped.

Both the path as given (symbolic links followed) and its resolved form are checked, so a link
cannot point the check at one folder and the loader at another. Folders are created with
mode 0o700 (:func:`make_private_dir`).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


class UnsafeDirectoryError(PermissionError):
    """A folder (or file) that code would be loaded from could be changed by another user."""


def _current_uid() -> int | None:
    getuid = getattr(os, "getuid", None)  # absent on Windows, where this check does not apply
    return None if getuid is None else int(getuid())


def _problem(path: Path, st: os.stat_result, uid: int, *, leaf: bool) -> str | None:
    """Why ``path`` (with stat ``st``) is unsafe, or None."""
    if st.st_uid not in (uid, 0):
        return f"it is owned by uid {st.st_uid}, not by the current user (uid {uid}) or root"
    writable = st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    if writable and (leaf or not st.st_mode & stat.S_ISVTX):
        who = (
            "group- and other-"
            if writable == stat.S_IWGRP | stat.S_IWOTH
            else ("group-" if writable == stat.S_IWGRP else "other-")
        )
        return f"it is {who}writable (mode {stat.S_IMODE(st.st_mode):o})"
    return None


def _check_chain(path: Path, uid: int, what: str) -> None:
    """The folder ``path`` and each of its parents, by the rule of the module docstring."""
    for i, candidate in enumerate((path, *path.parents)):
        try:
            st = os.stat(candidate)
        except OSError as exc:
            raise UnsafeDirectoryError(f"{what} {path}: cannot inspect {candidate}: {exc}") from exc
        if i == 0 and not stat.S_ISDIR(st.st_mode):
            raise UnsafeDirectoryError(f"{what} {path} is not a folder")
        problem = _problem(candidate, st, uid, leaf=i == 0)
        if problem is not None:
            where = "it" if i == 0 else f"its parent {candidate}"
            raise UnsafeDirectoryError(
                f"refusing to use {what} {path}: {where} could be changed by another user "
                f"({problem.removeprefix('it ')}); make it private (chmod 700, owned by you) or "
                "choose another folder"
            )


def check_private_dir(path: Path, what: str = "the folder") -> None:
    """Raise :class:`UnsafeDirectoryError` unless ``path`` is a private folder (module rule).

    Args:
        path: an existing folder.
        what: how the message names it (e.g. "the CUDA build folder").
    """
    uid = _current_uid()
    if uid is None:
        return
    absolute = Path(os.path.abspath(path))
    _check_chain(absolute, uid, what)
    resolved = absolute.resolve()
    if resolved != absolute:
        _check_chain(resolved, uid, what)


def check_private_file(path: Path, what: str = "the file") -> None:
    """Raise :class:`UnsafeDirectoryError` unless ``path`` is owned by the current user (or
    root) and not group- or other-writable, and lies in a private folder."""
    uid = _current_uid()
    if uid is None:
        return
    check_private_dir(Path(os.path.abspath(path)).parent, f"the folder of {what}")
    st = os.stat(path)
    problem = _problem(Path(path), st, uid, leaf=True)
    if problem is not None:
        raise UnsafeDirectoryError(
            f"refusing to load {what} {path}: {problem}; delete it and build again"
        )


def make_private_dir(path: Path, what: str = "the folder") -> Path:
    """Create ``path`` and any missing parents with mode 0o700, then check it
    (:func:`check_private_dir`); an existing folder is checked, never loosened or tightened.

    Returns:
        ``path``.
    """
    missing = []
    for candidate in (path, *path.parents):
        if candidate.exists():
            break
        missing.append(candidate)
    for candidate in reversed(missing):
        try:
            candidate.mkdir(mode=0o700)
        except FileExistsError:
            continue  # created meanwhile by another process: the check below judges it
        os.chmod(candidate, 0o700)  # the umask may have removed bits, never added them
    check_private_dir(path, what)
    return path
