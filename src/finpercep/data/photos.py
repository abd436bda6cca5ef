"""HR photo sources: any folder of images, or the photos scikit-image, matplotlib and scikit-learn ship."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import FinPercepError, ImageError
from ..io import list_images, load_image

log = logging.getLogger(__name__)


def _to_float_rgb(arr: np.ndarray) -> np.ndarray:
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    return np.ascontiguousarray(arr[:, :, :3].astype(np.float32) / 255.0)


def _load_skimage(name: str) -> np.ndarray:
    import skimage.data

    if name.startswith("motorcycle_"):
        left, right, _ = skimage.data.stereo_motorcycle()
        return left if name.endswith("left") else right
    return getattr(skimage.data, name)()


def _load_matplotlib(name: str) -> np.ndarray:
    from matplotlib import cbook

    with cbook.get_sample_data(f"{name}.jpg") as f:
        return np.asarray(Image.open(f).convert("RGB"))


def _load_sklearn(name: str) -> np.ndarray:
    from sklearn.datasets import load_sample_image

    return load_sample_image(f"{name}.jpg")


# name -> (height, width): the photographs bundled with scikit-image, matplotlib and scikit-learn (no download
# needed); the grayscale ones (natural textures and scenes) load as RGB with three equal channels.
EMBEDDED_PHOTOS: dict[str, tuple[int, int]] = {
    "astronaut": (512, 512),
    "chelsea": (300, 451),
    "coffee": (400, 600),
    "hubble_deep_field": (872, 1000),
    "immunohistochemistry": (512, 512),
    "motorcycle_left": (500, 741),
    "motorcycle_right": (500, 741),
    "retina": (1411, 1411),
    "rocket": (427, 640),
    "brick": (512, 512),
    "camera": (512, 512),
    "coins": (303, 384),
    "grass": (512, 512),
    "gravel": (512, 512),
    "moon": (512, 512),
    "grace_hopper": (600, 512),
    "china": (427, 640),
    "flower": (427, 640),
}

_NOT_SKIMAGE: dict[str, Callable[[str], np.ndarray]] = {
    "grace_hopper": _load_matplotlib,
    "china": _load_sklearn,
    "flower": _load_sklearn,
}

GRAYSCALE_PHOTOS: tuple[str, ...] = ("brick", "camera", "coins", "grass", "gravel", "moon")
COLOUR_PHOTOS: tuple[str, ...] = tuple(n for n in EMBEDDED_PHOTOS if n not in GRAYSCALE_PHOTOS)
"""The embedded photos used when no names are given: the colour ones."""


@dataclass(frozen=True)
class Photo:
    """One HR photo: a stable ``name`` (embedded name or path relative to its root) and its size."""

    name: str
    size: tuple[int, int]
    path: Path | None = None

    def load(self) -> np.ndarray:
        if self.path is None:
            return _to_float_rgb(_NOT_SKIMAGE.get(self.name, _load_skimage)(self.name))
        return load_image(self.path)


def embedded_photos(names: Sequence[str] | None = None) -> list[Photo]:
    """The named embedded photos; None (or no names): :data:`COLOUR_PHOTOS`; ``["all"]``: every one."""
    names = list(names) if names else list(COLOUR_PHOTOS)
    if names == ["all"]:
        names = list(EMBEDDED_PHOTOS)
    unknown = [n for n in names if n not in EMBEDDED_PHOTOS]
    if unknown:
        raise FinPercepError(f"unknown embedded photos {unknown}; available: {sorted(EMBEDDED_PHOTOS)}")
    return [Photo(n, EMBEDDED_PHOTOS[n]) for n in names]


def _read_size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as im:
            w, h = im.size
    except Exception as exc:
        raise ImageError(path, f"not a readable image: {exc}") from None
    return h, w


def folder_photos(roots: Sequence[str | Path]) -> list[Photo]:
    """Every image below the given folders (recursive), sorted; unreadable headers are skipped.

    A photo's name is its path relative to its folder; with several folders it starts with the folder's
    own name (``train/a.png``, ``val/b.png``), so that patterns such as ``val/*`` select by folder.
    """
    roots = [Path(r) for r in roots]
    prefixed = len(roots) > 1
    labels = [r.name for r in roots]
    if prefixed and len(set(labels)) != len(labels):
        raise FinPercepError(f"HR folders {[str(r) for r in roots]}: give folders with different names")
    photos: list[Photo] = []
    for root in roots:
        files = list_images(root)
        if not files:
            raise FinPercepError(f"{root}: no images found (looked for png, jpg, webp, tif, bmp)")
        base = root if root.is_dir() else root.parent
        for f in files:
            try:
                size = _read_size(f)
            except ImageError as exc:
                log.warning("skipping %s", exc)
                continue
            rel = f.relative_to(base).as_posix()
            photos.append(Photo(f"{root.name}/{rel}" if prefixed else rel, size, f))
    return photos


def usable_photos(photos: Sequence[Photo], crop: int) -> list[Photo]:
    """Photos at least ``crop`` pixels on each side; smaller ones are skipped with a warning naming them."""
    keep = []
    for p in photos:
        if min(p.size) < crop:
            log.warning(
                "skipping %s: %dx%d is smaller than the %d px crop",
                p.path or p.name,
                p.size[1],
                p.size[0],
                crop,
            )
        else:
            keep.append(p)
    if not keep:
        raise FinPercepError(f"no photo is at least {crop}x{crop} pixels; lower --hr-size")
    return keep


def random_crop_box(size: tuple[int, int], crop: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    h, w = size
    y = int(rng.integers(0, h - crop + 1))
    x = int(rng.integers(0, w - crop + 1))
    return y, x, crop, crop
