"""The reward model's training objective, assembled from the loss terms of :mod:`.losses`:
``L = lambda_map L_map + lambda_rank L_rank + lambda_align L_align + lambda_level L_level``."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .losses import (
    align_loss,
    cross_rank_loss,
    level_loss,
    map_area_loss,
    map_bce_loss,
    map_l1_loss,
    rank_loss,
)
from .model import RMOutput
from .train_config import RMTrainConfig

LOSS_TERMS = ("loss", "l_map", "l_rank", "l_align", "l_level")
"""The total and its terms, as :class:`RMLoss` returns them and ``history.jsonl`` logs them."""


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


class RMLoss:
    """The weighted sum of the loss terms for one batch of ranking chains (plus anchor images)."""

    def __init__(self, cfg: RMTrainConfig) -> None:
        self.cfg = cfg

    def __call__(
        self,
        out: RMOutput,
        target: torch.Tensor,
        chains: int,
        *,
        areas: torch.Tensor | None = None,
        anchor_ref: torch.Tensor | None = None,
        anchor_scale: float = 1.0,
    ) -> dict[str, torch.Tensor]:
        """``{name: value}`` for :data:`LOSS_TERMS`.

        ``out``: the model's output for ``chains`` chains of images (chain-major), followed by the anchor
        images when ``anchor_ref`` (their reference scores) is given; ``target``: the chains' M_gt;
        ``areas``: per chain image, the defect area that orders the ranking pairs (None: chain order).
        """
        cfg = self.cfg
        n = len(target)
        zero = torch.zeros((), device=target.device)
        scores = out.score[:n].view(chains, n // chains)
        l_rank = rank_loss(scores, cfg.margins, areas=areas)
        if cfg.cross_rank > 0 and chains > 1:
            l_rank = l_rank + cfg.cross_rank * cross_rank_loss(scores, cfg.margins, areas=areas)
        l_map = map_loss(cfg, [z[:n] for z in out.map_logits], target) if out.map_logits else zero
        l_align = align_loss(out.score[n:], anchor_ref, anchor_scale) if anchor_ref is not None else zero
        l_level = level_loss(out.score[:n], target.mean(dim=(1, 2, 3))) if cfg.lambda_level > 0 else zero
        loss = (
            cfg.lambda_map * l_map
            + cfg.lambda_rank * l_rank
            + cfg.lambda_align * l_align
            + cfg.lambda_level * l_level
        )
        return dict(zip(LOSS_TERMS, (loss, l_map, l_rank, l_align, l_level), strict=True))
