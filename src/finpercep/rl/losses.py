"""Pure functions of the RL objectives: Gaussian policy densities, GRPO advantages and the PPO surrogate.

Image policies act on millions of pixels, so log-probabilities and KLs are *normalised per element*
(the mean over C*H*W of the exact per-element terms, i.e. the exact image log-density divided by its
dimension). The ratio ``exp(logp - logp_old)`` is then the geometric mean of the per-pixel ratios, which
keeps PPO clipping meaningful instead of saturating at the first update.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


def per_image_mean(x: torch.Tensor, batch_dims: int = 1) -> torch.Tensor:
    """Mean over every dimension after the first ``batch_dims``."""
    return x.flatten(batch_dims).mean(dim=-1)


def gaussian_log_prob(
    x: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor | float, batch_dims: int = 1
) -> torch.Tensor:
    """Exact log N(x; mean, exp(log_std)^2), averaged over the non-batch dimensions.

    ``log_std`` broadcasts against ``x`` (a scalar, or per channel as ``[C, 1, 1]``).
    """
    log_std = torch.as_tensor(log_std, dtype=x.dtype, device=x.device)
    z = (x - mean) * torch.exp(-log_std)
    per_elem = -0.5 * z * z - log_std - _LOG_SQRT_2PI
    return per_image_mean(per_elem.expand_as(x), batch_dims)


def gaussian_kl(
    mean_p: torch.Tensor,
    log_std_p: torch.Tensor | float,
    mean_q: torch.Tensor,
    log_std_q: torch.Tensor | float,
    batch_dims: int = 1,
) -> torch.Tensor:
    """Exact KL(N(mean_p, std_p^2) || N(mean_q, std_q^2)), averaged over the non-batch dimensions."""
    lp = torch.as_tensor(log_std_p, dtype=mean_p.dtype, device=mean_p.device)
    lq = torch.as_tensor(log_std_q, dtype=mean_p.dtype, device=mean_p.device)
    var_ratio = torch.exp(2.0 * (lp - lq))
    d = (mean_p - mean_q) * torch.exp(-lq)
    per_elem = 0.5 * (var_ratio + d * d - 1.0) - (lp - lq)
    return per_image_mean(per_elem.expand_as(mean_p), batch_dims)


Exploration = Literal["iid", "antithetic"]


def group_noise(
    shape: Sequence[int],
    n: int,
    generators: Sequence[torch.Generator],
    exploration: Exploration = "iid",
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Standard normal exploration noise ``[len(generators), n, *shape]``, one generator per input.

    ``antithetic`` draws ``n // 2`` samples and appends their negatives (``n`` must be even): within a
    group, the estimator then sees the reward *differences* of mirrored samples, which removes the
    reward's even-order terms (its value at the mean and its curvature) from the gradient estimate.
    """
    if exploration == "antithetic":
        if n % 2:
            raise ValueError(f"antithetic exploration needs an even group size, got {n}")
        half = group_noise(shape, n // 2, generators, "iid", device, dtype)
        return torch.cat([half, -half], dim=1)
    if exploration != "iid":
        raise ValueError(f"exploration must be iid or antithetic, got {exploration!r}")
    return torch.stack(
        [torch.randn((n, *shape), generator=g, device=device, dtype=dtype) for g in generators]
    )


def group_advantages(rewards: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """GRPO advantages of rewards ``[B, G]``: standardised within each group of G samples of one input.

    Uses the population std; a group whose rewards are all equal gets zero advantages.
    """
    if rewards.ndim != 2:
        raise ValueError(f"expected rewards of shape [B, G], got {tuple(rewards.shape)}")
    mean = rewards.mean(dim=1, keepdim=True)
    std = rewards.std(dim=1, unbiased=False, keepdim=True)
    return (rewards - mean) / (std + eps)


def clipped_surrogate(
    logp: torch.Tensor, logp_old: torch.Tensor, advantages: torch.Tensor, clip_eps: float
) -> torch.Tensor:
    """PPO's clipped objective per sample (to be maximised): ``min(r A, clip(r, 1-eps, 1+eps) A)``."""
    ratio = torch.exp(logp - logp_old)
    return torch.minimum(ratio * advantages, torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * advantages)


def clip_fraction(logp: torch.Tensor, logp_old: torch.Tensor, clip_eps: float) -> torch.Tensor:
    """Share of samples whose ratio lies outside ``[1 - eps, 1 + eps]`` (a PPO health metric)."""
    ratio = torch.exp(logp.detach() - logp_old)
    return ((ratio - 1.0).abs() > clip_eps).float().mean()


def grpo_loss(
    logp: torch.Tensor,
    logp_old: torch.Tensor,
    advantages: torch.Tensor,
    kl: torch.Tensor,
    clip_eps: float,
    kl_coef: float,
) -> torch.Tensor:
    """``-mean(clipped surrogate) + kl_coef * mean(KL to the reference)`` (``logp`` [B, G], ``kl`` [B])."""
    return -clipped_surrogate(logp, logp_old, advantages, clip_eps).mean() + kl_coef * kl.mean()
