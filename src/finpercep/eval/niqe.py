"""NIQE, the Natural Image Quality Evaluator (Mittal, Soundararajan and Bovik, IEEE SPL 2013): no-reference,
lower is better.

The conventions are those of the MATLAB release and of BasicSR's ``calculate_niqe(img, crop_border,
input_order='HWC', convert_to='y')``, against which ``tests/test_niqe.py`` checks this code to 1e-3:

* an RGB image becomes the Y channel of MATLAB's ``rgb2ycbcr`` on the 0-255 scale,
  ``Y = 16 + 65.481 R + 128.553 G + 24.966 B`` (R, G, B in [0, 1]); a grayscale image is used as it is
  (times 255 for floats); after the ``crop_border`` crop the values are rounded to integers;
* the image is cut to whole 96x96 blocks (remainders at the bottom and right are dropped);
* MSCN coefficients ``(I - mu) / (sigma + 1)`` with the packaged 7x7 Gaussian window and replicated
  borders, in float32 like BasicSR (see :func:`mscn`);
* per block, 18 features: the GGD-like fit ``(alpha, (beta_l + beta_r) / 2)`` of the coefficients and the
  AGGD fit ``(alpha, mean, beta_l, beta_r)`` of the products of neighbours in four directions (circular
  shifts), with ``alpha`` taken from the grid 0.2:0.001:10 by moment matching;
* the same on a second scale, the image shrunk by 1/2 with MATLAB's bicubic ``imresize`` (antialiased;
  :func:`imresize`), blocks of 48x48;
* a Gaussian is fitted to the 36-dimensional block features (``nanmean``; covariance of the complete
  rows, as MATLAB's ``nancov``) and NIQE is ``sqrt(d^T pinv((C_pristine + C) / 2) d)`` with ``d`` the
  difference of the means.

One deliberate difference from BasicSR: an image of exactly one block gets the covariance MATLAB's
``cov`` gives a single observation (zeros) instead of NumPy's NaN, so NIQE stays defined.

The pristine model (``assets/niqe/niqe_pris_params.npz``) is the MATLAB release's, see ``ATTRIBUTION.md``
beside it.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from importlib import resources

import numpy as np
from scipy import ndimage
from scipy.special import gamma

from ..errors import FinPercepError

BLOCK_SIZE = 96
"""Side of the square blocks NIQE fits its features on (the MATLAB release's recommended value)."""
ALPHA_GRID = 0.2 + 0.001 * np.arange(9801)
"""Shape parameters the moment matching chooses from: 0.2, 0.201, ..., 10 (MATLAB's ``0.2:0.001:10``)."""
_SHIFTS = ((0, 1), (1, 0), (1, 1), (1, -1))  # horizontal, vertical, main and anti-diagonal neighbours

# ``r(alpha) = Gamma(2/alpha)^2 / (Gamma(1/alpha) Gamma(3/alpha))``; strictly increasing on the grid
_R_GRID = gamma(2.0 / ALPHA_GRID) ** 2 / (gamma(1.0 / ALPHA_GRID) * gamma(3.0 / ALPHA_GRID))


@dataclass(frozen=True)
class PristineModel:
    """The multivariate Gaussian of pristine-image features and the MSCN window."""

    mu: np.ndarray  # (36,)
    cov: np.ndarray  # (36, 36)
    window: np.ndarray  # (7, 7)


@functools.lru_cache(maxsize=1)
def pristine_model() -> PristineModel:
    """The packaged pristine model of the MATLAB NIQE release."""
    path = resources.files("finpercep") / "assets" / "niqe" / "niqe_pris_params.npz"
    with resources.as_file(path) as p, np.load(p) as data:
        mu = np.asarray(data["mu_pris_param"], dtype=np.float64).reshape(-1)
        cov = np.asarray(data["cov_pris_param"], dtype=np.float64)
        window = np.asarray(data["gaussian_window"], dtype=np.float64)
    for a in (mu, cov, window):
        a.setflags(write=False)
    return PristineModel(mu, cov, window)


# --------------------------------------------------------------------------------------------------
# MATLAB's imresize (bicubic)


def _cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with a = -0.5 (MATLAB's ``cubic``)."""
    ax = np.abs(x)
    ax2, ax3 = ax * ax, ax * ax * ax
    near = (1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1)
    far = (-0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0) * ((ax > 1) & (ax <= 2))
    return near + far


def resize_matrix(in_len: int, out_len: int, scale: float, antialiasing: bool = True) -> np.ndarray:
    """The ``(out_len, in_len)`` matrix of MATLAB's bicubic ``imresize`` along one axis.

    Output pixel ``k`` (1-based) sits at input coordinate ``u = k / scale + (1 - 1 / scale) / 2``; when
    shrinking with antialiasing the kernel is stretched by ``1 / scale``. Each row is normalised to sum 1,
    and taps outside the image are folded back by mirroring (MATLAB's symmetric padding).
    """
    width = 4.0
    stretch = scale < 1 and antialiasing
    if stretch:
        width /= scale
    u = np.arange(1, out_len + 1, dtype=np.float64) / scale + 0.5 * (1.0 - 1.0 / scale)
    left = np.floor(u - width / 2.0)
    taps = math.ceil(width) + 2
    idx = left[:, None] + np.arange(taps, dtype=np.float64)[None, :]  # 1-based input positions
    dist = u[:, None] - idx
    w = scale * _cubic(dist * scale) if stretch else _cubic(dist)
    w = w / w.sum(axis=1, keepdims=True)
    m = np.mod(idx.astype(np.int64) - 1, 2 * in_len)  # fold: 1..n, n..1, 1..n, ...
    m = np.where(m < in_len, m, 2 * in_len - 1 - m)
    mat = np.zeros((out_len, in_len), dtype=np.float64)
    np.add.at(mat, (np.repeat(np.arange(out_len), taps), m.ravel()), w.ravel())
    return mat


def imresize(img: np.ndarray, scale: float, *, antialiasing: bool = True) -> np.ndarray:
    """MATLAB's ``imresize(img, scale, 'bicubic')`` of a float ``(H, W)`` or ``(H, W, C)`` array.

    The output is ``ceil(H * scale) x ceil(W * scale)``, float64, not rounded or clipped.
    """
    a = np.asarray(img, dtype=np.float64)
    if a.ndim not in (2, 3) or min(a.shape[:2]) < 1:
        raise FinPercepError(f"imresize expects an (H, W) or (H, W, C) array, got shape {a.shape}")
    if not (math.isfinite(scale) and scale > 0):
        raise FinPercepError(f"imresize needs a positive scale, got {scale}")
    h, w = a.shape[:2]
    out_h, out_w = math.ceil(h * scale), math.ceil(w * scale)
    mh = resize_matrix(h, out_h, scale, antialiasing)
    mw = resize_matrix(w, out_w, scale, antialiasing)
    if a.ndim == 2:
        return mh @ a @ mw.T
    return np.einsum("ih,hwc,jw->ijc", mh, a, mw, optimize=True)


# --------------------------------------------------------------------------------------------------
# features


def niqe_luma(img: np.ndarray, crop_border: int = 0) -> np.ndarray:
    """The float64 ``(H, W)`` plane NIQE measures: rounded Y (RGB) or gray values on the 0-255 scale.

    ``img`` is RGB ``(H, W, 3)`` or grayscale ``(H, W)`` / ``(H, W, 1)``, uint8 (0-255) or float in [0, 1].
    """
    a = np.asarray(img)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] == 3)):
        raise FinPercepError(
            f"NIQE expects an RGB (H, W, 3) or grayscale (H, W) image, got shape {a.shape}"
        )
    if a.dtype == np.uint8:
        x = a.astype(np.float64) / 255.0
    elif np.issubdtype(a.dtype, np.floating):
        x = a.astype(np.float64)
        if not np.isfinite(x).all():
            raise FinPercepError("NIQE got an image with NaN or infinite values")
        lo, hi = (float(x.min()), float(x.max())) if x.size else (0.0, 0.0)
        if lo < 0.0 or hi > 1.0:
            raise FinPercepError(
                f"NIQE expects float images in [0, 1], got values in [{lo:.4g}, {hi:.4g}] "
                "(pass uint8 for 0-255 data)"
            )
    else:
        raise FinPercepError(f"NIQE expects a uint8 or float image, got dtype {a.dtype}")
    if isinstance(crop_border, bool) or not isinstance(crop_border, int | np.integer) or crop_border < 0:
        raise FinPercepError(f"crop_border must be an integer >= 0, got {crop_border!r}")
    h, w = x.shape[:2]
    if crop_border:
        x = x[crop_border : h - crop_border, crop_border : w - crop_border]
    ch, cw = max(h - 2 * crop_border, 0), max(w - 2 * crop_border, 0)
    if ch < BLOCK_SIZE or cw < BLOCK_SIZE:
        crop = f" after the {crop_border} px border crop" if crop_border else ""
        raise FinPercepError(
            f"NIQE needs at least one {BLOCK_SIZE}x{BLOCK_SIZE} block, but the image is {cw}x{ch}"
            f"{crop} (width x height)"
        )
    if x.ndim == 3:
        y = 16.0 + x @ np.array([65.481, 128.553, 24.966])
    else:
        y = 255.0 * x
    return np.round(y)


