"""SR candidate sources: where the SR outputs used for FGR data synthesis come from.

Three kinds of source, all called as ``source(lr, hr_path=..., box=...) -> float32 (H, W, 3) in [0, 1]``:

* ``ncnn``: a real Real-ISR network (Real-ESRGAN, RealSR, Real-CUGAN) run on the CPU via :class:`NcnnSR`;
* ``interp``: OpenCV bicubic / Lanczos upscaling, the *weak* baselines;
* ``folder``: precomputed outputs of any other method (SUPIR, OSEDiff, StableSR, ...), see :class:`FolderSR`.

The registered sources are :data:`~finpercep.gen.registry.SR_MODELS`, the SR-source view of the one
model registry; each source carries its :class:`~finpercep.gen.registry.ModelSpec`.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from ..errors import FinPercepError, ImageError
from ..gen.registry import ModelSpec, interp_spec, sr_spec
from ..io import IMAGE_EXTENSIONS, list_images, load_image
from .ncnn_backend import NcnnSR, check_rgb01

log = logging.getLogger(__name__)

Box = tuple[int, int, int, int]

_INTERP_FLAGS = {"bicubic": cv2.INTER_CUBIC, "lanczos": cv2.INTER_LANCZOS4}


def _check_box(box: Any, height: int, width: int, where: str) -> Box:
    if not (
        isinstance(box, tuple | list) and len(box) == 4 and all(isinstance(v, int | np.integer) for v in box)
    ):
        raise FinPercepError(f"{where}: box must be four integers (y, x, h, w), got {box!r}")
    y, x, h, w = (int(v) for v in box)
    if h < 1 or w < 1 or y < 0 or x < 0 or y + h > height or x + w > width:
        raise FinPercepError(
            f"{where}: box (y={y}, x={x}, h={h}, w={w}) is outside the {width}x{height} image"
        )
    return y, x, h, w


class SRSource(ABC):
    """Something that produces an SR image for an LR crop.

    ``hr_path`` and ``box=(y, x, h, w)`` (HR pixel coordinates of the crop) are needed by sources that
    look outputs up rather than compute them (:class:`FolderSR`); model sources ignore them.
    """

    name: str
    scale: int
    weak: bool

    @property
    @abstractmethod
    def spec(self) -> ModelSpec: ...

    @abstractmethod
    def __call__(
        self, lr: np.ndarray, *, hr_path: str | None = None, box: Box | None = None
    ) -> np.ndarray: ...

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, scale={self.scale})"


class NcnnSource(SRSource):
    """A registered ncnn model; loads lazily, so it pickles into worker processes cheaply."""

    def __init__(
        self, spec: ModelSpec, *, threads: int = 1, tile_size: int = 128, tile_pad: int = 10
    ) -> None:
        if spec.kind != "ncnn" or spec.package is None or spec.model_file is None:
            raise FinPercepError(f"{spec.name}: not an ncnn model spec")
        self._spec = spec
        self.name, self.scale, self.weak = spec.name, spec.scale, spec.weak
        self.model = NcnnSR.from_package(
            spec.package,
            spec.model_file,
            scale=spec.scale,
            threads=threads,
            tile_size=tile_size,
            tile_pad=tile_pad,
            name=spec.name,
            net_pad=spec.net_pad,
            size_multiple=spec.size_multiple,
            residual=spec.residual,
        )

    @property
    def spec(self) -> ModelSpec:
        return self._spec

    def __call__(self, lr: np.ndarray, *, hr_path: str | None = None, box: Box | None = None) -> np.ndarray:
        return self.model(lr)


class InterpSR(SRSource):
    """OpenCV interpolation upscaling (``bicubic`` or ``lanczos``), clipped to [0, 1]."""

    def __init__(self, method: str, scale: int) -> None:
        if method not in _INTERP_FLAGS:
            raise FinPercepError(f"unknown interpolation {method!r}; valid: {', '.join(_INTERP_FLAGS)}")
        if not (isinstance(scale, int) and scale >= 1):
            raise FinPercepError(f"scale must be a positive integer, got {scale!r}")
        self.name, self.scale, self.weak = method, scale, True
        self._flag = _INTERP_FLAGS[method]

    @property
    def spec(self) -> ModelSpec:
        return interp_spec(self.name, self.scale)

    def __call__(self, lr: np.ndarray, *, hr_path: str | None = None, box: Box | None = None) -> np.ndarray:
        lr = check_rgb01(lr, f"{self.name} input")
        h, w = lr.shape[:2]
        out = cv2.resize(lr, (w * self.scale, h * self.scale), interpolation=self._flag)
        return np.clip(out, 0.0, 1.0).astype(np.float32, copy=False)


class FolderSR(SRSource):
    """Precomputed SR outputs of whole photos (e.g. from SUPIR, OSEDiff, StableSR).

    ``root`` is searched recursively for images (extensions as :data:`finpercep.io.IMAGE_EXTENSIONS`);
    the SR image for an HR photo is the one with the same file stem (``photos/a/0042.png`` matches
    ``root/x/0042.jpg``). Each SR image must have exactly the HR photo's size; the call returns the
    crop ``box=(y, x, h, w)`` in HR coordinates, which must be ``scale`` times the LR crop's size.
    Stems must be unique in ``root``: a stem found twice is reported when it is looked up.
    """

    def __init__(
        self, root: str | Path, *, name: str | None = None, scale: int = 4, weak: bool = False
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FinPercepError(f"SR folder {self.root} does not exist or is not a folder")
        if not (isinstance(scale, int) and scale >= 1):
            raise FinPercepError(f"scale must be a positive integer, got {scale!r}")
        self.name = name or self.root.name
        self.scale = scale
        self.weak = weak
        self._index: dict[str, list[Path]] | None = None
        self._cache: tuple[Path, str, np.ndarray] | None = None

    @property
    def spec(self) -> ModelSpec:
        return ModelSpec(
            self.name, self.scale, "folder", "folder", f"precomputed SR images in {self.root}",
            sr_source=True, weak=self.weak, root=str(self.root),
        )  # fmt: skip

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_cache"] = None
        return state

    def _build_index(self) -> dict[str, list[Path]]:
        if self._index is None:
            index: dict[str, list[Path]] = {}
            for path in list_images(self.root):
                index.setdefault(path.stem, []).append(path)
            if not index:
                exts = " ".join(IMAGE_EXTENSIONS)
                raise FinPercepError(f"SR folder {self.root} contains no images ({exts})")
            self._index = index
            log.debug("%s: indexed %d SR images in %s", self.name, len(index), self.root)
        return self._index

    def match(self, hr_path: str | Path) -> Path:
        """The SR image in ``root`` whose stem equals the HR file's stem."""
        stem = Path(hr_path).stem
        found = self._build_index().get(stem, [])
        if not found:
            raise FinPercepError(
                f"{self.name}: no SR image named {stem}.* under {self.root} for HR photo {hr_path}"
            )
        if len(found) > 1:
            raise FinPercepError(
                f"{self.name}: several SR images match HR photo {hr_path}: {', '.join(map(str, found))}"
            )
        return found[0]

    def _load(self, sr_path: Path, hr_path: str | Path) -> np.ndarray:
        if self._cache is not None and self._cache[:2] == (sr_path, str(hr_path)):
            return self._cache[2]
        try:
            with Image.open(hr_path) as im:
                hr_w, hr_h = im.size
        except FileNotFoundError:
            raise ImageError(hr_path, "no such file") from None
        except Exception as exc:
            raise ImageError(hr_path, f"not a readable image: {exc}") from None
        img = load_image(sr_path)
        if img.shape[:2] != (hr_h, hr_w):
            raise ImageError(
                sr_path,
                f"SR image is {img.shape[1]}x{img.shape[0]} but its HR photo {hr_path} is {hr_w}x{hr_h}; "
                "the outputs in an SR folder must have the HR photos' size",
            )
        self._cache = (sr_path, str(hr_path), img)
        return img

    def __call__(self, lr: np.ndarray, *, hr_path: str | None = None, box: Box | None = None) -> np.ndarray:
        if hr_path is None:
            raise FinPercepError(f"{self.name}: a folder SR source needs hr_path to find the SR image")
        lr = check_rgb01(lr, f"{self.name} LR crop")
        sr_path = self.match(hr_path)
        img = self._load(sr_path, hr_path)
        y, x, h, w = _check_box((0, 0, *img.shape[:2]) if box is None else box, *img.shape[:2], str(sr_path))
        if (lr.shape[0] * self.scale, lr.shape[1] * self.scale) != (h, w):
            raise FinPercepError(
                f"{self.name}: LR crop {lr.shape[1]}x{lr.shape[0]} times scale {self.scale} does not match "
                f"the HR box {w}x{h} for {hr_path}"
            )
        return img[y : y + h, x : x + w].copy()


