"""The reward-hacking report's curves (``curves.png``): training reward, its gain over the pretrained
generator, the gain's rolling std, the held-out judge and the artifact measure, one colour per row."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

COLORS = {"baseline": "k", "global": "tab:red", "finpercep": "tab:orange", "finpercep_ccl": "tab:blue"}


def _plot_row(axes: Any, name: str, label: str, cur: Mapping[str, Any], window: int, main: bool) -> None:
    """One run's lines (the first seed's labelled and bold, the others thin)."""
    from ..rl.logs import moving_average

    color, lw = COLORS.get(name), (1.0 if main else 0.5)
    lab = label if main else None
    tr = cur["train"]
    if tr is not None and tr["steps"]:
        if main:
            axes[0].plot(tr["steps"], tr["reward"], color=color, lw=0.6, alpha=0.3)
            axes[1].plot(tr["steps"], tr["gain"], color=color, lw=0.6, alpha=0.3)
        axes[0].plot(tr["steps"], moving_average(tr["reward"], window), color=color, lw=1.4 * lw, label=lab)
        axes[1].plot(tr["steps"], moving_average(tr["gain"], window), color=color, lw=1.4 * lw, label=lab)
        axes[2].plot(tr["steps"], tr["rolling_std"], color=color, lw=1.2 * lw, label=lab)
    ev = cur["eval"]
    for ax, key in ((axes[3], "judge"), (axes[4], "artifact_frac")):
        if name == "baseline":
            if ev and key in ev[0]:
                ax.axhline(ev[0][key], color=color, ls="--", lw=1, label=lab)
        else:
            ax.plot(
                [p["step"] for p in ev],
                [p.get(key, math.nan) for p in ev],
                marker="o",
                ms=3 * lw,
                color=color,
                lw=1.5 * lw,
                label=lab,
            )


def plot_experiment_curves(data: Mapping[str, Any], path: Path, window: int) -> Path:
    """Training reward, its gain over the pretrained generator, the gain's rolling std, judge score and
    artifact measure per step, one colour per row (every seed; the first one labelled)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(5, 1, figsize=(8, 12), sharex=True)
    fig.subplots_adjust(left=0.13, right=0.98, top=0.98, bottom=0.05, hspace=0.12)
    labels = {r["row"]: r["label"] for r in data["rows"]}
    for name, cur in data["curves"].items():
        _plot_row(axes, name, labels.get(name, name), cur, window, True)
        for other in cur.get("other_seeds", {}).values():
            _plot_row(axes, name, labels.get(name, name), other, window, False)
    if data["osc_from"]:
        for ax in axes:
            ax.axvline(data["osc_from"] + 0.5, color="gray", ls=":", lw=1)
    ylabels = (
        "training reward\n(own RM, per step)",
        "reward gain over\npretrained (same batch)",
        f"rolling std of gain\n({window} steps)",
        "held-out judge\n(curve crops)",
        "artifact fraction\n(M_gt > tau)",
    )
    for ax, ylabel in zip(axes, ylabels, strict=True):
        ax.set_ylabel(ylabel, fontsize=9)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("RL step")
    axes[3].legend(fontsize=7, loc="best")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    tmp.replace(path)
    return path


__all__ = ["COLORS", "plot_experiment_curves"]
