"""Validation during reward-model training, and ``--keep best``: which epoch's weights become RM_k."""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Any

import torch

from .. import dist as D
from ..ema import EMA
from .evaluate import RMEvalConfig, best_baseline, evaluate
from .model import RewardModel
from .train_config import RMTrainConfig


def selection_score(val: dict[str, Any]) -> float:
    """What ``--keep best`` maximises: the mean of validation pixel AUROC, triplet accuracy and SRCC (NaNs
    skipped; -inf if all are NaN). RM_0's AUROC is a constant 0.5, so there it ranks by the other two."""
    vals = [float(val.get(k, float("nan"))) for k in ("auroc", "triplet_acc", "srcc")]
    vals = [v for v in vals if math.isfinite(v)]
    return sum(vals) / len(vals) if vals else -math.inf


def _averaged(model: RewardModel, ema: EMA | None) -> contextlib.AbstractContextManager[None]:
    return ema.swapped_in(model) if ema is not None else contextlib.nullcontext()


def snapshot(model: RewardModel, ema: EMA | None) -> dict[str, torch.Tensor]:
    """A CPU copy of the weights validation saw (the averages, when on)."""
    with _averaged(model, ema):
        return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def validate(
    cfg: RMTrainConfig,
    model: RewardModel,
    ema: EMA | None,
    root: Path,
    samples: list[dict[str, Any]],
    chain_ids: list[list[str]],
    device: torch.device,
    baseline: dict[str, Any] | None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Validation metrics of the weights being trained (their averages, when on), and the HF-energy
    baseline's, measured on the first call and passed back in as ``baseline`` afterwards."""
    with _averaged(model, ema):
        val = evaluate(
            model,
            root,
            samples,
            chain_ids,
            RMEvalConfig(tau=cfg.tau, batch=cfg.val_batch),
            device,
            with_baseline=baseline is None,
        )
    if baseline is None:
        baseline = {"hf": val.pop("baseline_hf"), "smooth": val.pop("baseline_smooth")}
        baseline["best"] = best_baseline(baseline["hf"], baseline["smooth"])
    return val, baseline


def keep_best(
    d: D.Dist,
    kept: dict[str, Any] | None,
    record: dict[str, Any],
    model: RewardModel,
    ema: EMA | None,
) -> dict[str, Any] | None:
    """``--keep best``: the best validated epoch so far, ``{"epoch", "score", "weights"}``, after the epoch
    of history ``record``. The main process validates and decides; every process keeps its own copy of its
    (identical) replica. Without validation nothing is kept, and the stage saves its last epoch."""
    score = selection_score(record["val"]) if "val" in record else -math.inf
    better = "val" in record and (kept is None or score > kept["score"])
    if D.gather_strings(d, "1" if better else "")[0]:
        return {"epoch": record["epoch"], "score": score, "weights": snapshot(model, ema)}
    return kept
