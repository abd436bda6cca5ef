"""Speed and page faults of the packaged reward model under each allocator policy (``finpercep.allocator``).

    python benchmarks/bench_allocator.py --rounds 6 --json runs/bench_alloc.json
    python benchmarks/bench_allocator.py --threads 2 --stages 0 4 --modes reward

The policy is process-wide and cannot be undone, so every measurement runs in a fresh subprocess: a round
runs one subprocess per policy, in alternating order, and each round gives paired ratios retain/system, so
slow spells on a shared machine hit both sides alike. A subprocess loads the packaged checkpoint at each
stage asked for and, after two warm-up passes of each, times ``--iters`` rounds of one pass per (stage,
mode), counting the minor page faults of each pass. ``infer`` is a no-grad pass, ``reward`` a forward and
backward pass to the input with the parameters frozen, ``train`` a training step (forward, backward to the
parameters, AdamW). The time is the process's CPU time (``--clock cpu``, the default), which includes the
kernel's time spent on page faults.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

POLICIES = ("system", "retain")


def run_one(
    allocator: str,
    stages: list[int],
    modes: list[str],
    batch: int,
    size: int,
    iters: int,
    threads: int,
    clock: str,
) -> dict[str, dict[str, float]]:
    from finpercep.allocator import configure_allocator

    configure_allocator(allocator)
    import torch

    from finpercep.rm import RewardModel

    torch.set_num_threads(threads)
    tick = time.process_time if clock == "cpu" else time.perf_counter
    x = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    models = {s: RewardModel.from_pretrained(stage=s).eval().requires_grad_(False) for s in stages}
    trained = {s: RewardModel.from_pretrained(stage=s).train() for s in stages if "train" in modes}
    optims = {s: torch.optim.AdamW(m.parameters(), lr=1e-5) for s, m in trained.items()}

    def step(stage: int, mode: str) -> None:
        if mode == "infer":
            with torch.no_grad():
                models[stage](x)
        elif mode == "reward":
            models[stage](x.clone().requires_grad_(True)).score.sum().backward()
        else:
            out = trained[stage](x)
            (out.map.mean() - out.score.mean()).backward()
            optims[stage].step()
            optims[stage].zero_grad(set_to_none=True)

    keys = [(s, m) for s in stages for m in modes]
    for _ in range(2):  # warm-up: the heap reaches its working size
        for k in keys:
            step(*k)
    times = dict.fromkeys(keys, 0.0)
    faults = dict.fromkeys(keys, 0)
    for _ in range(iters):  # interleaved, so every (stage, mode) sees the same heap history
        for k in keys:
            f0, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, tick()
            step(*k)
            times[k] += tick() - t0
            faults[k] += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
    out = {
        f"RM_{s} {m}": {
            "ms_per_image": 1000 * times[s, m] / (iters * batch),
            "faults_per_pass": faults[s, m] / iters,
        }
        for s, m in keys
    }
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--stages", nargs="+", type=int, default=[0, 4], help="stages of the packaged checkpoint")
    p.add_argument("--modes", nargs="+", choices=["infer", "reward", "train"], default=["infer", "reward"])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--iters", type=int, default=5, help="timed passes per (stage, mode) in each subprocess")
    p.add_argument("--rounds", type=int, default=6, help="subprocess pairs (one per policy)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--clock", choices=["cpu", "wall"], default="cpu")
    p.add_argument("--json", type=Path, default=None, help="also write the result here")
    p.add_argument("--one", choices=POLICIES, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.one:
        res = run_one(a.one, a.stages, a.modes, a.batch, a.size, a.iters, a.threads, a.clock)
        print(json.dumps(res))
        return
    if a.rounds < 2:
        p.error("--rounds must be at least 2 (quartiles of the paired ratios)")
    opts = {"batch": a.batch, "size": a.size, "iters": a.iters, "threads": a.threads, "clock": a.clock}
    args = ["--stages", *map(str, a.stages), "--modes", *a.modes, *(f"--{k}={v}" for k, v in opts.items())]
    runs: dict[str, list[dict[str, dict[str, float]]]] = {k: [] for k in POLICIES}
    for r in range(a.rounds):
        order = POLICIES if r % 2 == 0 else POLICIES[::-1]
        for policy in order:
            cmd = [sys.executable, __file__, "--one", policy, *args]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            runs[policy].append(json.loads(out.strip().splitlines()[-1]))
    keys = list(runs["system"][0])
    result: dict[str, object] = {
        "batch": a.batch,
        "size": a.size,
        "threads": a.threads,
        "clock": a.clock,
        "rounds": a.rounds,
        "iters": a.iters,
    }
    rows = {}
    for k in keys:
        ratios = [
            new[k]["ms_per_image"] / old[k]["ms_per_image"]
            for old, new in zip(runs["system"], runs["retain"], strict=True)
        ]
        rows[k] = {
            **{
                f"{pol}_ms_per_image": statistics.median(run[k]["ms_per_image"] for run in runs[pol])
                for pol in POLICIES
            },
            **{
                f"{pol}_faults_per_pass": statistics.median(run[k]["faults_per_pass"] for run in runs[pol])
                for pol in POLICIES
            },
            "time_retain_over_system": statistics.median(ratios),
            "quartiles": statistics.quantiles(ratios, n=4),
        }
        q, r = rows[k]["quartiles"], rows[k]
        print(
            f"{k:14s} system {r['system_ms_per_image']:6.1f} ms/img, "
            f"{r['system_faults_per_pass']:8.0f} faults/pass | "
            f"retain {r['retain_ms_per_image']:6.1f} ms/img, "
            f"{r['retain_faults_per_pass']:8.0f} faults/pass | "
            f"retain/system {r['time_retain_over_system']:.3f} (quartiles {q[0]:.3f}-{q[2]:.3f})",
            flush=True,
        )
    for pol in POLICIES:
        for mode in a.modes:
            lo, hi = f"RM_{min(a.stages)} {mode}", f"RM_{max(a.stages)} {mode}"
            if lo != hi:
                ratio = statistics.median(
                    run[hi]["ms_per_image"] / run[lo]["ms_per_image"] for run in runs[pol]
                )
                rows[f"{pol} {mode} {hi}/{lo}"] = ratio
                print(f"{pol:6s} {mode:6s} {hi}/{lo} = {ratio:.3f}x")
    result["results"] = rows
    if a.json:
        a.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
