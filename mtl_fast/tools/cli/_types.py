"""Flag values checked at parse time: argparse ``type=`` functions and the one-line usage error.

A type function raises :class:`argparse.ArgumentTypeError`; argparse then reports
``mtl-fast <command>: error: argument --flag: <why>`` and exits with status 2. A mistake that
can only be seen after parsing (a combination of flags) raises :class:`UsageError`, which
``main`` reports the same way. Nothing here creates a file or a folder.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

import torch

from mtl_fast._core.dispatch import BACKEND_NAMES
from mtl_fast._core.validate import SEED_LIMIT


class UsageError(Exception):
    """A flag value (or combination) that can only be judged after parsing; ``flag`` names
    it. Reported in one line with exit status 2, like argparse's own errors."""

    def __init__(self, flag: str | None, message: str) -> None:
        self.flag = flag
        super().__init__(message if flag is None else f"argument {flag}: {message}")


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr (no usage block), status 2."""

    def error(self, message: str) -> NoReturn:
        line = " ".join(message.split())
        self.exit(2, f"{self.prog}: error: {line} (see {self.prog} --help)\n")


def report(prog: str, exc: BaseException) -> int:
    """Print ``exc`` as a one-line usage error of ``prog``; returns 2."""
    line = " ".join(str(exc).split())
    print(f"{prog}: error: {line}", file=sys.stderr)
    return 2


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An integer ≥ ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be ≥ {minimum}, got {value}")
        return value

    parse.__name__ = f"integer ≥ {minimum}"
    return parse


def seed(text: str) -> int:
    """A seed: an integer in [0, 2**32)."""
    value = int_at_least(0)(text)
    if value >= SEED_LIMIT:
        raise argparse.ArgumentTypeError(f"must be < 2**32, got {value}")
    return value


def real(
    low: float, high: float = math.inf, *, low_open: bool = False, high_open: bool = False
) -> Callable[[str], float]:
    """A finite number in the interval given."""
    upper = "∞)" if math.isinf(high) else f"{high:g}{')' if high_open else ']'}"
    interval = f"{'(' if low_open else '['}{low:g}, {upper}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        ok = math.isfinite(value)
        ok = ok and (value > low if low_open else value >= low)
        ok = ok and (value < high if high_open else value <= high)
        if not ok:
            raise argparse.ArgumentTypeError(f"must be a finite number in {interval}, got {text}")
        return value

    return parse


def int_list(minimum: int) -> Callable[[str], tuple[int, ...]]:
    """'2,8,32' or '2**20,2**23' → integers, each ≥ ``minimum``; at least one."""

    def parse(text: str) -> tuple[int, ...]:
        out = []
        for part in text.split(","):
            part = part.strip()
            if not part:
                continue
            try:
                if "**" in part:
                    base, exp = part.split("**")
                    value = int(base) ** int(exp)
                else:
                    value = int(part)
            except ValueError:
                raise argparse.ArgumentTypeError(
                    f"expected comma-separated integers (e.g. 2,8 or 2**20), got {part!r}"
                ) from None
            if value < minimum:
                raise argparse.ArgumentTypeError(f"every value must be ≥ {minimum}, got {value}")
            out.append(value)
        if not out:
            raise argparse.ArgumentTypeError("give at least one value")
        return tuple(out)

    return parse


def names(choices: Sequence[str], *, allow_none: bool = True) -> Callable[[str], tuple[str, ...]]:
    """A comma list of names from ``choices`` ('none' or '' for none, when allowed)."""

    def parse(text: str) -> tuple[str, ...]:
        if text.strip() in ("", "none"):
            if allow_none:
                return ()
            raise argparse.ArgumentTypeError(f"give at least one of {', '.join(choices)}")
        out = tuple(p.strip() for p in text.split(",") if p.strip())
        bad = [n for n in out if n not in choices]
        if bad:
            raise argparse.ArgumentTypeError(
                f"unknown {', '.join(map(repr, bad))}; choose from {', '.join(choices)}"
            )
        return out

    return parse


def backend(text: str) -> str:
    """'auto' or a backend name."""
    allowed = ("auto", *BACKEND_NAMES)
    if text not in allowed:
        raise argparse.ArgumentTypeError(f"unknown backend {text!r}; choose from {allowed}")
    return text


def device(text: str) -> str:
    """A device that exists here: cpu, cuda or cuda:N (N below the visible count), mps."""
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a device; use cpu, cuda or cuda:N"
        ) from None
    if dev.type == "cpu":
        return text
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise argparse.ArgumentTypeError(f"{text}: no CUDA device is visible on this machine")
        if dev.index is not None and dev.index >= count:
            raise argparse.ArgumentTypeError(
                f"{text} does not exist: {count} CUDA device(s) visible (cuda:0 to cuda:{count - 1})"
            )
        return text
    if dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise argparse.ArgumentTypeError(f"{text}: MPS is not available on this machine")
        return text
    raise argparse.ArgumentTypeError(f"{text!r}: unsupported device type; use cpu or cuda[:N]")


def _writable_dir_for(path: Path, flag_what: str) -> None:
    """``path`` could be created: its nearest existing ancestor is a writable folder."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            if not candidate.is_dir():
                raise argparse.ArgumentTypeError(f"{path}: {candidate} is not a folder")
            if not os.access(candidate, os.W_OK | os.X_OK):
                what = "it" if candidate == path else f"{candidate}"
                raise argparse.ArgumentTypeError(
                    f"{path}: {what} is not writable ({flag_what} needs to write there)"
                )
            return
    raise argparse.ArgumentTypeError(f"{path}: no existing folder above it")  # pragma: no cover


def out_dir(text: str) -> Path:
    """An output folder that exists or can be created; nothing is created now."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a folder, got an empty string")
    path = Path(text)
    _writable_dir_for(path, "the run")
    return path


def out_file(text: str) -> Path:
    """A file that can be written (its folder exists and is writable, it is not a folder)."""
    path = Path(text)
    if not text.strip() or path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a folder, not a file name")
    if not path.parent.is_dir():
        raise argparse.ArgumentTypeError(f"{path}: folder {path.parent} does not exist")
    _writable_dir_for(path.parent, "the command")
    return path


def baselines_file(text: str) -> Path:
    """A baselines.json written by ``mtl-fast train --single-task``: checked to exist and to
    hold per-seed test metrics."""
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{path}: no such file")
    try:
        loaded = json.loads(path.read_text())
        seeds = loaded["seeds"]
        for key, value in seeds.items():
            int(key)
            if not isinstance(value["test"], dict):
                raise TypeError
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError):
        raise argparse.ArgumentTypeError(
            f"{path} is not a baselines.json written by `mtl-fast train --single-task` "
            '(expected {"seeds": {"<seed>": {"test": {...}}}})'
        ) from None
    return path


def tag(text: str) -> str:
    """A suffix of file names: letters, digits, '.', '_' and '-'."""
    if not re.fullmatch(r"[A-Za-z0-9._-]*", text):
        raise argparse.ArgumentTypeError(
            f"{text!r}: use letters, digits, '.', '_' and '-' only (it becomes part of file names)"
        )
    return text
