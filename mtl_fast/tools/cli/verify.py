"""``mtl-fast verify``: reference-vs-backend verification table; exit 1 on any failure."""

from __future__ import annotations

import argparse
import json
import math

from mtl_fast.tools.cli._types import device, out_file

NAME = "verify"
HELP = "compare every available backend against the float64 reference (table, non-zero exit on failure)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backend",
        action="append",
        choices=["reference", "triton", "cuda", "cpu"],
        help="backend to verify (repeatable; default: all available)",
    )
    parser.add_argument(
        "--device", type=device, default=None, help="cpu or cuda (default: cuda if visible)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="a smaller matrix of shapes and dtypes"
    )
    parser.add_argument(
        "--op",
        action="append",
        choices=[
            "gram",
            "gram_list",
            "combine",
            "min_norm",
            "multi_adam",
            "combine_adam",
            "sign_conflict",
        ],
        help="op to verify (repeatable; default: every op)",
    )
    parser.add_argument(
        "--json", type=out_file, help="also write every check and skip to this JSON file"
    )


def run(args: argparse.Namespace) -> int:
    from mtl_fast.tools import verify

    checks, skipped = verify.run(args.backend, args.device, quick=args.quick, ops=args.op)
    print(verify.format_table(checks))
    for line in skipped:
        print(f"skipped  {line}")
    failed = [c for c in checks if not c.passed]
    print(f"\n{len(checks) - len(failed)} passed, {len(failed)} failed")
    if args.json is not None:
        rows = [
            {
                **vars(c),
                "error": c.error if math.isfinite(c.error) else str(c.error),
                "passed": c.passed,
            }
            for c in checks
        ]
        args.json.write_text(json.dumps({"checks": rows, "skipped": skipped}, indent=1) + "\n")
    return 1 if failed or not checks else 0
