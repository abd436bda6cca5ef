"""Toy rewards and a tiny staged reward model for smoke runs and tests (seconds on a CPU, no checkpoint).

The toy rewards compare the output with its own LR input, so they measure what the generator changed
rather than which photo was drawn: their value at the start of a run is about 0 and rises as the
generator learns.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..rm.model import RewardModel, RMConfig
from .generators import GaussianPolicy, GeneratorAdapter, srvgg_tiny


def darker_reward(sr: torch.Tensor, lr: torch.Tensor, hr: torch.Tensor | None = None) -> torch.Tensor:
    """How much darker the output is than its input (mean over pixels and channels)."""
    return lr.mean(dim=(1, 2, 3)) - sr.mean(dim=(1, 2, 3))


def redder_reward(sr: torch.Tensor, lr: torch.Tensor, hr: torch.Tensor | None = None) -> torch.Tensor:
    """How much the output's red-minus-blue balance exceeds the input's."""

    def balance(x: torch.Tensor) -> torch.Tensor:
        return (x[:, 0] - x[:, 2]).mean(dim=(1, 2))

    return balance(sr) - balance(lr)


def tiny_reward_model(directory: str | Path, stages: int = 2, seed: int = 0) -> Path:
    """Save RM_0 ... RM_stages of a randomly initialised tiny reward model as ``directory/stage_<k>``.

    The layout is the one ``finpercep rm train`` writes, so it can stand in for a trained reward model.
    Each grown stage's new parameters are perturbed (as training would), so the stages score differently.
    """
    if not 0 <= stages <= 4:
        raise ValueError(f"the tiny reward model has 0 to 4 stages, got {stages}")
    directory = Path(directory)
    levels = max(stages, 1)
    cfg = RMConfig(
        encoder="small_cnn",
        cnn_widths=(8, 16, 16, 16)[:levels],
        cnn_blocks=(1,) * levels,
        head_hidden=16,
        stage=0,
        init_seed=seed,
    )
    rm = RewardModel(cfg)
    rm.save_pretrained(directory / "stage_0")
    gen = torch.Generator().manual_seed(seed)
    for k in range(1, stages + 1):
        rm.grow()
        if k == 1:
            rm.set_gate(0.5)
        with torch.no_grad():
            for name in rm.new_parameter_names():
                p = rm.get_parameter(name)
                p.add_(0.3 * torch.randn(p.shape, generator=gen))
        rm.save_pretrained(directory / f"stage_{k}")
    return directory


def tiny_policy(scale: int | None = None) -> GeneratorAdapter:
    """``--generator finpercep.rl.toy:tiny_policy``: an example of the ``module:function`` adapter hook."""
    s = scale or 4
    policy = GaussianPolicy(srvgg_tiny(s, seed=1), s, std=0.05)
    policy.arch = "tiny Gaussian policy"
    return policy
