"""Reading the stages' outputs (JUnit XML, the verify JSON, the bench JSON) and writing the
report: ``*-report.json`` (everything) and ``*-report.md``, the one-screen summary.

Pure Python (no torch), so the driver can always write a report.
"""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

SCHEMA = "mtl_fast.gpu_report/1"
MAX_FAILURES = 20  # failures listed per test stage in the JSON (the summary shows fewer)


def _first_line(text: str | None, width: int = 160) -> str:
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    return lines[0][:width] if lines else ""


def _test_file(case: ET.Element) -> str:
    file = case.get("file")
    if file:
        return file
    classname = case.get("classname", "")
    parts = classname.split(".")
    # tests.test_triton or tests.test_triton.TestClass -> tests/test_triton.py
    while parts and not parts[-1].startswith("test_"):
        parts.pop()
    return "/".join(parts) + ".py" if parts else classname or "?"


def parse_junit(path: Path) -> dict[str, Any]:
    """Counts per file, the failures with their first lines, and the skip reasons."""
    root = ET.parse(path).getroot()
    totals: Counter[str] = Counter()
    files: dict[str, Counter[str]] = defaultdict(Counter)
    failures: list[dict[str, str]] = []
    skips: Counter[str] = Counter()
    for case in root.iter("testcase"):
        outcome = "passed"
        message = ""
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "failed" if child.tag == "failure" else "errors"
                message = child.get("message") or child.text or ""
                break
            if child.tag == "skipped":
                outcome = "skipped"
                message = child.get("message") or ""
        file = _test_file(case)
        totals[outcome] += 1
        files[file][outcome] += 1
        if outcome in ("failed", "errors"):
            failures.append(
                {"test": f"{file}::{case.get('name')}", "message": _first_line(message)}
            )
        elif outcome == "skipped":
            skips[_first_line(message, 200) or "(no reason)"] += 1
    keys = ("passed", "failed", "errors", "skipped")
    return {
        "counts": {k: totals[k] for k in keys} | {"total": sum(totals.values())},
        "files": {f: {k: c[k] for k in keys} for f, c in sorted(files.items())},
        "failures": failures[:MAX_FAILURES],
        "failures_not_listed": max(0, len(failures) - MAX_FAILURES),
        "skip_reasons": dict(skips.most_common(10)),
    }


def summarize_verify(path: Path) -> dict[str, Any]:
    """Checks per backend (passed / failed), the failed rows, the skipped backends."""
    data = json.loads(path.read_text())
    per: dict[str, Counter[str]] = defaultdict(Counter)
    failed = []
    for c in data.get("checks", []):
        per[c["backend"]]["passed" if c["passed"] else "failed"] += 1
        if not c["passed"]:
            failed.append(c)
    return {
        "backends": {b: {"passed": c["passed"], "failed": c["failed"]} for b, c in per.items()},
        "failed": failed[:50],
        "skipped": data.get("skipped", []),
        "checks": data.get("checks", []),
    }


# ---- the bench file: the figures the summary shows --------------------------------------

HEADLINE_SHAPES: dict[str, dict[str, int]] = {
    "gram": {"T": 8, "P": 2**26},
    "combine": {"T": 8, "P": 2**26},
    "min_norm": {"B": 1024, "T": 8},
    "multi_adam": {"T": 8, "P": 2**24},
    "combine_adam": {"T": 8, "P": 2**24},
}


def pick_shape(rows: list[dict[str, Any]], op: str, want: dict[str, int]) -> dict[str, Any] | None:
    """``want`` if the rows have it for ``op`` in fp32, else the largest fp32 shape measured."""
    shapes: list[dict[str, Any]] = [
        r["shape"]
        for r in rows
        if r.get("section") == "op"
        and r.get("op") == op
        and r.get("dtype") == "float32"
        and r.get("metric") == "time_ms"
    ]
    if not shapes:
        return None
    for s in shapes:
        if all(s.get(k) == v for k, v in want.items()):
            return dict(s)

    def size(shape: dict[str, Any]) -> tuple[int, int, int]:
        return (shape.get("P", 0), shape.get("B", 0), shape.get("T", 0))

    best = max(shapes, key=size)
    return dict(best)


