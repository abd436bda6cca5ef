"""Staged reward-model training: RM_0, then grow and train RM_1 ... RM_N, saving every stage.

``finpercep rm train --data DIR --out DIR --stages N`` calls :func:`train`. For several processes run
``torchrun --standalone --nproc_per_node P -m finpercep.rm.train ...`` (DDP: gloo on CPU, NCCL on GPU);
on GPUs ``accelerate launch --multi_gpu --num_processes P -m finpercep.rm.train ...`` works too (it sets
the same ``RANK`` / ``WORLD_SIZE`` / ``MASTER_ADDR`` environment).

Output folder::

    train_config.json model_config.json split.json   what was run, on which photos
    state.pt                                         resume point, rewritten atomically after every epoch
    history.jsonl  curves.png                        per-epoch losses and validation metrics
    stage_<k>/config.json stage_<k>/model.safetensors  RM_k (load with RewardModel.from_pretrained)
    stage_<k>/metrics.json  summary.json             validation metrics of the saved epoch (vs. the HF-energy
                                                     baseline): the last, or with --keep best the best one

Re-running the same command continues after the last finished epoch. All randomness derives from
``seed`` and the (stage, epoch, step) position, so a resumed run is identical to an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader
from tqdm import tqdm

from .. import dist as D
from ..config import check, check_prob, option, to_dict
from ..ema import EMA
from ..errors import ConfigError, FinPercepError
from ..io import atomic_path, atomic_write_json, atomic_write_text, remove_stale_temps
from .dataset import (
    ChainDataset,
    SampleDataset,
    Split,
    collate_chains,
    collate_samples,
    load_split,
    read_sample,
)
from .losses import (
    align_loss,
    cross_rank_loss,
    level_loss,
    map_area_loss,
    map_bce_loss,
    map_l1_loss,
    rank_loss,
)
from .metrics import (
    MapMetricAccumulator,
    area_order,
    beats,
    hf_energy_map,
    misorder,
    role_separation,
    score_metrics,
)
from .model import CONFIG_NAME, RewardModel, RMConfig, resolve_checkpoint, saved_rm_config, stage_dirs
from .plots import plot_curves, plot_misranked

logger = logging.getLogger(__name__)

STATE_NAME = "state.pt"


@dataclass(frozen=True)
class RMTrainConfig:
    """Reward-model training (``finpercep rm train``)."""

    data: str = option("runs/fgr_default", help="FGR dataset folder (holds manifest.jsonl)")
    out: str = option("runs/rm", help="output folder (stage_<k> models, state.pt, metrics, curves)")
    stages: int = option(4, help="train RM_0 ... RM_stages; at most the encoder's number of levels")
    epochs: tuple[int, ...] = option(
        (2, 3, 2), help="epochs per stage RM_0, RM_1, ...; the last value repeats for the later stages"
    )
    batch_chains: int = option(4, help="ranking chains per step and process (4 images each)")
    crop: int = option(128, help="random square training crop in pixels (0: whole images)")
    color_jitter: float = option(0.5, help="strength in [0, 1] of the per-chain colour augmentation")
    lr: float = option(2e-3, help="peak AdamW learning rate (warm-up, then cosine decay within each stage)")
    refine_lr: float = option(1.0, help="peak learning rate of RM_2 ... RM_N relative to lr")
    weight_decay: float = option(1e-4, help="AdamW weight decay")
    warmup_steps: int = option(20, help="linear warm-up steps at the start of each stage")
    grad_clip: float = option(1.0, help="gradient-norm clip (0: off)")
    lambda_map: float = option(1.0, help="weight of L_map (map vs. M_gt)")
    lambda_rank: float = option(1.0, help="weight of L_rank (chain hinge)")
    cross_rank: float = option(
        1.0, help="weight, inside L_rank, of the same order across the chains of a batch"
    )
    lambda_level: float = option(
        0.0,
        help="weight of L_level (each score pulled towards -mean(M_gt) of its crop: one score level per "
        "amount of damage across photos, which the ranking hinges stop asking for once their margins hold; "
        "on the embedded-photo data it lowered every validation target, see the README)",
    )
    ema: float = option(
        0.0,
        help="decay per step of an exponential moving average of the weights (0: off); validation and the "
        "saved RM_k use the average, and RM_{k+1} grows from it",
    )
    keep: tuple[Literal["last", "best"], ...] = option(
        ("last",),
        help="per stage RM_0, RM_1, ... (the last value repeats), which epoch is saved as RM_k and grown "
        "from: last, or best = the epoch with the highest mean of validation pixel AUROC, triplet accuracy "
        "and SRCC (the three targets); e.g. best last: early-stop RM_0 only",
    )
    rank_pairs: Literal["chain", "crop_area"] = option(
        "chain",
        help="which ranking pairs count: chain = every pair in chain order; crop_area = only those whose "
        "lower-ranked image has more defect area inside the training crop",
    )
    chain_sampling: Literal["uniform", "hard"] = option(
        "uniform",
        help="order of the training chains in an epoch: uniform = each once; hard = as many draws, half "
        "uniform and half in proportion to each chain's map error when last seen (RM_1 on), so the "
        "chains the map gets wrong come up more often",
    )
    lambda_align: float = option(
        1.0, help="weight of L_align (anchor scores vs. the previous stage, in units of their spread)"
    )
    map_bce: float = option(1.0, help="weight of the soft BCE on map logits inside L_map (0: pure L1)")
    map_balance: float = option(
        0.5, help="class balance of L_map: 0 plain mean, 1 defect and clean pixels equal"
    )
    map_area: float = option(
        0.0, help="weight inside L_map of the image-level L1 between mean(M) and mean(M_gt)"
    )
    deep_supervision: float = option(
        0.5, help="weight of L_map on the coarser maps RM_1..RM_{k-1} inside RM_k"
    )
    margins: tuple[float, float, float] = option(
        (0.1, 0.1, 0.1), help="rank margins GT-small, small-large, large-SR"
    )
    gate_ramp: float = option(
        0.5,
        help="share of RM_1's steps over which the map gate opens from 0 to 1 (score = map-weighted pool)",
    )
    anchors: int = option(32, help="anchor training images whose scores L_align keeps fixed across stages")
    anchor_batch: int = option(4, help="anchor images per step")
    tau: float = option(0.1, help="M_gt threshold for defect pixels (AUROC, NSS, AUC-Judd, balancing)")
    val_sources: tuple[str, ...] = option(
        ("coffee", "motorcycle_*"),
        help="held-out source photos (fnmatch patterns); if none match, a hash rule",
    )
    val_fraction: float = option(
        0.25, help="share of source photos held out when no val_sources pattern matches"
    )
    train_sr_models: tuple[str, ...] = option(
        (),
        help="train only on the chains of these SR sources (fnmatch patterns; none: all); validation keeps "
        "every source, so the others measure the model on SR models it never saw",
    )
    chain_weights: tuple[str, ...] = option(
        (),
        help="PATTERN=W ...: draw the training chains of SR sources matching the fnmatch PATTERN W times as "
        "often as the others (first match wins; the epoch keeps its length), e.g. realesrgan-x4plus=3",
    )
    max_val_samples: int = option(
        0,
        help="validate on whole held-out groups up to this many samples (0: all), the same every epoch",
    )
    max_steps_per_epoch: int = option(0, help="cap on steps per epoch (0: one pass over the chains)")
    val_batch: int = option(8, help="images per validation batch")
    seed: int = option(0, help="seed of data order, augmentation, anchors and parameter initialisation")
    num_workers: int = option(0, help="DataLoader worker processes")
    device: str = option("auto", help="auto, cpu, cuda or cuda:N")
    threads: int = option(0, help="torch CPU threads per process (0: leave torch's default)")
    progress: bool = option(True, help="show progress bars (only on a terminal)")
    curves: Literal["epoch", "stage", "off"] = option("stage", help="redraw curves.png per epoch or stage")
    export: str | None = option(
        None, help="at the end, copy every stage (float16 weights) here, e.g. src/finpercep/assets/rm_default"
    )
    init: str | None = option(
        None,
        help="fine-tune a trained reward model (a run or export folder, or 'default' for the packaged one): "
        "stage k starts from its RM_k, stages it lacks grow as usual; the architecture is its own",
    )

    def __post_init__(self) -> None:
        check(self.stages >= 0, f"stages must be >= 0, got {self.stages}")
        check(
            1 <= len(self.epochs) <= self.stages + 1,
            f"epochs needs 1 to stages+1={self.stages + 1} values, got {len(self.epochs)}",
        )
        check(all(e >= 0 for e in self.epochs), "epochs must be >= 0")
        check(self.batch_chains >= 1, "batch_chains must be >= 1")
        check(self.crop == 0 or self.crop >= 32, f"crop must be 0 or >= 32, got {self.crop}")
        check(
            self.lr > 0 and self.weight_decay >= 0 and self.grad_clip >= 0,
            "lr > 0, weight_decay >= 0, grad_clip >= 0",
        )
        check(
            min(
                self.lambda_map,
                self.lambda_rank,
                self.cross_rank,
                self.lambda_align,
                self.lambda_level,
                self.map_bce,
                self.map_area,
                self.deep_supervision,
            )
            >= 0,
            "loss weights must be >= 0",
        )
        check_prob("map_balance", self.map_balance)
        check_prob("color_jitter", self.color_jitter)
        check(all(m >= 0 for m in self.margins), "margins must be >= 0")
        check(0.0 <= self.ema < 1.0, f"ema must be in [0, 1), got {self.ema}")
        check(
            1 <= len(self.keep) <= self.stages + 1 and all(k in ("last", "best") for k in self.keep),
            f"keep needs 1 to stages+1={self.stages + 1} values, each last or best, got {self.keep}",
        )
        check(
            self.rank_pairs in ("chain", "crop_area"),
            f"rank_pairs must be chain or crop_area, got {self.rank_pairs!r}",
        )
        check(self.anchors >= 0 and self.anchor_batch >= 0, "anchors and anchor_batch must be >= 0")
        check(0.0 < self.tau < 1.0, f"tau must be in (0, 1), got {self.tau}")
        check(self.refine_lr > 0, f"refine_lr must be positive, got {self.refine_lr}")
        check(0.0 <= self.gate_ramp <= 1.0, f"gate_ramp must be in [0, 1], got {self.gate_ramp}")
        check(0.0 < self.val_fraction < 1.0, f"val_fraction must be in (0, 1), got {self.val_fraction}")
        check(self.max_val_samples >= 0 and self.max_steps_per_epoch >= 0, "caps must be >= 0")
        parse_chain_weights(self.chain_weights)
        check(
            self.val_batch >= 1 and self.num_workers >= 0 and self.threads >= 0,
            "val_batch >= 1, workers/threads >= 0",
        )
        check(
            self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"),
            f"device must be auto, cpu or cuda[:N], got {self.device!r}",
        )

    def epochs_for(self, stage: int) -> int:
        return self.epochs[min(stage, len(self.epochs) - 1)]

    def keep_for(self, stage: int) -> str:
        return self.keep[min(stage, len(self.keep) - 1)]


# --------------------------------------------------------------------------------------------------
# pieces of the loop


def parse_chain_weights(items: Sequence[str]) -> list[tuple[str, float]]:
    """``["PATTERN=W", ...]`` -> ``[(PATTERN, W), ...]``; a clear error for a malformed item or W <= 0."""
    out = []
    for item in items:
        pattern, sep, w = item.rpartition("=")
        try:
            weight = float(w)
        except ValueError:
            weight = float("nan")
        if not sep or not pattern or not weight > 0 or not math.isfinite(weight):
            raise ConfigError(f"chain_weights: {item!r} is not PATTERN=W with a weight W > 0")
        out.append((pattern, weight))
    return out


def chain_weights(chains: Sequence[Sequence[dict[str, Any]]], items: Sequence[str]) -> np.ndarray | None:
    """Per training chain, the weight of the first ``PATTERN=W`` matching its SR source (1 if none);
    None when nothing is weighted."""
    import fnmatch

    rules = parse_chain_weights(items)
    if not rules:
        return None
    w = np.ones(len(chains))
    for i, chain in enumerate(chains):
        sr = str(chain[-1].get("sr_model"))
        w[i] = next((v for p, v in rules if fnmatch.fnmatchcase(sr, p)), 1.0)
    return w


def lr_at(cfg: RMTrainConfig, it: int, total: int, stage: int = 0) -> float:
    """Linear warm-up then cosine decay to 10% of the stage's peak rate (``lr``, times ``refine_lr``
    for the refinement stages RM_2 ... RM_N, which start from a trained model)."""
    peak = cfg.lr * (cfg.refine_lr if stage >= 2 else 1.0)
    if it < cfg.warmup_steps:
        return peak * (it + 1) / cfg.warmup_steps
    span = max(1, total - cfg.warmup_steps)
    t = min(1.0, (it - cfg.warmup_steps) / span)
    return peak * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * t)))


def map_loss(cfg: RMTrainConfig, logits: Sequence[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
    """L_map on the final map logits plus ``deep_supervision`` x the mean over the coarser stages."""

    def one(z: torch.Tensor) -> torch.Tensor:
        m = torch.sigmoid(z)
        loss = map_l1_loss(m, target, tau=cfg.tau, balance=cfg.map_balance)
        if cfg.map_area > 0:
            loss = loss + cfg.map_area * map_area_loss(m, target)
        if cfg.map_bce > 0:
            loss = loss + cfg.map_bce * map_bce_loss(z, target, tau=cfg.tau, balance=cfg.map_balance)
        return loss

    total = one(logits[-1])
    if len(logits) > 1 and cfg.deep_supervision > 0:
        total = total + cfg.deep_supervision * torch.stack([one(z) for z in logits[:-1]]).mean()
    return total


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


def pick_anchors(split: Split, n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` fixed training samples (all roles) whose scores L_align pins across stages."""
    uniq = {s["id"]: s for c in split.train_chains for s in c}
    ids = sorted(uniq)
    if n <= 0 or not ids:
        return []
    rng = np.random.default_rng([seed, 7])
    chosen = rng.choice(len(ids), size=min(n, len(ids)), replace=False)
    return [uniq[ids[i]] for i in sorted(chosen)]


