"""CPU time of each SR candidate source per 64x64 LR tile (median of a few runs, 1 and 2 threads).

    python benchmarks/bench_sr.py [--size 64] [--runs 3] [--tile-pad 0] [--threads 1 2]

``--tile-pad 0`` times the network on exactly ``size x size`` pixels; the sources' default context of
10 px makes each call process ``(size + 20)^2`` pixels instead (about 1.7x the work at size 64).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from finpercep.sr import SR_MODELS, get_sr_source


def _time(fn, lr: np.ndarray, runs: int) -> float:
    fn(lr)  # loads the network, warms caches
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn(lr)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=fmt)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tile-pad", type=int, default=0)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--models", nargs="*", default=None, help="names (default: every registry entry)")
    args = parser.parse_args()

    lr = np.random.default_rng(0).random((args.size, args.size, 3), dtype=np.float32)
    specs = [s for s in SR_MODELS if args.models is None or s.name in args.models]
    head = f"{'model':28s} {'scale':>5s} " + " ".join(f"{f'{t} thr ms':>10s}" for t in args.threads)
    print(f"{args.size}x{args.size} LR tile, tile_pad={args.tile_pad}, median of {args.runs} runs")
    print(head + f" {'speedup':>8s}")
    print("-" * (len(head) + 9))
    for spec in specs:
        if spec.kind == "interp" and spec.scale != 4:
            continue
        row = []
        for threads in args.threads:
            src = get_sr_source(
                spec.name, scale=spec.scale, threads=threads, tile_size=0, tile_pad=args.tile_pad
            )
            row.append(_time(src, lr, args.runs))
        speedup = f"{row[0] / row[-1]:8.2f}" if len(row) > 1 else ""
        cells = " ".join(f"{t * 1e3:10.1f}" for t in row)
        print(f"{spec.name:28s} {spec.scale:>5d} {cells} {speedup}")


if __name__ == "__main__":
    main()
