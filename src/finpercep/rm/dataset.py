"""Reading an FGR dataset (``DIR/manifest.jsonl``) for reward-model training and validation.

* :func:`split_sources` -- the train/validation split by source photo (held-out photos never train).
* :class:`ChainDataset` -- ranking chains ``[gt, small, large, sr]`` with the same random crop and
  flips/rotation applied to all four images and maps of a chain (training).
* :class:`SampleDataset` -- unique samples at full resolution, no augmentation (validation, anchors).

Augmentation randomness comes from ``np.random.default_rng([seed, epoch, index])`` so it does not
depend on worker processes, and a resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..data.manifest import ROLES, chains, read_manifest
from ..errors import FinPercepError
from ..io import load_image, load_map16

logger = logging.getLogger(__name__)

Sample = dict[str, Any]


@dataclass(frozen=True)
class Split:
    train_sources: tuple[str, ...]
    val_sources: tuple[str, ...]
    train_chains: tuple[tuple[Sample, ...], ...]
    val_chains: tuple[tuple[Sample, ...], ...]
    val_samples: tuple[Sample, ...]


def _stable_unit(name: str) -> float:
    return int(hashlib.sha1(name.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


def split_sources(
    sources: Sequence[str], patterns: Sequence[str], fraction: float
) -> tuple[list[str], list[str]]:
    """(train, val) source photos.

    Validation gets the sources matching any fnmatch ``patterns``. If none match (e.g. a dataset built
    from your own photos), it gets those whose stable hash falls below ``fraction``; either way at least
    one source is held out and at least one trains.
    """
    srcs = sorted(set(sources))
    if len(srcs) < 2:
        raise FinPercepError(f"need photos from at least 2 source images to hold some out, got {srcs}")
    val = [s for s in srcs if any(fnmatch.fnmatchcase(s, p) for p in patterns)]
    if not val:
        val = [s for s in srcs if _stable_unit(s) < fraction]
        if not val:
            val = [min(srcs, key=_stable_unit)]
    if len(val) == len(srcs):
        raise FinPercepError(
            f"every source photo matches the validation rule ({patterns}); nothing left to train on"
        )
    train = [s for s in srcs if s not in val]
    return train, val


def load_split(
    data_dir: str | Path,
    val_patterns: Sequence[str],
    val_fraction: float,
    train_sr_models: Sequence[str] = (),
) -> Split:
    """Read the manifest under ``data_dir`` and split its ranking chains by source photo.

    ``train_sr_models``: fnmatch patterns; if given, only the chains of matching SR sources are trained on
    (validation keeps every source, so the others measure how the model does on SR models it never saw).
    """
    samples = read_manifest(Path(data_dir))
    if not samples:
        raise FinPercepError(f"{data_dir}: the manifest is empty")
    missing = {"id", "group", "role", "image", "map", "source_image", "defect_area"} - set(samples[0])
    if missing:
        raise FinPercepError(f"{data_dir}: manifest rows lack fields {sorted(missing)}")
    train_src, val_src = split_sources([s["source_image"] for s in samples], val_patterns, val_fraction)
    all_chains = chains(samples)
    if not all_chains:
        raise FinPercepError(f"{data_dir}: no complete ranking chain ({' > '.join(ROLES)})")
    val_set = set(val_src)
    train_chains = tuple(tuple(c) for c in all_chains if c[0]["source_image"] not in val_set)
    if train_sr_models:
        sr_models = sorted({str(c[-1].get("sr_model")) for c in all_chains})
        keep = {m for m in sr_models if any(fnmatch.fnmatchcase(m, p) for p in train_sr_models)}
        if not keep:
            raise FinPercepError(
                f"{data_dir}: train_sr_models {list(train_sr_models)} match none of the SR sources "
                f"{sr_models}"
            )
        train_chains = tuple(c for c in train_chains if str(c[-1].get("sr_model")) in keep)
    val_chains = tuple(tuple(c) for c in all_chains if c[0]["source_image"] in val_set)
    if not train_chains:
        only = f" and keeping only SR sources {list(train_sr_models)}" if train_sr_models else ""
        raise FinPercepError(f"{data_dir}: no training chains after holding out {val_src}{only}")
    val_samples = tuple(sorted((s for s in samples if s["source_image"] in val_set), key=lambda s: s["id"]))
    return Split(tuple(train_src), tuple(val_src), train_chains, val_chains, val_samples)


def read_sample(root: Path, s: Sample) -> tuple[np.ndarray, np.ndarray]:
    """(image (H,W,3), map (H,W)) float32 of one manifest row."""
    img = load_image(root / s["image"])
    m = load_map16(root / s["map"])
    if m.shape != img.shape[:2]:
        raise FinPercepError(f"{root / s['map']}: map is {m.shape}, image is {img.shape[:2]}")
    return img, m


def augment_params(rng: np.random.Generator, h: int, w: int, crop: int) -> tuple[int, int, int, int, int]:
    """(y, x, size, flips bitmask, quarter turns) for one chain."""
    size = min(crop, h, w) if crop > 0 else min(h, w)
    y = int(rng.integers(0, h - size + 1)) if crop > 0 else 0
    x = int(rng.integers(0, w - size + 1)) if crop > 0 else 0
    return y, x, size, int(rng.integers(0, 4)), int(rng.integers(0, 4))


def apply_augment(arr: np.ndarray, params: tuple[int, int, int, int, int], square: bool) -> np.ndarray:
    y, x, size, flips, turns = params
    if square:
        arr = arr[y : y + size, x : x + size]
    if flips & 1:
        arr = arr[:, ::-1]
    if flips & 2:
        arr = arr[::-1]
    if turns:
        arr = np.rot90(arr, turns)
    return np.ascontiguousarray(arr)


def color_augment(imgs: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """The same random colour change for all images (K, H, W, 3) of a chain: channel permutation,
    per-channel gain, gamma and partial desaturation, scaled by ``strength`` in [0, 1].

    SR defects are texture, not colour; this keeps the map from keying on the colours of the few
    training photos (the maps stay valid: every image of the chain changes alike).
    """
    if strength <= 0:
        return imgs
    perm = rng.permutation(3) if rng.random() < strength else np.arange(3)
    gain = np.exp(rng.uniform(-0.25, 0.25, 3) * strength).astype(np.float32)
    gamma = float(np.exp(rng.uniform(-0.35, 0.35) * strength))
    desat = float(rng.uniform(0.0, 0.8 * strength)) if rng.random() < 0.3 else 0.0
    out = np.clip(imgs[..., perm] * gain, 0.0, 1.0) ** gamma
    if desat:
        gray = out.mean(axis=-1, keepdims=True)
        out = (1.0 - desat) * out + desat * gray
    return np.ascontiguousarray(np.clip(out, 0.0, 1.0), dtype=np.float32)


def crop_area(
    root: Path, s: Sample, params: tuple[int, int, int, int, int], square: bool, shape: tuple[int, int]
) -> float:
    """Defect area of sample ``s`` inside the crop ``params``: the mean of its (soft) swap mask there.

    Samples without a mask file (GT: 0, full SR output: 1) keep their manifest ``defect_area``; ``shape``
    is the image's (H, W), which the mask must match.
    """
    if not s.get("mask"):
        return float(s["defect_area"])
    mask = load_image(root / s["mask"])[..., 0]
    if mask.shape != shape:
        raise FinPercepError(f"{root / s['mask']}: mask is {mask.shape}, image is {shape}")
    return float(apply_augment(mask, params, square).mean())


class ChainDataset(Dataset):
    """Item ``i``: one ranking chain as ``images`` [K,3,h,w], ``maps`` [K,1,h,w], ``areas`` [K], ``ids``.

    ``areas`` are the manifest's defect areas, or with ``crop_areas=True`` those inside the crop (see
    :func:`crop_area`; reads the swap masks): a crop can miss a small swap entirely, and is then identical
    to its GT.
    """

    def __init__(
        self,
        root: str | Path,
        chain_list: Sequence[Sequence[Sample]],
        *,
        crop: int = 0,
        augment: bool = True,
        color: float = 0.0,
        seed: int = 0,
        crop_areas: bool = False,
    ) -> None:
        self.root = Path(root)
        self.crop_areas = crop_areas
        self.chains = [tuple(c) for c in chain_list]
        self.crop = crop
        self.augment = augment
        self.color = color
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.chains)

    def __getitem__(self, i: int) -> dict[str, Any]:
        """Chain ``i % len(self)``; ``i`` itself seeds the crop and augmentation (repeats differ)."""
        chain = self.chains[i % len(self.chains)]
        pairs = [read_sample(self.root, s) for s in chain]
        h, w = pairs[0][0].shape[:2]
        if any(img.shape[:2] != (h, w) for img, _ in pairs):
            raise FinPercepError(
                f"chain {chain[0]['group']}/{chain[-1].get('sr_model')}: images differ in size"
            )
        rng = np.random.default_rng([self.seed, self.epoch, i])
        params = augment_params(rng, h, w, self.crop)
        if not self.augment:
            params = (*params[:3], 0, 0)
        square = self.crop > 0
        imgs = np.stack([apply_augment(img, params, square) for img, _ in pairs])
        maps = np.stack([apply_augment(m, params, square) for _, m in pairs])
        if self.augment:
            imgs = color_augment(imgs, rng, self.color)
        return {
            "images": torch.from_numpy(imgs).permute(0, 3, 1, 2).contiguous(),
            "maps": torch.from_numpy(maps)[:, None].contiguous(),
            "areas": torch.tensor(
                [
                    crop_area(self.root, s, params, square, (h, w)) if self.crop_areas else s["defect_area"]
                    for s in chain
                ],
                dtype=torch.float32,
            ),
            "ids": [s["id"] for s in chain],
        }


class SampleDataset(Dataset):
    """Item ``i``: one sample at full resolution (or a centre crop of ``crop``), no augmentation."""

    def __init__(self, root: str | Path, samples: Sequence[Sample], *, crop: int = 0) -> None:
        self.root = Path(root)
        self.samples = list(samples)
        self.crop = crop

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        s = self.samples[i]
        img, m = read_sample(self.root, s)
        if self.crop > 0:
            h, w = m.shape
            size = min(self.crop, h, w)
            y, x = (h - size) // 2, (w - size) // 2
            img, m = img[y : y + size, x : x + size], m[y : y + size, x : x + size]
        return {
            "image": torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).contiguous(),
            "map": torch.from_numpy(np.ascontiguousarray(m))[None],
            "area": float(s["defect_area"]),
            "id": s["id"],
        }


def collate_chains(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "images": torch.stack([it["images"] for it in items]),
        "maps": torch.stack([it["maps"] for it in items]),
        "areas": torch.stack([it["areas"] for it in items]),
        "ids": [it["ids"] for it in items],
    }


def collate_samples(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "image": torch.stack([it["image"] for it in items]),
        "map": torch.stack([it["map"] for it in items]),
        "area": torch.tensor([it["area"] for it in items], dtype=torch.float32),
        "id": [it["id"] for it in items],
    }
