"""A finished reward-model run's stages as a self-contained checkpoint (``finpercep rm export``)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from ..errors import FinPercepError
from ..io import atomic_write_json
from .model import RewardModel

logger = logging.getLogger(__name__)


def export_stages(run: str | Path, dest: str | Path) -> Path:
    """Copy RM_0..RM_N of a finished run to ``dest`` with float16 weights, plus ``provenance.json`` (the
    run's training and model configuration, photos and every stage's validation metrics)."""
    run, dest = Path(run), Path(dest)
    for name in ("train_config.json", "model_config.json", "split.json"):
        if not (run / name).is_file():
            raise FinPercepError(f"{run}: not a reward-model run (no {name})")
    train_cfg = json.loads((run / "train_config.json").read_text())
    split = json.loads((run / "split.json").read_text())
    stages = sorted(int(p.name.split("_")[1]) for p in run.glob("stage_*") if (p / "metrics.json").is_file())
    if stages != list(range(int(train_cfg["stages"]) + 1)):
        raise FinPercepError(f"{run}: stages {stages} saved, RM_0 ... RM_{train_cfg['stages']} needed")
    dest.mkdir(parents=True, exist_ok=True)
    summary = {}
    for k in stages:
        model = RewardModel.from_pretrained(run, stage=k)
        model.save_pretrained(dest / f"stage_{k}", dtype=torch.float16)
        metrics = json.loads((run / f"stage_{k}" / "metrics.json").read_text())
        atomic_write_json(dest / f"stage_{k}" / "metrics.json", metrics)
        summary[f"stage_{k}"] = {
            "parameters": metrics.get("parameters"),
            "val": metrics.get("val"),
            "beats_baseline": metrics.get("beats_baseline"),
        }
    atomic_write_json(
        dest / "provenance.json",
        {
            "train_config": {**train_cfg, "out": str(run), "export": str(dest)},
            "model_config": json.loads((run / "model_config.json").read_text()),
            "train_sources": split["train_sources"],
            "val_sources": split["val_sources"],
            "train_chains": split["train_chains"],
            "val_samples": split["val_samples"],
            "stages": summary,
        },
    )
    logger.info("exported RM_0..RM_%d to %s", stages[-1], dest)
    return dest
