"""Defect masks for FGR region swapping: ``I_syn = m * I_SR + (1 - m) * I_GT``.

Two kinds of hard masks, both returned as float32 ``(H, W)`` arrays of exact 0/1 values whose area
fraction (``mask.mean()``) lies inside a requested ``(low, high)`` range:

* :func:`random_mask` composes free-form brush strokes (random-walk polylines with random widths, as
  in DeepFill v2 / LaMa), ellipses and rectangles until the area falls inside the range.
* :func:`semantic_mask` segments the image (SLIC superpixels by default, Felzenszwalb / quickshift,
  or SAM prompted with a point grid via :class:`SamSegmenter`) and takes a random union of
  (preferably adjacent) segments, so defects follow object and texture boundaries.

:func:`feather` turns a hard mask into the soft blending mask with a Gaussian edge. All randomness
comes from the ``np.random.Generator`` passed in: the same seed gives byte-identical masks.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import cv2
import numpy as np

from ..config import check, check_range, option
from ..errors import FinPercepError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

SHAPES = ("brush", "ellipse", "rectangle")
SEMANTIC_METHODS = ("slic", "felzenszwalb", "quickshift", "sam")
SemanticMethod = Literal["slic", "felzenszwalb", "quickshift", "sam"]

_SNAP = 1e-3
_MAX_SHAPES = 64
_RESEGMENT_ROUNDS = 3
_SEGMENT_SIDE = 160
_AREA_MARGIN = 1e-6


@dataclass(frozen=True)
class MaskConfig:
    """Defect masks: area ranges, shapes, semantic segmentation and feathering."""

    small_area: tuple[float, float] = option(
        (0.05, 0.15), help="area fraction range of the small defect mask"
    )
    large_area: tuple[float, float] = option(
        (0.30, 0.55), help="area fraction range of the large defect mask"
    )
    feather_px: float = option(3.0, help="Gaussian sigma (pixels) of the soft mask edge; 0 keeps it hard")
    random_shapes: tuple[str, ...] = option(
        SHAPES, help="shapes composed by random masks: brush, ellipse, rectangle"
    )
    semantic_method: SemanticMethod = option("slic", help="segmentation behind semantic masks")
    sam_path: str | None = option(
        None, help="local folder of a transformers SAM checkpoint (semantic_method sam)"
    )
    sam_points_per_side: int = option(16, help="SAM prompt grid is points_per_side x points_per_side")
    sam_iou_thresh: float = option(0.7, help="drop SAM candidate masks whose predicted IoU is below this")
    n_segments: int = option(150, help="approximate number of superpixels per image (jittered +-30 percent)")
    max_tries: int = option(50, help="attempts to hit the area range before giving up with an error")

    def __post_init__(self) -> None:
        check_range("small_area", self.small_area, 0.0, 1.0)
        check_range("large_area", self.large_area, 0.0, 1.0)
        for name, (lo, hi) in (("small_area", self.small_area), ("large_area", self.large_area)):
            check(0.0 < lo < hi, f"{name} must satisfy 0 < low < high, got {(lo, hi)}")
        check(self.feather_px >= 0.0, f"feather_px must be >= 0, got {self.feather_px}")
        check(len(self.random_shapes) > 0, "random_shapes must name at least one shape")
        bad = sorted(set(self.random_shapes) - set(SHAPES))
        check(not bad, f"unknown random_shapes {bad}; choose from {list(SHAPES)}")
        check(
            self.semantic_method in SEMANTIC_METHODS,
            f"semantic_method must be one of {list(SEMANTIC_METHODS)}",
        )
        check(
            self.semantic_method != "sam" or self.sam_path is not None,
            "semantic_method 'sam' needs sam_path (a local SAM checkpoint folder)",
        )
        check(
            self.sam_points_per_side >= 1, f"sam_points_per_side must be >= 1, got {self.sam_points_per_side}"
        )
        check(
            -1.0 <= self.sam_iou_thresh <= 1.0,
            f"sam_iou_thresh must be in [-1, 1], got {self.sam_iou_thresh}",
        )
        check(self.n_segments >= 4, f"n_segments must be >= 4, got {self.n_segments}")
        check(self.max_tries >= 1, f"max_tries must be >= 1, got {self.max_tries}")


def _check_area_range(area_range: tuple[float, float]) -> tuple[float, float]:
    lo, hi = float(area_range[0]), float(area_range[1])
    if not 0.0 < lo < hi <= 1.0:
        raise FinPercepError(f"area range must satisfy 0 < low < high <= 1, got {tuple(area_range)}")
    return lo, hi


def _include_mask(include: np.ndarray | None, shape: tuple[int, int]) -> np.ndarray:
    if include is None:
        return np.zeros(shape, np.uint8)
    inc = np.asarray(include)
    if inc.shape != shape:
        raise FinPercepError(f"include mask has shape {inc.shape}, expected {shape}")
    return (inc > 0).astype(np.uint8)


def _pixel_bounds(lo: float, hi: float, total: int) -> tuple[int, int]:
    """Pixel counts whose area fraction is inside [lo, hi] with a margin for float32 ``mask.mean()``."""
    return math.ceil((lo + _AREA_MARGIN) * total), math.floor((hi - _AREA_MARGIN) * total)


# --------------------------------------------------------------------------------------------------
# random free-form masks


def _draw_brush(canvas: np.ndarray, budget: float, rng: np.random.Generator) -> None:
    """DeepFill v2 style stroke: a random walk of thick line segments with round joints."""
    h, w = canvas.shape
    short = min(h, w)
    width = max(1, int(round(rng.uniform(0.03, 0.12) * short)))
    n_vertex = int(rng.integers(3, 10))
    seg_len = max(2.0, budget / (width * n_vertex))
    x, y = float(rng.uniform(0, w)), float(rng.uniform(0, h))
    angle = rng.uniform(0, 2 * math.pi)
    r = max(1, width // 2)
    for _ in range(n_vertex):
        angle += rng.uniform(-math.pi / 2, math.pi / 2)
        length = seg_len * rng.uniform(0.6, 1.4)
        nx = float(np.clip(x + length * math.cos(angle), 0, w - 1))
        ny = float(np.clip(y + length * math.sin(angle), 0, h - 1))
        p0, p1 = (int(round(x)), int(round(y))), (int(round(nx)), int(round(ny)))
        cv2.line(canvas, p0, p1, 1, thickness=width, lineType=cv2.LINE_8)
        cv2.circle(canvas, p1, r, 1, thickness=-1, lineType=cv2.LINE_8)
        x, y = nx, ny


def _draw_ellipse(canvas: np.ndarray, budget: float, rng: np.random.Generator) -> None:
    h, w = canvas.shape
    aspect = rng.uniform(0.3, 1.0)
    a = math.sqrt(budget / (math.pi * aspect))
    axes = (max(1, int(round(a))), max(1, int(round(a * aspect))))
    center = (int(rng.integers(0, w)), int(rng.integers(0, h)))
    cv2.ellipse(
        canvas, center, axes, float(rng.uniform(0, 180)), 0, 360, 1, thickness=-1, lineType=cv2.LINE_8
    )


def _draw_rectangle(canvas: np.ndarray, budget: float, rng: np.random.Generator) -> None:
    h, w = canvas.shape
    aspect = rng.uniform(0.25, 1.0)
    a = math.sqrt(budget / aspect)
    size = (max(1.0, a), max(1.0, a * aspect))
    center = (float(rng.uniform(0, w)), float(rng.uniform(0, h)))
    box = cv2.boxPoints((center, size, float(rng.uniform(0, 180))))
    cv2.fillPoly(canvas, [np.round(box).astype(np.int32)], 1, lineType=cv2.LINE_8)


_DRAW = {"brush": _draw_brush, "ellipse": _draw_ellipse, "rectangle": _draw_rectangle}


def random_mask(
    h: int,
    w: int,
    area_range: tuple[float, float],
    rng: np.random.Generator,
    shapes: Sequence[str] = SHAPES,
    max_tries: int = 50,
    include: np.ndarray | None = None,
) -> np.ndarray:
    """Hard free-form mask (float32 ``(h, w)``, values 0/1) whose area fraction lies in ``area_range``.

    Shapes are added one at a time, each sized to a random share of the area still missing to a
    target drawn uniformly from the range; a shape that overshoots the upper bound is discarded and
    the next one is drawn smaller. After ``max_tries`` failed compositions a FinPercepError is raised.
    With ``include`` (a mask of the same size) the result contains it and the range applies to the
    union, e.g. a large defect grown around a small one.
    """
    lo, hi = _check_area_range(area_range)
    shapes = tuple(shapes)
    bad = sorted(set(shapes) - set(SHAPES))
    if not shapes or bad:
        raise FinPercepError(f"shapes must be a non-empty subset of {list(SHAPES)}, got {list(shapes)}")
    if h < 1 or w < 1:
        raise FinPercepError(f"mask size must be positive, got {h}x{w}")
    total = h * w
    lo_px, hi_px = _pixel_bounds(lo, hi, total)
    if lo_px > hi_px:
        raise FinPercepError(f"area range {area_range} holds no whole pixel count for a {h}x{w} mask")
    base = _include_mask(include, (h, w))
    base_px = int(np.count_nonzero(base))
    if base_px > hi_px:
        raise FinPercepError(f"the included mask alone covers {base_px / total:.3f} > {hi} of the image")
    for _ in range(max_tries):
        canvas = base.copy()
        target = rng.uniform(max(lo_px, base_px), hi_px)
        area = base_px
        shrink = 1.0
        for _ in range(_MAX_SHAPES):
            missing = max(target - area, 1.0)
            budget = missing * rng.uniform(0.4, 1.0) * shrink
            trial = canvas.copy()
            _DRAW[shapes[int(rng.integers(len(shapes)))]](trial, budget, rng)
            new_area = int(np.count_nonzero(trial))
            if new_area > hi_px:
                shrink *= 0.5
                continue
            canvas, area = trial, new_area
            if area >= lo_px and (area >= target or rng.random() < 0.25):
                return canvas.astype(np.float32)
        if lo_px <= area <= hi_px:
            return canvas.astype(np.float32)
    raise FinPercepError(
        f"could not compose a random mask with area in {tuple(area_range)} on a {h}x{w} image "
        f"after {max_tries} tries; widen the area range"
    )


# --------------------------------------------------------------------------------------------------
# semantic masks


def _segment(img: np.ndarray, method: str, n_segments: int, rng: np.random.Generator) -> np.ndarray:
    """Integer label image of an over-segmentation; parameters jittered (and seeded) from ``rng``.

    Images larger than ``_SEGMENT_SIDE`` are segmented at reduced resolution (labels are upsampled
    with nearest neighbour), which keeps SLIC at a few tens of milliseconds per 256x256 crop.
    """
    from skimage import segmentation

    h, w = img.shape[:2]
    f = max(1, math.ceil(max(h, w) / _SEGMENT_SIDE))
    small = img if f == 1 else cv2.resize(img, (max(1, w // f), max(1, h // f)), interpolation=cv2.INTER_AREA)
    sh, sw = small.shape[:2]
    n = max(4, int(round(n_segments * rng.uniform(0.7, 1.3))))
    if method == "slic":
        labels = segmentation.slic(
            small,
            n_segments=n,
            compactness=float(rng.uniform(5.0, 20.0)),
            sigma=0.5,
            max_num_iter=5,
            start_label=0,
            channel_axis=-1,
        )
    elif method == "felzenszwalb":
        min_size = max(4, (sh * sw) // (4 * n))
        labels = segmentation.felzenszwalb(
            small, scale=float(rng.uniform(50.0, 300.0)), sigma=0.8, min_size=min_size
        )
    elif method == "quickshift":
        kernel = max(1.0, math.sqrt(sh * sw / n) / 4.0)
        labels = segmentation.quickshift(
            small,
            ratio=1.0,
            kernel_size=kernel,
            max_dist=4.0 * kernel,
            sigma=0.0,
            rng=int(rng.integers(2**31)),
            channel_axis=-1,
        )
    else:
        raise FinPercepError(f"unknown segmentation method {method!r}; choose from {list(SEMANTIC_METHODS)}")
    if f > 1:
        labels = cv2.resize(labels.astype(np.int32), (w, h), interpolation=cv2.INTER_NEAREST)
    return labels


def _split_large(labels: np.ndarray, sizes: np.ndarray, max_px: int, fine: np.ndarray) -> np.ndarray:
    """Split segments larger than ``max_px`` along a finer over-segmentation ``fine``."""
    big = sizes[labels] > max_px
    if not big.any():
        return labels
    combined = labels.astype(np.int64) * (int(fine.max()) + 1) + fine
    combined = np.where(big, combined, labels.astype(np.int64) * (int(fine.max()) + 1))
    return np.unique(combined, return_inverse=True)[1].reshape(labels.shape)


def _adjacency(labels: np.ndarray, k: int) -> list[np.ndarray]:
    """Sorted neighbour list of every label (4-connectivity)."""
    a = np.concatenate([labels[:, :-1].ravel(), labels[:-1, :].ravel()]).astype(np.int64)
    b = np.concatenate([labels[:, 1:].ravel(), labels[1:, :].ravel()]).astype(np.int64)
    diff = a != b
    a, b = a[diff], b[diff]
    codes = np.unique(np.concatenate([a * k + b, b * k + a]))
    src, dst = codes // k, codes % k
    starts = np.searchsorted(src, np.arange(k + 1))
    return [dst[starts[i] : starts[i + 1]] for i in range(k)]


def select_segments(
    labels: np.ndarray,
    area_range: tuple[float, float],
    rng: np.random.Generator,
    max_tries: int = 50,
    include: np.ndarray | None = None,
) -> np.ndarray | None:
    """Random union of segments of ``labels`` with area fraction in ``area_range``, or None.

    Grows from a random seed segment (or from ``include``, which the result then contains) by adding
    random neighbours, jumping to a non-adjacent segment only when no neighbour fits, until the area
    reaches a target drawn from the range.
    """
    lo, hi = _check_area_range(area_range)
    labels = np.unique(labels, return_inverse=True)[1].reshape(labels.shape)
    total = labels.size
    lo_px, hi_px = _pixel_bounds(lo, hi, total)
    base = _include_mask(include, labels.shape).astype(bool)
    base_px = int(base.sum())
    k = int(labels.max()) + 1
    sizes = np.bincount(labels[~base], minlength=k)
    neighbours = _adjacency(labels, k)
    touching = np.unique(labels[base]) if base_px else np.zeros(0, np.int64)
    seeds = np.flatnonzero(sizes <= hi_px)
    if base_px > hi_px or (base_px == 0 and len(seeds) == 0):
        return None
    for _ in range(max_tries):
        target = rng.uniform(max(lo_px, base_px), hi_px)
        chosen = np.zeros(k, bool)
        frontier = np.zeros(k, bool)
        if base_px:
            area = base_px
            frontier[touching] = True
            for t in touching:
                frontier[neighbours[t]] = True
        else:
            seed = int(seeds[rng.integers(len(seeds))])
            chosen[seed] = True
            frontier[neighbours[seed]] = True
            area = int(sizes[seed])
        while area < target:
            fits = ~chosen & (sizes <= hi_px - area)
            options = np.flatnonzero(fits & frontier)
            if len(options) == 0:
                options = np.flatnonzero(fits)
            if len(options) == 0:
                break
            nxt = int(options[rng.integers(len(options))])
            chosen[nxt] = True
            frontier[neighbours[nxt]] = True
            area += int(sizes[nxt])
        if lo_px <= area <= hi_px:
            return (chosen[labels] | base).astype(np.float32)
    return None


def semantic_mask(
    img: np.ndarray,
    area_range: tuple[float, float],
    rng: np.random.Generator,
    method: SemanticMethod = "slic",
    segmenter: SamSegmenter | None = None,
    n_segments: int = 150,
    max_tries: int = 50,
    include: np.ndarray | None = None,
) -> np.ndarray:
    """Hard mask (float32 ``(H, W)``, 0/1) made of whole image segments, area fraction in ``area_range``.

    ``img`` is float32 RGB ``(H, W, 3)`` in [0, 1]. With ``method="sam"`` the candidate masks of
    ``segmenter`` form the segments (SAM segments too large for the range are split along SLIC
    superpixels). If the segments are too coarse for the range the image is re-segmented finer; a
    FinPercepError is raised when that fails too. With ``include`` the mask grows from (and
    contains) that mask and the range applies to the union.
    """
    lo, hi = _check_area_range(area_range)
    img = np.asarray(img, dtype=np.float32)
    if img.ndim != 3 or img.shape[2] != 3:
        raise FinPercepError(f"semantic_mask needs an (H, W, 3) image, got shape {img.shape}")
    h, w = img.shape[:2]
    hi_px = _pixel_bounds(lo, hi, h * w)[1]
    sam_labels = None
    if method == "sam":
        if segmenter is None:
            raise FinPercepError(
                "semantic masks with method 'sam' need a SamSegmenter; "
                "load one with SamSegmenter.from_pretrained(path)"
            )
        sam_labels = segmenter.partition(img)
    n = n_segments
    for _ in range(_RESEGMENT_ROUNDS):
        if sam_labels is not None:
            sizes = np.bincount(sam_labels.ravel())
            labels = _split_large(sam_labels, sizes, hi_px, _segment(img, "slic", n, rng))
        else:
            labels = _segment(img, method, n, rng)
        mask = select_segments(labels, (lo, hi), rng, max_tries=max_tries, include=include)
        if mask is not None:
            return mask
        log.debug("no %s segment union in %s; re-segmenting finer", method, area_range)
        n *= 3
    raise FinPercepError(
        f"could not select {method} segments with area in {tuple(area_range)} on a {h}x{w} image; "
        "widen the area range or use random masks"
    )


# --------------------------------------------------------------------------------------------------
# SAM


class SamSegmenter:
    """Candidate segments from a transformers ``SamModel`` prompted with a regular grid of points.

    Preprocessing matches ``SamImageProcessor`` but runs in torch: resize the longest side to the
    model's ``image_size``, normalise with ImageNet statistics, zero-pad bottom/right to a square.
    """

    def __init__(
        self,
        model: Any,
        *,
        points_per_side: int = 16,
        iou_thresh: float = 0.7,
        points_per_batch: int = 64,
        device: str = "cpu",
    ) -> None:
        self.model = model.eval().to(device)
        self.device = device
        self.points_per_side = points_per_side
        self.iou_thresh = iou_thresh
        self.points_per_batch = points_per_batch
        self.image_size = int(model.config.vision_config.image_size)
        self.mean = (0.485, 0.456, 0.406)
        self.std = (0.229, 0.224, 0.225)

    @classmethod
    def from_pretrained(
        cls, path: str | Path, *, points_per_side: int = 16, iou_thresh: float = 0.7, device: str = "cpu"
    ) -> SamSegmenter:
        """Load a SAM checkpoint from a local folder (never downloads)."""
        try:
            from transformers import SamModel
        except ImportError as exc:
            raise FinPercepError(
                "SAM masks need the 'transformers' package (pip install finpercep[hf])"
            ) from exc
        path = Path(path)
        if not path.is_dir():
            raise FinPercepError(f"{path}: SAM checkpoint folder not found")
        try:
            model = SamModel.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise FinPercepError(f"{path}: not a loadable SAM checkpoint: {exc}") from exc
        return cls(model, points_per_side=points_per_side, iou_thresh=iou_thresh, device=device)

    def _preprocess(self, img: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
        import torch
        import torch.nn.functional as F

        h, w = img.shape[:2]
        s = self.image_size
        scale = s / max(h, w)
        nh, nw = int(h * scale + 0.5), int(w * scale + 0.5)
        x = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).unsqueeze(0).to(self.device)
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=scale < 1.0)
        mean = torch.tensor(self.mean, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=self.device).view(1, 3, 1, 1)
        x = F.pad((x - mean) / std, (0, s - nw, 0, s - nh))
        return x, (nh, nw)

    def candidates(self, img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Boolean candidate masks ``(K, H, W)`` and their predicted IoU ``(K,)``, best first.

        Every grid point yields SAM's three multimask outputs; masks under ``iou_thresh``, empty
        masks and exact duplicates are dropped.
        """
        import torch
        import torch.nn.functional as F

        img = np.asarray(img, dtype=np.float32)
        h, w = img.shape[:2]
        s = self.image_size
        x, (nh, nw) = self._preprocess(img)
        n = self.points_per_side
        grid = (np.arange(n, dtype=np.float32) + 0.5) / n
        pts = np.stack(np.meshgrid(grid * nw, grid * nh, indexing="xy"), -1).reshape(-1, 2)
        masks: list[torch.Tensor] = []
        scores: list[torch.Tensor] = []
        with torch.inference_mode():
            emb = self.model.get_image_embeddings(x)
            if not isinstance(emb, torch.Tensor):
                emb = emb[0]
            for i in range(0, len(pts), self.points_per_batch):
                p = torch.from_numpy(pts[i : i + self.points_per_batch]).to(self.device)
                out = self.model(
                    image_embeddings=emb,
                    input_points=p.view(1, -1, 1, 2),
                    input_labels=torch.ones(1, len(p), 1, dtype=torch.long, device=self.device),
                    multimask_output=True,
                )
                low = out.pred_masks[0].flatten(0, 1)
                up = F.interpolate(low.unsqueeze(1), size=(s, s), mode="bilinear", align_corners=False)
                up = F.interpolate(up[..., :nh, :nw], size=(h, w), mode="bilinear", align_corners=False)
                masks.append((up[:, 0] > 0.0).cpu())
                scores.append(out.iou_scores[0].flatten().float().cpu())
        m = torch.cat(masks).numpy()
        sc = torch.cat(scores).numpy()
        keep = (sc >= self.iou_thresh) & m.any(axis=(1, 2))
        m, sc = m[keep], sc[keep]
        if len(m) == 0:
            return m, sc
        order = np.argsort(-sc, kind="stable")
        m, sc = m[order], sc[order]
        _, first = np.unique(np.packbits(m.reshape(len(m), h * w), axis=1), axis=0, return_index=True)
        first = np.sort(first)
        return m[first], sc[first]

    def partition(self, img: np.ndarray) -> np.ndarray:
        """Label image from the candidates: larger masks painted first, smaller ones on top, then
        split into connected components (uncovered pixels included as their own components)."""
        from scipy import ndimage

        m, _ = self.candidates(img)
        h, w = img.shape[:2]
        paint = np.zeros((h, w), np.int64)
        order = np.argsort(-m.sum(axis=(1, 2)), kind="stable")
        for j, i in enumerate(order, start=1):
            paint[m[i]] = j
        labels = np.zeros((h, w), np.int64)
        offset = 0
        for v in np.unique(paint):
            comp, k = ndimage.label(paint == v)
            labels[comp > 0] = comp[comp > 0] + offset - 1
            offset += k
        return labels


