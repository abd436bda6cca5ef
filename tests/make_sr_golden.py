"""Regenerate the golden SR outputs used by tests/test_sr.py.

Run from the repository root (takes a few seconds)::

    python tests/make_sr_golden.py          # or: python -m tests.make_sr_golden

Each ``tests/data/sr_golden_<model>_x<scale>.npz`` holds the fixed 16x16 input (``lr``, float32), the
model output (``sr``, float16) and the settings used (untiled, ``tile_pad`` 10, 1 thread, fp32).
Only regenerate after a deliberate change of the pre/post-processing; say why in the commit.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from finpercep.sr import NcnnSource, NcnnSR, sr_spec

DATA_DIR = Path(__file__).resolve().parent / "data"
GOLDEN_CASES: tuple[tuple[str, int], ...] = (
    ("realesrgan-x4plus", 4),
    ("realsr-df2k", 4),
    ("realesrgan-animevideov3", 4),
    ("realesrgan-animevideov3", 2),
    ("realcugan-x4", 4),
)
GOLDEN_SIZE = 16
GOLDEN_TILE_PAD = 10


def golden_path(name: str, scale: int) -> Path:
    return DATA_DIR / f"sr_golden_{name}_x{scale}.npz"


def golden_input(size: int = GOLDEN_SIZE) -> np.ndarray:
    """A deterministic RGB test pattern: gradients, an edge, a sinusoid and seeded noise."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64) / (size - 1)
    r = 0.15 + 0.7 * x
    g = np.where(x + 0.5 * y > 0.7, 0.8, 0.25)
    b = 0.5 + 0.35 * np.sin(2.0 * np.pi * (2.0 * x + y))
    img = np.stack([r, g, b], axis=-1) + 0.03 * np.random.default_rng(1234).standard_normal((size, size, 3))
    return np.clip(img, 0.0, 1.0).astype(np.float32)


def golden_model(name: str, scale: int) -> NcnnSR:
    """The registry's ncnn model, untiled, with the golden settings (the spec supplies its conventions)."""
    return NcnnSource(sr_spec(name, scale), threads=1, tile_size=0, tile_pad=GOLDEN_TILE_PAD).model


def main() -> None:
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    lr = golden_input()
    for name, scale in GOLDEN_CASES:
        sr = golden_model(name, scale)(lr)
        path = golden_path(name, scale)
        np.savez_compressed(path, lr=lr, sr=sr.astype(np.float16), tile_pad=GOLDEN_TILE_PAD, scale=scale)
        print(f"wrote {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
