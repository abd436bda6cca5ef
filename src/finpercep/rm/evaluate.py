"""Held-out evaluation of a reward model: pixel-map metrics against M_gt, ranking metrics against the defect
area, per-SR-source break-downs and the HF-energy baseline (``finpercep rm eval``; the trainer's validation).
"""

from __future__ import annotations

import fnmatch
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import check, option
from ..errors import FinPercepError
from ..io import atomic_write_text
from .dataset import SampleDataset, collate_samples, read_sample
from .metrics import (
    HIGHER_IS_BETTER,
    MapMetricAccumulator,
    area_order,
    beats,
    hf_energy_map,
    misorder,
    role_separation,
    score_metrics,
)
from .model import RewardModel
from .plots import plot_misranked

TARGETS = {"auroc": 0.85, "triplet_acc": 0.9, "srcc": 0.8}
"""The project's targets: pixel AUROC, triplet accuracy and SRCC on held-out photos."""


@dataclass(frozen=True)
class RMEvalConfig:
    """How a reward model is evaluated."""

    tau: float = option(0.1, help="M_gt threshold for defect pixels (AUROC, NSS, AUC-Judd)")
    batch: int = option(8, help="images per batch")

    def __post_init__(self) -> None:
        check(0.0 < self.tau < 1.0, f"tau must be in (0, 1), got {self.tau}")
        check(self.batch >= 1, f"batch must be >= 1, got {self.batch}")


def subsample_groups(samples: Sequence[dict[str, Any]], budget: int, seed: int) -> list[dict[str, Any]]:
    """Whole groups (so ranking chains stay complete), in a seeded random order, up to ``budget`` samples."""
    if not budget or len(samples) <= budget:
        return list(samples)
    by_group: dict[str, list[dict[str, Any]]] = {}
    for s in samples:
        by_group.setdefault(s["group"], []).append(s)
    groups = sorted(by_group)
    keep: list[dict[str, Any]] = []
    for i in np.random.default_rng([seed, 11]).permutation(len(groups)):
        members = by_group[groups[i]]
        if keep and len(keep) + len(members) > budget:
            break
        keep.extend(members)
    return sorted(keep, key=lambda s: s["id"])


def _batches_by_size(ds: SampleDataset, batch: int) -> list[list[int]]:
    by_size: dict[tuple[int, ...], list[int]] = {}
    for i, s in enumerate(ds.samples):
        by_size.setdefault(tuple(s.get("crop", [0, 0, 0, 0])[2:]), []).append(i)
    return [idx[j : j + batch] for idx in by_size.values() for j in range(0, len(idx), batch)]


def _by_sr_model(
    samples: Sequence[dict[str, Any]],
    scores: dict[str, float],
    areas: dict[str, float],
    map_means: dict[str, tuple[float, float]],
    known: Sequence[Sequence[str]],
) -> dict[str, dict[str, float]]:
    """Where the model is blind: per SR source, its whole-image outputs' mean score, mean map and mean M_gt,
    the triplet accuracy of its chains, how its outputs sit in the global score-vs-area order
    (``area_order``) and the SRCC over every sample but those of that source."""
    role_of = {s["id"]: s["role"] for s in samples}
    model_of = {s["id"]: s.get("sr_model") for s in samples}
    ids = list(scores)
    sr_ids: dict[str, list[str]] = {}
    for i in ids:
        if role_of[i] == "sr" and model_of[i]:
            sr_ids.setdefault(str(model_of[i]), []).append(i)
    score_arr = np.array([scores[i] for i in ids])
    area_arr = np.array([areas[i] for i in ids])
    return {
        name: {
            "score": float(np.mean([scores[i] for i in members])),
            "map": float(np.mean([map_means[i][0] for i in members])),
            "gt_map": float(np.mean([map_means[i][1] for i in members])),
            "area_order": area_order(
                score_arr,
                area_arr,
                [j for j, i in enumerate(ids) if role_of[i] == "sr" and model_of[i] == name],
            ),
            "triplet_acc": score_metrics(scores, [c for c in known if model_of[c[-1]] == name], areas)[
                "triplet_acc"
            ],
            "srcc_without": score_metrics(
                {i: v for i, v in scores.items() if model_of[i] != name}, [], areas
            )["srcc"],
        }
        for name, members in sorted(sr_ids.items())
    }


