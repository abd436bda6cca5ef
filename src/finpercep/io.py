"""Image and file I/O with clear errors and atomic writes.

Images inside FinPercep are ``float32`` numpy arrays of shape ``(H, W, 3)``, RGB, in ``[0, 1]``.

Conversion rule for files that are not 8-bit RGB (documented in docs/data.md, "Input images"):

* 16-bit (and 32-bit integer) images are scaled by their type's maximum; float images are clipped to [0, 1].
* Grayscale is replicated to three channels.
* An alpha channel (RGBA, LA, palette with transparency) is composited over white.
* Palette and CMYK images are converted to RGB by Pillow.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from .errors import ImageError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp")
DEFAULT_MAX_PIXELS = 80_000_000

Image.MAX_IMAGE_PIXELS = None  # we enforce our own limit with a clear message


def list_images(root: str | Path) -> list[Path]:
    """All image files below ``root`` (recursive), sorted for determinism."""
    root = Path(root)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise ImageError(root, "no such file or folder")
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _to_float01(arr: np.ndarray, path: Path) -> np.ndarray:
    if arr.dtype == np.uint8:
        out = arr.astype(np.float32) / 255.0
    elif arr.dtype == np.uint16:
        out = arr.astype(np.float32) / 65535.0
    elif arr.dtype in (np.int32, np.uint32):
        out = arr.astype(np.float64) / float(np.iinfo(arr.dtype).max)
        out = np.clip(out, 0.0, 1.0).astype(np.float32)
    elif arr.dtype == bool:
        out = arr.astype(np.float32)
    elif np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise ImageError(path, "contains NaN or infinite pixel values")
        out = np.clip(arr.astype(np.float32), 0.0, 1.0)
    else:
        raise ImageError(path, f"unsupported pixel type {arr.dtype}")
    return out


def _channels_to_rgb(arr: np.ndarray, path: Path) -> np.ndarray:
    """float array (H,W[,C]) RGB-ordered -> (H,W,3), alpha composited over white."""
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3:
        raise ImageError(path, f"expected a 2-D image, got an array of shape {arr.shape}")
    c = arr.shape[2]
    if c == 1:
        return np.repeat(arr, 3, axis=2)
    if c == 2:
        gray, alpha = arr[..., :1], arr[..., 1:2]
        return np.repeat(gray * alpha + (1.0 - alpha), 3, axis=2)
    if c == 3:
        return arr
    if c == 4:
        rgb, alpha = arr[..., :3], arr[..., 3:4]
        return rgb * alpha + (1.0 - alpha)
    raise ImageError(path, f"unsupported number of channels: {c}")


def _read_tiff_fallback(path: Path) -> np.ndarray | None:
    """Float and other TIFFs that Pillow cannot open (tifffile reads them); None if that fails too."""
    if path.suffix.lower() not in (".tif", ".tiff"):
        return None
    try:
        import tifffile

        arr = tifffile.imread(path)
    except Exception:
        return None
    return arr if arr.ndim in (2, 3) else None


def load_image(path: str | Path, *, min_size: int = 1, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read an image file as float32 RGB ``(H, W, 3)`` in [0, 1].

    Raises :class:`ImageError` naming the file for missing, corrupt, truncated, too small or
    too large images.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageError(path, "no such file")
    try:
        with Image.open(path) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise ImageError(path, f"image is too large ({w}x{h} > {max_pixels} pixels)")
            im.load()  # raises on truncated or corrupt data
            fmt = im.format
            mode = im.mode
            if fmt in ("PNG", "TIFF") and mode not in ("P", "PA", "1", "CMYK", "YCbCr", "LAB"):
                arr = None  # let OpenCV decode: Pillow drops 16-bit colour depth
            else:
                if mode in ("P", "PA"):
                    im = im.convert("RGBA")
                elif mode == "1":
                    im = im.convert("L")
                elif mode not in ("L", "LA", "RGB", "RGBA", "I", "I;16", "I;16B", "I;16L", "F"):
                    im = im.convert("RGB")
                arr = np.asarray(im)
                if im.mode in ("I;16", "I;16B", "I;16L"):
                    arr = arr.astype(np.uint16)
    except ImageError:
        raise
    except Exception as exc:  # PIL raises many types for bad files
        arr = _read_tiff_fallback(path)
        if arr is None:
            raise ImageError(
                path, f"not a readable image (corrupt, truncated or unsupported): {exc}"
            ) from None
        h, w = arr.shape[:2]
        if h * w > max_pixels:
            raise ImageError(path, f"image is too large ({w}x{h} > {max_pixels} pixels)") from None
    if arr is None:
        buf = np.fromfile(path, dtype=np.uint8)
        arr = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
        if arr is None:
            raise ImageError(path, "not a readable image (OpenCV could not decode it)")
        if arr.ndim == 3 and arr.shape[2] == 3:
            arr = arr[..., ::-1]
        elif arr.ndim == 3 and arr.shape[2] == 4:
            arr = arr[..., [2, 1, 0, 3]]
    if h < min_size or w < min_size:
        raise ImageError(path, f"image is too small ({w}x{h}; need at least {min_size}x{min_size})")
    out = _channels_to_rgb(_to_float01(np.ascontiguousarray(arr), path), path)
    return np.ascontiguousarray(out, dtype=np.float32)


def to_uint8(img: np.ndarray) -> np.ndarray:
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def remove_stale_temps(folder: str | Path) -> int:
    """Delete the temporary files (``.NAME.*.tmp*``) that :func:`atomic_path` leaves under ``folder`` when its
    process is killed mid-write; returns how many. Call it when a job resumes, before it writes again (one
    job per folder at a time: another job's file in flight would go too)."""
    n = 0
    for p in Path(folder).rglob(".*.tmp*"):
        if p.is_file():
            p.unlink()
            n += 1
    return n


def atomic_write_bytes(path: str | Path, data: bytes, *, fsync: bool = False) -> None:
    """Write via a temporary file and ``os.replace``: a killed process never leaves a partial file.

    ``fsync=True`` also survives power loss, at a cost of milliseconds per file.
    """
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def encode_png(img: np.ndarray) -> bytes:
    """Encode float RGB [0,1] (H,W,3), or a uint8/uint16 (H,W[,C]) array, as PNG bytes."""
    if img.dtype in (np.float32, np.float64):
        img = to_uint8(img)
    arr = img
    if arr.ndim == 3 and arr.shape[2] == 3:
        arr = arr[..., ::-1]
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(arr), [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def save_png(path: str | Path, img: np.ndarray) -> None:
    """Write an image as PNG atomically (float [0,1] -> 8-bit; uint8/uint16 kept)."""
    atomic_write_bytes(path, encode_png(img))


def save_map16(path: str | Path, m: np.ndarray) -> None:
    """Write a map in [0,1] (H,W) as a 16-bit grayscale PNG atomically."""
    m = np.asarray(m, dtype=np.float64)
    if m.ndim != 2:
        raise ValueError(f"map must be 2-D, got shape {m.shape}")
    q = np.round(np.clip(m, 0.0, 1.0) * 65535.0).astype(np.uint16)
    atomic_write_bytes(path, encode_png(q))


def load_map16(path: str | Path) -> np.ndarray:
    """Read a 16-bit map PNG back as float32 (H,W) in [0,1]."""
    arr = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None or arr.ndim != 2:
        raise ImageError(path, "not a single-channel map PNG")
    return (arr.astype(np.float32) / (65535.0 if arr.dtype == np.uint16 else 255.0)).astype(np.float32)
