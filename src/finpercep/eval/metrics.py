"""Full-reference SR metrics as pure functions: PSNR, SSIM and the GT-based artifact measure.

Images are float ``(H, W, 3)`` RGB arrays in ``[0, 1]``; the data range is 1. Conventions follow the SR
literature (BasicSR / the MATLAB reference code):

* ``crop_border`` pixels are removed on every side before measuring (usually the scale factor);
* ``y_channel=True`` measures the luma of ITU-R BT.601, ``Y = (16 + 65.481 R + 128.553 G + 24.966 B) / 255``;
* SSIM (Wang et al. 2004) uses an 11x11 Gaussian window with sigma 1.5, ``K1 = 0.01``, ``K2 = 0.03``,
  population statistics, and averages the SSIM map over the *valid* window positions (no padding); RGB
  SSIM is the mean of the three channels. This equals ``skimage.metrics.structural_similarity(...,
  gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1)``.

The artifact measure compares an output with its HR image through the ground-truth degradation map of
:mod:`finpercep.data.gtmap`: ``fraction`` is the share of pixels where ``M_gt(output, HR) > tau`` and
``mean`` the mean of ``M_gt``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..data.features import FeatureExtractor
from ..data.gtmap import GTMapConfig, gt_degradation_maps
from ..errors import FinPercepError

Y_WEIGHTS = np.array([65.481, 128.553, 24.966], dtype=np.float64) / 255.0
Y_OFFSET = 16.0 / 255.0
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def rgb_to_y(img: np.ndarray) -> np.ndarray:
    """BT.601 luma ``(H, W)`` of an RGB image in [0, 1] (range [16/255, 235/255])."""
    img = np.asarray(img, dtype=np.float64)
    if img.ndim != 3 or img.shape[2] != 3:
        raise FinPercepError(f"expected an (H, W, 3) RGB image, got shape {img.shape}")
    return img @ Y_WEIGHTS + Y_OFFSET


def _prepare(
    out: np.ndarray, ref: np.ndarray, crop_border: int, y_channel: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Both images as float64 ``(H', W', C)`` after the border crop (and luma conversion)."""
    a, b = np.asarray(out, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 3 or a.shape[2] != 3:
        raise FinPercepError(f"expected two (H, W, 3) images of one size, got {a.shape} and {b.shape}")
    if crop_border < 0:
        raise FinPercepError(f"crop_border must be >= 0, got {crop_border}")
    if crop_border:
        if min(a.shape[:2]) <= 2 * crop_border:
            raise FinPercepError(
                f"a {a.shape[1]}x{a.shape[0]} image has nothing left after a {crop_border} px crop"
            )
        a = a[crop_border:-crop_border, crop_border:-crop_border]
        b = b[crop_border:-crop_border, crop_border:-crop_border]
    if y_channel:
        return rgb_to_y(a)[..., None], rgb_to_y(b)[..., None]
    return a, b


def psnr(out: np.ndarray, ref: np.ndarray, *, crop_border: int = 0, y_channel: bool = False) -> float:
    """Peak signal-to-noise ratio in dB for data range 1 (``inf`` for identical images)."""
    a, b = _prepare(out, ref, crop_border, y_channel)
    mse = float(np.mean((a - b) ** 2))
    return math.inf if mse == 0.0 else 10.0 * math.log10(1.0 / mse)


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
    """Normalised 1-D Gaussian of ``size`` taps (the separable SSIM window is its outer product)."""
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    g = np.exp(-(x**2) / (2.0 * sigma**2))
    return g / g.sum()


def _filter_valid(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Separable 'valid' filtering of ``[C, 1, H, W]`` with the 1-D kernel ``g``."""
    n = g.numel()
    x = F.conv2d(x, g.view(1, 1, n, 1))
    return F.conv2d(x, g.view(1, 1, 1, n))


def ssim(out: np.ndarray, ref: np.ndarray, *, crop_border: int = 0, y_channel: bool = False) -> float:
    """Mean structural similarity (Gaussian 11x11, sigma 1.5), averaged over channels."""
    a, b = _prepare(out, ref, crop_border, y_channel)
    if min(a.shape[:2]) < SSIM_WINDOW:
        raise FinPercepError(
            f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels, got {a.shape[:2]}"
        )
    x = torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))[:, None]
    y = torch.from_numpy(np.ascontiguousarray(b.transpose(2, 0, 1)))[:, None]
    g = torch.from_numpy(gaussian_window())
    mu_x, mu_y = _filter_valid(x, g), _filter_valid(y, g)
    sxx = _filter_valid(x * x, g) - mu_x**2
    syy = _filter_valid(y * y, g) - mu_y**2
    sxy = _filter_valid(x * y, g) - mu_x * mu_y
    c1, c2 = SSIM_K1**2, SSIM_K2**2
    smap = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return float(smap.mean(dim=(1, 2, 3)).mean())


@dataclass(frozen=True)
class ArtifactStats:
    """Artifact measure of one output: share of pixels with ``M_gt > tau`` and the mean of ``M_gt``."""

    fraction: float
    mean: float


def artifact_maps(
    outs: np.ndarray | Sequence[np.ndarray],
    hrs: np.ndarray | Sequence[np.ndarray],
    *,
    gtmap: GTMapConfig | None = None,
    extractor: FeatureExtractor | None = None,
) -> np.ndarray:
    """``M_gt(output, HR)`` of a batch: float32 ``(N, H, W)`` in [0, 1]."""
    o, h = np.asarray(outs, dtype=np.float32), np.asarray(hrs, dtype=np.float32)
    if o.ndim == 3:
        o, h = o[None], h[None]
    if o.shape != h.shape or o.ndim != 4 or o.shape[-1] != 3:
        raise FinPercepError(
            f"expected outputs and HR images of one shape (N, H, W, 3), got {o.shape} and {h.shape}"
        )
    return gt_degradation_maps(o, h, extractor, gtmap)


def artifact_stats(maps: np.ndarray, tau: float) -> list[ArtifactStats]:
    """:class:`ArtifactStats` of every map in a batch ``(N, H, W)`` (or one ``(H, W)`` map)."""
    if not 0.0 <= tau < 1.0:
        raise FinPercepError(f"tau must lie in [0, 1), got {tau}")
    m = np.asarray(maps, dtype=np.float64)
    if m.ndim == 2:
        m = m[None]
    return [ArtifactStats(float((mi > tau).mean()), float(mi.mean())) for mi in m]


def artifact_measure(
    out: np.ndarray,
    hr: np.ndarray,
    tau: float,
    *,
    gtmap: GTMapConfig | None = None,
    extractor: FeatureExtractor | None = None,
) -> ArtifactStats:
    """Artifact measure of one ``(H, W, 3)`` output against its HR image."""
    return artifact_stats(artifact_maps(out, hr, gtmap=gtmap, extractor=extractor), tau)[0]