def bench_headline(bench: dict[str, Any]) -> dict[str, Any]:
    """Per op at its headline shape (fp32): each provider's median ms and GB/s; the targets;
    the strategy overheads over the summed-loss step."""
    rows = bench.get("rows", [])
    meta = bench.get("meta", {})
    ops: dict[str, Any] = {}
    for op, want in HEADLINE_SHAPES.items():
        shape = pick_shape(rows, op, want)
        if shape is None:
            continue
        providers: dict[str, dict[str, float]] = defaultdict(dict)
        for r in rows:
            if (
                r.get("section") == "op"
                and r.get("op") == op
                and r.get("dtype") == "float32"
                and r.get("shape") == shape
                and r.get("metric") in ("time_ms", "bandwidth_GBps", "speedup_vs_baseline")
            ):
                providers[r["provider"]][r["metric"]] = r["value"]
        ops[op] = {"shape": shape, "providers": dict(providers)}
    overheads: dict[str, dict[str, float]] = defaultdict(dict)
    for r in rows:
        if r.get("section") == "strategy" and r.get("metric") == "overhead_vs_sum":
            key = f"{r['shape'].get('trunk')} T={r['shape'].get('T')}"
            overheads[key][r["provider"]] = r["value"]
    return {
        "copy_bandwidth_GBps": meta.get("copy_bandwidth_GBps"),
        "spec_bandwidth_GBps": meta.get("spec_bandwidth_GBps"),
        "ops": ops,
        "strategy_overhead_vs_sum": dict(overheads),
        "targets": bench.get("targets", []),
        "stopped_early": meta.get("stopped_early", []),
    }


# ---- writing -----------------------------------------------------------------------------


