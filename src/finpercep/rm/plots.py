"""Loss and validation-metric curves of a reward-model training run, as one PNG."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..io import atomic_path

LOSS_KEYS = ("loss", "l_map", "l_rank", "l_align")
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
