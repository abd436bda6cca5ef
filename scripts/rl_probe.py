"""Why does RL lose fidelity? Train one RL variant, then evaluate it on held-out photo crops.

Question it answered (issue 22, item 3): does the generator drift away from the HR image because of the
reward, or because of the policy-gradient noise itself? ``--reward random`` replaces the reward by
i.i.d. noise (the group advantages are then pure noise), so whatever fidelity it loses is the drift of
the estimator alone.

    python scripts/rl_probe.py --out runs/probe/x --eval test=runs/photos/test [any rl train option]

``--eval NAME=DIR`` cuts the evaluation pairs from the photos in DIR (``finpercep eval --hr-folders``);
``--eval NAME=LRDIR:HRDIR`` reads fixed pairs (``scripts/export_eval_pairs.py`` writes them). Writes
``OUT/`` (the RL run) and ``OUT/eval_NAME/`` per set (PSNR, artifact fraction, NIQE, and RM_0's score as
the "judge", which measures how far the global reward was climbed). ``--steps 0`` evaluates the
untouched generator.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from finpercep.config import add_arguments, from_args
from finpercep.eval.evaluate import EvalConfig, read_result, run_eval
from finpercep.rl import RLConfig, train
from finpercep.rm.model import default_checkpoint_dir


class RandomReward:
    """Reward that ignores the image: N(0, 1) from a counter, the same on every run."""

    def __init__(self, seed: int) -> None:
        self.gen = torch.Generator().manual_seed(seed)

    def __call__(self, sr: torch.Tensor, lr: torch.Tensor, hr: torch.Tensor | None = None) -> torch.Tensor:
        return torch.randn(sr.shape[0], generator=self.gen).to(sr.device)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(p, RLConfig)
    p.add_argument("--reward", choices=("rm", "random"), default="rm")
    p.add_argument("--eval", nargs="+", default=["test=runs/photos/test"], metavar="NAME=DIR[:HRDIR]")
    p.add_argument("--eval-pairs", type=int, default=32)
    p.add_argument("--judge-stage", type=int, default=0)
    ns = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    untouched = getattr(ns, "steps", 1) == 0
    cfg = from_args(RLConfig, ns, **({"steps": 1} if untouched else {}))
    if untouched:
        out, generator = Path(cfg.out), cfg.generator
    else:
        rewards = [RandomReward(cfg.seed)] if ns.reward == "random" else None
        out = generator = train(cfg, rewards=rewards)
    judge = default_checkpoint_dir() if cfg.reward_model is None else cfg.reward_model
    for spec in ns.eval:
        name, _, dirs = spec.partition("=")
        lr_dir, _, hr_dir = dirs.partition(":")
        source = {"paired_lr": lr_dir, "paired_hr": hr_dir} if hr_dir else {"hr_folders": (lr_dir,)}
        ev = run_eval(
            EvalConfig(
                generator=str(generator),
                num_pairs=ns.eval_pairs,
                judge=str(judge),
                judge_stage=ns.judge_stage,
                out=str(Path(out) / f"eval_{name}"),
                threads=cfg.threads,
                **source,
            )
        )
        sys.stdout.write(f"{out} {name}: {read_result(ev)['metrics']}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