@torch.no_grad()
def evaluate(
    model: RewardModel,
    root: Path,
    samples: Sequence[dict[str, Any]],
    chains: Sequence[Sequence[str]],
    cfg: RMEvalConfig,
    device: torch.device,
    *,
    with_baseline: bool = False,
    per_sample: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Validation metrics of ``model`` on held-out ``samples`` (and of the HF-energy baseline maps).

    ``per_sample``: if given, one record per sample is appended to it (id, group, source photo, SR model,
    role, defect area, score, mean predicted map, mean M_gt).
    """
    was_training = model.training
    model.eval()
    ds = SampleDataset(root, samples)
    acc, base, base_inv = (MapMetricAccumulator(tau=cfg.tau) for _ in range(3))
    scores: dict[str, float] = {}
    areas: dict[str, float] = {}
    map_means: dict[str, tuple[float, float]] = {}
    sample_of = {s["id"]: s for s in samples}
    for idx in _batches_by_size(ds, cfg.batch):
        b = collate_samples([ds[i] for i in idx])
        x = b["image"].to(device)
        out = model(x)
        pred = out.map[:, 0].float().cpu().numpy()
        gt = b["map"][:, 0].numpy()
        hf = hf_energy_map(x)[:, 0].cpu().numpy() if with_baseline else None
        for j, sid in enumerate(b["id"]):
            acc.add(pred[j], gt[j])
            if hf is not None:
                base.add(hf[j], gt[j])
                base_inv.add(1.0 - hf[j], gt[j])
            scores[sid] = float(out.score[j])
            areas[sid] = float(b["area"][j])
            map_means[sid] = (float(pred[j].mean()), float(gt[j].mean()))
            if per_sample is not None:
                s = sample_of[sid]
                per_sample.append(
                    {
                        "id": sid,
                        "group": s["group"],
                        "source_image": s["source_image"],
                        "sr_model": s.get("sr_model"),
                        "role": s["role"],
                        "defect_area": areas[sid],
                        "score": scores[sid],
                        "map_mean": map_means[sid][0],
                        "gt_map_mean": map_means[sid][1],
                    }
                )
    known = [c for c in chains if all(i in scores for i in c)]
    roles: dict[str, list[float]] = {}
    for sid, v in scores.items():
        roles.setdefault(sample_of[sid]["role"], []).append(v)
    res: dict[str, Any] = {**acc.result(), **score_metrics(scores, known, areas)}
    res["score_mean_by_role"] = {r: float(np.mean(v)) for r, v in sorted(roles.items())}
    res["role_separation"] = role_separation(scores, {i: sample_of[i]["role"] for i in scores})
    res["sr_outputs_by_model"] = _by_sr_model(samples, scores, areas, map_means, known)
    all_scores = np.array(list(scores.values()))
    res["score_p01_p99"] = [float(np.percentile(all_scores, 1)), float(np.percentile(all_scores, 99))]
    if with_baseline:
        res["baseline_hf"] = base.result()
        res["baseline_smooth"] = base_inv.result()
    model.train(was_training)
    return res


def best_baseline(b: dict[str, float], s: dict[str, float]) -> dict[str, float]:
    """Per metric, the better of the two baseline orientations (HF energy = defect, smoothness = defect)."""
    out = {}
    for k in b:
        vals = [v for v in (b[k], s[k]) if not math.isnan(v)]
        out[k] = (max(vals) if HIGHER_IS_BETTER[k] else min(vals)) if vals else float("nan")
    return out


def _misorder_summary(
    records: Sequence[dict[str, Any]], count: int
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """The ``count`` records that cost SRCC the most (with their ``misorder``), and each kind of sample's
    (``gt``, ``ROLE/SR_MODEL``) share of the total misorder."""
    bad = misorder([r["score"] for r in records], [r["defect_area"] for r in records])
    worst = [records[i] | {"misorder": float(bad[i])} for i in np.argsort(-bad, kind="stable")][:count]
    kinds: dict[str, float] = {}
    for r, b in zip(records, bad, strict=True):
        kind = r["role"] if r["role"] == "gt" else f"{r['role']}/{r['sr_model']}"
        kinds[kind] = kinds.get(kind, 0.0) + float(b)
    total = sum(kinds.values()) or 1.0
    return worst, {k: v / total for k, v in sorted(kinds.items())}


def evaluate_checkpoint(
    data: str | Path,
    checkpoint: str | Path | None = None,
    stage: int | None = None,
    *,
    sources: Sequence[str] | None = None,
    tau: float = 0.1,
    max_samples: int = 0,
    device: str = "cpu",
    per_sample: str | Path | None = None,
    misranked: str | Path | None = None,
    misranked_count: int = 8,
    tta: str = "none",
) -> dict[str, Any]:
    """Held-out evaluation of a saved reward model on an FGR dataset (e.g. photos it never saw).

    ``sources``: fnmatch patterns of the source photos to use (None: every sample). Returns the model's
    metrics, the two HF-energy baseline orientations and their per-metric best, which metrics beat that
    best, and which of the project targets (pixel AUROC, triplet accuracy, SRCC) are met. ``per_sample``:
    also write one JSON line per sample there (see :func:`evaluate`). The result's ``misranked`` lists the
    ``misranked_count`` samples that cost SRCC the most (:func:`~finpercep.rm.metrics.misorder`), and
    ``misorder_share`` each kind of sample's share of the total misorder (``gt``, ``ROLE/SR_MODEL``);
    ``misranked``: also draw them, beside their reference, predicted map and M_gt, into this PNG. ``tta``:
    test-time augmentation (:class:`~finpercep.rm.score.Scorer`).
    """
    from ..data.manifest import chains as make_chains
    from ..data.manifest import read_manifest

    if misranked_count < 0:
        raise FinPercepError(f"misranked_count must be >= 0, got {misranked_count}")
    root = Path(data)
    rows = read_manifest(root)
    if sources is not None:
        rows = [r for r in rows if any(fnmatch.fnmatchcase(r["source_image"], p) for p in sources)]
    if not rows:
        raise FinPercepError(f"{root}: no samples from sources {sources}")
    rows = subsample_groups(rows, max_samples, 0)
    model = RewardModel.from_pretrained(checkpoint, stage, device=device, tta=tta)
    chain_ids = [[s["id"] for s in c] for c in make_chains(rows)]
    records: list[dict[str, Any]] = []
    res = evaluate(
        model,
        root,
        rows,
        chain_ids,
        RMEvalConfig(tau=tau),
        torch.device(device),
        with_baseline=True,
        per_sample=records,
    )
    if per_sample is not None:
        atomic_write_text(per_sample, "".join(json.dumps(r) + "\n" for r in records))
    worst, misorder_share = _misorder_summary(records, misranked_count)
    if misranked is not None and worst:
        draw_misranked(model, root, rows, worst, misranked, torch.device(device))
    hf, smooth = res.pop("baseline_hf"), res.pop("baseline_smooth")
    best = best_baseline(hf, smooth)
    return {
        "stage": model.stage,
        "tta": model.tta,
        "samples": len(rows),
        "chains": len(chain_ids),
        "model": res,
        "baseline": {"hf": hf, "smooth": smooth, "best": best},
        "beats_baseline": beats(res, best),
        "targets_met": {k: bool(res[k] >= v) for k, v in TARGETS.items()},
        "misorder_share": misorder_share,
        "misranked": [
            {k: r[k] for k in ("id", "role", "sr_model", "defect_area", "score", "misorder")} for r in worst
        ],
    }


def draw_misranked(
    model: RewardModel,
    root: Path,
    rows: Sequence[dict[str, Any]],
    records: Sequence[dict[str, Any]],
    path: str | Path,
    device: torch.device,
) -> Path:
    """The contact sheet of :func:`~finpercep.rm.plots.plot_misranked` for the per-sample ``records``."""
    by_id = {r["id"]: r for r in rows}
    gt_of = {r["group"]: r for r in rows if r["role"] == "gt"}
    model.eval()
    panels = []
    for rec in records:
        img, gt_map = read_sample(root, by_id[rec["id"]])
        ref = gt_of.get(rec["group"])
        gt_img = read_sample(root, ref)[0] if ref is not None else np.zeros_like(img)
        with torch.no_grad():
            out = model(torch.from_numpy(img).permute(2, 0, 1)[None].to(device))
        panels.append(
            {
                "gt": gt_img,
                "image": img,
                "map": out.map[0, 0].float().cpu().numpy(),
                "gt_map": gt_map,
                "caption": f"{rec['id']}  {rec['role']} ({rec['sr_model']})  area {rec['defect_area']:.2f}  "
                f"score {rec['score']:.3f}  misordered with {100 * rec['misorder']:.0f}%",
            }
        )
    return plot_misranked(panels, path)
