"""Ground-truth perceptual degradation map ``M_gt`` of a synthetic image against its GT.

For a synthetic image ``syn`` and its ground truth ``gt`` (RGB in [0, 1], same size ``H x W``),
with ``F`` a dense feature extractor (:mod:`finpercep.data.features`, default ``filterbank``):

* ``D_pix(p)  = mean_c |syn_c(p) - gt_c(p)|`` (in [0, 1]);
* ``D_feat(p) = clamp(1 - cos(F(syn)(q), F(gt)(q)), 0, 1)`` on the extractor's grid ``q``, then
  bilinearly upsampled to ``H x W``;
* ``s(p) = alpha * D_pix(p) / pixel_scale + (1 - alpha) * D_feat(p) / feat_scale``;
* ``M_gt(p) = gate(p) * Normalize(s)(p)`` with ``gate(p) = 1`` where ``max_c |syn_c(p) - gt_c(p)| >
  gate_eps`` and 0 elsewhere. Features see a neighbourhood, so ``D_feat`` spreads a few pixels beyond
  a swapped region; the gate keeps the map on the pixels that actually changed, and a pixel equal in
  both images is exactly 0.

``alpha`` (default 0.5) weighs the pixel term against the feature term. ``pixel_scale`` and
``feat_scale`` are fixed reference differences (defaults 0.1 and 0.1, the latter calibrated for the
filterbank extractor; pretrained backbones such as DINOv3 have larger cosine distances and need a
larger ``feat_scale``, around 0.3) at which each term contributes ``alpha`` resp. ``1 - alpha`` to ``s``.
``Normalize`` is:

* ``tanh`` (default): ``tanh(s)``. Fixed and monotone, so maps are comparable across images and
  grow with the size of the difference (``s = 1`` gives 0.76), saturating smoothly towards 1.
* ``clip``: ``min(s, 1)``; fixed and linear up to saturation.
* ``minmax``: ``(s - min s) / (max s - min s)`` over each image (0 when ``s`` is constant). This is
  image-relative: the worst pixel of every image becomes 1, whatever its absolute quality, so values
  are not comparable across images.

The result is float32 in [0, 1].
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Literal, overload

import numpy as np
import torch
import torch.nn.functional as F

from ..config import check, check_prob, option
from ..errors import FinPercepError
from .features import FeatureExtractor, FilterBankFeatures

log = logging.getLogger(__name__)

NORMS = ("tanh", "clip", "minmax")


@dataclass(frozen=True)
class GTMapConfig:
    """Ground-truth degradation map M_gt = gate * Normalize(alpha*D_pix/ps + (1-alpha)*D_feat/fs)."""

    alpha: float = option(0.5, help="weight of the pixel (L1) term; 1 - alpha weighs the feature term")
    pixel_scale: float = option(0.1, help="mean absolute pixel difference that counts as one unit")
    feat_scale: float = option(0.1, help="feature cosine distance that counts as one unit (~0.3 for DINO)")
    norm: Literal["tanh", "clip", "minmax"] = option(
        "tanh", help="tanh / clip are fixed; minmax is per image"
    )
    gate_eps: float = option(
        0.0, help="pixels whose largest channel difference is <= this count as unchanged"
    )

    def __post_init__(self) -> None:
        check_prob("alpha", self.alpha)
        check(self.pixel_scale > 0, f"pixel_scale must be > 0, got {self.pixel_scale}")
        check(self.feat_scale > 0, f"feat_scale must be > 0, got {self.feat_scale}")
        check(self.norm in NORMS, f"norm must be one of {list(NORMS)}, got {self.norm!r}")
        check(self.gate_eps >= 0, f"gate_eps must be >= 0, got {self.gate_eps}")


@functools.lru_cache(maxsize=1)
def _default_extractor() -> FilterBankFeatures:
    return FilterBankFeatures()


def _as_batch(x: np.ndarray | torch.Tensor, what: str) -> torch.Tensor:
    """float32 ``[N, 3, H, W]`` from numpy ``(N, H, W, 3)`` / ``(H, W, 3)`` or torch ``[N, 3, H, W]``."""
    if isinstance(x, torch.Tensor):
        t = x.float()
        if t.ndim == 3:
            t = t.unsqueeze(0)
        if t.ndim != 4 or t.shape[1] != 3:
            raise FinPercepError(f"{what}: expected a [N, 3, H, W] tensor, got shape {tuple(x.shape)}")
        return t
    a = np.asarray(x)
    if a.ndim == 3:
        a = a[None]
    if a.ndim != 4 or a.shape[3] != 3:
        raise FinPercepError(f"{what}: expected an (N, H, W, 3) array, got shape {a.shape}")
    return torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2), dtype=np.float32))


def _unique_images(gt: np.ndarray | torch.Tensor) -> tuple[list[int], list[int]]:
    """Indices of distinct consecutive GT images and, for every item, the position of its distinct image
    (a group of syntheses usually shares one GT, whose features are then computed once)."""
    if isinstance(gt, np.ndarray) and gt.ndim == 4 and gt.strides[0] == 0:
        return [0], [0] * gt.shape[0]
    first: list[int] = []
    inverse: list[int] = []
    for i in range(len(gt)):
        same = bool(first) and (
            torch.equal(gt[i], gt[first[-1]])
            if isinstance(gt, torch.Tensor)
            else np.array_equal(gt[i], gt[first[-1]])
        )
        if not same:
            first.append(i)
        inverse.append(len(first) - 1)
    return first, inverse


def _cosine_distance(fs: torch.Tensor, fg: torch.Tensor, inverse: list[int]) -> torch.Tensor:
    """``clamp(1 - cos, 0, 1)`` along channels between ``fs[i]`` and ``fg[inverse[i]]``: ``[N, h, w]``."""
    eps = 1e-12
    if fs.device.type == "cpu":
        a_all = fs.detach().float().numpy()
        g_all = fg.detach().float().numpy()
        g_norm = [np.einsum("chw,chw->hw", g, g) for g in g_all]
        out = np.empty((a_all.shape[0], *a_all.shape[2:]), np.float32)
        for i, a in enumerate(a_all):
            g = g_all[inverse[i]]
            dot = np.einsum("chw,chw->hw", a, g)
            na = np.einsum("chw,chw->hw", a, a)
            cos = dot / np.sqrt(np.maximum(na * g_norm[inverse[i]], eps))
            out[i] = np.clip(1.0 - cos, 0.0, 1.0)
        return torch.from_numpy(out)
    g = fg[inverse].float()
    a = fs.float()
    cos = (a * g).sum(1) / ((a * a).sum(1) * (g * g).sum(1)).clamp_min(eps).sqrt()
    return (1.0 - cos).clamp(0.0, 1.0)


def _feature_distance(
    syn: torch.Tensor, gt: torch.Tensor, gt_src: np.ndarray | torch.Tensor, extractor: FeatureExtractor
) -> torch.Tensor:
    first, inverse = _unique_images(gt_src)
    with torch.inference_mode():
        feats = extractor(torch.cat([syn, gt[first]]))
        if feats.ndim != 4 or feats.shape[0] != syn.shape[0] + len(first):
            raise FinPercepError(
                f"feature extractor {getattr(extractor, 'name', extractor)!r} returned shape "
                f"{tuple(feats.shape)}, expected [{syn.shape[0] + len(first)}, C, h, w]"
            )
        d = _cosine_distance(feats[: syn.shape[0]], feats[syn.shape[0] :], inverse).to(syn.device)
        if d.shape[-2:] != syn.shape[-2:]:
            d = F.interpolate(d.unsqueeze(1), size=syn.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        return d.clamp(0.0, 1.0)


def _normalize(s: torch.Tensor, norm: str) -> torch.Tensor:
    if norm == "tanh":
        return torch.tanh(s)
    if norm == "clip":
        return s.clamp(0.0, 1.0)
    lo = s.amin(dim=(1, 2), keepdim=True)
    span = s.amax(dim=(1, 2), keepdim=True) - lo
    return torch.where(span > 0, (s - lo) / span.clamp_min(1e-12), torch.zeros_like(s))


@overload
def gt_degradation_maps(
    syn: np.ndarray, gt: np.ndarray, extractor: FeatureExtractor | None = ..., cfg: GTMapConfig | None = ...
) -> np.ndarray: ...
@overload
def gt_degradation_maps(
    syn: torch.Tensor,
    gt: torch.Tensor,
    extractor: FeatureExtractor | None = ...,
    cfg: GTMapConfig | None = ...,
) -> torch.Tensor: ...
def gt_degradation_maps(
    syn: np.ndarray | torch.Tensor,
    gt: np.ndarray | torch.Tensor,
    extractor: FeatureExtractor | None = None,
    cfg: GTMapConfig | None = None,
) -> np.ndarray | torch.Tensor:
    """Batched ``M_gt``: numpy ``(N, H, W, 3)`` pairs give float32 ``(N, H, W)``; torch ``[N, 3, H, W]``
    pairs give a float32 tensor ``[N, H, W]``. GT images repeated in a row are featurised once."""
    cfg = cfg or GTMapConfig()
    extractor = extractor if extractor is not None else _default_extractor()
    s_t, g_t = _as_batch(syn, "syn"), _as_batch(gt, "gt")
    if s_t.shape != g_t.shape:
        raise FinPercepError(f"syn and gt batches differ in shape: {tuple(s_t.shape)} vs {tuple(g_t.shape)}")
    with torch.inference_mode():
        diff = (s_t - g_t).abs()
        d_pix = diff.mean(dim=1)
        if not bool(torch.isfinite(d_pix).all()):
            raise FinPercepError("syn and gt must not contain NaN or infinite values")
        gate = diff.amax(dim=1) > cfg.gate_eps
        if cfg.alpha < 1.0:
            src = gt if isinstance(gt, np.ndarray) and gt.ndim == 4 else g_t
            d_feat = _feature_distance(s_t, g_t, src, extractor)
        else:
            d_feat = torch.zeros_like(d_pix)
        s = cfg.alpha * d_pix / cfg.pixel_scale + (1.0 - cfg.alpha) * d_feat / cfg.feat_scale
        m = torch.where(gate, _normalize(s, cfg.norm).clamp(0.0, 1.0), torch.zeros_like(s)).float()
    if isinstance(syn, torch.Tensor):
        return m.clone() if syn.ndim == 4 else m[0].clone()
    out = m.cpu().numpy()
    return out if np.asarray(syn).ndim == 4 else out[0]


def gt_degradation_map(
    syn: np.ndarray, gt: np.ndarray, extractor: FeatureExtractor | None = None, cfg: GTMapConfig | None = None
) -> np.ndarray:
    """``M_gt`` of one pair of ``(H, W, 3)`` images: float32 ``(H, W)`` in [0, 1]."""
    syn, gt = np.asarray(syn), np.asarray(gt)
    if syn.ndim != 3 or gt.ndim != 3:
        raise FinPercepError(f"expected (H, W, 3) images, got shapes {syn.shape} and {gt.shape}")
    return gt_degradation_maps(syn[None], gt[None], extractor, cfg)[0]


def pixel_diff(syn: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """``D_pix``: mean absolute difference over channels, float32 ``(H, W)``."""
    syn, gt = np.asarray(syn, np.float32), np.asarray(gt, np.float32)
    if syn.shape != gt.shape or syn.ndim != 3:
        raise FinPercepError(f"expected two (H, W, 3) images of one size, got {syn.shape} and {gt.shape}")
    return np.abs(syn - gt).mean(axis=2).astype(np.float32)


def feature_diff(syn: np.ndarray, gt: np.ndarray, extractor: FeatureExtractor | None = None) -> np.ndarray:
    """``D_feat``: cosine distance of dense features (clamped to [0, 1]) upsampled to ``(H, W)``."""
    syn, gt = np.asarray(syn, np.float32), np.asarray(gt, np.float32)
    if syn.shape != gt.shape or syn.ndim != 3:
        raise FinPercepError(f"expected two (H, W, 3) images of one size, got {syn.shape} and {gt.shape}")
    s_t, g_t = _as_batch(syn, "syn"), _as_batch(gt, "gt")
    ext = extractor if extractor is not None else _default_extractor()
    return _feature_distance(s_t, g_t, g_t, ext)[0].cpu().numpy().astype(np.float32)
