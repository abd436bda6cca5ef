"""LR/HR training pairs for RL: degraded on the fly from HR photos, or cropped from paired folders.

Sample ``index`` of step ``step`` depends only on ``(seed, step, index)``, so every process of a
multi-process run and every resumed run draws exactly the same pairs without any saved data state.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from ..data.degradation import DegradationConfig, degrade, simple_degrade
from ..data.photos import Photo, embedded_photos, folder_photos, random_crop_box, usable_photos
from ..errors import ConfigError, FinPercepError, ImageError
from ..io import list_images, load_image

logger = logging.getLogger(__name__)

DegradationKind = Literal["realesrgan", "bicubic"]
PREVIEW_STEP = 2**31 - 1


def _to_tensor(batch: Sequence[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).contiguous()


class PairSource:
    """Deterministic LR/HR pairs: ``lr_size`` x ``lr_size`` LR crops and their ``scale`` times larger HR."""

    def __init__(
        self,
        scale: int,
        lr_size: int,
        seed: int,
        hr_folders: Sequence[str] = (),
        paired_lr: str | None = None,
        paired_hr: str | None = None,
        degradation: DegradationKind = "realesrgan",
        cache_size: int = 64,
    ) -> None:
        self.scale = scale
        self.lr_size = lr_size
        self.hr_size = lr_size * scale
        self.seed = seed
        self.degradation = degradation
        self.paired = paired_lr is not None
        self._load = functools.lru_cache(maxsize=cache_size)(load_image)
        self._load_photo = functools.lru_cache(maxsize=cache_size)(Photo.load)
        if self.paired:
            if paired_hr is None:
                raise ConfigError("paired training data need both paired_lr and paired_hr")
            self.pairs = self._match_pairs(Path(paired_lr), Path(paired_hr))  # type: ignore[arg-type]
            logger.info("RL data: %d LR/HR pairs from %s and %s", len(self.pairs), paired_lr, paired_hr)
        else:
            if scale not in (2, 4):
                raise ConfigError(
                    f"on-the-fly degradation supports x2 and x4, not x{scale}; use paired folders"
                )
            self.deg_cfg = DegradationConfig(scale=scale)
            photos = folder_photos(hr_folders) if hr_folders else embedded_photos()
            self.photos: list[Photo] = usable_photos(photos, self.hr_size)
            logger.info(
                "RL data: %d HR photos (%s), %s degradation",
                len(self.photos),
                ", ".join(hr_folders) if hr_folders else "embedded",
                degradation,
            )

    @staticmethod
    def _match_pairs(lr_root: Path, hr_root: Path) -> list[tuple[Path, Path]]:
        hr_by_stem = {p.relative_to(hr_root).with_suffix("").as_posix(): p for p in list_images(hr_root)}
        pairs = []
        for lr in list_images(lr_root):
            key = lr.relative_to(lr_root).with_suffix("").as_posix()
            if key in hr_by_stem:
                pairs.append((lr, hr_by_stem[key]))
            else:
                logger.warning("skipping %s: no HR image with the same name below %s", lr, hr_root)
        if not pairs:
            raise FinPercepError(
                f"no LR/HR pairs: no file below {lr_root} has a same-named HR image below {hr_root}"
            )
        return pairs

    def sample(self, step: int, index: int) -> tuple[np.ndarray, np.ndarray]:
        """``(lr (h, w, 3), hr (s*h, s*w, 3))`` float32 in [0, 1] for sample ``index`` of ``step``."""
        rng = np.random.default_rng([self.seed, step, index])
        if self.paired:
            return self._paired_sample(rng)
        photo = self.photos[int(rng.integers(len(self.photos)))]
        img = self._load_photo(photo)
        y, x, h, w = random_crop_box(img.shape[:2], self.hr_size, rng)
        hr = img[y : y + h, x : x + w]
        if rng.random() < 0.5:
            hr = hr[:, ::-1]
        hr = np.ascontiguousarray(hr)
        if self.degradation == "bicubic":
            lr = simple_degrade(hr, self.scale)
        else:
            lr = degrade(hr, self.deg_cfg, rng)
        return lr, hr

    def _paired_sample(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        lr_path, hr_path = self.pairs[int(rng.integers(len(self.pairs)))]
        lr_img, hr_img = self._load(lr_path), self._load(hr_path)
        lh, lw = lr_img.shape[:2]
        if hr_img.shape[:2] != (lh * self.scale, lw * self.scale):
            raise ImageError(
                hr_path,
                f"is {hr_img.shape[1]}x{hr_img.shape[0]}, expected {self.scale} x "
                f"the LR image {lr_path} ({lw * self.scale}x{lh * self.scale})",
            )
        if min(lh, lw) < self.lr_size:
            raise ImageError(lr_path, f"is smaller than the {self.lr_size} px LR crop")
        y, x, h, w = random_crop_box((lh, lw), self.lr_size, rng)
        s = self.scale
        lr = lr_img[y : y + h, x : x + w]
        hr = hr_img[y * s : (y + h) * s, x * s : (x + w) * s]
        if rng.random() < 0.5:
            lr, hr = lr[:, ::-1], hr[:, ::-1]
        return np.ascontiguousarray(lr), np.ascontiguousarray(hr)

    def batch(self, step: int, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """LR ``[n, 3, h, w]`` and HR ``[n, 3, s*h, s*w]`` tensors for sample ``indices`` of ``step``."""
        pairs = [self.sample(step, i) for i in indices]
        return _to_tensor([p[0] for p in pairs]), _to_tensor([p[1] for p in pairs])

    def preview(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A fixed batch, the same for the whole run (for the before/after preview)."""
        return self.batch(PREVIEW_STEP, range(n))