def folder_source(
    root: str | Path, *, name: str | None = None, scale: int = 4, weak: bool = False
) -> FolderSR:
    """A :class:`FolderSR` for precomputed outputs in ``root`` (name defaults to the folder's name)."""
    return FolderSR(root, name=name, scale=scale, weak=weak)


def make_sr_source(
    spec: ModelSpec, *, threads: int = 1, tile_size: int = 128, tile_pad: int = 10
) -> SRSource:
    """Instantiate the source a spec describes."""
    if not spec.sr_source:
        raise FinPercepError(f"{spec.name} x{spec.scale} is not an SR source")
    if spec.kind == "ncnn":
        return NcnnSource(spec, threads=threads, tile_size=tile_size, tile_pad=tile_pad)
    if spec.kind == "interp":
        return InterpSR(spec.interp or spec.name, spec.scale)
    if spec.root is None:
        raise FinPercepError(f"{spec.name}: a folder spec needs a root")
    return FolderSR(spec.root, name=spec.name, scale=spec.scale, weak=spec.weak)


def get_sr_source(
    name: str, *, scale: int = 4, threads: int = 1, tile_size: int = 128, tile_pad: int = 10
) -> SRSource:
    """The SR source called ``name`` at ``scale``.

    ``name`` is a registry name (see :func:`available_sr_models`) or ``folder:PATH`` for a
    :class:`FolderSR` named after the folder.
    """
    if name.startswith("folder:"):
        root = name[len("folder:") :]
        if not root:
            raise FinPercepError("'folder:' needs a path, e.g. folder:/data/supir_outputs")
        return FolderSR(root, scale=scale)
    return make_sr_source(sr_spec(name, scale), threads=threads, tile_size=tile_size, tile_pad=tile_pad)
