"""A short RL run of every algorithm x curriculum on the embedded photos with the packaged reward model.

    python scripts/rl_matrix.py --out runs/rl_matrix            # grpo/refl x global/full/ccl, 60 steps
    python scripts/rl_matrix.py --algorithms grpo --curricula ccl --steps 120

For each run it prints: the reward of each stage's first and last ``--window`` steps (the reward of the
current stage should rise), the stage transitions (step and reason), the largest KL to the reference
(grpo) and the wall time. Runs resume: a finished run is only summarised again.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import time
from pathlib import Path

from finpercep.rl.curriculum import CurriculumConfig
from finpercep.rl.train import RLConfig, train


def stage_rewards(log: Path, window: int) -> list[tuple[int, float, float]]:
    """(stage, mean reward of its first ``window`` steps, of its last ``window`` steps) per stage."""
    by_stage: dict[int, list[float]] = {}
    with log.open() as f:
        for row in csv.DictReader(f):
            by_stage.setdefault(int(row["stage"]), []).append(float(row["reward"]))
    out = []
    for stage, r in sorted(by_stage.items()):
        w = max(1, min(window, len(r) // 2))
        out.append((stage, sum(r[:w]) / w, sum(r[-w:]) / w))
    return out


def max_kl(log: Path) -> float:
    with log.open() as f:
        vals = [float(row["kl"]) for row in csv.DictReader(f)]
    finite = [v for v in vals if math.isfinite(v)]
    return max(finite) if finite else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/rl_matrix")
    ap.add_argument("--algorithms", nargs="+", default=["grpo", "refl"])
    ap.add_argument("--curricula", nargs="+", default=["global", "full", "ccl"])
    ap.add_argument("--generator", default="realesrgan-animevideov3")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--lr-size", type=int, default=32)
    ap.add_argument("--window", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    results = []
    for algorithm in args.algorithms:
        for curriculum in args.curricula:
            out = Path(args.out) / f"{algorithm}_{curriculum}"
            cfg = RLConfig(
                generator=args.generator,
                algorithm=algorithm,
                curriculum=CurriculumConfig(kind=curriculum),
                steps=args.steps,
                lr=args.lr,
                lr_size=args.lr_size,
                seed=args.seed,
                out=str(out),
                tensorboard=False,
                preview=0,
                progress=False,
            )
            t0 = time.perf_counter()
            train(cfg)
            summary = json.loads((out / "summary.json").read_text())
            res = {
                "run": out.name,
                "steps": summary["steps"],
                "stages": stage_rewards(out / "log.csv", args.window),
                "transitions": [(t["step"], t["to"], t["reason"]) for t in summary["transitions"]],
                "max_kl": max_kl(out / "log.csv"),
                "wall_s": time.perf_counter() - t0,
            }
            results.append(res)
            stages = "; ".join(f"RM_{s}: {a:+.3f} -> {b:+.3f}" for s, a, b in res["stages"])
            print(
                f"{res['run']:12s} {res['steps']} steps  {stages}  transitions {res['transitions']}  "
                f"max KL {res['max_kl']:.3g}  {res['wall_s']:.0f} s",
                flush=True,
            )
    (Path(args.out) / "matrix.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
