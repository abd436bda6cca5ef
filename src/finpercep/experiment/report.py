"""The reward-hacking report's table (Markdown, JSON, HTML), curves and page, from the data that
:func:`finpercep.experiment.hacking.collect` gathers.

A row's cell is its value when it has one run (the baseline; every row with ``--seeds 1``), else the mean ±
the 95 % t-interval half-width over its RL seeds (:func:`~finpercep.experiment.stats.cell`); ``table.json``
holds every seed's value as well.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..eval.pyiqa_metrics import iqa_spec
from .stats import cell, t_interval


@dataclass(frozen=True)
class Column:
    """One table column: a key in a row's metrics, its header, decimals and direction."""

    key: str
    header: str
    decimals: int
    higher_better: bool | None


def table_columns(n_stage: int, iqa_names: Sequence[str]) -> list[Column]:
    cols = [
        Column("psnr", "PSNR↑", 2, True),
        Column("ssim", "SSIM↑", 4, True),
        Column("artifact_frac", "artifact frac↓", 4, False),
        Column("artifact_mean", "artifact mean↓", 4, False),
        Column("judge", "judge↑", 4, True),
        Column("niqe", "NIQE↓", 4, False),
        Column("score:RM_0", "RM_0 score", 4, True),
        Column(f"score:RM_{n_stage}", f"RM_{n_stage} score", 4, True),
        Column("train_reward", "final train reward", 4, None),
        Column("train_gain", "final reward gain", 4, True),
        Column("reward_osc", "gain rolling std", 4, False),
    ]
    for name in iqa_names:
        spec = iqa_spec(name)
        cols.append(Column(name, spec.label + ("↓" if spec.lower_better else "↑"), 4, not spec.lower_better))
    return cols


def fmt(value: Any, decimals: int) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.{decimals}f}"


def values(row: Mapping[str, Any], key: str) -> list[float | None]:
    """``key`` in every run of ``row``, in seed order."""
    return [run["metrics"].get(key) for run in row["runs"]]


def seeds_note(data: Mapping[str, Any]) -> str:
    """What a cell with ``±`` means (empty with one seed)."""
    seeds = data.get("seeds", [])
    if len(seeds) < 2:
        return ""
    return (
        f"RL rows: mean ± 95 % t-interval half-width over {len(seeds)} RL seeds "
        f"({', '.join(str(s) for s in seeds)}); the baseline has no RL seed (one value)."
    )


def table_markdown(data: Mapping[str, Any]) -> str:
    """The paper-style table as Markdown (values rounded as in ``table.json``'s ``decimals``)."""
    cols: list[Column] = data["columns"]
    lines = [
        "| method | " + " | ".join(c.header for c in cols) + " |",
        "|---|" + "|".join("---:" for _ in cols) + "|",
    ]
    for r in data["rows"]:
        cells = [cell(values(r, c.key), c.decimals) for c in cols]
        lines.append(f"| {r['label']} | " + " | ".join(cells) + " |")
    notes = [f"- {k}: unavailable: {v}" for k, v in data["unavailable"].items()]
    if seeds_note(data):
        notes.insert(0, f"- {seeds_note(data)}")
    return "\n".join(lines) + ("\n\n" + "\n".join(notes) if notes else "") + "\n"


def _json_row(r: Mapping[str, Any], cols: Sequence[Column]) -> dict[str, Any]:
    intervals = {c.key: t_interval(values(r, c.key)) for c in cols}
    return {
        "row": r["row"],
        "label": r["label"],
        "metrics": {c.key: r["metrics"].get(c.key) for c in cols},
        "interval": {k: (iv.half if math.isfinite(iv.half) else None) for k, iv in intervals.items()},
        "seeds": [run["seed"] for run in r["runs"] if run["seed"] is not None],
        "per_seed": {c.key: values(r, c.key) for c in cols},
        "all_metrics": r["metrics"],
        "stderr": r["stderr"],
        "runs": [
            {"seed": run["seed"], "metrics": run["metrics"], "stderr": run["stderr"]} for run in r["runs"]
        ],
    }