def finite(obj: Any) -> Any:
    """``obj`` with NaN/Inf floats as strings, so the JSON is strict."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {str(k): finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def _fmt(v: Any, digits: int = 3) -> str:
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return "–" if v is None else str(v)
    if v == 0:
        return "0"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.{digits}g}"


def _shape(shape: dict[str, Any]) -> str:
    def num(v: Any) -> str:
        if isinstance(v, int) and v >= 2**10 and v & (v - 1) == 0:
            return f"2^{v.bit_length() - 1}"
        return str(v)

    return " ".join(f"{k}={num(v)}" for k, v in shape.items())


def _stage_detail(stage: dict[str, Any], report: dict[str, Any]) -> str:
    name = stage["name"]
    if stage.get("reason"):
        return str(stage["reason"])
    if name in report.get("tests", {}):
        c = report["tests"][name].get("counts", {})
        return (
            f"{c.get('passed', 0)} passed, {c.get('failed', 0)} failed, "
            f"{c.get('errors', 0)} errors, {c.get('skipped', 0)} skipped"
        )
    return str(stage.get("note", ""))


def render_markdown(report: dict[str, Any]) -> str:
    """The one-screen summary: header, stages, failures, headline figures, files."""
    env = report.get("env", {})
    devices = env.get("devices") or []
    device = devices[0]["name"] if devices else report.get("device", "?")
    smi = env.get("nvidia_smi")
    driver = smi[0].get("driver_version") if isinstance(smi, list) and smi else None
    san = report.get("sanitizer", {})
    kind = "dry run on the CPU" if report.get("dry_run") else "GPU run"
    lines = [
        f"# GPU report — {device} — {str(report.get('started', ''))[:10]} ({kind})",
        "",
        f"commit {env.get('git_commit', '?')} (sources {env.get('source_digest', '?')}) · "
        f"driver {driver or '–'} · CUDA {env.get('torch_cuda') or '–'} · "
        f"torch {env.get('torch', '?')} · triton {env.get('triton') or '–'} · "
        f"Python {env.get('python', '?')} · runtime {env.get('runtime', '?')} · "
        f"compute-sanitizer: {san.get('probe', {}).get('message') or 'not probed'}",
        f"wall {report.get('wall_s', 0):.0f} s, stage budget {report.get('budget_s', 0):.0f} s",
        "",
        "| stage | status | s | slice s | detail |",
        "|---|---|---|---|---|",
    ]
    for st in report.get("stages", []):
        detail = _stage_detail(st, report).replace("|", "/")
        lines.append(
            f"| {st['name']} | {st['status']} | {st.get('seconds', 0):.0f} | "
            f"{_fmt(st.get('timeout_s'))} | {detail[:150]} |"
        )
    failures = [
        (name, f) for name, t in report.get("tests", {}).items() for f in t.get("failures", [])
    ]
    verify = report.get("verify", {})
    failures += [
        ("verify", {"test": f"{c['backend']} {c['op']} {c['case']} {c['dtype']}", "message": ""})
        for c in verify.get("failed", [])
    ]
    for tool, res in san.get("tools", {}).items():
        if res.get("status") == "failed":
            failures.append(("sanitizer", {"test": tool, "message": res.get("first_error", "")}))
    if failures:
        lines += ["", f"Failures ({len(failures)}, first 8):"]
        for stage, f in failures[:8]:
            msg = f" — {f['message']}" if f.get("message") else ""
            lines.append(f"- {stage}: {f['test']}{msg}"[:200])
    if verify.get("backends"):
        per = ", ".join(
            f"{b} {c.get('passed', 0)}/{c.get('passed', 0) + c.get('failed', 0)}"
            for b, c in verify["backends"].items()
        )
        lines += ["", f"verify (passed/checks): {per}"]
    if san.get("tools"):
        parts = [
            f"{tool} {res.get('status')} ({res.get('errors', '?')} errors)"
            for tool, res in san["tools"].items()
        ]
        lines += ["", "compute-sanitizer: " + ", ".join(parts)]
    head = report.get("bench", {})
    if head.get("ops"):
        bw = head.get("copy_bandwidth_GBps")
        lines += ["", f"Headline (fp32, median ms [GB/s]); measured copy {_fmt(bw)} GB/s:"]
        for op, d in head["ops"].items():
            cells = []
            for prov, m in d["providers"].items():
                cell = f"{prov} {_fmt(m.get('time_ms'))}"
                if m.get("bandwidth_GBps") is not None:
                    cell += f" [{_fmt(m['bandwidth_GBps'])}]"
                cells.append(cell)
            lines.append(f"- {op} {_shape(d['shape'])}: " + ", ".join(cells))
        for key, d in head.get("strategy_overhead_vs_sum", {}).items():
            lines.append(
                f"- step {key}, × summed-loss step: "
                + ", ".join(f"{s} {_fmt(v)}" for s, v in d.items())
            )
        for t in head.get("targets", []):
            if t.get("measured") is not None or (
                t.get("applies_to") == "cuda" and not report.get("dry_run")
            ):
                met = {True: "met", False: "NOT met", None: "not measured"}[t.get("met")]
                lines.append(
                    f"- target: {t['name']}: {_fmt(t.get('measured'))} ({t['threshold']}, {met})"
                )
    pref = report.get("auto_preference", {})
    if pref:
        lines += [
            "",
            "auto preference from this run: "
            + ", ".join(f"{op} {'>'.join(d['order'])}" for op, d in pref.items()),
        ]
    lines += ["", "files: " + ", ".join(report.get("files", []))]
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], json_path: Path, md_path: Path) -> str:
    """Write both report files; returns the summary."""
    json_path.write_text(json.dumps(finite(report), indent=1, default=str) + "\n")
    text = render_markdown(report)
    md_path.write_text(text)
    return text
