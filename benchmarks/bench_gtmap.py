"""Throughput of the ground-truth degradation map (and of mask generation) at 256 x 256.

Usage: python benchmarks/bench_gtmap.py [--threads 1] [--repeats 10] [--size 256]

Prints maps/s of ``gt_degradation_maps`` with the default (filterbank) extractor for batch sizes 1
and 8, both for a batch sharing one GT (what the synthesis pipeline passes: every synthetic of a
crop against the same GT, whose features are computed once) and for distinct GTs, plus masks/s for
random and SLIC semantic masks.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import cv2
import numpy as np
import torch
from skimage import data

from finpercep.data.features import FilterBankFeatures
from finpercep.data.gtmap import GTMapConfig, gt_degradation_maps
from finpercep.data.masks import feather, random_mask, semantic_mask


def _rate(fn: Callable[[], object], items: int, repeats: int) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return items * repeats / (time.perf_counter() - t0)


def _crop(img: np.ndarray, size: int) -> np.ndarray:
    img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
    return np.round(img.astype(np.float32) / 255.0 * 255.0) / 255.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1, help="torch and OpenCV threads")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--size", type=int, default=256)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    size = args.size
    rng = np.random.default_rng(0)
    gts = [_crop(im, size) for im in (data.astronaut(), data.coffee(), data.chelsea(), data.rocket())]
    gts = (gts * 2)[:8]
    syns = []
    for i, gt in enumerate(gts):
        sr = np.clip(cv2.GaussianBlur(gt, (0, 0), 1.5) + 0.03 * rng.standard_normal(gt.shape), 0, 1)
        m = feather(random_mask(size, size, (0.05, 0.55), np.random.default_rng(i)), 3.0)[..., None]
        syns.append(np.round((m * sr + (1 - m) * gt) * 255.0) / 255.0)
    syn = np.stack(syns).astype(np.float32)
    gt_distinct = np.stack(gts).astype(np.float32)
    gt_shared = np.broadcast_to(gt_distinct[0], syn.shape)
    extractor, cfg = FilterBankFeatures(), GTMapConfig()

    print(f"M_gt at {size}x{size}, extractor={extractor.name}, threads={args.threads}")
    for bs in (1, 8):
        for label, gt in (("shared GT", gt_shared), ("distinct GTs", gt_distinct)):
            if bs == 1 and label == "distinct GTs":
                continue
            r = _rate(
                lambda bs=bs, gt=gt: gt_degradation_maps(syn[:bs], gt[:bs], extractor, cfg), bs, args.repeats
            )
            print(f"  batch {bs} ({label}): {r:7.1f} maps/s")
    x = torch.from_numpy(gt_distinct.transpose(0, 3, 1, 2).copy())
    print(
        f"  filterbank features alone, batch 8: {_rate(lambda: extractor(x), 8, args.repeats):7.1f} images/s"
    )

    seeds = iter(range(10**6))
    r = _rate(lambda: random_mask(size, size, (0.05, 0.15), np.random.default_rng(next(seeds))), 1, 50)
    print(f"random masks (0.05-0.15): {r:7.1f} masks/s")
    for method in ("slic", "felzenszwalb"):
        r = _rate(
            lambda method=method: semantic_mask(
                gts[0], (0.30, 0.55), np.random.default_rng(next(seeds)), method=method
            ),
            1,
            args.repeats,
        )
        print(f"semantic masks ({method}, 0.30-0.55): {r:7.1f} masks/s")


if __name__ == "__main__":
    main()