def mscn(img: np.ndarray, window: np.ndarray) -> np.ndarray:
    """Mean-subtracted contrast-normalised coefficients ``(I - mu) / (sigma + 1)`` (replicated borders).

    Computed in float32, as BasicSR does: in flat areas the coefficients are rounding noise around 0, and
    which side of 0 they fall on changes the AGGD fits. With float64 here NIQE moves by up to 0.07 on the
    reference images (a blurred astronaut); with float32 it stays within 3e-4 of BasicSR.
    """
    x = np.asarray(img, dtype=np.float32)
    mu = ndimage.convolve(x, window, mode="nearest")
    var = ndimage.convolve(x * x, window, mode="nearest") - mu * mu
    return ((x - mu) / (np.sqrt(np.abs(var)) + np.float32(1.0))).astype(np.float64)


def _blocks(x: np.ndarray, size: int) -> np.ndarray:
    """``(n, size * size)``: the whole ``size x size`` blocks of ``x``, row by row."""
    nh, nw = x.shape[0] // size, x.shape[1] // size
    b = x[: nh * size, : nw * size].reshape(nh, size, nw, size).transpose(0, 2, 1, 3)
    return b.reshape(nh * nw, size * size)


def aggd_fit(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Asymmetric generalised Gaussian fit of every row of ``samples`` ``(n, m)``: ``alpha, beta_l, beta_r``.

    ``alpha`` is the grid value whose ``r(alpha)`` is nearest to the bias-corrected moment ratio (the first
    on ties, 0.2 when the ratio is undefined, like MATLAB's ``min``); the betas are NaN on a side without
    samples.
    """
    x = np.asarray(samples, dtype=np.float64)
    neg, pos = x < 0, x > 0
    sq = x * x
    with np.errstate(invalid="ignore", divide="ignore"):
        left = np.sqrt((sq * neg).sum(axis=1) / neg.sum(axis=1))
        right = np.sqrt((sq * pos).sum(axis=1) / pos.sum(axis=1))
        ghat = left / right
        rhat = np.abs(x).mean(axis=1) ** 2 / sq.mean(axis=1)
        rnorm = rhat * (ghat**3 + 1.0) * (ghat + 1.0) / (ghat**2 + 1.0) ** 2
    # nearest grid value of a strictly increasing grid: compare the neighbours either side
    hi = np.clip(np.searchsorted(_R_GRID, np.nan_to_num(rnorm, nan=-np.inf)), 0, len(_R_GRID) - 1)
    lo = np.maximum(hi - 1, 0)
    pick = np.where((_R_GRID[lo] - rnorm) ** 2 <= (_R_GRID[hi] - rnorm) ** 2, lo, hi)
    pick = np.where(np.isnan(rnorm), 0, pick)
    alpha = ALPHA_GRID[pick]
    k = np.sqrt(gamma(1.0 / alpha) / gamma(3.0 / alpha))
    return alpha, left * k, right * k


def block_features(coeffs: np.ndarray, size: int) -> np.ndarray:
    """``(n, 18)`` NIQE features of the whole ``size x size`` blocks of an MSCN map."""
    blocks = _blocks(coeffs, size).reshape(-1, size, size)
    n = blocks.shape[0]
    flat = blocks.reshape(n, -1)
    alpha, bl, br = aggd_fit(flat)
    cols = [alpha, (bl + br) / 2.0]
    for shift in _SHIFTS:
        prod = (blocks * np.roll(blocks, shift, axis=(1, 2))).reshape(n, -1)
        alpha, bl, br = aggd_fit(prod)
        mean = (br - bl) * gamma(2.0 / alpha) / gamma(1.0 / alpha)
        cols += [alpha, mean, bl, br]
    return np.stack(cols, axis=1)


def niqe_features(luma: np.ndarray, window: np.ndarray | None = None) -> np.ndarray:
    """``(n_blocks, 36)`` features of a 0-255 plane: 18 at full size and 18 at half size per block."""
    if window is None:
        window = pristine_model().window
    nh, nw = luma.shape[0] // BLOCK_SIZE, luma.shape[1] // BLOCK_SIZE
    img = np.asarray(luma, dtype=np.float64)[: nh * BLOCK_SIZE, : nw * BLOCK_SIZE]
    full = block_features(mscn(img, window), BLOCK_SIZE)
    half = block_features(mscn(imresize(img, 0.5), window), BLOCK_SIZE // 2)
    return np.concatenate([full, half], axis=1)


def _nancov(feats: np.ndarray) -> np.ndarray:
    """Covariance of the rows without NaN (MATLAB's ``nancov``; a single row gives zeros, as ``cov``)."""
    rows = feats[~np.isnan(feats).any(axis=1)]
    if len(rows) == 0:
        raise FinPercepError(
            f"NIQE is undefined for this image: none of its {len(feats)} blocks has a complete set of "
            "features (is it flat?)"
        )
    if len(rows) == 1:
        return np.zeros((feats.shape[1], feats.shape[1]))
    return np.cov(rows, rowvar=False)


def niqe_distance(feats: np.ndarray, model: PristineModel | None = None) -> float:
    """NIQE of block features ``(n, 36)``: the distance of their Gaussian to the pristine one."""
    model = model or pristine_model()
    cov = _nancov(feats)
    with np.errstate(invalid="ignore"):
        mu = np.nanmean(feats, axis=0)
    if np.isnan(mu).any():
        raise FinPercepError("NIQE is undefined for this image: a feature is NaN in every block")
    d = model.mu - mu
    q = float(d @ np.linalg.pinv((model.cov + cov) / 2.0) @ d)
    return math.sqrt(max(q, 0.0))


def niqe(img: np.ndarray, crop_border: int = 0) -> float:
    """NIQE of one image (lower is better; natural photos score about 3-6).

    ``img``: RGB ``(H, W, 3)`` or grayscale ``(H, W)``, uint8 or float in [0, 1]; ``crop_border`` pixels
    are dropped on every side first. Raises :class:`~finpercep.errors.FinPercepError` for a wrong shape or
    dtype, NaN values, fewer than 96x96 pixels left, or an image without structure (e.g. flat).
    """
    model = pristine_model()
    return niqe_distance(niqe_features(niqe_luma(img, crop_border), model.window), model)
