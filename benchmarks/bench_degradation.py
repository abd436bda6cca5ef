"""Time the Real-ESRGAN degradation on one core: ms per 256x256 and 512x512 HR crop.

    python benchmarks/bench_degradation.py [--n 200] [--threads 1]

Wall time is what a data-loader worker sees; CPU time is less sensitive to other load on the machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from skimage import data  # noqa: E402

from finpercep.data.degradation import (  # noqa: E402
    DegradationConfig,
    apply_params,
    degrade,
    sample_params,
    simple_degrade,
)


def photo(size: int) -> np.ndarray:
    """A natural photo (bundled with scikit-image) resized to ``size`` x ``size``, float32 RGB in [0, 1]."""
    img = cv2.resize(data.astronaut(), (size, size), interpolation=cv2.INTER_AREA)
    return img.astype(np.float32) / 255.0


def time_calls(fn: Callable[[int], object], n: int) -> tuple[np.ndarray, np.ndarray]:
    fn(0)
    wall, cpu = [], []
    for i in range(n):
        t0, c0 = time.perf_counter(), time.process_time()
        fn(i)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return np.array(wall) * 1e3, np.array(cpu) * 1e3


def report(name: str, wall: np.ndarray, cpu: np.ndarray) -> None:
    print(
        f"{name:<34} wall mean {wall.mean():6.2f} ms  median {np.median(wall):6.2f}"
        f"  p90 {np.percentile(wall, 90):6.2f}  | cpu mean {cpu.mean():6.2f} ms"
    )


def bench_size(scale: int, size: int, n: int, detail: bool) -> None:
    cfg = DegradationConfig(scale=scale)
    hr = photo(size)
    rng = np.random.default_rng(0)
    report(f"degrade x{scale} {size}x{size}", *time_calls(lambda _i: degrade(hr, cfg, rng), n))
    if detail:
        params = [sample_params(cfg, np.random.default_rng(i)) for i in range(n)]
        report("  sample_params only", *time_calls(lambda _i: sample_params(cfg, rng), n))
        report(f"  apply_params only {size}x{size}", *time_calls(lambda i: apply_params(hr, params[i]), n))
        report(f"simple_degrade x{scale} {size}x{size}", *time_calls(lambda _i: simple_degrade(hr, scale), n))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=200, help="calls per measurement")
    ap.add_argument("--threads", type=int, default=1, help="OpenCV threads (1 = one core)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    args = ap.parse_args()
    cv2.setNumThreads(args.threads)
    print(
        f"python {sys.version.split()[0]}, numpy {np.__version__}, opencv {cv2.__version__}, "
        f"cv2 threads {cv2.getNumThreads()}, n={args.n}"
    )
    for scale in (4, 2):
        for size in args.sizes:
            bench_size(scale, size, args.n, detail=scale == 4)


if __name__ == "__main__":
    main()
