"""Result rows and their writers: JSON (everything), Markdown (tables), PNG (bandwidth vs P)."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Row:
    """One measured figure: one (section, op, provider, shape, dtype, metric)."""

    section: str  # "op" or "strategy"
    op: str
    provider: str
    shape: dict[str, Any]
    dtype: str
    metric: str
    unit: str
    value: float
    q20: float | None = None
    q80: float | None = None
    note: str = ""


@dataclass
class Report:
    """A whole run: metadata (device, versions, commit, date, bandwidths), rows and skips."""

    meta: dict[str, Any]
    rows: list[Row] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    targets: list[dict[str, Any]] = field(default_factory=list)

    def skip(
        self, section: str, op: str, provider: str, shape: dict[str, Any], reason: str
    ) -> None:
        self.skipped.append(
            {"section": section, "op": op, "provider": provider, "shape": shape, "reason": reason}
        )

    def value(
        self, section: str, op: str, provider: str, metric: str, **shape: Any
    ) -> float | None:
        """The value of the first row matching (shape entries given must match), or None."""
        for r in self.rows:
            if (r.section, r.op, r.provider, r.metric) == (section, op, provider, metric) and all(
                r.shape.get(k) == v for k, v in shape.items()
            ):
                return r.value
        return None

    def to_json(self) -> dict[str, Any]:
        common = {k: self.meta.get(k) for k in ("device", "date", "mtl_fast", "git_commit")}
        return {
            "meta": self.meta,
            "targets": self.targets,
            "rows": [{**asdict(r), **common} for r in self.rows],
            "skipped": self.skipped,
        }


def scrub(text: str) -> str:
    """Replace this machine's source-tree and home paths (they appear in some backends'
    reasons) so result files can be shared: ``<repo>`` and ``~``."""
    repo = str(Path(__file__).resolve().parents[3])
    home = str(Path.home())
    text = text.replace(repo, "<repo>")
    return text.replace(home, "~") if len(home) > 1 else text


def write_json(report: Report, path: Path) -> None:
    path.write_text(scrub(json.dumps(report.to_json(), indent=1, default=_jsonable)) + "\n")


def _jsonable(x: Any) -> Any:
    return str(x)


def _fmt(v: float | None, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if v == 0:
        return "0"
    mag = abs(v)
    if mag >= 1000:
        return f"{v:,.0f}"
    if mag >= 1:
        return f"{v:.{digits}g}" if mag < 100 else f"{v:.0f}"
    return f"{v:.{digits}g}"


def _shape_str(shape: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in shape.items())


_OP_COLUMNS = (
    ("time_ms", "median ms"),
    ("cpu_time_ms", "thread-CPU ms"),
    ("bandwidth_GBps", "GB/s"),
    ("bandwidth_vs_copy", "of copy"),
    ("bandwidth_vs_spec", "of spec"),
    ("problems_per_s", "problems/s"),
    ("speedup_vs_baseline", "× vs baseline"),
)
_STRATEGY_PHASES = ("forward", "backward", "combination", "optimizer", "total")


def markdown(report: Report) -> str:
    """Human-readable tables: a header, the op table, the strategy table, targets, skips."""
    m = report.meta
    lines = [
        f"# mtl_fast benchmarks — {m.get('device')}",
        "",
        f"- date: {m.get('date')}; mtl_fast {m.get('mtl_fast')} (commit {m.get('git_commit')}); "
        f"torch {m.get('torch')}; triton {m.get('triton')}; torchjd {m.get('torchjd')}",
    ]
    if m.get("copy_bandwidth_GBps") is not None:
        lines.append(f"- measured copy bandwidth: {_fmt(m['copy_bandwidth_GBps'])} GB/s")
    if m.get("spec_bandwidth_GBps") is not None:
        lines.append(f"- spec-sheet bandwidth: {_fmt(m['spec_bandwidth_GBps'])} GB/s")
    if m.get("fma_rate_GFMAps") is not None:
        lines.append(
            f"- measured fp32 FMA rate, one thread ({m.get('cpu_isa')}): "
            f"{_fmt(m['fma_rate_GFMAps'])} G/s"
        )
    if m.get("load_average_1m") is not None:
        lines.append(
            f"- CPU load average when started: {m['load_average_1m']:.2f} on {m.get('cpu_count')} "
            "cores (other processes make CPU timings noisier)"
        )
    if m.get("malloc") is not None:
        lines.append(f"- malloc: {m['malloc']}")
    lines.append(f"- command: `{m.get('command')}`")
    if m.get("warning"):
        lines.append(f"- **warning**: {m['warning']}")
    lines.append("")

    op_rows = [r for r in report.rows if r.section == "op"]
    if op_rows:
        lines += ["## Ops", ""]
        keys: dict[tuple[str, str, str, str], dict[str, Row]] = defaultdict(dict)
        for r in op_rows:
            keys[(r.op, _shape_str(r.shape), r.dtype, r.provider)][r.metric] = r
        present = [(k, h) for k, h in _OP_COLUMNS if any(k in d for d in keys.values())]
        lines.append(
            "| op | shape | dtype | provider | " + " | ".join(h for _, h in present) + " |"
        )
        lines.append("|" + "---|" * (4 + len(present)))
        for (op, shape, dtype, provider), d in keys.items():
            cells = [_fmt(d[k].value) if k in d else "" for k, _ in present]
            lines.append(f"| {op} | {shape} | {dtype} | {provider} | " + " | ".join(cells) + " |")
        lines.append("")

    lines += upgrad_table(report)

    st_rows = [r for r in report.rows if r.section == "strategy"]
    if st_rows:
        lines += [
            "## Whole training step, median ms per phase (providers interleaved)",
            "",
            "| trunk | T | provider | "
            + " | ".join(_STRATEGY_PHASES)
            + " | × sum | × floor | × floor, paired (q20–q80) | × TorchJD best | peak MB"
            + " | faults | sys ms |",
            "|" + "---|" * (10 + len(_STRATEGY_PHASES)),
        ]
        groups: dict[tuple[str, Any, str], dict[str, Row]] = defaultdict(dict)
        for r in st_rows:
            groups[(str(r.shape.get("trunk")), r.shape.get("T"), r.provider)][r.metric] = r

        def cell(d: dict[str, Row], key: str, suffix: str = "") -> str:
            return _fmt(d[key].value) + suffix if key in d else ""

        def spread(d: dict[str, Row], key: str) -> str:
            r = d.get(key)
            if r is None:
                return ""
            return f"{_fmt(r.value)}× ({_fmt(r.q20)}–{_fmt(r.q80)})"

        for (trunk, T, strat), d in groups.items():
            cells = [cell(d, f"{p}_ms") for p in _STRATEGY_PHASES]
            ratios = [
                cell(d, "overhead_vs_sum", "×"),
                cell(d, "vs_floor", "×"),
                spread(d, "vs_floor_paired"),
                cell(d, "vs_torchjd_best", "×"),
            ]
            extra = [cell(d, k) for k in ("peak_memory_MB", "page_faults", "sys_ms")]
            lines.append(
                f"| {trunk} | {T} | {strat} | " + " | ".join(cells + ratios + extra) + " |"
            )
        notes = sorted({r.note for r in st_rows if r.note and r.metric == "total_ms"})
        first = st_rows[0].shape
        lines += [
            "",
            f"- batch {first.get('batch')}, image {first.get('image')} (resnet18, vit-s); "
            "floor: one forward, T backward passes accumulating into .grad, one Adam step; "
            "TorchJD best: the fastest of its full pipelines (autojac MGDA, autojac UPGrad, "
            "autogram UPGrad) in the same run",
            "- phases: forward; backward (every backward pass); combination (Gram + solve + "
            "combination, or the peer's aggregation); optimizer (every update; for mgda-fused "
            "the fused combine + Adam)",
            "- peak MB: growth of the peak memory while the provider is built and takes two "
            "steps, alone (CPU: resident-set high-water mark; GPU: max_memory_allocated)",
            "- × floor, paired: the median over rounds of each step over the floor's step of the "
            "same round; faults, sys ms: the process's minor page faults and system CPU time per "
            "step, medians (CPU only: gradient memory the C library returned to the kernel and "
            "faults in again; see --malloc)",
        ]
        lines += [f"- {n}" for n in notes]
        for r in st_rows:
            if r.metric == "combination_share_of_fwd_bwd":
                lines.append(
                    f"- {r.shape.get('trunk')} T={r.shape.get('T')}: {r.provider} combination / "
                    f"(forward + backward) = {_fmt(r.value)}"
                )
        lines.append("")

    if report.targets:
        lines += ["## Targets", "", "| target | measured | threshold | met |", "|---|---|---|---|"]
        for t in report.targets:
            met = {True: "yes", False: "no", None: "not measured"}[t.get("met")]
            lines.append(
                f"| {t['name']} | {_fmt(t.get('measured'))} | {t.get('threshold')} | {met} |"
            )
        lines.append("")
    if report.skipped:
        lines += ["## Skipped", ""]
        seen = set()
        for s in report.skipped:
            key = (s["op"], s["provider"], s["reason"])
            if key in seen:
                continue
            seen.add(key)
            lines.append(f"- {s['op']} / {s['provider']}: {s['reason']}")
        lines.append("")
    return "\n".join(lines)


UPGRAD_BASELINE = "torchjd QuadprogProjector"


def upgrad_table(report: Report) -> list[str]:
    """The UPGrad weights rows pivoted: one line per (family, T, B), the median ms of TorchJD's
    QuadprogProjector and of every other provider with its speed-up, and the largest per-row
    relative error against TorchJD. Empty when no such row was measured."""
    rows = [r for r in report.rows if r.section == "op" and r.op == "upgrad_weights"]
    if not rows:
        return []
    cells: dict[tuple[str, int, int], dict[str, dict[str, float]]] = defaultdict(
        lambda: defaultdict(dict)
    )
    providers: list[str] = []
    for r in rows:
        key = (str(r.shape.get("family")), int(r.shape.get("T", 0)), int(r.shape.get("B", 0)))
        cells[key][r.provider][r.metric] = r.value
        if r.provider != UPGRAD_BASELINE and r.provider not in providers:
            providers.append(r.provider)
    out = [
        "## UPGrad weights vs TorchJD's QuadprogProjector",
        "",
        "Median ms per call (B Grams of T tasks; TorchJD takes one Gram, so a batch is a loop), "
        "thread CPU time on the CPU with the providers interleaved; × = TorchJD's time / this "
        "time; error = largest per-row relative deviation from TorchJD's weights on the same "
        "Grams in float64.",
        "",
        "| family | T | B | TorchJD ms | "
        + " | ".join(f"{p} ms (×)" for p in providers)
        + " | max error |",
        "|" + "---|" * (5 + len(providers)),
    ]
    families = list(dict.fromkeys(k[0] for k in cells))
    for key in sorted(cells, key=lambda k: (families.index(k[0]), k[1], k[2])):
        d = cells[key]
        base = d.get(UPGRAD_BASELINE, {}).get("time_ms")
        line = [key[0], str(key[1]), str(key[2]), _fmt(base)]
        errs = []
        for p in providers:
            t = d.get(p, {}).get("time_ms")
            s = d.get(p, {}).get("speedup_vs_baseline")
            line.append("" if t is None else f"{_fmt(t)} ({_fmt(s)}×)" if s else _fmt(t))
            if "max_rel_error_vs_torchjd" in d.get(p, {}):
                errs.append(d[p]["max_rel_error_vs_torchjd"])
        line.append(_fmt(max(errs), 2) if errs else "")
        out.append("| " + " | ".join(line) + " |")
    out.append("")
    return out


def write_markdown(report: Report, path: Path) -> None:
    path.write_text(scrub(markdown(report)))


def write_plot(report: Report, path: Path) -> bool:
    """Achieved bandwidth against P, one panel per bandwidth-bound op, one line per
    (provider, T); the measured copy bandwidth (and spec sheet) as horizontal lines.
    Returns False (and writes nothing) when matplotlib is missing or nothing fits a plot."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    series: dict[str, dict[tuple[str, Any, str], list[tuple[int, float]]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for r in report.rows:
        if (
            r.section == "op"
            and r.metric == "bandwidth_GBps"
            and "P" in r.shape
            and "trunk" not in r.shape
        ):
            series[r.op][(r.provider, r.shape.get("T"), r.dtype)].append((r.shape["P"], r.value))
    ops = [op for op, s in series.items() if any(len(v) >= 2 for v in s.values())]
    if not ops:
        return _write_step_plot(report, path, plt)
    fig, axes = plt.subplots(1, len(ops), figsize=(4.2 * len(ops), 3.8), squeeze=False)
    copy_bw = report.meta.get("copy_bandwidth_GBps")
    spec_bw = report.meta.get("spec_bandwidth_GBps")
    for ax, op in zip(axes[0], ops):
        for (provider, T, dtype), pts in sorted(series[op].items(), key=lambda kv: str(kv[0])):
            pts.sort()
            style = "--" if provider not in ("reference", "triton", "cuda") else "-"
            ax.plot(
                [p for p, _ in pts],
                [v for _, v in pts],
                style,
                marker="o",
                ms=3,
                label=f"{provider} T={T}" + ("" if dtype == "float32" else f" {dtype}"),
            )
        if copy_bw:
            ax.axhline(copy_bw, color="k", lw=0.8, ls=":", label="measured copy")
        if spec_bw:
            ax.axhline(spec_bw, color="r", lw=0.8, ls=":", label="spec sheet")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("P (shared parameters)")
        ax.set_ylabel("achieved GB/s")
        ax.set_title(op)
        ax.legend(fontsize=6)
    fig.suptitle(f"{report.meta.get('device')} — {report.meta.get('date')}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _write_step_plot(report: Report, path: Path, plt: Any) -> bool:
    """The whole-step figure of a strategy run: per (trunk, T), each provider's median step time
    (log scale), the floor as a dashed line. False when the run timed no strategy."""
    groups: dict[tuple[str, Any], dict[str, float]] = defaultdict(dict)
    for r in report.rows:
        if r.section == "strategy" and r.metric == "total_ms":
            groups[(str(r.shape.get("trunk")), r.shape.get("T"))][r.provider] = r.value
    if not groups:
        return False
    keys = list(groups)
    fig, axes = plt.subplots(1, len(keys), figsize=(4.6 * len(keys), 4.2), squeeze=False)
    for ax, key in zip(axes[0], keys):
        d = groups[key]
        names = list(d)
        colors = [
            "tab:blue"
            if n.startswith("mgda")
            else "tab:gray"
            if n in ("sum", "floor")
            else "tab:red"
            for n in names
        ]
        ax.barh(names, [d[n] for n in names], color=colors)
        if "floor" in d:
            ax.axvline(d["floor"], color="k", lw=0.8, ls="--", label="floor")
            ax.legend(fontsize=7)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(plt.NullFormatter())
        ax.invert_yaxis()
        ax.set_xlabel("median ms per training step")
        ax.set_title(f"{key[0]}, T = {key[1]}", fontsize=9)
        ax.tick_params(axis="y", labelsize=7)
    fig.suptitle(f"{report.meta.get('device')} — {report.meta.get('date')}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
