"""Dense feature extractors for the feature term ``Diff_feat`` of the ground-truth degradation map.

A :class:`FeatureExtractor` maps a batch ``[B, 3, H, W]`` in [0, 1] to dense features
``[B, C, h, w]`` at any resolution; :mod:`finpercep.data.gtmap` takes the per-position cosine
distance between the features of the synthetic and the GT image and upsamples it to image size.

* ``filterbank`` (default, :class:`FilterBankFeatures`): a fixed, download-free multi-scale model of
  early vision in the spirit of NLPD; fast on CPU.
* ``dinov2`` / ``dinov3`` / ``hf`` (:class:`HFBackboneFeatures`): patch tokens of a transformers
  vision transformer loaded from a local folder (the paper uses DINOv3).
"""

from __future__ import annotations

import inspect
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import FinPercepError

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@runtime_checkable
class FeatureExtractor(Protocol):
    """Dense features of images ``[B, 3, H, W]`` in [0, 1] as ``[B, C, h, w]`` (any ``h, w``)."""

    name: str

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...


# --------------------------------------------------------------------------------------------------
# filter bank


def _binomial(device: torch.device | None = None) -> torch.Tensor:
    k = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], device=device) / 16.0
    return torch.outer(k, k)


def _peak_normalise(k: np.ndarray) -> np.ndarray:
    """Scale a kernel so its largest frequency-response magnitude is 1 (responses in contrast units)."""
    gain = np.abs(np.fft.fft2(k, s=(64, 64))).max()
    return k / gain


def _oriented_bank(orientations: int, size: int, wavelength: float, sigma: float) -> np.ndarray:
    """Isotropic difference of Gaussians plus even/odd Gabor pairs at ``orientations`` angles."""
    r = size // 2
    y, x = np.mgrid[-r : r + 1, -r : r + 1].astype(np.float64)
    rr = x**2 + y**2
    env = np.exp(-rr / (2 * sigma**2))
    kernels = []
    g1 = np.exp(-rr / (2 * (0.5 * sigma) ** 2))
    g2 = np.exp(-rr / (2 * sigma**2))
    kernels.append(_peak_normalise(g1 / g1.sum() - g2 / g2.sum()))
    for i in range(orientations):
        theta = math.pi * i / orientations
        u = x * math.cos(theta) + y * math.sin(theta)
        even = env * np.cos(2 * math.pi * u / wavelength)
        even -= env * (even.sum() / env.sum())
        odd = env * np.sin(2 * math.pi * u / wavelength)
        kernels.append(_peak_normalise(even))
        kernels.append(_peak_normalise(odd))
    return np.stack(kernels).astype(np.float32)


