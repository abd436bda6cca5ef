"""One RL optimisation step: GRPO (sampled groups, PPO clip, KL) or ReFL (reward back-propagation).

Pure pieces of :func:`finpercep.rl.train.train`'s loop: each step function takes the policy, its frozen
reference, the stage's reward and a batch, updates the weights once and returns summable statistics that
:func:`reduce_stats` turns into the logged row.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from .. import dist as D
from .generators import GeneratorAdapter
from .losses import clip_fraction, group_advantages, grpo_loss
from .rewards import RewardFn, check_reward, reward_name

if TYPE_CHECKING:
    from .train import RLConfig


def noise_generators(
    seed: int, step: int, indices: Sequence[int], device: torch.device
) -> list[torch.Generator]:
    """One generator per global sample index: the policy noise does not depend on the process count."""
    gens = []
    for i in indices:
        s = int(np.random.SeedSequence([seed, step, i, 0x5EED]).generate_state(1, dtype=np.uint64)[0]) >> 1
        gens.append(torch.Generator(device=device).manual_seed(s))
    return gens


def _repeat(x: torch.Tensor | None, n: int) -> torch.Tensor | None:
    return None if x is None else x.repeat_interleave(n, dim=0)


def optimizer_step(
    d: D.Dist,
    loss: torch.Tensor,
    opt: torch.optim.Optimizer,
    params: Sequence[torch.nn.Parameter],
    grad_clip: float,
) -> float:
    """Backward, average gradients over processes, clip, step; returns the pre-clip gradient norm."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    D.sync_gradients(d, params)
    norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip > 0 else math.inf)
    opt.step()
    return float(norm)


def grpo_step(
    d: D.Dist,
    cfg: RLConfig,
    policy: GeneratorAdapter,
    ref: GeneratorAdapter,
    reward: RewardFn,
    opt: torch.optim.Optimizer,
    params: Sequence[torch.nn.Parameter],
    lr: torch.Tensor,
    hr: torch.Tensor | None,
    gens: Sequence[torch.Generator],
) -> dict[str, float]:
    """Sample G outputs per input, score them, take ``ppo_epochs`` clipped policy-gradient steps."""
    b, g = lr.shape[0], cfg.group_size
    ro = policy.rollout(lr, g, gens)
    t0 = time.perf_counter()
    with torch.no_grad():
        r = check_reward(reward(ro.sr, _repeat(lr, g), _repeat(hr, g)), b * g, reward_name(reward)).view(b, g)
    reward_time = time.perf_counter() - t0
    adv = group_advantages(r)
    for _ in range(cfg.ppo_epochs):
        logp, kl = policy.evaluate(ro, ref)
        loss = grpo_loss(logp, ro.logp_old, adv, kl, cfg.clip_eps, cfg.kl_coef)
        clip = clip_fraction(logp, ro.logp_old, cfg.clip_eps)
        grad_norm = optimizer_step(d, loss, opt, params, cfg.grad_clip)
    return {
        "reward_sum": float(r.sum()),
        "reward_sq": float((r.double() ** 2).sum()),
        "n": float(r.numel()),
        "kl": float(kl.detach().sum()),
        "loss": float(loss.detach()) * b,
        "clip_frac": float(clip) * b,
        "fidelity": math.nan,
        "inputs": float(b),
        "grad_norm": grad_norm,
        "reward_time_s": reward_time,
    }


def refl_step(
    d: D.Dist,
    cfg: RLConfig,
    policy: GeneratorAdapter,
    ref: GeneratorAdapter,
    reward: RewardFn,
    opt: torch.optim.Optimizer,
    params: Sequence[torch.nn.Parameter],
    lr: torch.Tensor,
    hr: torch.Tensor | None,
) -> dict[str, float]:
    """Back-propagate the reward of the deterministic output, regularised towards the reference output."""
    out = policy(lr)
    with torch.no_grad():
        ref_out = ref(lr)
    t0 = time.perf_counter()
    r = check_reward(reward(out.clamp(0.0, 1.0), lr, hr), lr.shape[0], reward_name(reward))
    reward_time = time.perf_counter() - t0
    fid = ((out - ref_out) ** 2).mean(dim=(1, 2, 3))
    loss = -r.mean() + cfg.fidelity_weight * fid.mean()
    grad_norm = optimizer_step(d, loss, opt, params, cfg.grad_clip)
    with torch.no_grad():
        kl = policy.output_kl(out.detach(), ref_out)
    b = lr.shape[0]
    return {
        "reward_sum": float(r.detach().sum()),
        "reward_sq": float((r.detach().double() ** 2).sum()),
        "n": float(b),
        "kl": float(kl.sum()),
        "loss": float(loss.detach()) * b,
        "clip_frac": math.nan,
        "fidelity": float(fid.detach().sum()),
        "inputs": float(b),
        "grad_norm": grad_norm,
        "reward_time_s": reward_time,
    }


_SUMMED = ("reward_sum", "reward_sq", "n", "kl", "loss", "clip_frac", "fidelity", "inputs", "reward_time_s")


def reduce_stats(d: D.Dist, s: dict[str, float]) -> dict[str, float]:
    """Sum the per-process statistics and turn them into global means."""
    t = torch.tensor([s[k] for k in _SUMMED], dtype=torch.float64)
    t = D.all_reduce_sum(d, t)
    v = dict(zip(_SUMMED, t.tolist(), strict=True))
    mean = v["reward_sum"] / v["n"]
    var = max(0.0, v["reward_sq"] / v["n"] - mean * mean)
    return {
        "reward": mean,
        "reward_std": math.sqrt(var),
        "kl": v["kl"] / v["inputs"],
        "loss": v["loss"] / v["inputs"],
        "clip_frac": v["clip_frac"] / v["inputs"],
        "fidelity": v["fidelity"] / v["inputs"],
        "grad_norm": s["grad_norm"],
        "reward_time_s": v["reward_time_s"] / d.world,
    }
