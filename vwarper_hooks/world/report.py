"""Tables and plots of the learned world's measurements (fig. 4 and table 2), for RESULTS.md and `vwarper analyze`."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from ..porting.features import DESCRIPTORS
from ..porting.features import LABELS as FEATURE_LABELS
from .correspondence import BASELINES, CorrespondenceTable

LABELS = {**FEATURE_LABELS, "qk_raw": "post-RoPE Q/K", "pixels": "noisy latents (pixels)",
          "same position": "same position"}


def fig4_markdown(table: CorrespondenceTable) -> list[str]:
    """One markdown table: per layer, PCK (all / far) and same-position share of each descriptor."""
    rows = table.rows()
    layers = sorted({r["layer"] for r in rows if r["descriptor"] in DESCRIPTORS})
    by = {(r["descriptor"], r["layer"]): r for r in rows}
    background = "same background" if table.same_background else "different backgrounds"
    n = by[("same position", -1)]
    lines = [f"t={table.timestep}, {background}: {n['tokens']} object tokens, {n['far_tokens']} far (>= 2 tokens away)",
             "", "| layer | " + " | ".join(f"{LABELS[d]} all / far / same-pos" for d in DESCRIPTORS) + " |",
             "|---|" + "---|" * len(DESCRIPTORS)]
    for layer in layers:
        cells = [f"{by[(d, layer)]['pck_all']:.2f} / {by[(d, layer)]['pck_far']:.2f} / "
                 f"{by[(d, layer)]['same_position']:.2f}" for d in DESCRIPTORS]
        lines.append(f"| {layer} | " + " | ".join(cells) + " |")
    for name in BASELINES:
        r = by[(name, -1)]
        lines.append(f"| {LABELS[name]} | {r['pck_all']:.2f} / {r['pck_far']:.2f} / {r['same_position']:.2f} |")
    best = {d: table.best(d) for d in DESCRIPTORS}
    lines += ["", "best layer on far tokens: " + "; ".join(
        f"{LABELS[d]} L{b['layer']} {b['pck_far']:.2f}" for d, b in best.items())]
    return lines


def save_fig4_csv(tables: list[CorrespondenceTable], path: Path) -> Path:
    rows = [r for t in tables for r in t.rows()]
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def plot_fig4(tables: list[CorrespondenceTable], path: Path) -> Path:
    """One panel per table: PCK on far tokens per layer (solid) and the post-RoPE same-position share (dotted)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tables), figsize=(4.2 * len(tables), 3.4), dpi=100, squeeze=False)
    for ax, table in zip(axes[0], tables, strict=True):
        rows = table.rows()
        for d in DESCRIPTORS:
            points = sorted((r["layer"], r["pck_far"]) for r in rows if r["descriptor"] == d)
            ax.plot(*zip(*points, strict=True), marker="o", markersize=3, label=LABELS[d])
        pull = sorted((r["layer"], r["same_position"]) for r in rows if r["descriptor"] == "qk_raw")
        ax.plot(*zip(*pull, strict=True), linestyle=":", color="gray", label="post-RoPE: same-position share")
        for name, style in zip(BASELINES, ("--", "-."), strict=True):
            value = next(r["pck_far"] for r in rows if r["descriptor"] == name)
            ax.axhline(value, linestyle=style, color="black", linewidth=0.8, label=f"{LABELS[name]} baseline")
        background = "same bg" if table.same_background else "other bg"
        ax.set_title(f"t={table.timestep}, {background}")
        ax.set_xlabel("layer")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("PCK@1 token, far tokens")
    axes[0][-1].legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def table2_markdown(summary: list[dict[str, Any]]) -> list[str]:
    lines = ["| variant | n | identity (share of detail colour in the object) | detail colour error | "
             "leakage (detail colour outside) | object found | identity gain over coarse (share > 0) |",
             "|---|---|---|---|---|---|---|"]
    for r in summary:
        lines.append(f"| {r['variant']} | {r['n']} | {r['identity']:.3f} ± {r['identity_std']:.3f} | "
                     f"{r['detail_error']:.3f} ± {r['detail_error_std']:.3f} | {r['leakage']:.4f} ± "
                     f"{r['leakage_std']:.4f} | {r['found']:.2f} | {r['identity_gain']:+.3f} "
                     f"({r['identity_gain_positive']:.2f}) |")
    return lines
