"""Real-ESRGAN second-order degradation (Wang et al., 2021) in numpy + OpenCV.

The pipeline follows Real-ESRGAN's ``RealESRGANDataset`` + ``RealESRGANModel.feed_data``:

1. first pass on the HR image: blur (Gaussian family, plateau or sinc kernel), random resize
   (up / down / keep, random area/bilinear/bicubic), Gaussian or Poisson noise (colour or gray), JPEG;
2. second pass: optional blur, resize to ``target * s``, noise, then the final stage in random order:
   ``[resize to the target size + final sinc, JPEG]`` or ``[JPEG, resize + final sinc]``;
3. clamp and round to 8-bit levels.

Sampling is split from application: :func:`sample_params` draws every random choice into a
:class:`DegradationParams` (so the same seed gives the same recipe whatever the image size) and
:func:`apply_params` is deterministic given those parameters. :func:`degrade` chains the two.

The kernels, filtering, resizing and JPEG are in :mod:`.degradation_ops` and re-exported here; the noise
models are below.

Differences from the PyTorch original, all deliberate: JPEG goes through ``cv2.imencode`` with an integer
quality (Real-ESRGAN's DiffJPEG takes a real one), the unsharp-masked GT that Real-ESRGAN degrades is
not produced here (degrade the sharpened image yourself if you want it), interpolation uses OpenCV's
kernels (``area`` differs slightly from PyTorch's adaptive pooling for non-integer factors), and Poisson
noise uses an exact inverse-CDF table sampler instead of ``torch.poisson`` (same distribution, ~2x faster
than numpy's per-sample sampler).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image
from scipy import special

from ..config import check, check_prob, check_range, option
from ..errors import ConfigError, FinPercepError
from .degradation_ops import (
    KERNEL_TYPES,
    RESIZE_MODES,
    X4PLUS_KERNEL_PROB,
    anisotropic_gaussian_kernel,
    circular_lowpass_kernel,
    filter2d,
    generalized_gaussian_kernel,
    isotropic_gaussian_kernel,
    jpeg_compress,
    plateau_kernel,
    quantize8,
    random_mixed_kernel,
    resize,
)

__all__ = [
    "KERNEL_TYPES",
    "MIN_SIZE_FACTOR",
    "RESIZE_MODES",
    "SUPPORTED_SCALES",
    "X4PLUS_KERNEL_PROB",
    "DegradationConfig",
    "DegradationParams",
    "PassParams",
    "add_gaussian_noise",
    "add_poisson_noise",
    "anisotropic_gaussian_kernel",
    "apply_params",
    "check_hr",
    "circular_lowpass_kernel",
    "degrade",
    "degrade_batch",
    "filter2d",
    "generalized_gaussian_kernel",
    "isotropic_gaussian_kernel",
    "jpeg_compress",
    "plateau_kernel",
    "quantize8",
    "random_mixed_kernel",
    "resize",
    "sample_params",
    "simple_degrade",
]

SUPPORTED_SCALES: tuple[int, ...] = (2, 4)
MIN_SIZE_FACTOR = 4
"""HR images must be at least ``MIN_SIZE_FACTOR * scale`` pixels on each side."""

_GRAY_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_FINAL_JPEG_FIRST_PROB = 0.5


@dataclass(frozen=True)
class DegradationConfig:
    """Real-ESRGAN second-order degradation; defaults are the published RealESRGAN_x4plus recipe.

    ``blur_prob``, ``jpeg_prob``, ``jpeg_prob2`` and ``resize_modes`` are extensions (Real-ESRGAN
    always blurs and compresses and always picks among all three modes); their defaults keep the recipe.
    """

    scale: int = option(4, help="downscale factor between HR and LR (2 or 4)")
    kernel_size_range: tuple[int, int] = option((7, 21), help="odd blur/sinc kernel sizes, sampled uniformly")
    resize_modes: tuple[str, ...] = option(RESIZE_MODES, help="interpolation modes to pick from")

    blur_prob: float = option(1.0, help="probability of the first-pass blur")
    kernel_list: tuple[str, ...] = option(KERNEL_TYPES, help="first-pass blur kernel types")
    kernel_prob: tuple[float, ...] = option(X4PLUS_KERNEL_PROB, help="weights of kernel_list")
    sinc_prob: float = option(0.1, help="probability that the first-pass kernel is a sinc")
    blur_sigma: tuple[float, float] = option((0.2, 3.0), help="first-pass kernel sigma range")
    betag_range: tuple[float, float] = option((0.5, 4.0), help="generalized Gaussian shape range")
    betap_range: tuple[float, float] = option((1.0, 2.0), help="plateau shape range")
    resize_prob: tuple[float, float, float] = option((0.2, 0.7, 0.1), help="first up/down/keep weights")
    resize_range: tuple[float, float] = option((0.15, 1.5), help="first resize factor range")
    gaussian_noise_prob: float = option(0.5, help="probability of Gaussian (else Poisson) noise")
    noise_range: tuple[float, float] = option((1.0, 30.0), help="Gaussian noise sigma range, in 0..255 units")
    poisson_scale_range: tuple[float, float] = option((0.05, 3.0), help="Poisson noise scale range")
    gray_noise_prob: float = option(0.4, help="probability that the noise is the same on all channels")
    jpeg_prob: float = option(1.0, help="probability of the first-pass JPEG")
    jpeg_range: tuple[float, float] = option((30.0, 95.0), help="first-pass JPEG quality range")

    second_blur_prob: float = option(0.8, help="probability of the second-pass blur")
    kernel_list2: tuple[str, ...] = option(KERNEL_TYPES, help="second-pass blur kernel types")
    kernel_prob2: tuple[float, ...] = option(X4PLUS_KERNEL_PROB, help="weights of kernel_list2")
    sinc_prob2: float = option(0.1, help="probability that the second-pass kernel is a sinc")
    blur_sigma2: tuple[float, float] = option((0.2, 1.5), help="second-pass kernel sigma range")
    betag_range2: tuple[float, float] = option((0.5, 4.0), help="second-pass generalized Gaussian shape")
    betap_range2: tuple[float, float] = option((1.0, 2.0), help="second-pass plateau shape range")
    resize_prob2: tuple[float, float, float] = option((0.3, 0.4, 0.3), help="second up/down/keep weights")
    resize_range2: tuple[float, float] = option((0.3, 1.2), help="second resize factor range (x target size)")
    gaussian_noise_prob2: float = option(0.5, help="second-pass probability of Gaussian (else Poisson) noise")
    noise_range2: tuple[float, float] = option((1.0, 25.0), help="second-pass Gaussian sigma range (0..255)")
    poisson_scale_range2: tuple[float, float] = option((0.05, 2.5), help="second-pass Poisson scale range")
    gray_noise_prob2: float = option(0.4, help="second-pass gray-noise probability")
    jpeg_prob2: float = option(1.0, help="probability of the final JPEG")
    jpeg_range2: tuple[float, float] = option((30.0, 95.0), help="final JPEG quality range")

    final_sinc_prob: float = option(0.8, help="probability of the final sinc filter")

    def __post_init__(self) -> None:
        check(self.scale in SUPPORTED_SCALES, f"scale must be one of {SUPPORTED_SCALES}, got {self.scale}")
        ks = self.kernel_size_range
        check_range("kernel_size_range", ks, 3, 41)
        check(
            all(float(k).is_integer() and int(k) % 2 == 1 for k in ks),
            f"kernel_size_range must hold odd integers, got {ks}",
        )
        check(len(self.resize_modes) > 0, "resize_modes must not be empty")
        for mode in self.resize_modes:
            check(mode in RESIZE_MODES, f"unknown resize mode {mode!r}; expected one of {RESIZE_MODES}")
        for sfx in ("", "2"):
            kl, kp = getattr(self, "kernel_list" + sfx), getattr(self, "kernel_prob" + sfx)
            for name in kl:
                check(name in KERNEL_TYPES, f"unknown kernel type {name!r} in kernel_list{sfx}; "
                      f"expected one of {KERNEL_TYPES}")
            _check_weights(f"kernel_prob{sfx}", kp, len(kl))
            _check_weights(f"resize_prob{sfx}", getattr(self, "resize_prob" + sfx), 3)
            for name in ("sinc_prob", "gaussian_noise_prob", "gray_noise_prob", "jpeg_prob"):
                check_prob(name + sfx, getattr(self, name + sfx))
            check_range("blur_sigma" + sfx, getattr(self, "blur_sigma" + sfx), 1e-3, 50.0)
            check_range("betag_range" + sfx, getattr(self, "betag_range" + sfx), 1e-2, 20.0)
            check_range("betap_range" + sfx, getattr(self, "betap_range" + sfx), 1e-2, 20.0)
            rr = getattr(self, "resize_range" + sfx)
            check_range("resize_range" + sfx, rr, 0.01, 8.0)
            check(rr[0] <= 1.0 <= rr[1], f"resize_range{sfx} must contain 1 (down below, up above), got {rr}")
            check_range("noise_range" + sfx, getattr(self, "noise_range" + sfx), 0.0, 255.0)
            check_range("poisson_scale_range" + sfx, getattr(self, "poisson_scale_range" + sfx), 0.0, 50.0)
            check_range("jpeg_range" + sfx, getattr(self, "jpeg_range" + sfx), 1.0, 100.0)
        check_prob("blur_prob", self.blur_prob)
        check_prob("second_blur_prob", self.second_blur_prob)
        check_prob("final_sinc_prob", self.final_sinc_prob)

    @classmethod
    def downscale_only(cls, scale: int = 4, mode: str = "bicubic") -> DegradationConfig:
        """A config that disables every degradation: the output is a plain ``mode`` resize (then 8-bit)."""
        off: dict[str, object] = {}
        for sfx in ("", "2"):
            off |= {
                "resize_prob" + sfx: (0.0, 0.0, 1.0),
                "noise_range" + sfx: (0.0, 0.0),
                "poisson_scale_range" + sfx: (0.0, 0.0),
                "jpeg_prob" + sfx: 0.0,
            }
        return cls(
            scale=scale, resize_modes=(mode,), blur_prob=0.0, second_blur_prob=0.0, final_sinc_prob=0.0, **off
        )


def _check_weights(name: str, weights: Sequence[float], n: int) -> None:
    check(len(weights) == n, f"{name} must have {n} entries, got {len(weights)}")
    check(all(w >= 0.0 for w in weights) and sum(weights) > 0.0,
          f"{name} must be non-negative weights with a positive sum, got {tuple(weights)}")


# --------------------------------------------------------------------------------------------- noise


def add_gaussian_noise(img: np.ndarray, sigma: float, gray: bool, rng: np.random.Generator) -> np.ndarray:
    """Add N(0, (sigma/255)^2) noise (one field shared by all channels when ``gray``) and clip to [0, 1]."""
    if sigma > 0:
        shape = img.shape[:2] if gray else img.shape
        noise = rng.standard_normal(shape, dtype=np.float32)
        noise *= np.float32(sigma / 255.0)
        img = img + (noise[..., None] if gray else noise)
    return np.clip(img, 0.0, 1.0)


_POISSON_GUIDE_BITS = 10


@functools.lru_cache(maxsize=16)
def _poisson_tables(vals: int) -> tuple[np.ndarray, np.ndarray, int]:
    """CDF rows of Poisson(c * vals / 255), c = 0..255, and a guide table for inverse-CDF sampling.

    ``guide[c, g]`` is the first count whose CDF exceeds ``g / G`` (G = 2^bits), so a uniform draw in
    bucket ``g`` has its count between ``guide[c, g]`` and ``guide[c, g + 1]``; most buckets hold one count.
    """
    width = int(math.ceil(vals + 12.0 * math.sqrt(vals) + 16.0)) + 1
    lam = np.arange(256, dtype=np.float64) * (vals / 255.0)
    cdf = special.pdtr(np.arange(width, dtype=np.float64)[None, :], lam[:, None])
    cdf[:, -1] = 1.0
    cdf = np.maximum.accumulate(cdf, axis=1)
    n_buckets = 1 << _POISSON_GUIDE_BITS
    grid = np.arange(n_buckets, dtype=np.float64) / n_buckets
    guide = np.empty((256, n_buckets + 1), dtype=np.int16)
    for c, row in enumerate(cdf):
        guide[c, :-1] = np.searchsorted(row, grid, side="right")
    guide[:, -1] = width - 1
    for t in (cdf, guide):
        t.flags.writeable = False
    return cdf.ravel(), guide.ravel(), width


def _sample_poisson_levels(levels: np.ndarray, vals: int, rng: np.random.Generator) -> np.ndarray:
    """Exact Poisson(levels * vals / 255) draws for uint8 ``levels`` (inverse CDF of 32-bit uniforms)."""
    cdf, guide, width = _poisson_tables(vals)
    cls = levels.ravel().astype(np.int32)
    bits = rng.integers(0, 1 << 32, size=cls.size, dtype=np.uint32)
    bucket = cls * np.int32((1 << _POISSON_GUIDE_BITS) + 1)
    bucket += (bits >> np.uint32(32 - _POISSON_GUIDE_BITS)).astype(np.int32)
    counts = guide[bucket].astype(np.int32)
    sel = np.flatnonzero(guide[bucket + 1] > counts)
    if sel.size:
        lo, hi = counts[sel], guide[bucket[sel] + 1].astype(np.int32)
        u = bits[sel] * (1.0 / 2**32)
        row = cls[sel].astype(np.int64) * width
        for _ in range(int((hi - lo).max()).bit_length()):
            mid = (lo + hi) >> 1
            right = cdf[row + mid] <= u
            lo = np.where(right, mid + 1, lo)
            hi = np.where(right, hi, mid)
        counts[sel] = lo
    return counts.reshape(levels.shape)


def add_poisson_noise(img: np.ndarray, scale: float, gray: bool, rng: np.random.Generator) -> np.ndarray:
    """Real-ESRGAN's Poisson noise (``2^ceil(log2(#8-bit levels))`` photons at white), times ``scale``."""
    if scale > 0:
        base = img @ _GRAY_WEIGHTS if gray else img
        levels = np.clip(np.rint(base * 255.0), 0, 255).astype(np.uint8)
        n_levels = int(np.count_nonzero(np.bincount(levels.ravel(), minlength=256)))
        vals = 2 ** int(math.ceil(math.log2(n_levels)))
        counts = _sample_poisson_levels(levels, vals, rng).astype(np.float32)
        noise = counts * np.float32(1.0 / vals) - levels.astype(np.float32) * np.float32(1.0 / 255.0)
        noise *= np.float32(scale)
        img = img + (noise[..., None] if gray else noise)
    return np.clip(img, 0.0, 1.0)