def table_json(data: Mapping[str, Any], found: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """``table.json``: per row the column means (``metrics``), the 95 % t half-widths over seeds
    (``interval``; None with one run), every seed's value (``per_seed``, ``runs``) and the findings."""
    cols: list[Column] = data["columns"]
    return {
        "columns": [
            {"key": c.key, "header": c.header, "decimals": c.decimals, "higher_better": c.higher_better}
            for c in cols
        ],
        "seeds": list(data.get("seeds", [])),
        "rows": [_json_row(r, cols) for r in data["rows"]],
        "unavailable": data["unavailable"],
        "findings": list(found),
    }


def html_table(data: Mapping[str, Any]) -> str:
    cols: list[Column] = data["columns"]
    head = "".join(f"<th>{html.escape(c.header)}</th>" for c in cols)
    body = []
    for r in data["rows"]:
        cells = "".join(f"<td>{html.escape(cell(values(r, c.key), c.decimals))}</td>" for c in cols)
        body.append(f"<tr><th>{html.escape(r['label'])}</th>{cells}</tr>")
    note = f"<p>{html.escape(seeds_note(data))}</p>" if seeds_note(data) else ""
    return f"<table><tr><th>method</th>{head}</tr>{''.join(body)}</table>{note}"


def html_findings(found: Sequence[Mapping[str, Any]]) -> str:
    verdict = {True: "reproduced", False: "not reproduced", None: "not stated (within the spread)"}
    return "".join(
        f"<li><b>{html.escape(x['finding'])}</b>"
        f"{' — ' + verdict[x['reproduced']] if x['finding'] != 'note' else ''}: "
        f"{html.escape(x['text'])}</li>"
        for x in found
    )


def html_crops(shown: Sequence[Sequence[tuple[str, str, str | None]]]) -> str:
    grids = []
    for cells in shown:
        tds = "".join(
            f"<td><div class='t'>{html.escape(t)}</div><img src='{html.escape(img)}'>"
            + (f"<br><img src='{html.escape(h)}'>" if h else "")
            + "</td>"
            for t, img, h in cells
        )
        grids.append(f"<table class='crops'><tr>{tds}</tr></table>")
    return "".join(grids)


def html_page(
    title: str,
    setup: str,
    data: Mapping[str, Any],
    found: Sequence[Mapping[str, Any]],
    shown: Sequence[Sequence[tuple[str, str, str | None]]],
) -> str:
    """The report page; ``setup`` is an HTML paragraph saying what was run."""
    unavailable = "".join(
        f"<li>{html.escape(k)}: unavailable: {html.escape(v)}</li>" for k, v in data["unavailable"].items()
    )
    n_stage = data["n_stage"]
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>FinPercep reward-hacking experiment</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1400px}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}
.crops td{{text-align:center;vertical-align:top}}
.crops img{{width:192px;image-rendering:pixelated}} .t{{font-size:11px;max-width:192px}}</style></head><body>
<h1>{html.escape(title)}</h1>
{setup}
<h2>Findings</h2><ul>{html_findings(found)}</ul>
<h2>Table</h2>{html_table(data)}<ul>{unavailable}</ul>
<p>Same numbers: <a href="table.md">table.md</a>, <a href="table.json">table.json</a>
(with every seed's value).</p>
<h2>Curves</h2><img src="curves.png"><p>Data: <a href="curves.json">curves.json</a>.</p>
<h2>Crops</h2><p>Top: output (first seed); bottom: its RM_{n_stage} (FinPercep) degradation map (brighter =
more degraded).</p>{html_crops(shown)}
</body></html>
"""


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


__all__ = [
    "Column",
    "fmt",
    "html_page",
    "html_table",
    "plot_experiment_curves",
    "table_columns",
    "table_json",
    "table_markdown",
]
