"""The ``mtl-fast`` command line. Each sub-command is a module of this package that defines
``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``; they are discovered, so
adding a command is adding a file.

A command that needs an optional extra (demo and train: ``[train]``) and does not find it prints
which extra to install, in one line, and exits with status 2. So does every user mistake: a bad
flag value is refused at parse time by its ``type=`` function (``_types.py``) and a bad
combination of flags by :class:`~mtl_fast.tools.cli._types.UsageError`, each in one line naming
the flag, never with a traceback."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence
from types import ModuleType

from mtl_fast.tools.cli._types import OneLineParser, UsageError, report


def _commands() -> list[ModuleType]:
    mods = []
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_"):
            continue
        mod = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(mod, "NAME") and hasattr(mod, "run"):
            mods.append(mod)
    order = ["demo", "train", "bench", "verify", "info"]
    return sorted(mods, key=lambda m: (order.index(m.NAME) if m.NAME in order else 99, m.NAME))


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="mtl-fast",
        description="Fused kernels for multi-task-learning gradient combination.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for mod in _commands():
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``mtl-fast`` with ``argv`` (default ``sys.argv[1:]``) and return the exit status:
    0, 1 for a failed check (verify), 2 for a usage error (already reported in one line)."""
    from mtl_fast._core.extras import MissingExtraError

    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help (0) or a refused flag value (2), already printed
        return exc.code if isinstance(exc.code, int) else 2
    prog = f"mtl-fast {args.command}"
    try:
        code: int = args._run(args)
    except MissingExtraError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    except UsageError as exc:
        return report(prog, exc)
    return code


if __name__ == "__main__":
    sys.exit(main())
