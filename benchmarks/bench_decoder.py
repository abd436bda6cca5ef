"""Decoder overhead RM_N/RM_0, measured interleaved in one process so background load hits every config alike.

    python benchmarks/bench_decoder.py --threads 1 --rounds 15
    python benchmarks/bench_decoder.py --configs light light:8,16,48,96 res light:8,16,32,64:finest

Each config is ``BLOCK[:W1,W2,...[:FUSION]]``: the decoder block body, the decoder widths finest first
(empty: the default) and ``map_fusion`` (input unless given). Every round times, for each config, one
batch of RM_0, one of the config's RM_N and one of RM_0 again; the overhead is the median over rounds of
RM_N's time over the mean of the two RM_0 times around it (with quartiles), so slow spells on a shared
machine cancel. By default the clock is the process's CPU time, which other jobs on the machine disturb
less than elapsed time. ``--mode reward`` times a forward and backward pass to the input (the model used as
a loss) instead of inference.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from finpercep.rm import RewardModel, RMConfig


def parse_config(text: str) -> RMConfig:
    block, _, rest = text.partition(":")
    widths, _, fusion = rest.partition(":")
    if block not in ("res", "light") or fusion not in ("", "input", "finest"):
        raise SystemExit(f"config {text!r}: the block must be res or light, the fusion input or finest")
    return RMConfig(
        decoder_block=block,
        decoder_widths=tuple(int(w) for w in widths.split(",") if w),
        map_fusion=fusion or "input",
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="+", default=["light:8,16,32,64", "light"])
    p.add_argument("--mode", choices=["infer", "reward"], default="infer")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--threads", type=int, default=1, help="torch threads (0: torch default)")
    p.add_argument(
        "--clock",
        choices=["cpu", "wall"],
        default="cpu",
        help="cpu = this process's CPU time (robust to other jobs on a shared machine; with --threads 1 it "
        "is the work done), wall = elapsed time",
    )
    p.add_argument("--json", type=Path, default=None, help="also write the result here")
    a = p.parse_args()
    if a.rounds < 2:
        p.error("--rounds must be at least 2 (quartiles of the paired ratios)")
    if a.threads:
        torch.set_num_threads(a.threads)
    models = {"RM_0": RewardModel(RMConfig(stage=0)).eval()}
    for text in a.configs:
        models[text] = RewardModel(parse_config(text)).eval()
    x = torch.rand(a.batch, 3, a.size, a.size, generator=torch.Generator().manual_seed(0))

    def step(model: RewardModel) -> None:
        if a.mode == "infer":
            with torch.no_grad():
                model(x)
        else:
            model(x.clone().requires_grad_(True)).score.sum().backward()

    clock = time.process_time if a.clock == "cpu" else time.perf_counter

    def timed(model: RewardModel) -> float:
        t0 = clock()
        step(model)
        return (clock() - t0) * 1000 / a.batch

    for model in models.values():
        step(model)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in models}
    ratios: dict[str, list[float]] = {name: [] for name in a.configs}
    for _ in range(a.rounds):
        for name in a.configs:  # RM_0 right before and after each config: a paired ratio, drift cancels
            before, t, after = timed(models["RM_0"]), timed(models[name]), timed(models["RM_0"])
            times["RM_0"] += [before, after]
            times[name].append(t)
            ratios[name].append(2 * t / (before + after))
    med = {name: statistics.median(v) for name, v in times.items()}
    quart = {name: statistics.quantiles(v, n=4) for name, v in ratios.items()}
    result = {
        "mode": a.mode,
        "batch": a.batch,
        "size": a.size,
        "threads": a.threads,
        "clock": a.clock,
        "rounds": a.rounds,
        "ms_per_image_median": med,
        "overhead_vs_rm0": {name: statistics.median(v) for name, v in ratios.items()},
        "overhead_quartiles": {name: [q[0], q[2]] for name, q in quart.items()},
        "params": {name: sum(q.numel() for q in m.parameters()) for name, m in models.items()},
    }
    for name in models:
        ratio = ""
        if name != "RM_0":
            q = quart[name]
            ratio = f"  RM_N/RM_0 = {result['overhead_vs_rm0'][name]:.3f}x (quartiles {q[0]:.3f}-{q[2]:.3f})"
        print(f"{name:24s} {med[name]:7.1f} ms/image ({a.clock}, median of {len(times[name])}){ratio}")
    if a.json:
        a.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