@torch.no_grad()
def anchor_scores(model: RewardModel, images: torch.Tensor, batch: int) -> torch.Tensor:
    """Scores of the anchor images in inference mode (no BatchNorm statistics are updated)."""
    was_training = model.training
    model.eval()
    out = torch.cat([model(images[i : i + batch]).score for i in range(0, len(images), batch)])
    model.train(was_training)
    return out


def _batches_by_size(ds: SampleDataset, batch: int) -> list[list[int]]:
    by_size: dict[tuple[int, ...], list[int]] = {}
    for i, s in enumerate(ds.samples):
        by_size.setdefault(tuple(s.get("crop", [0, 0, 0, 0])[2:]), []).append(i)
    return [idx[j : j + batch] for idx in by_size.values() for j in range(0, len(idx), batch)]


@torch.no_grad()
def evaluate(
    model: RewardModel,
    root: Path,
    samples: Sequence[dict[str, Any]],
    chains: Sequence[Sequence[str]],
    cfg: RMTrainConfig,
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
    acc = MapMetricAccumulator(tau=cfg.tau)
    base = MapMetricAccumulator(tau=cfg.tau)
    base_inv = MapMetricAccumulator(tau=cfg.tau)
    scores: dict[str, float] = {}
    areas: dict[str, float] = {}
    roles: dict[str, list[float]] = {}
    role_of = {s["id"]: s["role"] for s in samples}
    model_of = {s["id"]: s.get("sr_model") for s in samples}
    sample_of = {s["id"]: s for s in samples}
    by_model: dict[str, dict[str, list[float]]] = {}
    for idx in _batches_by_size(ds, cfg.val_batch):
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
            roles.setdefault(role_of[sid], []).append(scores[sid])
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
                        "map_mean": float(pred[j].mean()),
                        "gt_map_mean": float(gt[j].mean()),
                    }
                )
            if role_of[sid] == "sr" and model_of[sid]:
                m = by_model.setdefault(str(model_of[sid]), {"score": [], "map": [], "gt_map": []})
                m["score"].append(scores[sid])
                m["map"].append(float(pred[j].mean()))
                m["gt_map"].append(float(gt[j].mean()))
    known = [c for c in chains if all(i in scores for i in c)]
    res: dict[str, Any] = {**acc.result(), **score_metrics(scores, known, areas)}
    res["score_mean_by_role"] = {r: float(np.mean(v)) for r, v in sorted(roles.items())}
    res["role_separation"] = role_separation(scores, {i: role_of[i] for i in scores})
    # where the model is blind: per SR source, its whole-image output's mean score, mean map and mean M_gt,
    # the triplet accuracy of its chains, how its whole outputs sit in the global score-vs-area order
    # (area_order) and the SRCC over every sample but those of that source
    ids = list(scores)
    score_arr = np.array([scores[i] for i in ids])
    area_arr = np.array([areas[i] for i in ids])
    res["sr_outputs_by_model"] = {
        name: {
            **{k: float(np.mean(v)) for k, v in m.items()},
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
        for name, m in sorted(by_model.items())
    }
    all_scores = np.array(list(scores.values()))
    res["score_p01_p99"] = [float(np.percentile(all_scores, 1)), float(np.percentile(all_scores, 99))]
    if with_baseline:
        res["baseline_hf"] = base.result()
        res["baseline_smooth"] = base_inv.result()
    model.train(was_training)
    return res


TARGETS = {"auroc": 0.85, "triplet_acc": 0.9, "srcc": 0.8}


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
    test-time augmentation (:meth:`RewardModel.set_tta`).
    """
    import fnmatch

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
    cfg = RMTrainConfig(data=str(root), tau=tau)
    chain_ids = [[s["id"] for s in c] for c in make_chains(rows)]
    records: list[dict[str, Any]] = []
    res = evaluate(
        model, root, rows, chain_ids, cfg, torch.device(device), with_baseline=True, per_sample=records
    )
    if per_sample is not None:
        atomic_write_text(per_sample, "".join(json.dumps(r) + "\n" for r in records))
    bad = misorder([r["score"] for r in records], [r["defect_area"] for r in records])
    worst = [records[i] | {"misorder": float(bad[i])} for i in np.argsort(-bad, kind="stable")]
    worst = worst[:misranked_count]
    kinds: dict[str, float] = {}
    for r, b in zip(records, bad, strict=True):
        kind = r["role"] if r["role"] == "gt" else f"{r['role']}/{r['sr_model']}"
        kinds[kind] = kinds.get(kind, 0.0) + float(b)
    total = sum(kinds.values()) or 1.0
    misorder_share = {k: v / total for k, v in sorted(kinds.items())}
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


def best_baseline(b: dict[str, float], s: dict[str, float]) -> dict[str, float]:
    """Per metric, the better of the two baseline orientations (HF energy = defect, smoothness = defect)."""
    from .metrics import HIGHER_IS_BETTER

    out = {}
    for k in b:
        vals = [v for v in (b[k], s[k]) if not math.isnan(v)]
        out[k] = (max(vals) if HIGHER_IS_BETTER[k] else min(vals)) if vals else float("nan")
    return out


def epoch_order(
    mode: str, hardness: np.ndarray, rng: np.random.Generator, weights: np.ndarray | None = None
) -> np.ndarray:
    """Chain indices of one epoch, ``len(hardness)`` draws (see ``RMTrainConfig.chain_sampling``).

    ``uniform``: a permutation, or with ``weights`` (per chain, see ``chain_weights``) draws with
    replacement in proportion to them. ``hard``: draws with replacement, with probability half the chain's
    share of the weights (``1 / n`` each without them) plus half its share of the total ``hardness`` (NaN,
    i.e. not yet measured, counts as the mean; all NaN is the weights alone). The k-th repeat of chain ``j``
    comes back as ``j + k * n`` so that it gets a crop and augmentation of its own (:class:`ChainDataset`
    reads index ``i`` as chain ``i % n``).
    """
    n = len(hardness)
    if mode == "uniform" and weights is None:
        return rng.permutation(n)
    base = np.full(n, 1.0 / n) if weights is None else np.asarray(weights, np.float64) / np.sum(weights)
    if mode == "uniform":
        p = base
    else:
        h = np.asarray(hardness, np.float64)
        seen = np.isfinite(h)
        h = np.clip(np.where(seen, h, h[seen].mean() if seen.any() else 1.0), 0.0, None)
        share = h / h.sum() if h.sum() > 0 else base
        p = (0.5 / n if weights is None else 0.5 * base) + 0.5 * share
    draws = rng.choice(n, size=n, p=p)
    repeats = np.zeros(n, np.int64)
    order = np.empty(n, np.int64)
    for t, j in enumerate(draws):
        order[t] = j + repeats[j] * n
        repeats[j] += 1
    return order


def selection_score(val: dict[str, Any]) -> float:
    """What ``--keep best`` maximises: the mean of validation pixel AUROC, triplet accuracy and SRCC (NaNs
    skipped; -inf if all are NaN). RM_0's AUROC is a constant 0.5, so there it ranks by the other two."""
    vals = [float(val.get(k, float("nan"))) for k in ("auroc", "triplet_acc", "srcc")]
    vals = [v for v in vals if math.isfinite(v)]
    return sum(vals) / len(vals) if vals else -math.inf


def _snapshot(model: RewardModel, ema: EMA | None) -> dict[str, torch.Tensor]:
    """A CPU copy of the weights validation saw (the averages, when on)."""
    with ema.swapped_in(model) if ema is not None else contextlib.nullcontext():
        return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def _save_state(path: Path, state: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _load_state(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=False)


def init_stages(init: str) -> dict[int, Path]:
    """``{k: model folder}`` of the stages of ``init`` (``'default'``: the packaged checkpoint)."""
    top = resolve_checkpoint(None if init == "default" else init, None)
    found = stage_dirs(top.parent)
    if top not in found.values():  # a lone model folder
        found = {int(json.loads((top / CONFIG_NAME).read_text())["stage"]): top}
    return found


def init_architecture(stages: dict[int, Path]) -> RMConfig:
    """The architecture (stage 0, default score range) shared by every stage in ``stages``."""
    archs = {
        k: dataclasses.replace(
            saved_rm_config(json.loads((d / CONFIG_NAME).read_text())["rm_config"]),
            stage=0,
            score_range=RMConfig().score_range,
        )
        for k, d in stages.items()
    }
    first = next(iter(archs.values()))
    if any(a != first for a in archs.values()):
        where = next(iter(stages.values())).parent
        raise FinPercepError(f"the stages in {where} have different architectures")
    return first


def model_config_or_none(cfg: RMTrainConfig, model_cfg: RMConfig) -> RMConfig | None:
    """The command line's model options, or None with ``--init`` (which brings its architecture).

    Model options other than the defaults together with ``--init`` are an error rather than ignored.
    """
    if not cfg.init:
        return model_cfg
    if model_cfg != RMConfig():
        raise FinPercepError(f"--init {cfg.init} brings its own architecture; drop the --model-* options")
    return None


def _check_resume(out: Path, cfg: RMTrainConfig, model_cfg: RMConfig | None) -> RMConfig | None:
    """The saved model config of a run in ``out``; refuses a different training configuration."""
    tpath, mpath = out / "train_config.json", out / "model_config.json"
    if not tpath.is_file():
        return None
    now = to_dict(cfg)
    # an option the saved run lacks was added later; its default is what that run did
    defaults = to_dict(RMTrainConfig())
    saved = {**{k: defaults[k] for k in now if k in defaults}, **json.loads(tpath.read_text())}
    ignore = {"out", "num_workers", "progress", "threads", "device", "val_batch", "curves", "export"}
    diff = sorted(
        k
        for k in set(saved) | set(now)
        if k not in ignore and json.dumps(saved.get(k)) != json.dumps(now.get(k))
    )
    if diff:
        raise FinPercepError(
            f"{out} holds a run with different settings ({', '.join(diff)}); use another --out"
        )
    saved_model = saved_rm_config(json.loads(mpath.read_text()))
    if model_cfg is not None and dataclasses.replace(model_cfg, stage=0) != saved_model:
        raise FinPercepError(f"{out} holds a run with a different model configuration; use another --out")
    return saved_model


# --------------------------------------------------------------------------------------------------
# the training run


def train(cfg: RMTrainConfig, model_cfg: RMConfig | None = None) -> Path:
    """Train RM_0 ... RM_{cfg.stages} on ``cfg.data``; returns the folder of the last stage."""
    d = D.setup(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    root = Path(cfg.data)
    split = load_split(root, cfg.val_sources, cfg.val_fraction, cfg.train_sr_models)

    # --init: the checkpoint's stages, whose architecture the run takes
    init_dirs = init_stages(cfg.init) if cfg.init else {}
    if init_dirs:
        arch = init_architecture(init_dirs)
        given = dataclasses.replace(model_cfg, stage=0, score_range=arch.score_range) if model_cfg else arch
        if given != arch:
            raise FinPercepError(f"--init {cfg.init} has another architecture than the given model config")
        model_cfg = arch
    # configuration and resume point: rank 0 checks and writes, the others read what it wrote
    problem = ""
    if d.main:
        try:
            saved_model_cfg = _check_resume(out, cfg, model_cfg)
        except FinPercepError as exc:
            problem = str(exc)
        else:
            model_cfg = dataclasses.replace(
                saved_model_cfg or model_cfg or RMConfig(init_seed=cfg.seed), stage=0
            )
            out.mkdir(parents=True, exist_ok=True)
            if stale := remove_stale_temps(out):
                logger.info("removed %d partial file(s) that a killed run left in %s", stale, out)
            atomic_write_json(out / "train_config.json", to_dict(cfg))
            atomic_write_json(out / "model_config.json", to_dict(model_cfg))
            split_info = {
                "train_sources": split.train_sources,
                "val_sources": split.val_sources,
                "train_chains": len(split.train_chains),
                "val_chains": len(split.val_chains),
                "val_samples": len(split.val_samples),
            }
            atomic_write_json(out / "split.json", split_info)
    problem = D.gather_strings(d, problem)[0]  # also a barrier
    if problem:
        raise FinPercepError(problem)
    if not d.main:
        model_cfg = saved_rm_config(json.loads((out / "model_config.json").read_text()))
    assert model_cfg is not None
    state = _load_state(out / STATE_NAME)
    model = RewardModel(model_cfg).to(d.device)
    if cfg.stages > model.num_levels:
        raise FinPercepError(
            f"--stages {cfg.stages} exceeds the decoder depth N={model.num_levels} of this encoder"
        )
    history: list[dict[str, Any]] = []
    start_stage, start_epoch = 0, 0
    hardness = np.full(len(split.train_chains), np.nan)
    weights = chain_weights(split.train_chains, cfg.chain_weights)
    if state is not None:
        if state.get("hardness") is not None:
            hardness = np.asarray(state["hardness"], np.float64)
        while model.stage < state["stage"]:
            model.grow()
        model.load_state_dict(state["model"])
        history = state["history"]
        start_stage, start_epoch = state["stage"], state["epoch"]
        logger.info("resuming from %s: stage %d, %d epochs done", out / STATE_NAME, start_stage, start_epoch)
    val_samples = subsample_groups(split.val_samples, cfg.max_val_samples, cfg.seed)
    val_chain_ids = [[s["id"] for s in c] for c in split.val_chains]
    baseline: dict[str, Any] | None = state.get("baseline") if state else None

    anchors = pick_anchors(split, cfg.anchors, cfg.seed)
    anchor_ds = SampleDataset(root, anchors, crop=cfg.crop)
    anchor_images = torch.stack([anchor_ds[i]["image"] for i in range(len(anchor_ds))]) if anchors else None
    train_ds = ChainDataset(
        root,
        split.train_chains,
        crop=cfg.crop,
        augment=True,
        color=cfg.color_jitter,
        crop_areas=cfg.rank_pairs == "crop_area",
    )
    per_rank = len(train_ds) // d.world
    if per_rank == 0:
        raise FinPercepError(f"{len(train_ds)} training chains cannot be shared by {d.world} processes")
    bc = min(cfg.batch_chains, per_rank)
    steps_per_epoch = per_rank // bc
    if cfg.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.max_steps_per_epoch)
    show = cfg.progress and d.main and sys.stderr.isatty()
    logger.info(
        "RM training on %d train chains (%s), validating on %d samples (%s); "
        "%d process(es) on %s, %d steps per epoch",
        len(split.train_chains),
        ", ".join(split.train_sources),
        len(val_samples),
        ", ".join(split.val_sources),
        d.world,
        d.device,
        steps_per_epoch,
    )

    for stage in range(start_stage, cfg.stages + 1):
        resuming = state is not None and stage == start_stage
        saved = (out / f"stage_{stage}" / "metrics.json").is_file()
        if resuming and start_epoch >= cfg.epochs_for(stage) and saved:
            # trained and saved before the restart: keep the files; RM_k was saved from the kept epoch's
            # weights or from the weight average
            if state.get("kept") is not None:
                model.load_state_dict(state["kept"]["weights"])
            elif state.get("ema") is not None:
                model.load_state_dict({**model.state_dict(), **state["ema"]})
            state = None
            continue
        if not resuming or model.stage < stage:
            while model.stage < stage:
                model.grow()
            model.to(d.device)
        if not resuming and stage in init_dirs:
            start = RewardModel.from_pretrained(init_dirs[stage])
            model.load_state_dict(start.state_dict())
            model.config = dataclasses.replace(model.config, score_range=start.config.score_range)
            logger.info("RM_%d starts from %s", stage, init_dirs[stage])
        epochs = cfg.epochs_for(stage)
        # L_align reference: anchor scores at the moment of growth (equal to RM_{k-1}'s, see RewardModel.grow)
        if resuming and "anchor_ref" in state:
            anchor_ref = state["anchor_ref"]
        elif anchor_images is not None and stage > 0:
            anchor_ref = anchor_scores(model, anchor_images.to(d.device), cfg.val_batch).cpu()
        else:
            anchor_ref = None
        # L_align in units of the anchors' score spread, at least the largest rank margin
        spread = float(anchor_ref.std()) if anchor_ref is not None and len(anchor_ref) > 1 else 0.0
        anchor_scale = max(spread, *cfg.margins, 1e-3)
        params = [p for p in model.parameters() if p.requires_grad]
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=cfg.lr,
        )
        if resuming and state.get("optimizer") is not None:
            opt.load_state_dict(state["optimizer"])
        ema = EMA(model, cfg.ema) if cfg.ema > 0 else None
        if ema is not None and resuming and state.get("ema") is not None:
            ema.load_state_dict(state["ema"])
        # --keep best: the best validated epoch so far ({"epoch", "score", "weights"}); every process keeps
        # its own copy of its (identical) replica, on the main process's decision
        kept: dict[str, Any] | None = state.get("kept") if resuming else None
        ddp = torch.nn.parallel.DistributedDataParallel(model) if d.world > 1 else model
        train_ds.seed = int(np.random.SeedSequence([cfg.seed, stage]).generate_state(1)[0])
        total_steps = epochs * steps_per_epoch

        for epoch in range(start_epoch if resuming else 0, epochs):
            model.train()
            train_ds.set_epoch(epoch)
            order = epoch_order(
                cfg.chain_sampling, hardness, np.random.default_rng([cfg.seed, stage, epoch]), weights
            )
            mine = order[: per_rank * d.world][d.rank :: d.world][: steps_per_epoch * bc].tolist()
            err_sum = torch.zeros(len(train_ds), dtype=torch.float64)
            err_n = torch.zeros(len(train_ds), dtype=torch.float64)
            loader = DataLoader(
                train_ds,
                batch_size=bc,
                sampler=mine,
                collate_fn=collate_chains,
                num_workers=cfg.num_workers,
                drop_last=True,
            )
            sums: dict[str, float] = {}
            bar = tqdm(
                loader, total=steps_per_epoch, desc=f"RM_{stage} epoch {epoch + 1}/{epochs}", disable=not show
            )
            for step, batch in enumerate(bar):
                it = epoch * steps_per_epoch + step
                lr = lr_at(cfg, it, total_steps, stage)
                if stage == 1 and model.gate is not None:
                    model.set_gate(min(1.0, (it + 1) / max(1.0, cfg.gate_ramp * total_steps)))
                for g in opt.param_groups:
                    g["lr"] = lr
                c, k = batch["images"].shape[:2]
                x = batch["images"].flatten(0, 1).to(d.device)
                target = batch["maps"].flatten(0, 1).to(d.device)
                a_idx: np.ndarray | None = None
                if anchor_ref is not None and cfg.anchor_batch > 0 and cfg.lambda_align > 0:
                    a_idx = np.random.default_rng([cfg.seed, stage, epoch, step, 3]).choice(
                        len(anchor_ref), size=min(cfg.anchor_batch, len(anchor_ref)), replace=False
                    )
                    x = torch.cat([x, anchor_images[a_idx].to(d.device)])
                res = ddp(x)
                scores = res.score[: c * k].view(c, k)
                areas = batch["areas"].to(d.device) if cfg.rank_pairs == "crop_area" else None
                l_rank = rank_loss(scores, cfg.margins, areas=areas)
                if cfg.cross_rank > 0 and c > 1:
                    l_rank = l_rank + cfg.cross_rank * cross_rank_loss(scores, cfg.margins, areas=areas)
                l_map = (
                    map_loss(cfg, [z[: c * k] for z in res.map_logits], target)
                    if res.map_logits
                    else torch.zeros((), device=d.device)
                )
                l_align = (
                    align_loss(res.score[c * k :], anchor_ref[a_idx].to(d.device), anchor_scale)
                    if a_idx is not None
                    else torch.zeros((), device=d.device)
                )
                l_level = (
                    level_loss(res.score[: c * k], target.mean(dim=(1, 2, 3)))
                    if cfg.lambda_level > 0
                    else torch.zeros((), device=d.device)
                )
                loss = (
                    cfg.lambda_map * l_map
                    + cfg.lambda_rank * l_rank
                    + cfg.lambda_align * l_align
                    + cfg.lambda_level * l_level
                )
                if not D.all_finite(d, loss):
                    raise FinPercepError(
                        f"non-finite loss at stage {stage}, epoch {epoch + 1}, step {step + 1} "
                        f"(rank {d.rank}): "
                        f"L_map={l_map.item():.4g} L_rank={l_rank.item():.4g} L_align={l_align.item():.4g} "
                        f"L_level={l_level.item():.4g}; "
                        f"batch samples: {[i for ids in batch['ids'] for i in ids]}"
                    )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                opt.step()
                if ema is not None:
                    ema.update(model)
                if cfg.chain_sampling == "hard" and res.map_logits:
                    with torch.no_grad():
                        err = (res.map[: c * k].float() - target).abs().mean(dim=(1, 2, 3)).view(c, k).mean(1)
                    idx = torch.tensor(mine[step * bc : (step + 1) * bc]) % len(train_ds)
                    err_sum.index_add_(0, idx, err.cpu().double())
                    err_n.index_add_(0, idx, torch.ones_like(idx, dtype=torch.float64))
                for name, v in (
                    ("loss", loss),
                    ("l_map", l_map),
                    ("l_rank", l_rank),
                    ("l_align", l_align),
                    ("l_level", l_level),
                ):
                    sums[name] = sums.get(name, 0.0) + float(v.detach())
                bar.set_postfix(loss=f"{float(loss.detach()):.4f}", lr=f"{lr:.2e}")
            bar.close()
            if cfg.chain_sampling == "hard":
                err_sum, err_n = D.all_reduce_sum(d, err_sum), D.all_reduce_sum(d, err_n)
                seen = (err_n > 0).numpy()
                hardness[seen] = (err_sum / err_n.clamp(min=1)).numpy()[seen]
            n_steps = max(1, steps_per_epoch)
            train_losses = {k: v / n_steps for k, v in sums.items()}

            record: dict[str, Any] = {"stage": stage, "epoch": epoch + 1, "train": train_losses}
            if d.main and val_samples:
                with ema.swapped_in(model) if ema is not None else contextlib.nullcontext():
                    val = evaluate(
                        model, root, val_samples, val_chain_ids, cfg, d.device, with_baseline=baseline is None
                    )
                if baseline is None:
                    baseline = {"hf": val.pop("baseline_hf"), "smooth": val.pop("baseline_smooth")}
                    baseline["best"] = best_baseline(baseline["hf"], baseline["smooth"])
                record["val"] = val
                logger.info(
                    "RM_%d epoch %d/%d: loss %.4f | AUROC %.3f CC %.3f triplet %.3f SRCC %.3f",
                    stage,
                    epoch + 1,
                    epochs,
                    train_losses.get("loss", float("nan")),
                    val["auroc"],
                    val["cc"],
                    val["triplet_acc"],
                    val["srcc"],
                )
            history.append(record)
            if cfg.keep_for(stage) == "best":
                # (without validation, kept stays None and the last epoch is saved)
                score = selection_score(record["val"]) if "val" in record else -math.inf
                better = "val" in record and (kept is None or score > kept["score"])
                if D.gather_strings(d, "1" if better else "")[0]:
                    kept = {"epoch": epoch + 1, "score": score, "weights": _snapshot(model, ema)}
            if d.main:
                _save_state(
                    out / STATE_NAME,
                    {
                        "stage": stage,
                        "epoch": epoch + 1,
                        "model": model.state_dict(),
                        "optimizer": opt.state_dict(),
                        "ema": ema.state_dict() if ema is not None else None,
                        "anchor_ref": anchor_ref,
                        "kept": kept,
                        "hardness": hardness.copy(),
                        "history": history,
                        "baseline": baseline,
                    },
                )
                atomic_write_text(out / "history.jsonl", "".join(json.dumps(h) + "\n" for h in history))
                if cfg.curves == "epoch":
                    plot_curves(history, out / "curves.png", baseline["best"] if baseline else None)
            D.barrier(d)

        # end of stage: check replicas agree, save RM_k (the kept epoch's weights, or the weight average)
        if ema is not None:
            ema.copy_to(model)
        kept_epoch = epochs
        if kept is not None:
            model.load_state_dict(kept["weights"])
            kept_epoch = kept["epoch"]
        if d.world > 1:
            for buf in model.buffers():  # BatchNorm statistics: DDP syncs them at each forward, not after
                dist.broadcast(buf, 0)
        fingerprints = D.gather_strings(d, D.fingerprint(model))
        if len(set(fingerprints)) != 1:
            raise FinPercepError(f"stage {stage}: model replicas differ across processes: {fingerprints}")
        if d.main:
            last_val = next(
                (h["val"] for h in history if (h["stage"], h["epoch"]) == (stage, kept_epoch) and "val" in h),
                None,
            )
            if last_val is not None:
                lo, hi = last_val["score_p01_p99"]
                model.config = dataclasses.replace(model.config, score_range=(round(lo, 4), round(hi, 4)))
            stage_dir = model.save_pretrained(out / f"stage_{stage}")
            atomic_write_json(
                stage_dir / "metrics.json",
                {
                    "stage": stage,
                    "epoch": kept_epoch,
                    "val": last_val,
                    "baseline": baseline,
                    "beats_baseline": beats(last_val, baseline["best"]) if last_val and baseline else None,
                    "world_size": d.world,
                    "rank_fingerprints": fingerprints,
                    "parameters": sum(p.numel() for p in model.parameters()),
                },
            )
            if cfg.curves != "off" and history:
                plot_curves(history, out / "curves.png", baseline["best"] if baseline else None)
            logger.info("saved RM_%d (epoch %d of %d) to %s", stage, kept_epoch, epochs, stage_dir)
        D.barrier(d)
        state = None

    if d.main:
        summary = {
            f"stage_{k}": json.loads((out / f"stage_{k}" / "metrics.json").read_text()).get("val")
            for k in range(cfg.stages + 1)
        }
        atomic_write_json(out / "summary.json", {"stages": summary, "baseline": baseline})
        if cfg.export:
            export_stages(out, cfg.export)
    D.teardown(d)
    return out / f"stage_{cfg.stages}"


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


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m finpercep.rm.train`` (for torchrun / accelerate launch); same options as ``rm train``."""
    import argparse

    from ..allocator import add_allocator_argument, configure_allocator
    from ..config import add_arguments, from_args

    p = argparse.ArgumentParser(prog="finpercep.rm.train", description=__doc__.splitlines()[0])
    add_arguments(p, RMTrainConfig)
    add_arguments(p, RMConfig, prefix="model_", skip=("stage",))
    add_allocator_argument(p)
    ns = p.parse_args(argv)
    configure_allocator(ns.allocator)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = from_args(RMTrainConfig, ns)
    try:
        path = train(cfg, model_config_or_none(cfg, from_args(RMConfig, ns, prefix="model_")))
    except FinPercepError as exc:
        sys.stderr.write(f"finpercep: error: {exc}\n")
        return 2
    sys.stdout.write(f"{path}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
