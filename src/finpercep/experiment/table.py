"""The reward-hacking table: its columns, and the table as Markdown and as ``table.json``, from the data that
:func:`finpercep.experiment.collect.collect` gathers.

A row's cell is its value when it has one run (the baseline; every row with ``--seeds 1``), else the mean ±
the 95 % t-interval half-width over its RL seeds (:func:`~finpercep.experiment.stats.cell`); ``table.json``
holds every seed's value as well.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
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


__all__ = ["Column", "fmt", "seeds_note", "table_columns", "table_json", "table_markdown", "values"]
