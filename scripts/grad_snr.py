"""How much reward signal is in one GRPO step? Gradient signal-to-noise at the pretrained generator.

Question it answered (issue 22, item 3): is the RL rows' movement the reward's, or the noise of the
policy-gradient estimate? At the pretrained policy (the KL term is zero there), on one fixed batch, the
GRPO loss gradient is drawn ``--repeats`` times with fresh policy noise and compared with the pathwise
gradient of the same expected reward (``-mean r(clamp(mu + sigma * eps))`` back-propagated through the
reward model, averaged over ``--path-draws`` noise draws), which points where the expected reward rises.

    python scripts/grad_snr.py --repeats 16 --out runs/grad_snr.json

Per variant: ``snr`` = |E g|^2 / E|g - E g|^2 of one step's gradient (|E g|^2 estimated without the
1/K bias; it needs many repeats to resolve an SNR far below 1), ``cos_path`` = mean cosine of one step's
gradient with the pathwise one, ``cos_mean_path`` = the cosine of the mean over the repeats with it,
``path_snr`` = the SNR of one pathwise draw, ``snr_from_cos`` = c^2 / (1 - c^2) for c = ``cos_path``
with the pathwise mean's own noise divided out (the same SNR read against the pathwise direction, far less
noisy), and ``samples_for_snr1*`` = batch * group / snr: the samples a step would need for its
gradient's signal to equal its noise. ``random`` scores with i.i.d. N(0, 1), so its
signal is zero by construction (it has no pathwise gradient): the floor the others are read against.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from finpercep.rl import RLConfig
from finpercep.rl.generators import frozen_copy, group_noise
from finpercep.rl.losses import group_advantages, grpo_loss
from finpercep.rl.policy import build_policy, training_data
from finpercep.rl.rewards import StagedRMRewards
from finpercep.rl.steps import noise_generators


@dataclass(frozen=True)
class Variant:
    name: str
    group_size: int = 4
    exploration: str = "iid"
    policy_std: float = 0.05
    stage: int = 0
    map_penalty: float = 0.0
    reward: str = "rm"


VARIANTS = (
    Variant("RM_0 G4 iid"),
    Variant("RM_0 G4 antithetic", exploration="antithetic"),
    Variant("RM_0 G8 antithetic", group_size=8, exploration="antithetic"),
    Variant("RM_0 G16 iid", group_size=16),
    Variant("RM_0 G4 antithetic std 0.02", exploration="antithetic", policy_std=0.02),
    Variant("RM_0 G4 antithetic std 0.1", exploration="antithetic", policy_std=0.1),
    Variant("RM_4 pen 0.5 G4 iid", stage=4, map_penalty=0.5),
    Variant("RM_4 pen 0.5 G4 antithetic", stage=4, map_penalty=0.5, exploration="antithetic"),
    Variant("random G4 antithetic", exploration="antithetic", reward="random"),
)


def flat_grad(loss: torch.Tensor, params: list[torch.nn.Parameter]) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)])


def measure(v: Variant, repeats: int, path_draws: int, batch: int, lr_size: int, seed: int) -> dict:
    cfg = RLConfig(
        group_size=v.group_size,
        exploration=v.exploration,  # type: ignore[arg-type]
        policy_std=v.policy_std,
        map_penalty=v.map_penalty,
        batch_size=batch,
        lr_size=lr_size,
        seed=seed,
    )
    policy = build_policy(cfg)
    ref = frozen_copy(policy)
    params = [p for p in policy.parameters() if p.requires_grad]
    lr, hr = training_data(cfg, policy.scale).batch(0, range(batch))
    reward = StagedRMRewards(None, v.map_penalty)[v.stage]
    noise = torch.Generator().manual_seed(seed)
    g, indices = v.group_size, range(batch)

    def score(sr: torch.Tensor) -> torch.Tensor:
        if v.reward == "random":
            return torch.randn(sr.shape[0], generator=noise)
        return reward(sr, lr.repeat_interleave(g, 0), hr.repeat_interleave(g, 0))

    grads = []
    for k in range(repeats):
        ro = policy.rollout(lr, g, noise_generators(seed, 1000 + k, indices, lr.device))
        with torch.no_grad():
            adv = group_advantages(score(ro.sr).view(batch, g))
        logp, kl = policy.evaluate(ro, ref)
        grads.append(flat_grad(grpo_loss(logp, ro.logp_old, adv, kl, cfg.clip_eps, cfg.kl_coef), params))
    paths = []
    for k in range(path_draws if v.reward == "rm" else 0):
        mean = policy(lr)
        eps = group_noise(mean.shape[1:], g, noise_generators(seed, 5000 + k, indices, lr.device))
        sr = (mean[:, None] + v.policy_std * eps).clamp(0.0, 1.0).flatten(0, 1)
        paths.append(flat_grad(-score(sr).mean(), params))
    grpo_snr, grpo_mean = snr(torch.stack(grads).double())
    row = {
        "variant": v.name,
        "snr": grpo_snr,
        "samples_for_snr1": batch * g / grpo_snr if grpo_snr > 0 else math.inf,
    }
    if not paths:
        return row | {
            "path_snr": math.nan,
            "cos_path": math.nan,
            "cos_mean_path": math.nan,
            "snr_from_cos": math.nan,
            "samples_for_snr1_from_cos": math.nan,
        }
    P = torch.stack(paths).double()
    path_snr, path = snr(P)
    cos = torch.nn.functional.cosine_similarity
    c = float(cos(torch.stack(grads).double(), path[None], dim=1).mean())
    # the pathwise mean of P draws is itself noisy: divide its share out of the cosine
    rho2 = (len(paths) * path_snr) / (1 + len(paths) * path_snr) if path_snr > 0 else math.nan
    c2 = min(c * c / rho2, 0.999) if c > 0 else 0.0
    from_cos = c2 / (1 - c2)
    return row | {
        "path_snr": path_snr,
        "cos_path": c,
        "cos_mean_path": float(cos(grpo_mean, path, dim=0)),
        "snr_from_cos": from_cos,
        "samples_for_snr1_from_cos": batch * g / from_cos if from_cos > 0 else math.inf,
    }


def snr(draws: torch.Tensor) -> tuple[float, torch.Tensor]:
    """|E g|^2 / E|g - E g|^2 of one draw (rows of ``draws``; |E g|^2 without the 1/K bias), and the mean."""
    k = draws.shape[0]
    mean = draws.mean(0)
    tr_cov = float(((draws - mean) ** 2).sum(1).mean()) * k / (k - 1)
    return (float(mean @ mean) - tr_cov / k) / tr_cov, mean


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=16)
    p.add_argument("--path-draws", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", nargs="*", default=None, help="variant names to run")
    p.add_argument("--threads", type=int, default=1, help="torch threads (the rounding depends on it)")
    p.add_argument("--out", type=Path, required=True)
    ns = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.manual_seed(ns.seed)
    torch.set_num_threads(ns.threads)
    rows = []
    for v in VARIANTS:
        if ns.only is None or v.name in ns.only:
            rows.append(measure(v, ns.repeats, ns.path_draws, ns.batch_size, ns.lr_size, ns.seed))
            sys.stdout.write(json.dumps(rows[-1]) + "\n")
            sys.stdout.flush()
    ns.out.parent.mkdir(parents=True, exist_ok=True)
    ns.out.write_text(json.dumps(rows, indent=1))
    lines = [
        "| variant | SNR (repeats) | pathwise SNR | cos(step, pathwise) | cos(mean, pathwise) | SNR (cos) "
        "| samples for SNR 1 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['snr']:.2g} | {r['path_snr']:.2g} | {r['cos_path']:.3f} | "
            f"{r['cos_mean_path']:.3f} | "
            f"{r['snr_from_cos']:.2g} | {r['samples_for_snr1_from_cos']:.3g} |"
        )
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