class FilterBankFeatures(nn.Module):
    """Fixed perceptual multi-scale features (no weights to download), after NLPD.

    Pipeline, per image:

    1. sRGB values (already roughly perceptually uniform, so no extra gamma) go to an opponent colour
       space: luminance ``(R+G+B)/3``, red-green ``(R-G)/sqrt 2`` and yellow-blue ``(R+G-2B)/sqrt 6``.
    2. A Gaussian (binomial) pyramid of ``levels`` octaves. At each octave the luminance is filtered by
       an isotropic band-pass (difference of Gaussians, as in the Laplacian pyramid) and by even/odd
       Gabor quadrature pairs at ``orientations`` angles (about one octave wide): the oriented,
       frequency-tuned, phase-sensitive channels of V1 simple cells. The two chroma channels get the
       isotropic band-pass only (colour vision has low spatial acuity and little orientation tuning).
    3. Divisive normalisation: every response is divided by ``sigma + sqrt(local mean energy)`` of all
       channels of its octave (Gaussian-pooled). This is the gain control of NLPD and of V1 models
       (Heeger 1992; Laparra et al. 2016): a change on a flat region is amplified (nothing masks it),
       the same change inside strong texture or next to a strong edge is attenuated (contrast
       masking), and responses saturate, so a distance between normalised responses follows
       perceived rather than physical (MSE-like) differences.
    4. All octaves share one grid of half the input resolution (the finest octave is sampled at
       stride 2, where its quadrature pairs still carry local amplitude and phase; coarser octaves are
       bilinearly upsampled) and are concatenated with the coarse low-pass luminance and chroma (so
       colour casts change the direction of the vector) and a constant ``bias`` channel. The bias acts
       as a detection threshold: normalised differences much smaller than it barely change the
       direction of the feature vector, and it keeps the vectors of flat regions away from zero so
       the cosine distance is well defined.

    Output: ``[B, levels * (2 * orientations + 3) + 4, ceil(H/2), ceil(W/2)]``. On CPU the filtering
    runs through OpenCV (``backend="auto"``), elsewhere through ``torch.nn.functional.conv2d``; both
    compute the same features (replicate borders) up to float rounding.

    Cosine distance between these vectors is exactly 0 for identical patches and grows when fine
    structure is removed (blur: band responses collapse towards the bias direction), added (noise,
    ringing, hallucinated texture: new responses in new channels or phases) or recoloured.
    """

    name = "filterbank"

    def __init__(
        self,
        levels: int = 4,
        orientations: int = 4,
        sigma_norm: float = 0.02,
        sigma_norm_chroma: float = 0.02,
        bias: float = 1.0,
        lowpass_weight: float = 1.0,
        chroma_weight: float = 3.0,
        backend: Literal["auto", "torch", "opencv"] = "auto",
    ) -> None:
        super().__init__()
        if levels < 1 or orientations < 1:
            raise FinPercepError("FilterBankFeatures needs levels >= 1 and orientations >= 1")
        self.levels = levels
        self.sigma_norm = sigma_norm
        self.sigma_norm_chroma = sigma_norm_chroma
        self.bias = bias
        self.lowpass_weight = lowpass_weight
        self.chroma_weight = chroma_weight
        self.backend = backend
        bank = _oriented_bank(orientations, size=9, wavelength=4.0, sigma=1.8)
        s2, s6 = math.sqrt(2.0), math.sqrt(6.0)
        opp = [[1 / 3, 1 / 3, 1 / 3], [1 / s2, -1 / s2, 0.0], [1 / s6, 1 / s6, -2 / s6]]
        self.register_buffer("opponent", torch.tensor(opp).view(3, 3, 1, 1), persistent=False)
        self.register_buffer("bank", torch.from_numpy(bank).unsqueeze(1), persistent=False)
        self.register_buffer(
            "chroma_bank", torch.from_numpy(bank[:1]).unsqueeze(1).repeat(2, 1, 1, 1), persistent=False
        )
        self.register_buffer("blur", _binomial().view(1, 1, 5, 5), persistent=False)
        self._np_bank = list(bank)
        self._np_opponent = np.asarray(opp, np.float32)
        self._np_binomial = np.array([1.0, 4.0, 6.0, 4.0, 1.0], np.float32) / 16.0

    @property
    def channels(self) -> int:
        return self.levels * (self.bank.shape[0] + 2) + 4

    def _blur(self, x: torch.Tensor, stride: int = 1) -> torch.Tensor:
        c = x.shape[1]
        x = F.pad(x, (2, 2, 2, 2), mode="replicate")
        return F.conv2d(x, self.blur.expand(c, 1, 5, 5), stride=stride, groups=c)

    def _normalised(self, resp: torch.Tensor, sigma: float) -> torch.Tensor:
        energy = self._blur(resp.square().mean(dim=1, keepdim=True))
        return resp / (sigma + energy.clamp_min(0).sqrt())

    def _levels(self, h: int, w: int) -> int:
        return max(1, min(self.levels, int(math.log2(max(1, min(h, w)) / 4)) + 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features ``[B, channels, ceil(H/2), ceil(W/2)]`` (the finest octave is sampled at stride 2)."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise FinPercepError(
                f"FilterBankFeatures expects [B, 3, H, W] images, got shape {tuple(x.shape)}"
            )
        backend = self.backend
        if backend == "auto":
            backend = "opencv" if x.device.type == "cpu" else "torch"
        if backend == "opencv":
            arr = x.detach().float().cpu().numpy()
            h, w = arr.shape[-2:]
            out = np.empty((arr.shape[0], self.channels, (h + 1) // 2, (w + 1) // 2), np.float32)
            for im, o in zip(arr, out, strict=True):
                self._forward_cv2(im, o)
            return torch.from_numpy(out)
        return self._forward_torch(x.float())

    def _forward_torch(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        levels = self._levels(h, w)
        pad = self.bank.shape[-1] // 2
        cur = F.conv2d(x, self.opponent)
        out_size = ((h + 1) // 2, (w + 1) // 2)
        feats: list[torch.Tensor] = []
        for k in range(levels):
            stride = 2 if k == 0 else 1
            lum = F.pad(cur[:, :1], (pad,) * 4, mode="replicate")
            chroma = F.pad(cur[:, 1:], (pad,) * 4, mode="replicate")
            band = self._normalised(F.conv2d(lum, self.bank, stride=stride), self.sigma_norm)
            cband = F.conv2d(chroma, self.chroma_bank, stride=stride, groups=2)
            f = torch.cat([band, self._normalised(cband, self.sigma_norm_chroma)], dim=1)
            if f.shape[-2:] != out_size:
                f = F.interpolate(f, size=out_size, mode="bilinear", align_corners=False)
            feats.append(f)
            if k < levels - 1:
                cur = self._blur(cur, stride=2)
        nb = self.bank.shape[0] + 2
        if levels < self.levels:
            feats.append(x.new_zeros(x.shape[0], nb * (self.levels - levels), *out_size))
        low = F.interpolate(self._blur(cur), size=out_size, mode="bilinear", align_corners=False)
        weights = low.new_tensor([self.lowpass_weight, self.chroma_weight, self.chroma_weight]).view(
            1, 3, 1, 1
        )
        feats.append(low * weights)
        feats.append(x.new_full((x.shape[0], 1, *out_size), self.bias))
        return torch.cat(feats, dim=1)

    def _forward_cv2(self, img: np.ndarray, out: np.ndarray) -> None:
        """:meth:`_forward_torch` for one ``(3, H, W)`` array with OpenCV, written into ``out``
        (several times faster on CPU than PyTorch's convolutions for these single-channel filters)."""
        h, w = img.shape[-2:]
        levels = self._levels(h, w)
        oh, ow = (h + 1) // 2, (w + 1) // 2
        nb = len(self._np_bank) + 2
        out[levels * nb : self.levels * nb] = 0.0
        rep = cv2.BORDER_REPLICATE
        opp = self._np_opponent
        cur = [opp[i, 0] * img[0] + opp[i, 1] * img[1] + opp[i, 2] * img[2] for i in range(3)]
        for k in range(levels):
            step = 2 if k == 0 else 1
            band = [cv2.filter2D(cur[0], -1, kern, borderType=rep)[::step, ::step] for kern in self._np_bank]
            cband = [cv2.filter2D(c, -1, self._np_bank[0], borderType=rep)[::step, ::step] for c in cur[1:]]
            planes = self._normalised_np(band, self.sigma_norm) + self._normalised_np(
                cband, self.sigma_norm_chroma
            )
            for j, pl in enumerate(planes):
                if pl.shape != (oh, ow):
                    pl = cv2.resize(pl, (ow, oh), interpolation=cv2.INTER_LINEAR)
                out[k * nb + j] = pl
            if k < levels - 1:
                cur = [cv2.pyrDown(c, borderType=rep) for c in cur]
        base = self.levels * nb
        weights = (self.lowpass_weight, self.chroma_weight, self.chroma_weight)
        for i, c in enumerate(cur):
            low = cv2.sepFilter2D(c, -1, self._np_binomial, self._np_binomial, borderType=rep)
            if low.shape != (oh, ow):
                low = cv2.resize(low, (ow, oh), interpolation=cv2.INTER_LINEAR)
            out[base + i] = low * weights[i]
        out[base + 3] = self.bias

    def _normalised_np(self, resp: list[np.ndarray], sigma: float) -> list[np.ndarray]:
        energy = resp[0] * resp[0]
        for r in resp[1:]:
            energy += r * r
        energy *= 1.0 / len(resp)
        energy = cv2.sepFilter2D(
            energy, -1, self._np_binomial, self._np_binomial, borderType=cv2.BORDER_REPLICATE
        )
        inv = 1.0 / (sigma + np.sqrt(np.maximum(energy, 0.0)))
        return [r * inv for r in resp]


# --------------------------------------------------------------------------------------------------
# transformers backbones


def _pair(v: Any) -> tuple[int, int]:
    if isinstance(v, list | tuple):
        return int(v[0]), int(v[1])
    return int(v), int(v)


class HFBackboneFeatures(nn.Module):
    """Patch-token grid ``[B, C, H/p, W/p]`` of a transformers vision transformer (DINOv2, DINOv3, ViT...).

    Images are normalised (ImageNet statistics unless the folder's ``preprocessor_config.json`` says
    otherwise) and resized to a multiple of the patch size in torch. The CLS token and any register
    tokens are dropped: the number of prefix tokens is ``tokens - patches`` and, when the config has
    ``num_register_tokens``, it must equal ``1 + num_register_tokens``.
    """

    def __init__(
        self,
        model: nn.Module,
        config: Any,
        *,
        layer: int = -1,
        image_size: int | None = None,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        name: str = "hf",
    ) -> None:
        super().__init__()
        self.model = model.eval()
        self.config = config
        self.layer = layer
        self.image_size = image_size
        self.name = name
        self.patch = _pair(config.patch_size)
        self.num_registers = getattr(config, "num_register_tokens", None)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        params = inspect.signature(model.forward).parameters
        self._interp_kw = {"interpolate_pos_encoding": True} if "interpolate_pos_encoding" in params else {}

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        layer: int = -1,
        *,
        image_size: int | None = None,
        expect: tuple[str, ...] = (),
        name: str | None = None,
        device: str = "cpu",
    ) -> HFBackboneFeatures:
        """Load ``AutoModel`` from a local folder; ``expect`` restricts the accepted ``model_type``s."""
        try:
            from transformers import AutoModel
        except ImportError as exc:
            raise FinPercepError(
                "pretrained feature extractors need 'transformers' (pip install finpercep[hf])"
            ) from exc
        path = Path(path)
        if not path.is_dir():
            raise FinPercepError(f"{path}: feature extractor weights folder not found")
        try:
            model = AutoModel.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError, KeyError) as exc:
            raise FinPercepError(f"{path}: not a loadable transformers vision model: {exc}") from exc
        config = model.config
        if hasattr(model, "vision_model") and hasattr(config, "vision_config"):
            model, config = model.vision_model, config.vision_config
        model_type = getattr(model.config, "model_type", "")
        if expect and model_type not in expect:
            raise FinPercepError(f"{path}: expected a model of type {list(expect)}, found {model_type!r}")
        if not hasattr(config, "patch_size"):
            raise FinPercepError(
                f"{path}: model type {model_type!r} has no patch_size; not a vision transformer"
            )
        mean, std = IMAGENET_MEAN, IMAGENET_STD
        pre = path / "preprocessor_config.json"
        if pre.is_file():
            d = json.loads(pre.read_text())
            if "image_mean" in d and "image_std" in d:
                mean, std = tuple(d["image_mean"]), tuple(d["image_std"])
        n = name or f"{model_type}:{path.name}"
        return cls(model, config, layer=layer, image_size=image_size, mean=mean, std=std, name=n).to(device)

    def _resize(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        scale = 1.0 if self.image_size is None else self.image_size / max(h, w)
        ph, pw = self.patch
        th = max(ph, int(round(h * scale / ph)) * ph)
        tw = max(pw, int(round(w * scale / pw)) * pw)
        if (th, tw) == (h, w):
            return x
        return F.interpolate(
            x, size=(th, tw), mode="bilinear", align_corners=False, antialias=th < h or tw < w
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.mean.device, torch.float32)
        x = self._resize((x - self.mean) / self.std)
        gh, gw = x.shape[-2] // self.patch[0], x.shape[-1] // self.patch[1]
        out = self.model(pixel_values=x, output_hidden_states=self.layer != -1, **self._interp_kw)
        tokens = out.last_hidden_state if self.layer == -1 else out.hidden_states[self.layer]
        if tokens.ndim == 4:
            return tokens
        prefix = tokens.shape[1] - gh * gw
        expected = None if self.num_registers is None else 1 + int(self.num_registers)
        if prefix < 0 or (expected is not None and prefix != expected):
            raise FinPercepError(
                f"{self.name}: got {tokens.shape[1]} tokens for a {gh}x{gw} patch grid "
                f"(expected {expected if expected is not None else '>= 0'} prefix tokens)"
            )
        grid = tokens[:, prefix:, :].transpose(1, 2)
        return grid.reshape(tokens.shape[0], tokens.shape[2], gh, gw)


# --------------------------------------------------------------------------------------------------
# registry


@dataclass(frozen=True)
class ExtractorSpec:
    """One registered feature extractor: name, whether it needs local weights, and its factory."""

    name: str
    needs_path: bool
    build: Callable[[str | None], FeatureExtractor]
    help: str


FEATURE_EXTRACTORS: list[ExtractorSpec] = [
    ExtractorSpec(
        "filterbank", False, lambda _p: FilterBankFeatures(), "fixed NLPD-style filter bank (default)"
    ),
    ExtractorSpec(
        "dinov2",
        True,
        lambda p: HFBackboneFeatures.from_pretrained(p, expect=("dinov2", "dinov2_with_registers")),  # type: ignore[arg-type]
        "DINOv2 patch tokens (local transformers folder)",
    ),
    ExtractorSpec(
        "dinov3",
        True,
        lambda p: HFBackboneFeatures.from_pretrained(p, expect=("dinov3_vit",)),  # type: ignore[arg-type]
        "DINOv3 ViT patch tokens (local transformers folder), as in the paper",
    ),
    ExtractorSpec(
        "hf",
        True,
        lambda p: HFBackboneFeatures.from_pretrained(p),  # type: ignore[arg-type]
        "patch tokens of any transformers vision transformer (local folder)",
    ),
]


def get_feature_extractor(name: str, path: str | None = None) -> FeatureExtractor:
    """Build a registered extractor; pretrained ones load from the local folder ``path``."""
    for spec in FEATURE_EXTRACTORS:
        if spec.name == name:
            if spec.needs_path and not path:
                raise FinPercepError(
                    f"feature extractor {name!r} needs a local weights folder (features_path); "
                    "nothing is downloaded at run time"
                )
            return spec.build(path)
    names = [s.name for s in FEATURE_EXTRACTORS]
    raise FinPercepError(f"unknown feature extractor {name!r}; choose from {names}")
