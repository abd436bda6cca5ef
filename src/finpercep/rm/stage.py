"""One stage of reward-model training: grow to RM_k, train its epochs, validate, checkpoint, save RM_k.

:func:`run_stage` reads top to bottom: :func:`begin_stage` (growth, L_align's reference, optimiser,
weight average), per epoch :func:`train_epoch` then :func:`end_epoch` (validation, ``--keep best``,
``state.pt``), and :func:`finish_stage` (the kept weights saved as ``stage_<k>``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader
from tqdm import tqdm

from .. import dist as D
from ..checkpoint import save_state
from ..ema import EMA
from ..errors import FinPercepError
from ..io import atomic_write_json, atomic_write_text
from .dataset import collate_chains
from .metrics import beats
from .model import RewardModel, RMOutput
from .objective import LOSS_TERMS, RMLoss
from .plots import plot_curves
from .prepare import load_init_stage
from .train_config import RMTrainConfig
from .train_data import ChainErrors, TrainData, anchor_scores, epoch_order
from .validate import keep_best, validate

logger = logging.getLogger(__name__)

STATE_NAME = "state.pt"
HISTORY_NAME = "history.jsonl"
CURVES_NAME = "curves.png"


@dataclass
class Progress:
    """What carries over from epoch to epoch and stage to stage (and is saved in ``state.pt``)."""

    history: list[dict[str, Any]]  # one record per epoch: stage, epoch, train losses, validation metrics
    hardness: np.ndarray  # per training chain, its map error when last seen (NaN: not yet)
    baseline: dict[str, Any] | None  # the HF-energy baseline's validation metrics, once measured


@dataclass
class Run:
    """What every stage of a run shares."""

    cfg: RMTrainConfig
    d: D.Dist
    model: RewardModel  # grown stage by stage
    data: TrainData
    progress: Progress


@dataclass
class StageParts:
    """What trains one stage."""

    stage: int
    epochs: int
    params: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    ema: EMA | None
    anchor_ref: torch.Tensor | None  # L_align's reference: the anchors' scores when RM_k grew
    anchor_scale: float
    kept: dict[str, Any] | None  # --keep best: {"epoch", "score", "weights"} of the best epoch so far
    forward: torch.nn.Module  # the model, or its DDP wrapper
    total_steps: int  # of the stage, for the learning-rate schedule and the gate ramp


def lr_at(cfg: RMTrainConfig, it: int, total: int, stage: int = 0) -> float:
    """Linear warm-up then cosine decay to 10% of the stage's peak rate (``lr``, times ``refine_lr``
    for the refinement stages RM_2 ... RM_N, which start from a trained model)."""
    peak = cfg.lr * (cfg.refine_lr if stage >= 2 else 1.0)
    if it < cfg.warmup_steps:
        return peak * (it + 1) / cfg.warmup_steps
    span = max(1, total - cfg.warmup_steps)
    t = min(1.0, (it - cfg.warmup_steps) / span)
    return peak * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * t)))


def build_optimizer(cfg: RMTrainConfig, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """AdamW, with weight decay on the weight matrices and kernels only (not biases and norms)."""
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
    )


def begin_stage(run: Run, stage: int, resume: dict[str, Any] | None, init_dir: Path | None) -> StageParts:
    """Grow the model to RM_``stage`` (or start it from ``init_dir``) and set up its training; ``resume``:
    the state saved inside this stage, to continue from."""
    cfg, d, model, data = run.cfg, run.d, run.model, run.data
    if resume is None or model.stage < stage:
        while model.stage < stage:
            model.grow()
        model.to(d.device)
    if resume is None and init_dir is not None:
        load_init_stage(model, init_dir)
    # L_align reference: anchor scores at the moment of growth (equal to RM_{k-1}'s, see RewardModel.grow)
    if resume is not None and "anchor_ref" in resume:
        anchor_ref = resume["anchor_ref"]
    elif data.anchor_images is not None and stage > 0:
        anchor_ref = anchor_scores(model, data.anchor_images.to(d.device), cfg.val_batch).cpu()
    else:
        anchor_ref = None
    # L_align in units of the anchors' score spread, at least the largest rank margin
    spread = float(anchor_ref.std()) if anchor_ref is not None and len(anchor_ref) > 1 else 0.0
    params = [p for p in model.parameters() if p.requires_grad]
    opt = build_optimizer(cfg, params)
    if resume is not None and resume.get("optimizer") is not None:
        opt.load_state_dict(resume["optimizer"])
    ema = EMA(model, cfg.ema) if cfg.ema > 0 else None
    if ema is not None and resume is not None and resume.get("ema") is not None:
        ema.load_state_dict(resume["ema"])
    data.chains.seed = int(np.random.SeedSequence([cfg.seed, stage]).generate_state(1)[0])
    return StageParts(
        stage=stage,
        epochs=cfg.epochs_for(stage),
        params=params,
        optimizer=opt,
        ema=ema,
        anchor_ref=anchor_ref,
        anchor_scale=max(spread, *cfg.margins, 1e-3),
        kept=resume.get("kept") if resume is not None else None,
        forward=torch.nn.parallel.DistributedDataParallel(model) if d.world > 1 else model,
        total_steps=cfg.epochs_for(stage) * data.steps_per_epoch,
    )


def _anchor_draw(cfg: RMTrainConfig, parts: StageParts, epoch: int, step: int) -> np.ndarray | None:
    """Which anchors join this step's batch (None: L_align is off)."""
    if parts.anchor_ref is None or cfg.anchor_batch <= 0 or cfg.lambda_align <= 0:
        return None
    n = len(parts.anchor_ref)
    rng = np.random.default_rng([cfg.seed, parts.stage, epoch, step, 3])
    return rng.choice(n, size=min(cfg.anchor_batch, n), replace=False)


