"""Reward-model training losses as pure functions.

``L_total = lambda_map * L_map + lambda_rank * L_rank + lambda_align * L_align``

* :func:`map_l1_loss` / :func:`map_bce_loss` -- L_map, the per-pixel distance of the predicted map M to
  M_gt, optionally class-balanced so that small defects weigh as much as the clean background;
  :func:`map_area_loss` adds the image-level distance of the map means.
* :func:`rank_loss` -- L_rank, hinge over every ordered pair of a ranking chain
  ``GT > small swap > large swap > SR`` with per-gap margins; :func:`cross_rank_loss` applies the same
  order across the chains of a batch. Both can skip pairs whose defect areas (in a crop) contradict it.
* :func:`level_loss` -- L_level, a pointwise pull of each score towards minus the image's amount of
  degradation (mean M_gt), which the hinges above stop asking for once their margins hold.
* :func:`align_loss` -- L_align, squared distance of anchor-image scores to the previous stage's scores
  (relative to their spread), so the reward scale does not drift while the model grows.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import accumulate

import torch
import torch.nn.functional as F


def _balanced_mean(per_pixel: torch.Tensor, target: torch.Tensor, tau: float, balance: float) -> torch.Tensor:
    """Mean of ``per_pixel`` [B,1,H,W] where, per image, defect pixels (target > tau) and clean pixels
    each contribute half of the ``balance`` share; images without defects use the plain mean."""
    flat = per_pixel.flatten(1)
    plain = flat.mean(dim=1)
    if balance <= 0:
        return plain.mean()
    pos = (target.flatten(1) > tau).to(flat.dtype)
    neg = 1.0 - pos
    n_pos, n_neg = pos.sum(1), neg.sum(1)
    mean_pos = (flat * pos).sum(1) / n_pos.clamp_min(1.0)
    mean_neg = (flat * neg).sum(1) / n_neg.clamp_min(1.0)
    both = (n_pos > 0) & (n_neg > 0)
    balanced = torch.where(both, 0.5 * (mean_pos + mean_neg), plain)
    return ((1.0 - balance) * plain + balance * balanced).mean()


def map_l1_loss(
    pred: torch.Tensor, target: torch.Tensor, *, tau: float = 0.1, balance: float = 0.0
) -> torch.Tensor:
    """L_map: L1 between the predicted map ``pred`` and ``target`` (both [B,1,H,W] in [0,1]).

    ``balance`` in [0, 1] mixes the plain mean (0) with the class-balanced mean (1), where defect pixels
    (``target > tau``) and clean pixels count equally per image.
    """
    if pred.shape != target.shape:
        raise ValueError(f"map shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}")
    return _balanced_mean((pred - target).abs(), target, tau, balance)


def map_bce_loss(
    logits: torch.Tensor, target: torch.Tensor, *, tau: float = 0.1, balance: float = 0.0
) -> torch.Tensor:
    """Soft-target binary cross-entropy on map logits, with the same balancing as :func:`map_l1_loss`.

    Complements the L1 term: its gradient does not vanish where the sigmoid saturates on the wrong side.
    """
    if logits.shape != target.shape:
        raise ValueError(f"map shapes differ: {tuple(logits.shape)} vs {tuple(target.shape)}")
    per_pixel = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return _balanced_mean(per_pixel, target, tau, balance)


def map_area_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Image-level L1 between the mean predicted map and the mean of ``target`` (both [B,1,H,W]).

    A per-pixel loss settles at the median where local evidence is weak: content a whole image shares
    (an SR model's over-smoothed texture) looks clean patch by patch and gets a dark map. This term
    asks for the right amount of degradation per image, which image-wide evidence can supply (on the
    embedded-photo data it did not, by itself, light up Real-ESRGAN x4plus outputs: see
    docs/rm_experiments.md).
    """
    if pred.shape != target.shape:
        raise ValueError(f"map shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}")
    return (pred.flatten(1).mean(1) - target.flatten(1).mean(1)).abs().mean()


def rank_loss(
    scores: torch.Tensor,
    margins: Sequence[float],
    valid: torch.Tensor | None = None,
    *,
    all_pairs: bool = True,
    areas: torch.Tensor | None = None,
) -> torch.Tensor:
    """L_rank over chains ``scores`` [C, K] ordered best first (GT, small swap, large swap, SR).

    For every pair ``i < j`` (or only neighbours, ``all_pairs=False``) the hinge
    ``max(0, m_ij - (s_i - s_j))`` with ``m_ij = margins[i] + ... + margins[j-1]`` is averaged over the
    pairs whose members are both ``valid`` ([C, K] bool; missing chain members are skipped) and, when
    ``areas`` ([C, K] defect areas, e.g. inside a training crop) is given, whose lower-ranked member has
    the larger area (a crop that misses a swap does not contradict its GT).
    Returns 0 (with a gradient path) when no pair is valid.
    """
    if scores.ndim != 2:
        raise ValueError(f"scores must be [chains, K], got {tuple(scores.shape)}")
    k = scores.shape[1]
    if len(margins) != k - 1:
        raise ValueError(f"need {k - 1} margins for chains of length {k}, got {len(margins)}")
    if valid is None:
        valid = torch.ones_like(scores, dtype=torch.bool)
    _check_areas(areas, scores)
    cum = [0.0]
    for m in margins:
        cum.append(cum[-1] + float(m))
    terms, masks = [], []
    for i in range(k):
        for j in range(i + 1, k):
            if not all_pairs and j != i + 1:
                continue
            margin = cum[j] - cum[i]
            terms.append(F.relu(margin - (scores[:, i] - scores[:, j])))
            ok = valid[:, i] & valid[:, j]
            masks.append(ok if areas is None else ok & (areas[:, j] > areas[:, i]))
    t = torch.stack(terms, dim=1)
    w = torch.stack(masks, dim=1).to(t.dtype)
    return (t * w).sum() / w.sum().clamp_min(1.0)


