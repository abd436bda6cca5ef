"""Synthesis throughput excluding SR inference.

A first build fills the SR cache with real SR outputs; the timed builds then re-synthesise every
sample (LR degradation, masks, swaps, M_gt, PNG writes) with SR outputs read from that cache.

    python benchmarks/bench_synthesis.py [--num 24] [--hr-size 256]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from finpercep.data.manifest import read_manifest
from finpercep.data.synthesis import SynthesisConfig, build


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--num", type=int, default=24)
    ap.add_argument("--hr-size", type=int, default=256)
    ap.add_argument(
        "--models",
        nargs="+",
        default=["realesrgan-x4plus", "realsr-df2k", "realesrgan-animevideov3", "bicubic"],
    )
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench_synth_"))
    try:
        out = root / "ds"
        kw = dict(out=str(out), num=args.num, hr_size=args.hr_size, sr_models=tuple(args.models), seed=0)
        t0 = time.perf_counter()
        build(SynthesisConfig(**kw, workers=2), progress=False)
        cold = time.perf_counter() - t0
        n = len(read_manifest(out))
        print(f"{n} samples in {args.num} groups at {args.hr_size}px, models: {', '.join(args.models)}")
        print(f"cold build (SR inference included, 2 workers): {cold:.1f} s = {n / cold:.1f} samples/s")
        for workers in (1, 2):
            for sub in ("records", "images", "maps", "masks", "lr"):
                shutil.rmtree(out / sub, ignore_errors=True)
            t0 = time.perf_counter()
            build(SynthesisConfig(**kw, workers=workers), progress=False)
            dt = time.perf_counter() - t0
            print(
                f"synthesis excluding SR inference, {workers} worker(s): {n / dt:.1f} samples/s ({dt:.1f} s)"
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
