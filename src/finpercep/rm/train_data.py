"""What a reward-model run trains and validates on (:func:`build_data`), and which training chains an epoch
draws in what order: uniform or weighted by SR source, or favouring the chains whose maps the model gets
wrong (hard-chain mining); and the anchor images whose scores L_align holds fixed across stages."""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import dist as D
from ..errors import FinPercepError
from .dataset import ChainDataset, SampleDataset, Split
from .evaluate import subsample_groups
from .model import RewardModel
from .train_config import RMTrainConfig, parse_chain_weights

logger = logging.getLogger(__name__)


@dataclass
class TrainData:
    """The training chains and their share per process, the anchors and the validation samples."""

    root: Path
    chains: ChainDataset
    weights: np.ndarray | None  # per chain, how often it is drawn (None: equally often)
    per_rank: int  # chains per process and epoch
    batch_chains: int  # chains per step and process
    steps_per_epoch: int
    anchor_images: torch.Tensor | None
    val_samples: list[dict[str, Any]]
    val_chain_ids: list[list[str]]

    def epoch_draws(self, d: D.Dist, order: np.ndarray) -> list[int]:
        """This process's share of an epoch's ``order`` (:func:`epoch_order`), whole batches only."""
        mine = order[: self.per_rank * d.world][d.rank :: d.world]
        return mine[: self.steps_per_epoch * self.batch_chains].tolist()


def build_data(cfg: RMTrainConfig, d: D.Dist, split: Split) -> TrainData:
    root = Path(cfg.data)
    val_samples = subsample_groups(split.val_samples, cfg.max_val_samples, cfg.seed)
    anchors = pick_anchors(split, cfg.anchors, cfg.seed)
    anchor_ds = SampleDataset(root, anchors, crop=cfg.crop)
    anchor_images = torch.stack([anchor_ds[i]["image"] for i in range(len(anchor_ds))]) if anchors else None
    chains = ChainDataset(
        root,
        split.train_chains,
        crop=cfg.crop,
        augment=True,
        color=cfg.color_jitter,
        crop_areas=cfg.rank_pairs == "crop_area",
    )
    per_rank = len(chains) // d.world
    if per_rank == 0:
        raise FinPercepError(f"{len(chains)} training chains cannot be shared by {d.world} processes")
    bc = min(cfg.batch_chains, per_rank)
    steps_per_epoch = per_rank // bc
    if cfg.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.max_steps_per_epoch)
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
    return TrainData(
        root=root,
        chains=chains,
        weights=chain_weights(split.train_chains, cfg.chain_weights),
        per_rank=per_rank,
        batch_chains=bc,
        steps_per_epoch=steps_per_epoch,
        anchor_images=anchor_images,
        val_samples=val_samples,
        val_chain_ids=[[s["id"] for s in c] for c in split.val_chains],
    )


def chain_weights(chains: Sequence[Sequence[dict[str, Any]]], items: Sequence[str]) -> np.ndarray | None:
    """Per training chain, the weight of the first ``PATTERN=W`` matching its SR source (1 if none);
    None when nothing is weighted."""
    rules = parse_chain_weights(items)
    if not rules:
        return None
    w = np.ones(len(chains))
    for i, chain in enumerate(chains):
        sr = str(chain[-1].get("sr_model"))
        w[i] = next((v for p, v in rules if fnmatch.fnmatchcase(sr, p)), 1.0)
    return w


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


class ChainErrors:
    """Hard-chain mining: per training chain, the mean map error of the epoch's draws, gathered over every
    process and written into the ``hardness`` that :func:`epoch_order` draws the next epoch from."""

    def __init__(self, num_chains: int) -> None:
        self.sum = torch.zeros(num_chains, dtype=torch.float64)
        self.count = torch.zeros(num_chains, dtype=torch.float64)

    def add(self, draws: Sequence[int], err: torch.Tensor) -> None:
        """``err[i]``: the map error of the chain drawn as ``draws[i]`` (an index of :func:`epoch_order`)."""
        idx = torch.tensor(draws) % len(self.sum)
        self.sum.index_add_(0, idx, err.cpu().double())
        self.count.index_add_(0, idx, torch.ones_like(idx, dtype=torch.float64))

    def update(self, d: D.Dist, hardness: np.ndarray) -> None:
        """Sum over the processes (all of them must call this) and set ``hardness`` of the chains seen."""
        err_sum, err_n = D.all_reduce_sum(d, self.sum), D.all_reduce_sum(d, self.count)
        seen = (err_n > 0).numpy()
        hardness[seen] = (err_sum / err_n.clamp(min=1)).numpy()[seen]


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