def cross_rank_loss(
    scores: torch.Tensor,
    margins: Sequence[float],
    valid: torch.Tensor | None = None,
    *,
    areas: torch.Tensor | None = None,
) -> torch.Tensor:
    """L_rank across chains: every member of one chain against the lower-ranked members of the others.

    Same hinge and cumulative margins as :func:`rank_loss`, over pairs ``(c, i), (d, j)`` with ``c != d``
    and ``i < j``: a GT should outscore any small swap, any small swap any large swap, and so on. This
    ties the score scale across images (what SRCC against the defect area measures). With ``areas``
    ([C, K]) only pairs where ``(d, j)`` has the larger defect area count.
    """
    if scores.ndim != 2:
        raise ValueError(f"scores must be [chains, K], got {tuple(scores.shape)}")
    c, k = scores.shape
    if len(margins) != k - 1:
        raise ValueError(f"need {k - 1} margins for chains of length {k}, got {len(margins)}")
    if valid is None:
        valid = torch.ones_like(scores, dtype=torch.bool)
    _check_areas(areas, scores)
    cum = torch.tensor(
        [0.0, *accumulate(float(m) for m in margins)], dtype=scores.dtype, device=scores.device
    )
    rank = torch.arange(k, device=scores.device)
    s = scores.reshape(-1)
    r = rank.repeat(c)
    chain = torch.arange(c, device=scores.device).repeat_interleave(k)
    v = valid.reshape(-1)
    pair = (r[:, None] < r[None, :]) & (chain[:, None] != chain[None, :]) & v[:, None] & v[None, :]
    if areas is not None:
        a = areas.reshape(-1)
        pair = pair & (a[None, :] > a[:, None])
    margin = cum[r][None, :] - cum[r][:, None]
    hinge = F.relu(margin - (s[:, None] - s[None, :]))
    w = pair.to(scores.dtype)
    return (hinge * w).sum() / w.sum().clamp_min(1.0)


def level_loss(scores: torch.Tensor, degradation: torch.Tensor, *, beta: float = 0.05) -> torch.Tensor:
    """L_level: smooth-L1 (Huber, ``beta``) distance of ``scores`` [B] to ``-degradation`` [B].

    ``degradation`` is the amount of damage per image in [0, 1] (the trainer passes the mean of M_gt over
    the training crop: 0 for a GT, about 0.1 for a small swap, most of 1 for a whole SR output). Ranking
    hinges are satisfied by any order that clears the margins inside the compared set, so a defect the
    model barely sees (a GAN texture that looks like detail) can keep a score near the clean images of
    other crops; this term asks every image for the same level per unit of damage, whatever its content,
    which is what SRCC(score, -defect area) across photos measures. It also fixes the score scale:
    a GT scores near 0, a whole SR output near -mean(M_gt).
    """
    if scores.shape != degradation.shape or scores.ndim != 1:
        raise ValueError(
            f"need scores and degradation of one shape [B], got {tuple(scores.shape)} and "
            f"{tuple(degradation.shape)}"
        )
    if beta <= 0:
        raise ValueError(f"beta must be positive, got {beta}")
    return F.smooth_l1_loss(scores, -degradation.detach().to(scores.dtype), beta=beta)


def _check_areas(areas: torch.Tensor | None, scores: torch.Tensor) -> None:
    if areas is not None and areas.shape != scores.shape:
        raise ValueError(f"areas must match scores {tuple(scores.shape)}, got {tuple(areas.shape)}")


def align_loss(scores: torch.Tensor, reference: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """L_align: mean squared distance of anchor scores to the previous stage's (fixed) scores, in units of
    ``scale`` (the trainer passes the spread of the reference scores, so the loss does not depend on the
    arbitrary scale a ranking-trained score settles at)."""
    if scores.shape != reference.shape:
        raise ValueError(f"score shapes differ: {tuple(scores.shape)} vs {tuple(reference.shape)}")
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    return ((scores - reference.detach()) ** 2).mean() / (scale * scale)
