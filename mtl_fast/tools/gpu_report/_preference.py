"""``auto``'s per-op order between Triton and CUDA, from a committed GPU bench JSON.

``python -m mtl_fast.tools.gpu_report --preference benchmarks/results/gpu/<file>-bench.json``
prints, per op, the faster of the two at the headline shape (fp32, median time) and the
``AUTO_PREFERENCE`` table to paste into ``mtl_fast/_core/dispatch.py``. A backend wins only
by more than :data:`TIE`; otherwise (or when one of them was not measured) the op keeps its
current order. ``gram_list`` follows ``gram``; ``sign_conflict`` has no Triton kernel.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mtl_fast._core.dispatch import AUTO_PREFERENCE
from mtl_fast.tools.gpu_report._summary import HEADLINE_SHAPES, pick_shape

CANDIDATES = ("triton", "cuda")
TIE = 0.03  # a backend must be more than 3 % faster to move ahead
FOLLOWS = {"gram_list": "gram"}


def _times(rows: list[dict[str, Any]], op: str, shape: dict[str, Any]) -> dict[str, float]:
    return {
        r["provider"]: float(r["value"])
        for r in rows
        if r.get("section") == "op"
        and r.get("op") == op
        and r.get("dtype") == "float32"
        and r.get("metric") == "time_ms"
        and r.get("shape") == shape
        and r.get("provider") in CANDIDATES
    }


def suggest(bench: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per op of ``AUTO_PREFERENCE``: the suggested order, the times it rests on and why."""
    rows = bench.get("rows", [])
    out: dict[str, dict[str, Any]] = {}
    for op, current in AUTO_PREFERENCE.items():
        source = FOLLOWS.get(op, op)
        entry: dict[str, Any] = {"order": list(current), "basis": ""}
        want = HEADLINE_SHAPES.get(source)
        shape = pick_shape(rows, source, want) if want is not None else None
        times = _times(rows, source, shape) if shape is not None else {}
        if len(times) < 2:
            have = ", ".join(sorted(times)) or "neither"
            entry["basis"] = f"kept: {source} measured for {have} of triton/cuda"
        else:
            fast, slow = sorted(times, key=times.__getitem__)
            gain = times[slow] / times[fast] - 1
            entry["shape"] = shape
            entry["times_ms"] = times
            if gain > TIE:
                entry["order"] = [fast, slow] + [b for b in current if b not in (fast, slow)]
                entry["basis"] = f"{fast} {gain:.0%} faster"
            else:
                entry["basis"] = f"kept: within {TIE:.0%} ({fast} {gain:.1%} faster)"
            if source != op:
                entry["basis"] += f" (as {source})"
        out[op] = entry
    return out


def as_python(pref: dict[str, dict[str, Any]]) -> str:
    """The ``AUTO_PREFERENCE`` literal for dispatch.py, one comment per op."""
    lines = ["AUTO_PREFERENCE: dict[str, tuple[str, ...]] = {"]
    for op, d in pref.items():
        order = ", ".join(f'"{b}"' for b in d["order"])
        comment = d["basis"]
        if "times_ms" in d:
            shape = " ".join(f"{k}={v}" for k, v in d["shape"].items())
            ms = ", ".join(f"{b} {t:.4g} ms" for b, t in d["times_ms"].items())
            comment += f"; {ms} at {shape} fp32"
        lines.append(f'    "{op}": ({order}{"," if len(d["order"]) == 1 else ""}),  # {comment}')
    lines.append("}")
    return "\n".join(lines)


def main(path: Path) -> int:
    """Print the suggestion for the bench JSON at ``path`` (or for the bench file named by a
    report JSON next to it)."""
    bench = json.loads(path.read_text())
    if "bench_file" in bench and "rows" not in bench:  # a *-report.json: read its bench file
        path = path.with_name(bench["bench_file"])
        bench = json.loads(path.read_text())
    meta = bench.get("meta", {})
    print(
        f"# from {path.name}: {meta.get('device')}, {meta.get('date')}, "
        f"commit {meta.get('git_commit')}"
    )
    print(as_python(suggest(bench)))
    return 0