def train_step(
    run: Run, parts: StageParts, batch: dict[str, Any], epoch: int, step: int
) -> tuple[dict[str, torch.Tensor], RMOutput, torch.Tensor]:
    """One optimiser step on a batch of chains (plus anchors); returns the loss terms, the model's output
    and the M_gt of the chain images."""
    cfg, d = run.cfg, run.d
    x = batch["images"].flatten(0, 1).to(d.device)
    target = batch["maps"].flatten(0, 1).to(d.device)
    a_idx = _anchor_draw(cfg, parts, epoch, step)
    if a_idx is not None:
        x = torch.cat([x, run.data.anchor_images[a_idx].to(d.device)])
    res = parts.forward(x)
    terms = RMLoss(cfg)(
        res,
        target,
        batch["images"].shape[0],
        areas=batch["areas"].to(d.device) if cfg.rank_pairs == "crop_area" else None,
        anchor_ref=parts.anchor_ref[a_idx].to(d.device) if a_idx is not None else None,
        anchor_scale=parts.anchor_scale,
    )
    if not D.all_finite(d, terms["loss"]):
        values = " ".join(f"L_{k[2:]}={terms[k].item():.4g}" for k in LOSS_TERMS[1:])
        raise FinPercepError(
            f"non-finite loss at stage {parts.stage}, epoch {epoch + 1}, step {step + 1} (rank {d.rank}): "
            f"{values}; batch samples: {[i for ids in batch['ids'] for i in ids]}"
        )
    parts.optimizer.zero_grad(set_to_none=True)
    terms["loss"].backward()
    if cfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(parts.params, cfg.grad_clip)
    parts.optimizer.step()
    if parts.ema is not None:
        parts.ema.update(run.model)
    return terms, res, target


def train_epoch(run: Run, parts: StageParts, epoch: int) -> dict[str, float]:
    """One epoch of RM_k; returns the mean of each loss term over its steps."""
    cfg, d, model, data, progress = run.cfg, run.d, run.model, run.data, run.progress
    model.train()
    data.chains.set_epoch(epoch)
    rng = np.random.default_rng([cfg.seed, parts.stage, epoch])
    draws = data.epoch_draws(d, epoch_order(cfg.chain_sampling, progress.hardness, rng, data.weights))
    errors = ChainErrors(len(data.chains))
    bc = data.batch_chains
    loader = DataLoader(
        data.chains,
        batch_size=bc,
        sampler=draws,
        collate_fn=collate_chains,
        num_workers=cfg.num_workers,
        drop_last=True,
    )
    sums: dict[str, float] = {}
    show = cfg.progress and d.main and sys.stderr.isatty()
    desc = f"RM_{parts.stage} epoch {epoch + 1}/{parts.epochs}"
    bar = tqdm(loader, total=data.steps_per_epoch, desc=desc, disable=not show)
    for step, batch in enumerate(bar):
        it = epoch * data.steps_per_epoch + step
        lr = lr_at(cfg, it, parts.total_steps, parts.stage)
        if parts.stage == 1 and model.gate is not None:
            model.set_gate(min(1.0, (it + 1) / max(1.0, cfg.gate_ramp * parts.total_steps)))
        for g in parts.optimizer.param_groups:
            g["lr"] = lr
        terms, res, target = train_step(run, parts, batch, epoch, step)
        if cfg.chain_sampling == "hard" and res.map_logits:  # hard-chain mining: this batch's map errors
            c, k = batch["images"].shape[:2]
            with torch.no_grad():
                err = (res.map[: c * k].float() - target).abs().mean(dim=(1, 2, 3)).view(c, k).mean(1)
            errors.add(draws[step * bc : (step + 1) * bc], err)
        for name in LOSS_TERMS:
            sums[name] = sums.get(name, 0.0) + float(terms[name].detach())
        bar.set_postfix(loss=f"{float(terms['loss'].detach()):.4f}", lr=f"{lr:.2e}")
    bar.close()
    if cfg.chain_sampling == "hard":
        errors.update(d, progress.hardness)
    return {k: v / max(1, data.steps_per_epoch) for k, v in sums.items()}


