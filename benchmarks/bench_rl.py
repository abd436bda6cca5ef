"""Throughput of one RL step at 64x64 LR, and the share of the step spent in the reward model.

Generators: SRVGGNetCompact (realesrgan-animevideov3 weights) and RRDBNet (realesrgan-x4plus weights);
reward: a default-size FinPercep-RM (small_cnn encoder, full decoder), randomly initialised.

    python benchmarks/bench_rl.py                      # both generators, grpo and refl
    python benchmarks/bench_rl.py --generators realesrgan-animevideov3 --algorithms grpo --steps 5

"samples/s" counts the SR images the reward scores per second (B * G for grpo, B for refl). For refl the
reward model's share includes its backward pass, measured separately on the same batch.
"""

from __future__ import annotations

import argparse
import time

import torch

from finpercep import dist as D
from finpercep.allocator import add_allocator_argument, configure_allocator
from finpercep.rl.data import PairSource
from finpercep.rl.generators import GaussianPolicy, build_generator, frozen_copy
from finpercep.rl.rewards import RMScoreReward
from finpercep.rl.train import RLConfig, grpo_step, noise_generators, refl_step
from finpercep.rm.model import RewardModel, RMConfig


def rm_forward_backward_s(reward: RMScoreReward, sr: torch.Tensor, repeats: int) -> float:
    times = []
    for _ in range(repeats + 1):
        x = sr.detach().clone().requires_grad_(True)
        t0 = time.perf_counter()
        reward(x, x).sum().backward()
        times.append(time.perf_counter() - t0)
    return min(times[1:])


def bench(
    generator: str, algorithm: str, steps: int, batch: int, group: int, lr_size: int
) -> dict[str, float]:
    d = D.Dist(0, 1, torch.device("cpu"), False)
    cfg = RLConfig(
        generator=generator, algorithm=algorithm, batch_size=batch, group_size=group, lr_size=lr_size
    )
    loaded = build_generator(generator)
    policy = GaussianPolicy(loaded.net, loaded.scale, cfg.policy_std)
    ref = frozen_copy(policy)
    params = [p for p in policy.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr)
    reward = RMScoreReward(RewardModel(RMConfig()))
    data = PairSource(loaded.scale, lr_size, seed=0)
    times, reward_times = [], []
    for step in range(steps + 1):  # step 0 warms up
        lr, hr = data.batch(step, range(batch))
        t0 = time.perf_counter()
        if algorithm == "grpo":
            s = grpo_step(
                d,
                cfg,
                policy,
                ref,
                reward,
                opt,
                params,
                lr,
                hr,
                noise_generators(0, step, range(batch), d.device),
            )
        else:
            s = refl_step(d, cfg, policy, ref, reward, opt, params, lr, hr)
        if step:
            times.append(time.perf_counter() - t0)
            reward_times.append(s["reward_time_s"])
    step_s = sum(times) / len(times)
    samples = batch * (group if algorithm == "grpo" else 1)
    rm_s = sum(reward_times) / len(reward_times)
    if algorithm == "refl":
        sr = policy(lr).detach().clamp(0, 1)
        rm_s = rm_forward_backward_s(reward, sr, repeats=2)
    return {"step_s": step_s, "samples_per_s": samples / step_s, "rm_s": rm_s, "rm_share": rm_s / step_s}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--generators", nargs="+", default=["realesrgan-animevideov3", "realesrgan-x4plus"])
    p.add_argument("--algorithms", nargs="+", default=["grpo", "refl"], choices=["grpo", "refl"])
    p.add_argument("--steps", type=int, default=3, help="timed steps (after one warm-up step)")
    p.add_argument("--batch", type=int, default=1, help="LR inputs per step")
    p.add_argument("--group", type=int, default=4, help="grpo samples per input")
    p.add_argument("--lr-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    add_allocator_argument(p)
    a = p.parse_args()
    configure_allocator(a.allocator)
    if a.threads:
        torch.set_num_threads(a.threads)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, LR {a.lr_size}x{a.lr_size}, "
        f"batch {a.batch}, group {a.group}, reward: default-size FinPercep-RM ({RMConfig().encoder}), "
        f"allocator {a.allocator}"
    )
    print(f"{'generator':26s} {'algo':5s} {'step s':>8s} {'samples/s':>10s} {'RM s':>8s} {'RM share':>9s}")
    for g in a.generators:
        for alg in a.algorithms:
            r = bench(g, alg, a.steps, a.batch, a.group, a.lr_size)
            print(
                f"{g:26s} {alg:5s} {r['step_s']:8.3f} {r['samples_per_s']:10.3f} "
                f"{r['rm_s']:8.3f} {r['rm_share']:9.1%}"
            )


if __name__ == "__main__":
    main()