# --------------------------------------------------------------------------------------------------
# soft masks


def feather(mask: np.ndarray, sigma: float) -> np.ndarray:
    """Soft float32 mask in [0, 1]: Gaussian blur of the hard mask with values snapped so it is
    exactly 0 far outside and exactly 1 deep inside (within ~3 sigma of the edge it is fractional)."""
    m = np.asarray(mask, dtype=np.float32)
    if m.ndim != 2:
        raise FinPercepError(f"mask must be 2-D, got shape {m.shape}")
    if sigma < 0:
        raise FinPercepError(f"feather sigma must be >= 0, got {sigma}")
    if sigma > 0:
        m = cv2.GaussianBlur(
            m, (0, 0), sigmaX=float(sigma), sigmaY=float(sigma), borderType=cv2.BORDER_REFLECT
        )
    m = np.clip(m, 0.0, 1.0)
    m[m < _SNAP] = 0.0
    m[m > 1.0 - _SNAP] = 1.0
    return m


def make_mask(
    kind: Literal["random", "semantic"],
    img: np.ndarray,
    area_range: tuple[float, float],
    rng: np.random.Generator,
    cfg: MaskConfig,
    segmenter: SamSegmenter | None = None,
) -> tuple[np.ndarray, float]:
    """Feathered soft mask for ``img`` and the area fraction of the hard mask behind it."""
    h, w = img.shape[:2]
    if kind == "random":
        hard = random_mask(h, w, area_range, rng, shapes=cfg.random_shapes, max_tries=cfg.max_tries)
    elif kind == "semantic":
        hard = semantic_mask(
            img,
            area_range,
            rng,
            method=cfg.semantic_method,
            segmenter=segmenter,
            n_segments=cfg.n_segments,
            max_tries=cfg.max_tries,
        )
    else:
        raise FinPercepError(f"unknown mask kind {kind!r}; choose 'random' or 'semantic'")
    return feather(hard, cfg.feather_px), float(hard.mean())