def end_epoch(run: Run, parts: StageParts, epoch: int, train_losses: dict[str, float]) -> None:
    """Validate (main process), record the epoch, update ``--keep best`` and write the resume point."""
    cfg, d, model, data, progress = run.cfg, run.d, run.model, run.data, run.progress
    out = Path(cfg.out)
    record: dict[str, Any] = {"stage": parts.stage, "epoch": epoch + 1, "train": train_losses}
    if d.main and data.val_samples:
        val, progress.baseline = validate(
            cfg,
            model,
            parts.ema,
            data.root,
            data.val_samples,
            data.val_chain_ids,
            d.device,
            progress.baseline,
        )
        record["val"] = val
        logger.info(
            "RM_%d epoch %d/%d: loss %.4f | AUROC %.3f CC %.3f triplet %.3f SRCC %.3f",
            parts.stage,
            epoch + 1,
            parts.epochs,
            train_losses.get("loss", float("nan")),
            val["auroc"],
            val["cc"],
            val["triplet_acc"],
            val["srcc"],
        )
    progress.history.append(record)
    if cfg.keep_for(parts.stage) == "best":
        parts.kept = keep_best(d, parts.kept, record, model, parts.ema)
    if d.main:
        save_state(
            out / STATE_NAME,
            {
                "stage": parts.stage,
                "epoch": epoch + 1,
                "model": model.state_dict(),
                "optimizer": parts.optimizer.state_dict(),
                "ema": parts.ema.state_dict() if parts.ema is not None else None,
                "anchor_ref": parts.anchor_ref,
                "kept": parts.kept,
                "hardness": progress.hardness.copy(),
                "history": progress.history,
                "baseline": progress.baseline,
            },
        )
        atomic_write_text(out / HISTORY_NAME, "".join(json.dumps(h) + "\n" for h in progress.history))
        if cfg.curves == "epoch":
            _plot(out, progress)
    D.barrier(d)


def _plot(out: Path, progress: Progress) -> None:
    best = progress.baseline["best"] if progress.baseline else None
    plot_curves(progress.history, out / CURVES_NAME, best)


def finish_stage(run: Run, parts: StageParts) -> None:
    """Put the kept epoch's weights (or the weight average) into the model, check that the replicas agree,
    and save RM_k with its validation metrics as ``stage_<k>``."""
    cfg, d, model = run.cfg, run.d, run.model
    if parts.ema is not None:
        parts.ema.copy_to(model)
    kept_epoch = parts.epochs
    if parts.kept is not None:
        model.load_state_dict(parts.kept["weights"])
        kept_epoch = parts.kept["epoch"]
    if d.world > 1:
        for buf in model.buffers():  # BatchNorm statistics: DDP syncs them at each forward, not after
            dist.broadcast(buf, 0)
    fingerprints = D.gather_strings(d, D.fingerprint(model))
    if len(set(fingerprints)) != 1:
        raise FinPercepError(f"stage {parts.stage}: model replicas differ across processes: {fingerprints}")
    if d.main:
        folder = _save_stage(cfg, model, parts.stage, kept_epoch, run.progress, d.world, fingerprints)
        if cfg.curves != "off" and run.progress.history:
            _plot(Path(cfg.out), run.progress)
        logger.info("saved RM_%d (epoch %d of %d) to %s", parts.stage, kept_epoch, parts.epochs, folder)
    D.barrier(d)


def _save_stage(
    cfg: RMTrainConfig,
    model: RewardModel,
    stage: int,
    epoch: int,
    progress: Progress,
    world: int,
    fingerprints: list[str],
) -> Path:
    """``stage_<k>``: the model (its score range the 1st-99th percentile of the saved epoch's validation
    scores) and ``metrics.json``."""
    val = next(
        (h["val"] for h in progress.history if (h["stage"], h["epoch"]) == (stage, epoch) and "val" in h),
        None,
    )
    if val is not None:
        lo, hi = val["score_p01_p99"]
        model.config = dataclasses.replace(model.config, score_range=(round(lo, 4), round(hi, 4)))
    folder = model.save_pretrained(Path(cfg.out) / f"stage_{stage}")
    baseline = progress.baseline
    atomic_write_json(
        folder / "metrics.json",
        {
            "stage": stage,
            "epoch": epoch,
            "val": val,
            "baseline": baseline,
            "beats_baseline": beats(val, baseline["best"]) if val and baseline else None,
            "world_size": world,
            "rank_fingerprints": fingerprints,
            "parameters": sum(p.numel() for p in model.parameters()),
        },
    )
    return folder


def run_stage(
    run: Run, stage: int, *, resume: dict[str, Any] | None = None, init_dir: Path | None = None
) -> None:
    """Train RM_``stage`` (from the resume point ``resume`` inside it, if given) and save it."""
    parts = begin_stage(run, stage, resume, init_dir)
    for epoch in range(resume["epoch"] if resume is not None else 0, parts.epochs):
        losses = train_epoch(run, parts, epoch)
        end_epoch(run, parts, epoch, losses)
    finish_stage(run, parts)
