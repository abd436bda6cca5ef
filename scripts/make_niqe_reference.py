"""Does our NIQE equal BasicSR's? Computes BasicSR 1.4.2's NIQE of a few scikit-image pictures for tests.

Run it in a throw-away environment (never the project's) that has numpy, scipy, torch, opencv and
scikit-image, with the unpacked BasicSR 1.4.2 source distribution::

    python3 -m venv /tmp/venv-ref
    /tmp/venv-ref/bin/pip install numpy scipy torch opencv-python-headless scikit-image
    pip download --no-deps --no-build-isolation --no-binary :all: basicsr==1.4.2 -d /tmp/basicsr_sdist
    tar xzf /tmp/basicsr_sdist/basicsr-1.4.2.tar.gz -C /tmp/basicsr_sdist
    /tmp/venv-ref/bin/python scripts/make_niqe_reference.py /tmp/basicsr_sdist/basicsr-1.4.2

BasicSR's package ``__init__`` imports its whole training stack, so only ``basicsr/metrics/niqe.py`` and
the three modules it needs are loaded by file path, under small stand-ins for their packages. The images
come from :func:`reference_images` (scikit-image data plus deterministic NumPy degradations);
``tests/test_niqe.py`` imports that function to rebuild them and checks their sha256 before comparing.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import sys
import types
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "niqe_reference.json"


def box_blur(img: np.ndarray, size: int) -> np.ndarray:
    """Mean over ``size x size`` windows (edges replicated), rounded to uint8 (sums / size^2: no ties)."""
    a = img.astype(np.int64)
    pad = size // 2
    spec = [(pad, pad), (pad, pad)] + [(0, 0)] * (a.ndim - 2)
    p = np.pad(a, spec, mode="edge")
    c = np.cumsum(np.cumsum(p, axis=0), axis=1)
    c = np.pad(c, [(1, 0), (1, 0)] + [(0, 0)] * (a.ndim - 2))
    h, w = a.shape[:2]
    s = c[size : size + h, size : size + w] - c[:h, size : size + w] - c[size : size + h, :w] + c[:h, :w]
    return np.round(s / (size * size)).astype(np.uint8)


def lattice_noise(shape: tuple[int, ...], amplitude: int) -> np.ndarray:
    """Integer noise in [-amplitude, amplitude] from a fixed integer hash (no RNG, identical everywhere)."""
    idx = np.arange(int(np.prod(shape)), dtype=np.uint64).reshape(shape)
    x = (idx * np.uint64(2654435761) + np.uint64(12345)) % np.uint64(2**32)
    x = (x ^ (x >> np.uint64(13))) * np.uint64(1274126177) % np.uint64(2**32)
    return (x % np.uint64(2 * amplitude + 1)).astype(np.int64) - amplitude


def add_noise(img: np.ndarray, amplitude: int) -> np.ndarray:
    return np.clip(img.astype(np.int64) + lattice_noise(img.shape, amplitude), 0, 255).astype(np.uint8)


def reference_images() -> dict[str, tuple[str, np.ndarray]]:
    """``name -> (how it was made, uint8 image)``; RGB ``(H, W, 3)`` or grayscale ``(H, W)``."""
    from skimage import data

    astronaut, coffee, chelsea, camera = data.astronaut(), data.coffee(), data.chelsea(), data.camera()
    return {
        "astronaut": ("skimage.data.astronaut()", astronaut),
        "coffee": ("skimage.data.coffee()", coffee),
        "chelsea": ("skimage.data.chelsea()", chelsea),
        "camera": ("skimage.data.camera() (grayscale)", camera),
        "astronaut_blur5": ("box_blur(astronaut, 5)", box_blur(astronaut, 5)),
        "coffee_noise40": ("add_noise(coffee, 40): hash noise in [-40, 40], clipped", add_noise(coffee, 40)),
        "camera_blur3": ("box_blur(camera, 3)", box_blur(camera, 3)),
    }


CROPS = {"coffee": 4, "camera_blur3": 7}
"""Images also measured with a border crop (pixels per side)."""


def resize_inputs() -> dict[str, np.ndarray]:
    """Small float arrays for comparing :func:`imresize` with BasicSR's (values in [0, 1])."""
    i, j = np.mgrid[0:13, 0:17].astype(np.float64)
    return {"wave_13x17": 0.5 + 0.4 * np.sin(0.9 * i + 0.3 * j * j / 17) * np.cos(0.7 * j - 0.2 * i)}


RESIZE_SCALES = (0.5, 0.25, 2.0, 0.75)


def sha256(img: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(img).tobytes()).hexdigest()


def _load(name: str, path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def load_basicsr(root: Path) -> tuple[types.ModuleType, types.ModuleType]:
    """BasicSR's ``metrics/niqe.py`` and ``utils/matlab_functions.py`` without its package imports."""
    src = root / "basicsr"
    for pkg in ("basicsr", "basicsr.utils", "basicsr.metrics"):
        mod = types.ModuleType(pkg)
        mod.__path__ = []  # a package, but nothing below it is found automatically
        sys.modules[pkg] = mod
    registry = types.ModuleType("basicsr.utils.registry")
    registry.METRIC_REGISTRY = types.SimpleNamespace(register=lambda: (lambda f: f))  # type: ignore[attr-defined]
    sys.modules["basicsr.utils.registry"] = registry
    color = _load("basicsr.utils.color_util", src / "utils" / "color_util.py")
    sys.modules["basicsr.utils"].bgr2ycbcr = color.bgr2ycbcr  # type: ignore[attr-defined]
    matlab = _load("basicsr.utils.matlab_functions", src / "utils" / "matlab_functions.py")
    _load("basicsr.metrics.metric_util", src / "metrics" / "metric_util.py")
    niqe = _load("basicsr.metrics.niqe", src / "metrics" / "niqe.py")
    return niqe, matlab


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("basicsr_root", type=Path, help="unpacked basicsr-1.4.2 source distribution")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    version = (args.basicsr_root / "VERSION").read_text().strip()
    niqe_mod, matlab = load_basicsr(args.basicsr_root)

    def reference(img: np.ndarray, crop: int) -> float:
        # BasicSR reads HWC images in BGR order (cv2), 0-255
        bgr = img[..., ::-1] if img.ndim == 3 else img
        return float(niqe_mod.calculate_niqe(bgr, crop, input_order="HWC", convert_to="y"))

    images = []
    for name, (recipe, img) in reference_images().items():
        for crop in sorted({0, CROPS.get(name, 0)}):
            value = reference(img, crop)
            print(f"{name:18s} crop {crop}: {value:.6f}")
            images.append(
                {"name": name, "recipe": recipe, "shape": list(img.shape), "sha256": sha256(img),
                 "crop_border": crop, "niqe": value}
            )
    resizes = []
    for name, arr in resize_inputs().items():
        for s in RESIZE_SCALES:
            out = np.asarray(matlab.imresize(arr.astype(np.float32), s, antialiasing=True), dtype=np.float64)
            resizes.append({"input": name, "scale": s, "antialiasing": True, "output": out.round(7).tolist()})
    payload = {
        "about": "BasicSR calculate_niqe(img, crop_border, input_order='HWC', convert_to='y') of RGB images "
        "(given to BasicSR in BGR order) and grayscale images, uint8 0-255; made by "
        "scripts/make_niqe_reference.py",
        "basicsr_version": version,
        "numpy_version": np.__version__,
        "images": images,
        "imresize": resizes,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
