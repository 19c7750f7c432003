"""``mtl-fast verify``: reference-vs-backend verification table; exit 1 on any failure."""

from __future__ import annotations

import argparse

NAME = "verify"
HELP = "compare every available backend against the float64 reference (table, non-zero exit on failure)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backend",
        action="append",
        choices=["reference", "triton", "cuda", "cpu"],
        help="backend to verify (repeatable; default: all available)",
    )
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if visible)")
    parser.add_argument(
        "--quick", action="store_true", help="a smaller matrix of shapes and dtypes"
    )


def run(args: argparse.Namespace) -> int:
    from mtl_fast.tools import verify

    checks, skipped = verify.run(args.backend, args.device, quick=args.quick)
    print(verify.format_table(checks))
    for line in skipped:
        print(f"skipped  {line}")
    failed = [c for c in checks if not c.passed]
    print(f"\n{len(checks) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed or not checks else 0
