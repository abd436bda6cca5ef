"""A tiny synthetic dataset in the FGR manifest format, for tests and smoke runs of the reward model.

GT images are random multi-scale textures with fine grain; the "SR output" of a fake model is the GT
blurred (and slightly tinted), i.e. it loses the fine detail the way over-smoothing SR does. Swaps,
chains, maps and manifest fields follow :mod:`finpercep.data.manifest`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter

from ..io import atomic_write_text, save_map16, save_png, to_uint8

FAKE_MODELS = ("blur-a", "blur-b")


def _texture(rng: np.random.Generator, size: int, style: float) -> np.ndarray:
    img = np.zeros((size, size, 3), np.float32)
    for sigma, amp in ((size / 8, 0.5), (size / 32, 0.3), (1.0, 0.25 * style)):
        img += amp * gaussian_filter(rng.standard_normal((size, size, 3)), (sigma, sigma, 0)).astype(
            np.float32
        )
    img = (img - img.mean()) / (img.std() + 1e-6)
    return np.clip(0.5 + 0.18 * img, 0.0, 1.0).astype(np.float32)


def _blob(rng: np.random.Generator, size: int, area: float) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    r = np.sqrt(area * size * size / np.pi)
    cy, cx = rng.uniform(r, size - r, 2)
    ry, rx = r * rng.uniform(0.7, 1.3, 2)
    return ((((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2) <= 1.0).astype(np.float32)


def write_fake_dataset(
    root: str | Path,
    *,
    sources: tuple[str, ...] = ("tex_a", "tex_b", "tex_c"),
    groups_per_source: int = 2,
    size: int = 64,
    models: tuple[str, ...] = FAKE_MODELS,
    seed: int = 0,
) -> Path:
    """Write images, maps, masks and ``manifest.jsonl`` under ``root``; returns ``root``."""
    root = Path(root)
    rows = []
    index = 0
    for src_i, src in enumerate(sources):
        for _ in range(groups_per_source):
            rng = np.random.default_rng([seed, index])
            gid = f"c{index:06d}"
            gt = _texture(rng, size, style=1.0 + 0.5 * src_i)
            base = {
                "group": gid,
                "source_image": src,
                "crop": [0, 0, size, size],
                "seed": int(index),
                "gt": f"images/{gid}/gt.png",
                "lr": f"lr/{gid}.png",
            }
            save_png(root / base["gt"], gt)
            save_png(root / base["lr"], gt[::4, ::4])
            save_map16(root / f"maps/{gid}/gt.png", np.zeros((size, size), np.float32))
            rows.append(
                {
                    **base,
                    "id": f"{gid}_gt",
                    "role": "gt",
                    "rank": 0,
                    "image": base["gt"],
                    "map": f"maps/{gid}/gt.png",
                    "mask": None,
                    "sr_model": None,
                    "mask_kind": "none",
                    "defect_area": 0.0,
                    "map_mean": 0.0,
                }
            )
            for mi, model in enumerate(models):
                sr = gaussian_filter(gt, (1.5 + mi, 1.5 + mi, 0)) * np.float32(1.0 - 0.03 * mi)
                small = _blob(rng, size, 0.08)
                large = np.maximum(small, _blob(rng, size, 0.25))
                for rank, (role, mask) in enumerate(
                    (("small", small), ("large", large), ("sr", np.ones((size, size), np.float32))), start=1
                ):
                    syn = mask[..., None] * sr + (1 - mask[..., None]) * gt
                    diff = np.abs(syn - gt).mean(axis=2)
                    mgt = np.clip(mask * (0.6 + 4.0 * gaussian_filter(diff, 2.0)), 0.0, 1.0)
                    sid = f"{model}_{role}"
                    paths = {
                        "image": f"images/{gid}/{sid}.png",
                        "map": f"maps/{gid}/{sid}.png",
                        "mask": None if role == "sr" else f"masks/{gid}/{sid}.png",
                    }
                    save_png(root / paths["image"], syn.astype(np.float32))
                    save_map16(root / paths["map"], mgt)
                    if paths["mask"]:
                        save_png(root / paths["mask"], to_uint8(mask))
                    rows.append(
                        {
                            **base,
                            **paths,
                            "id": f"{gid}_{sid}",
                            "role": role,
                            "rank": rank,
                            "sr_model": model,
                            "mask_kind": "full" if role == "sr" else "random",
                            "defect_area": float(mask.mean()),
                            "map_mean": float(mgt.mean()),
                        }
                    )
            index += 1
    rows.sort(key=lambda r: r["id"])
    atomic_write_text(root / "manifest.jsonl", "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    return root
