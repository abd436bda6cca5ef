"""Loss and validation-metric curves of a reward-model training run, as one PNG."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..io import atomic_path

LOSS_KEYS = ("loss", "l_map", "l_rank", "l_align", "l_level")
METRIC_KEYS = ("auroc", "cc", "kld", "sim", "nss", "auc_judd", "mse_clean", "triplet_acc", "srcc")


def plot_curves(
    history: Sequence[dict[str, Any]], path: str | Path, baseline: dict[str, float] | None = None
) -> Path:
    """One panel per training loss and validation metric against the epoch count over all stages.

    Dotted vertical lines mark stage boundaries; a dashed line marks the trivial high-frequency-energy
    baseline where it applies.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    keys = [("train", k) for k in LOSS_KEYS] + [("val", k) for k in METRIC_KEYS]
    cols = 4
    rows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.8 * rows), squeeze=False)
    x = list(range(1, len(history) + 1))
    starts = [i + 1 for i, h in enumerate(history) if i > 0 and h["stage"] != history[i - 1]["stage"]]
    for ax, (part, key) in zip(axes.ravel(), keys, strict=False):
        ys = [h.get(part, {}).get(key, float("nan")) for h in history]
        ax.plot(x, ys, marker="o", ms=3, lw=1)
        for s in starts:
            ax.axvline(s - 0.5, color="gray", ls=":", lw=1)
        if baseline and part == "val" and key in baseline and not math.isnan(baseline[key]):
            ax.axhline(baseline[key], color="tab:red", ls="--", lw=1, label="HF-energy baseline")
            ax.legend(fontsize=7)
        ax.set_title(
            f"{part} {key} (x: epoch, all stages)" if key in ("loss", "auroc") else f"{part} {key}",
            fontsize=9,
        )
        ax.tick_params(labelsize=7)
    for ax in axes.ravel()[len(keys) :]:
        ax.axis("off")
    fig.subplots_adjust(left=0.05, right=0.98, bottom=0.06, top=0.95, wspace=0.3, hspace=0.55)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)
    return path


def plot_misranked(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Contact sheet of the samples that cost SRCC the most, one row each: the reference (GT), the
    sample, the predicted map and M_gt (both over the sample), with the row's ``caption`` above it.

    Each row holds ``gt`` and ``image`` ((H, W, 3) in [0, 1]), ``map`` and ``gt_map`` ((H, W) in
    [0, 1]) and ``caption``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .score import heat_overlay

    if not rows:
        raise ValueError("no rows to draw")
    path = Path(path)
    titles = ("reference (GT)", "sample", "predicted map", "M_gt")
    fig, axes = plt.subplots(len(rows), 4, figsize=(10, 2.9 * len(rows)), squeeze=False)
    for row, ax_row in zip(rows, axes, strict=True):
        panels = (
            row["gt"],
            row["image"],
            heat_overlay(row["image"], row["map"]),
            heat_overlay(row["image"], row["gt_map"]),
        )
        for ax, img, title in zip(ax_row, panels, titles, strict=True):
            ax.imshow(img.clip(0.0, 1.0))
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(title, fontsize=7, pad=2)
        ax_row[0].text(0.0, 1.13, row["caption"], transform=ax_row[0].transAxes, fontsize=8, va="bottom")
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.96, wspace=0.03, hspace=0.35)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=72, format="png")
    plt.close(fig)
    return path