# ----------------------------------------------------------------------------------- params & pipeline


@dataclass(frozen=True, eq=False)
class PassParams:
    """Random choices of one degradation pass.

    ``resize_factor`` multiplies the input size in the first pass and the target LR size in the second.
    ``noise_level`` is the Gaussian sigma (0..255 units) or the Poisson scale. The second pass's JPEG is
    :attr:`DegradationParams.final_jpeg_quality` (its ``jpeg_quality`` stays ``None``).
    """

    kernel: np.ndarray | None
    resize_factor: float
    resize_mode: str
    noise: Literal["gaussian", "poisson"]
    noise_level: float
    gray_noise: bool
    jpeg_quality: int | None


@dataclass(frozen=True, eq=False)
class DegradationParams:
    """Every random choice of one :func:`degrade` call; :func:`apply_params` is deterministic given it."""

    scale: int
    first: PassParams
    second: PassParams
    final_mode: str
    final_sinc: np.ndarray | None
    final_jpeg_quality: int | None
    jpeg_before_resize: bool
    noise_seed: int

    def describe(self) -> dict[str, object]:
        """JSON-ready summary (kernels reduced to their size) for logs and manifests."""
        d = dataclasses.asdict(self)
        for part in (d["first"], d["second"]):
            part["kernel"] = None if part["kernel"] is None else int(part["kernel"].shape[0])
        d["final_sinc"] = None if self.final_sinc is None else int(self.final_sinc.shape[0])
        return d


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _kernel_size(rng: np.random.Generator, cfg: DegradationConfig) -> int:
    lo, hi = (int(k) for k in cfg.kernel_size_range)
    return 2 * int(rng.integers(lo // 2, hi // 2 + 1)) + 1


def _sample_blur_kernel(rng: np.random.Generator, cfg: DegradationConfig, sfx: str) -> np.ndarray:
    size = _kernel_size(rng, cfg)
    if rng.random() < getattr(cfg, "sinc_prob" + sfx):
        lo = math.pi / 3 if size < 13 else math.pi / 5
        return circular_lowpass_kernel(float(rng.uniform(lo, math.pi)), size)
    return random_mixed_kernel(
        rng,
        size,
        getattr(cfg, "kernel_list" + sfx),
        getattr(cfg, "kernel_prob" + sfx),
        getattr(cfg, "blur_sigma" + sfx),
        getattr(cfg, "betag_range" + sfx),
        getattr(cfg, "betap_range" + sfx),
    )


def _sample_quality(rng: np.random.Generator, prob: float, qrange: tuple[float, float]) -> int | None:
    if rng.random() >= prob:
        return None
    return int(round(float(rng.uniform(*qrange))))


def _sample_pass(rng: np.random.Generator, cfg: DegradationConfig, sfx: str) -> PassParams:
    blur_prob = cfg.blur_prob if sfx == "" else cfg.second_blur_prob
    kernel = _sample_blur_kernel(rng, cfg, sfx) if rng.random() < blur_prob else None
    weights = np.asarray(getattr(cfg, "resize_prob" + sfx), dtype=np.float64)
    updown = int(rng.choice(3, p=weights / weights.sum()))
    lo, hi = getattr(cfg, "resize_range" + sfx)
    factor = 1.0
    if updown == 0:
        factor = float(rng.uniform(1.0, hi))
    elif updown == 1:
        factor = float(rng.uniform(lo, 1.0))
    mode = _pick(rng, cfg.resize_modes)
    gaussian = rng.random() < getattr(cfg, "gaussian_noise_prob" + sfx)
    level_range = getattr(cfg, "noise_range" + sfx) if gaussian else getattr(cfg, "poisson_scale_range" + sfx)
    level = float(rng.uniform(*level_range))
    gray = bool(rng.random() < getattr(cfg, "gray_noise_prob" + sfx))
    quality = _sample_quality(rng, cfg.jpeg_prob, cfg.jpeg_range) if sfx == "" else None
    return PassParams(kernel, factor, mode, "gaussian" if gaussian else "poisson", level, gray, quality)


def sample_params(cfg: DegradationConfig, rng: np.random.Generator) -> DegradationParams:
    """Draw every random choice of one degradation (independent of the image)."""
    first = _sample_pass(rng, cfg, "")
    second = _sample_pass(rng, cfg, "2")
    final_sinc = None
    if rng.random() < cfg.final_sinc_prob:
        final_sinc = circular_lowpass_kernel(float(rng.uniform(math.pi / 3, math.pi)), _kernel_size(rng, cfg))
    return DegradationParams(
        scale=cfg.scale,
        first=first,
        second=second,
        final_mode=_pick(rng, cfg.resize_modes),
        final_sinc=final_sinc,
        final_jpeg_quality=_sample_quality(rng, cfg.jpeg_prob2, cfg.jpeg_range2),
        jpeg_before_resize=bool(rng.random() < _FINAL_JPEG_FIRST_PROB),
        noise_seed=int(rng.integers(2**63)),
    )


def check_hr(hr: object, scale: int) -> np.ndarray:
    """Validate an HR image for degradation and return it as contiguous float32."""
    if not isinstance(hr, np.ndarray):
        raise FinPercepError(f"expected a numpy image, got {type(hr).__name__}")
    if hr.ndim != 3 or hr.shape[2] != 3:
        raise FinPercepError(f"expected an (H, W, 3) RGB image, got shape {hr.shape}")
    if not np.issubdtype(hr.dtype, np.floating):
        raise FinPercepError(f"expected a float image in [0, 1], got dtype {hr.dtype} (divide 8-bit by 255)")
    h, w = hr.shape[:2]
    if h % scale or w % scale:
        raise FinPercepError(f"image size {h}x{w} is not divisible by scale {scale}; crop it first")
    if min(h, w) < MIN_SIZE_FACTOR * scale:
        raise FinPercepError(f"image size {h}x{w} is too small for scale {scale}: "
                             f"each side needs at least {MIN_SIZE_FACTOR * scale} pixels")
    img = np.ascontiguousarray(hr, dtype=np.float32)
    lo, hi = float(img.min()), float(img.max())
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise FinPercepError("image contains NaN or infinite values")
    if lo < -1e-3 or hi > 1.0 + 1e-3:
        raise FinPercepError(f"image values must lie in [0, 1], got range [{lo:.4g}, {hi:.4g}]")
    return np.clip(img, 0.0, 1.0)


def _noise(img: np.ndarray, p: PassParams, rng: np.random.Generator) -> np.ndarray:
    if p.noise == "gaussian":
        return add_gaussian_noise(img, p.noise_level, p.gray_noise, rng)
    return add_poisson_noise(img, p.noise_level, p.gray_noise, rng)


def apply_params(hr: np.ndarray, params: DegradationParams) -> np.ndarray:
    """Degrade ``hr`` (float32 (H, W, 3) in [0, 1]) with fixed ``params`` into (H/s, W/s, 3) 8-bit levels."""
    return _apply(check_hr(hr, params.scale), params)


def _apply(img: np.ndarray, params: DegradationParams) -> np.ndarray:
    h, w = img.shape[:2]
    lr_size = (h // params.scale, w // params.scale)
    rng = np.random.default_rng(params.noise_seed)

    p = params.first
    if p.kernel is not None:
        img = filter2d(img, p.kernel)
    if p.resize_factor != 1.0:
        img = resize(img, (max(1, int(h * p.resize_factor)), max(1, int(w * p.resize_factor))), p.resize_mode)
    img = _noise(img, p, rng)
    if p.jpeg_quality is not None:
        img = jpeg_compress(img, p.jpeg_quality)

    p = params.second
    if p.kernel is not None:
        img = filter2d(img, p.kernel)
    size2 = (max(1, int(lr_size[0] * p.resize_factor)), max(1, int(lr_size[1] * p.resize_factor)))
    img = resize(img, size2, p.resize_mode)
    img = _noise(img, p, rng)

    def resize_and_sinc(x: np.ndarray) -> np.ndarray:
        x = resize(x, lr_size, params.final_mode)
        return x if params.final_sinc is None else filter2d(x, params.final_sinc)

    def final_jpeg(x: np.ndarray) -> np.ndarray:
        return x if params.final_jpeg_quality is None else jpeg_compress(x, params.final_jpeg_quality)

    if params.jpeg_before_resize:
        img = resize_and_sinc(final_jpeg(img))
    else:
        img = final_jpeg(resize_and_sinc(img))
    return quantize8(img)


def degrade(hr: np.ndarray, cfg: DegradationConfig, rng: np.random.Generator) -> np.ndarray:
    """Synthesize a Real-ESRGAN LR image: float32 (H/scale, W/scale, 3) in [0, 1] on 8-bit levels."""
    img = check_hr(hr, cfg.scale)
    return _apply(img, sample_params(cfg, rng))


def degrade_batch(hr_list: Sequence[np.ndarray], cfg: DegradationConfig, seed: int) -> list[np.ndarray]:
    """Degrade each image with its own child generator of ``seed`` (results do not depend on list order)."""
    children = np.random.SeedSequence(seed).spawn(len(hr_list))
    rngs = [np.random.default_rng(child) for child in children]
    return [degrade(hr, cfg, rng) for hr, rng in zip(hr_list, rngs, strict=True)]


def simple_degrade(hr: np.ndarray, scale: int) -> np.ndarray:
    """Antialiased bicubic downscale only (Pillow, as MATLAB ``imresize``), rounded to 8-bit levels."""
    if scale not in SUPPORTED_SCALES:
        raise ConfigError(f"scale must be one of {SUPPORTED_SCALES}, got {scale}")
    img = check_hr(hr, scale)
    h, w = img.shape[:2]
    size = (w // scale, h // scale)
    channels = [
        np.asarray(Image.fromarray(np.ascontiguousarray(img[..., c])).resize(size, Image.Resampling.BICUBIC))
        for c in range(3)
    ]
    return quantize8(np.stack(channels, axis=-1))
