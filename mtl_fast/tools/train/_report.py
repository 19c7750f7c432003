"""What a run writes: its JSON record, PNG plots, and comparison tables across runs."""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def write_json(record: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1, default=str) + "\n")
    return path


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(record: dict[str, Any], path: Path) -> Path:
    """Per-task validation metric and training loss per epoch."""
    plt = _pyplot()
    tasks = record["tasks"]
    epochs = [h["epoch"] for h in record["history"]]
    fig, axes = plt.subplots(2, len(tasks), figsize=(3.2 * len(tasks), 5.5), squeeze=False)
    for i, spec in enumerate(tasks):
        name = spec["name"]
        ax = axes[0][i]
        ax.plot(epochs, [h["val"][name] for h in record["history"]], marker="o", ms=3)
        if "baselines" in record:
            ax.axhline(record["baselines"][name], color="grey", ls="--", lw=1, label="single-task")
            ax.legend(fontsize=7)
        arrow = "↑" if spec["higher_is_better"] else "↓"
        ax.set_title(f"{name}: val {spec['metric']} {arrow}", fontsize=9)
        ax = axes[1][i]
        ax.plot(epochs, [h["train_loss"][name] for h in record["history"]], color="C1")
        ax.set_yscale("log")
        ax.set_title(f"{name}: train loss", fontsize=9)
        ax.set_xlabel("epoch")
    cfg = record["config"]
    fig.suptitle(f"{cfg['strategy']} (seed {cfg['seed']})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def plot_decisions(record: dict[str, Any], path: Path) -> Path | None:
    """Task weights over steps (combine-then-step) or the group of each task over iterations."""
    names = [s["name"] for s in record["tasks"]]
    weights, groups = record["weights_trace"], record["groups_trace"]
    if not weights and not groups:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.2))
    if weights:
        for t, name in enumerate(names):
            ax.plot([w[t] for w in weights], lw=0.8, label=name)
        ax.set_yscale("symlog", linthresh=1e-3)
        ax.set_ylabel("coefficient c_t on L_t")
        ax.set_xlabel("step")
        ax.legend(fontsize=7, ncol=len(names))
    else:
        import numpy as np

        grid = np.zeros((len(names), len(groups)))
        for k, gs in enumerate(groups):
            for gi, g in enumerate(sorted(gs, key=min)):
                for t in g:
                    grid[t, k] = gi
        ax.imshow(grid, aspect="auto", interpolation="nearest", cmap="tab10", vmin=0, vmax=9)
        ax.set_yticks(range(len(names)), names)
        ax.set_xlabel("iteration")
        ax.set_title("group of each task (same colour = stepped together)", fontsize=9)
    fig.suptitle(record["config"]["strategy"], fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def plot_similarity(record: dict[str, Any], path: Path) -> Path | None:
    """Mean cosine / magnitude similarity and sign-conflict fraction over the snapshots."""
    diags = record["diagnostics"]
    if not diags:
        return None
    import numpy as np

    plt = _pyplot()
    names = [s["name"] for s in record["tasks"]]
    panels = [("cosine", -1.0, 1.0, "RdBu"), ("magnitude", 0.0, 1.0, "viridis")]
    if diags[0].get("sign_conflict") is not None:
        panels.append(("sign_conflict", 0.0, 0.5, "magma"))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.3), squeeze=False)
    for ax, (key, lo, hi, cmap) in zip(axes[0], panels):
        mean = np.mean([np.asarray(d[key]) for d in diags], axis=0)
        im = ax.imshow(mean, vmin=lo, vmax=hi, cmap=cmap)
        for i in range(len(names)):
            for j in range(len(names)):
                ax.text(j, i, f"{mean[i, j]:.2f}", ha="center", va="center", fontsize=7)
        ax.set_xticks(range(len(names)), names, fontsize=7)
        ax.set_yticks(range(len(names)), names, fontsize=7)
        ax.set_title(f"{key} (mean of {len(diags)})", fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046)
    space = diags[0].get("space", "parameters")
    fig.suptitle(f"{record['config']['strategy']}: gradients w.r.t. {space}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def write_run(record: dict[str, Any], out_dir: Path, *, plots: bool = True) -> list[Path]:
    """run.json plus curves.png, decisions.png and similarity.png (when there is data)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [write_json(record, out_dir / "run.json")]
    if plots:
        for fn, name in (
            (plot_curves, "curves.png"),
            (plot_decisions, "decisions.png"),
            (plot_similarity, "similarity.png"),
        ):
            p = fn(record, out_dir / name)
            if p is not None:
                written.append(p)
    return written


def _mean_std(values: Sequence[float]) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def summarize(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per strategy: mean/std over seeds of Δm, test metrics and training time."""
    by: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by.setdefault(r["config"]["strategy"], []).append(r)
    rows = []
    for strategy, runs in by.items():
        names = [s["name"] for s in runs[0]["tasks"]]
        row: dict[str, Any] = {
            "strategy": strategy,
            "seeds": [r["config"]["seed"] for r in runs],
            "delta_m": [r["delta_m"] for r in runs if "delta_m" in r],
            "train_time_s": [r["train_time_s"] for r in runs],
            "test": {n: [r["test"][n] for r in runs] for n in names},
        }
        rows.append(row)
    return rows


def markdown_table(rows: Sequence[dict[str, Any]], tasks: Sequence[dict[str, Any]]) -> str:
    """The comparison table (mean ± std over seeds)."""
    head = ["strategy", "Δm % (↓)"]
    head += [f"{t['name']} {t['metric']} {'↑' if t['higher_is_better'] else '↓'}" for t in tasks]
    head += ["train time s", "seeds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row["strategy"], _mean_std(row["delta_m"])]
        cells += [_mean_std(row["test"][t["name"]]) for t in tasks]
        cells += [_mean_std(row["train_time_s"]), str(len(row["seeds"]))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def csv_rows(rows: Sequence[dict[str, Any]], tasks: Sequence[dict[str, Any]]) -> str:
    names = [t["name"] for t in tasks]
    out = ["strategy,seed,delta_m," + ",".join(names) + ",train_time_s"]
    for row in rows:
        for i, seed in enumerate(row["seeds"]):
            dm = row["delta_m"][i] if i < len(row["delta_m"]) else math.nan
            vals = ",".join(f"{row['test'][n][i]:.6g}" for n in names)
            out.append(f"{row['strategy']},{seed},{dm:.6g},{vals},{row['train_time_s'][i]:.4g}")
    return "\n".join(out) + "\n"
