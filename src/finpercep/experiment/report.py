"""The reward-hacking report folder ``OUT/report``: what :func:`write_report` writes, and from what.

Numbers come from :mod:`.collect`, the table from :mod:`.table`, the findings' text from :mod:`.findings`,
the curves from :mod:`.plots` and the page from :mod:`.page` (an HTML template).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..eval.evaluate import json_safe
from ..io import atomic_write_json, atomic_write_text, load_image, save_png
from .collect import collect
from .config import row_spec
from .findings import findings
from .hacking import Experiment
from .page import Crops, html_page, seed_text
from .plots import plot_experiment_curves
from .table import fmt, table_json, table_markdown

logger = logging.getLogger(__name__)

REPORT_DIR = "report"


def _crops(exp: Experiment, data: Mapping[str, Any], folder: Path) -> Crops:
    """Write the shown pairs' images and their RM_N heatmaps into ``folder``; per pair and column:
    (title, image file, heatmap file), files relative to the report."""
    from ..rm.score import heat_overlay

    folder.mkdir(parents=True, exist_ok=True)
    shown: list[list[tuple[str, str, str | None]]] = []
    first_runs = {r["row"]: r["runs"][0]["dir"] for r in data["rows"]}
    for i, pair in enumerate(exp.pairs[: exp.cfg.report_crops]):
        cells: list[tuple[str, str, str | None]] = []
        lr_up = np.repeat(np.repeat(pair.lr, exp.scale, axis=0), exp.scale, axis=1)
        images: list[tuple[str, str, np.ndarray]] = [("lr", "LR (nearest)", lr_up), ("hr", "HR", pair.hr)]
        for n, d in first_runs.items():
            p = d / "images" / f"{pair.name}_sr.png"
            if p.is_file():
                images.append((n, row_spec(n).label, load_image(p)))
        for key, title, img in images:
            fname = f"pair{i}_{key}.png"
            save_png(folder / fname, img)
            heat = None
            if key != "lr":
                with torch.no_grad():
                    m = exp.rmn(torch.from_numpy(img).permute(2, 0, 1)[None].float()).map[0, 0].numpy()
                heat = f"pair{i}_{key}_map.png"
                save_png(folder / heat, heat_overlay(img, m))
                title = f"{title} (RM_{exp.n_stage} map mean {float(m.mean()):.3f})"
            cells.append((title, f"{folder.name}/{fname}", f"{folder.name}/{heat}" if heat else None))
        shown.append(cells)
    return shown


def setup_values(exp: Experiment, data: Mapping[str, Any]) -> dict[str, Any]:
    """The page's plain values: its title and what was run."""
    cfg = exp.cfg
    return {
        "title": f"Reward hacking in RL fine-tuning of {cfg.generator}",
        "n_pairs": len(exp.pairs),
        "eval_photos": ", ".join(cfg.eval_photos),
        "eval_lr_size": cfg.eval_lr_size,
        "scale": exp.scale,
        "degradation": cfg.degradation,
        "eval_seed": cfg.eval_seed,
        "steps": cfg.rl.steps,
        "algorithm": cfg.rl.algorithm,
        "batch_size": cfg.rl.batch_size,
        "seed_text": seed_text(cfg.rl_seeds()),
        "reward_model": cfg.rm_dir(),
        "judge": exp.judge_dir,
        "judge_hr": fmt(data["rows"][0]["metrics"].get("judge_hr") if data["rows"] else None, 4),
        "tau": cfg.tau,
    }


def write_report(exp: Experiment) -> Path:
    """Write table.md, table.json, curves.png, curves.json, crops/ and report.html into ``OUT/report``."""
    rep = exp.out / REPORT_DIR
    rep.mkdir(parents=True, exist_ok=True)
    data = collect(exp)
    found = findings(data)
    atomic_write_json(rep / "table.json", json_safe(table_json(data, found)))
    atomic_write_text(rep / "table.md", table_markdown(data))
    atomic_write_json(rep / "curves.json", json_safe(data["curves"]))
    plot_experiment_curves(data, rep / "curves.png", exp.cfg.rolling_window)
    crops_dir = rep / "crops"
    if crops_dir.is_dir():
        shutil.rmtree(crops_dir)
    shown = _crops(exp, data, crops_dir)
    path = rep / "report.html"
    atomic_write_text(path, html_page(setup_values(exp, data), data, found, shown))
    logger.info("report: %s", path)
    return path


__all__ = ["REPORT_DIR", "setup_values", "write_report"]
