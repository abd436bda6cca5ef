"""Blur kernels, filtering, resizing, JPEG and 8-bit quantisation for the Real-ESRGAN degradation
(:mod:`.degradation`), on float32 RGB ``(H, W, 3)`` images in [0, 1].

Each is deterministic given its arguments (:func:`random_mixed_kernel` draws from the generator it is given).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import cv2
import numpy as np
from scipy import special

from ..errors import ConfigError, FinPercepError

KERNEL_TYPES: tuple[str, ...] = (
    "iso",
    "aniso",
    "generalized_iso",
    "generalized_aniso",
    "plateau_iso",
    "plateau_aniso",
)
RESIZE_MODES: tuple[str, ...] = ("area", "bilinear", "bicubic")
X4PLUS_KERNEL_PROB: tuple[float, ...] = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
"""Real-ESRGAN x4plus's weights of :data:`KERNEL_TYPES`."""

_CV2_INTERP = {"area": cv2.INTER_AREA, "bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC}
_KERNEL_CROP_TOL = 1e-6
_LOWRANK_TOL = 1e-4


# --------------------------------------------------------------------------------------------- kernels


def _check_kernel_size(kernel_size: int) -> None:
    if int(kernel_size) != kernel_size or kernel_size < 1 or kernel_size % 2 == 0:
        raise ConfigError(f"kernel size must be a positive odd integer, got {kernel_size}")


@functools.lru_cache(maxsize=64)
def _mesh(kernel_size: int) -> tuple[np.ndarray, np.ndarray]:
    ax = np.arange(kernel_size, dtype=np.float64) - kernel_size // 2
    xx, yy = np.meshgrid(ax, ax)
    xx.flags.writeable = False
    yy.flags.writeable = False
    return xx, yy


def _quadratic_form(kernel_size: int, sigma_x: float, sigma_y: float, theta: float) -> np.ndarray:
    """``d^T Sigma^-1 d`` over the kernel grid, with Sigma = R(theta) diag(sx^2, sy^2) R(theta)^T."""
    _check_kernel_size(kernel_size)
    if not (sigma_x > 0 and sigma_y > 0):
        raise ConfigError(f"kernel sigmas must be positive, got ({sigma_x}, {sigma_y})")
    c, s = math.cos(theta), math.sin(theta)
    ix, iy = 1.0 / sigma_x**2, 1.0 / sigma_y**2
    a = c * c * ix + s * s * iy
    b = c * s * (ix - iy)
    d = s * s * ix + c * c * iy
    xx, yy = _mesh(int(kernel_size))
    return a * xx * xx + 2.0 * b * xx * yy + d * yy * yy


def _normalised(kernel: np.ndarray) -> np.ndarray:
    return kernel / kernel.sum()


def anisotropic_gaussian_kernel(kernel_size: int, sigma_x: float, sigma_y: float, theta: float) -> np.ndarray:
    """Bivariate Gaussian; ``sigma_x`` lies along ``(cos theta, sin theta)`` in (column, row) coordinates."""
    return _normalised(np.exp(-0.5 * _quadratic_form(kernel_size, sigma_x, sigma_y, theta)))


def isotropic_gaussian_kernel(kernel_size: int, sigma: float) -> np.ndarray:
    """Isotropic Gaussian (separable)."""
    return anisotropic_gaussian_kernel(kernel_size, sigma, sigma, 0.0)


def generalized_gaussian_kernel(
    kernel_size: int, sigma_x: float, sigma_y: float | None = None, theta: float = 0.0, beta: float = 1.0
) -> np.ndarray:
    """``exp(-0.5 * q^beta)``: beta < 1 heavier tails, beta > 1 flatter top (``sigma_y=None``: isotropic)."""
    q = _quadratic_form(kernel_size, sigma_x, sigma_x if sigma_y is None else sigma_y, theta)
    return _normalised(np.exp(-0.5 * np.power(q, beta)))


def plateau_kernel(
    kernel_size: int, sigma_x: float, sigma_y: float | None = None, theta: float = 0.0, beta: float = 1.0
) -> np.ndarray:
    """Plateau-shaped ``1 / (1 + q^beta)`` kernel (``sigma_y=None``: isotropic)."""
    q = _quadratic_form(kernel_size, sigma_x, sigma_x if sigma_y is None else sigma_y, theta)
    return _normalised(1.0 / (np.power(q, beta) + 1.0))


def circular_lowpass_kernel(cutoff: float, kernel_size: int, pad_to: int = 0) -> np.ndarray:
    """2-D sinc: ideal circular low-pass with angular ``cutoff`` in (0, pi], zero-padded to ``pad_to``."""
    _check_kernel_size(kernel_size)
    if not 0.0 < cutoff <= math.pi:
        raise ConfigError(f"sinc cutoff must be in (0, pi], got {cutoff}")
    xx, yy = _mesh(int(kernel_size))
    r = np.hypot(xx, yy)
    c = kernel_size // 2
    r[c, c] = 1.0
    kernel = cutoff * special.j1(cutoff * r) / (2.0 * math.pi * r)
    kernel[c, c] = cutoff**2 / (4.0 * math.pi)
    kernel = _normalised(kernel)
    if pad_to > kernel_size:
        _check_kernel_size(pad_to)
        p = (pad_to - kernel_size) // 2
        kernel = np.pad(kernel, ((p, p), (p, p)))
    return kernel


def _sample_beta(rng: np.random.Generator, beta_range: tuple[float, float]) -> float:
    """Real-ESRGAN's shape draw: half the time below 1, half above, when the range straddles 1."""
    lo, hi = beta_range
    if lo <= 1.0 <= hi:
        return float(rng.uniform(lo, 1.0) if rng.random() < 0.5 else rng.uniform(1.0, hi))
    return float(rng.uniform(lo, hi))


def random_mixed_kernel(
    rng: np.random.Generator,
    kernel_size: int,
    kernel_list: Sequence[str] = KERNEL_TYPES,
    kernel_prob: Sequence[float] = X4PLUS_KERNEL_PROB,
    sigma_range: tuple[float, float] = (0.2, 3.0),
    betag_range: tuple[float, float] = (0.5, 4.0),
    betap_range: tuple[float, float] = (1.0, 2.0),
    rotation_range: tuple[float, float] = (-math.pi, math.pi),
) -> np.ndarray:
    """Draw a kernel type by ``kernel_prob``, then its parameters (Real-ESRGAN ``random_mixed_kernels``)."""
    _check_kernel_size(kernel_size)
    weights = np.asarray(kernel_prob, dtype=np.float64)
    if len(weights) != len(kernel_list) or len(weights) == 0 or weights.min() < 0 or weights.sum() <= 0:
        raise ConfigError(f"kernel_prob {tuple(kernel_prob)} does not match kernel_list {tuple(kernel_list)}")
    kind = kernel_list[int(rng.choice(len(kernel_list), p=weights / weights.sum()))]
    if kind not in KERNEL_TYPES:
        raise ConfigError(f"unknown kernel type {kind!r}; expected one of {KERNEL_TYPES}")
    sigma_x = float(rng.uniform(*sigma_range))
    if kind.endswith("aniso"):
        sigma_y = float(rng.uniform(*sigma_range))
        theta = float(rng.uniform(*rotation_range))
    else:
        sigma_y, theta = sigma_x, 0.0
    if kind in ("iso", "aniso"):
        return anisotropic_gaussian_kernel(kernel_size, sigma_x, sigma_y, theta)
    if kind.startswith("generalized"):
        beta = _sample_beta(rng, betag_range)
        return generalized_gaussian_kernel(kernel_size, sigma_x, sigma_y, theta, beta)
    return plateau_kernel(kernel_size, sigma_x, sigma_y, theta, _sample_beta(rng, betap_range))


# ------------------------------------------------------------------------------------------ operators


def _crop_kernel(kernel: np.ndarray) -> np.ndarray:
    """Drop outer rings whose total absolute weight is below ``_KERNEL_CROP_TOL`` (output error <= that)."""
    k = kernel.shape[0]
    dropped = 0.0
    while k > 1:
        inner = kernel[1:-1, 1:-1]
        ring = float(np.abs(kernel).sum() - np.abs(inner).sum())
        if dropped + ring > _KERNEL_CROP_TOL:
            break
        dropped += ring
        kernel, k = inner, k - 2
    return kernel


def _direct_cost(k: int) -> float:
    """Relative cost of ``cv2.filter2D`` (direct below 130 taps, DFT above) in units of one separable tap."""
    return 0.16 * k * k if k * k < 130 else 150.0


def filter2d(img: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Correlate each channel with ``kernel``, reflect-padded (PyTorch ``reflect`` = OpenCV ``REFLECT_101``).

    For speed, negligible outer rings are cropped and the kernel runs as a sum of separable passes when a
    low-rank SVD reproduces it to 1e-4 (L1) and is cheaper; the result moves by < 1e-4.
    """
    kernel = _crop_kernel(np.asarray(kernel, dtype=np.float64))
    k = kernel.shape[0]
    if k == 1:
        return img * np.float32(kernel[0, 0])
    u, s, vt = np.linalg.svd(kernel)
    approx = np.zeros_like(kernel)
    max_rank = int(_direct_cost(k) // (2.3 + k))
    rank = 0
    for rank in range(1, min(max_rank, k) + 1):
        approx += s[rank - 1] * np.outer(u[:, rank - 1], vt[rank - 1])
        if np.abs(kernel - approx).sum() < _LOWRANK_TOL:
            break
    else:
        return cv2.filter2D(img, -1, kernel.astype(np.float32), borderType=cv2.BORDER_REFLECT_101)
    ky = (u[:, :rank] * np.sqrt(s[:rank])).T.astype(np.float32)
    kx = (vt[:rank].T * np.sqrt(s[:rank])).T.astype(np.float32)
    out = cv2.sepFilter2D(img, -1, kx[0], ky[0], borderType=cv2.BORDER_REFLECT_101)
    for i in range(1, rank):
        cv2.add(out, cv2.sepFilter2D(img, -1, kx[i], ky[i], borderType=cv2.BORDER_REFLECT_101), dst=out)
    return out


def resize(img: np.ndarray, size: tuple[int, int], mode: str) -> np.ndarray:
    """Resize to ``size = (height, width)`` with a :data:`RESIZE_MODES` mode (no antialias, as PyTorch)."""
    h, w = size
    if (h, w) == img.shape[:2]:
        return img
    return cv2.resize(img, (w, h), interpolation=_CV2_INTERP[mode])


def jpeg_compress(img: np.ndarray, quality: int) -> np.ndarray:
    """Round-trip through an 8-bit JPEG (4:2:0, OpenCV/libjpeg) at integer ``quality`` in [0, 100]."""
    u8 = np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)
    bgr = cv2.cvtColor(u8, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise FinPercepError(f"JPEG encoding failed for an image of shape {img.shape}")
    out = cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    return out.astype(np.float32) * np.float32(1.0 / 255.0)


def quantize8(img: np.ndarray) -> np.ndarray:
    """Clamp to [0, 1] and round to 8-bit levels, keeping float32."""
    return (np.clip(np.rint(img * 255.0), 0, 255) * (1.0 / 255.0)).astype(np.float32)
