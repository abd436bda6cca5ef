"""An RL output folder seen from outside: its config, its policy, and the reference of its reward gains.

* :func:`load_policy` rebuilds the trained policy of a ``finpercep rl train`` folder: from its export
  (``generator.safetensors``) or from its resume point (``state.pt``) at the step it holds;
* :func:`training_samples` gives the outputs a policy produces on the batch of a training step, with the
  policy noise that step drew (pairs and noise depend on the seed and the step only, not on the policy);
* :func:`reference_rewards` scores the *pretrained* generator on those samples: a run's logged reward minus
  it is the run's gain, with the content of each batch cancelled out (the gain is 0 at step 1).

Steps are numbered as ``log.csv`` numbers them: step 1 is the first update.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import flatten, from_dict
from ..errors import FinPercepError
from .data import PairSource
from .generators import EXPORT_META, GeneratorAdapter, build_adapter
from .lora import apply_lora
from .rewards import StagedRMRewards
from .train import _ADDED_LATER, CONFIG_NAME, STATE_NAME, RLConfig, adapter_options, noise_generators


def is_run_dir(path: str | Path) -> bool:
    """Whether ``path`` is an RL output folder (holds its ``rl_config.json``)."""
    return (Path(path) / CONFIG_NAME).is_file()


def run_config(run_dir: str | Path) -> RLConfig:
    """The :class:`~.train.RLConfig` an RL output folder was trained with (its ``rl_config.json``, in either
    layout; options the run predates take the values it ran with)."""
    path = Path(run_dir) / CONFIG_NAME
    if not is_run_dir(run_dir):
        raise FinPercepError(f"{run_dir}: not an RL output folder (no {CONFIG_NAME})")
    return from_dict(RLConfig, {**_ADDED_LATER, **flatten(RLConfig, json.loads(path.read_text()))})


def checkpoint_step(run_dir: str | Path) -> int:
    """The step the resume point of ``run_dir`` holds (0 when there is none yet)."""
    path = Path(run_dir) / STATE_NAME
    if not path.is_file():
        return 0
    return int(torch.load(path, map_location="cpu", weights_only=False)["step"])


def pretrained_policy(cfg: RLConfig, device: str | torch.device = "cpu") -> GeneratorAdapter:
    """The generator a run with ``cfg`` starts from, as a policy (the run's policy std and exploration)."""
    policy = build_adapter(cfg.generator, cfg.scale, cfg.policy_std, cfg.learn_std, adapter_options(cfg))
    policy.exploration = cfg.exploration
    return policy.to(device)


def build_policy(cfg: RLConfig, device: str | torch.device = "cpu") -> GeneratorAdapter:
    """The policy of a run with ``cfg`` as it is before its first update: :func:`pretrained_policy` with the
    run's LoRA (zero at the start), the shape its resume points are saved in."""
    policy = pretrained_policy(cfg)
    if cfg.lora_rank and not policy.owns_lora:
        apply_lora(policy.network, cfg.lora_rank, cfg.lora_alpha, seed=cfg.seed)
    return policy.to(device)


def load_policy(
    run_dir: str | Path, step: int | None = None, *, device: str | torch.device = "cpu"
) -> GeneratorAdapter:
    """The trained policy of the RL output folder ``run_dir``, in eval mode.

    ``step`` None: the exported generator (``generator.safetensors``, written when the run finished; LoRA
    merged; a learned policy std is not exported, the configured one is used). ``step`` k: the resume point
    ``state.pt``, which must hold step k (a run keeps only its latest one; it is at k right after it saved
    at k, e.g. in an ``on_step`` callback of :func:`~.train.train`).
    """
    run_dir = Path(run_dir)
    cfg = run_config(run_dir)
    if step is None:
        if not (run_dir / EXPORT_META).is_file():
            raise FinPercepError(f"{run_dir}: the run has not finished (no {EXPORT_META}); give a step")
        policy = build_adapter(str(run_dir), cfg.scale, cfg.policy_std, cfg.learn_std, adapter_options(cfg))
        policy.exploration = cfg.exploration
        return policy.to(device).eval()
    path = run_dir / STATE_NAME
    state = torch.load(path, map_location=device, weights_only=False) if path.is_file() else {"step": 0}
    if int(state["step"]) != step:
        raise FinPercepError(f"{run_dir}: its resume point holds step {state['step']}, not step {step}")
    policy = build_policy(cfg, device)
    policy.load_trainable_state(state["policy"])
    return policy.eval()


def training_data(cfg: RLConfig, scale: int) -> PairSource:
    """The LR/HR pairs of a run with ``cfg`` (for a generator that upscales ``scale`` times)."""
    return PairSource(
        scale, cfg.lr_size, cfg.seed, cfg.hr_folders, cfg.paired_lr, cfg.paired_hr, cfg.degradation
    )


@dataclass(frozen=True)
class TrainingSamples:
    """What the reward scores at one training step: outputs ``sr`` and the LR/HR rows they belong to
    (grpo: ``group_size`` samples per input, input ``b``'s in rows ``b * G ... b * G + G - 1``)."""

    sr: torch.Tensor
    lr: torch.Tensor
    hr: torch.Tensor


@torch.no_grad()
def training_samples(policy: GeneratorAdapter, cfg: RLConfig, data: PairSource, step: int) -> TrainingSamples:
    """The outputs of ``policy`` on the whole batch of training step ``step`` (1 = the first update) of a
    run with ``cfg``: grpo samples with the policy noise of that step, refl the deterministic output."""
    indices = range(cfg.batch_size)
    dev = next(policy.parameters()).device
    lr, hr = (t.to(dev) for t in data.batch(step - 1, indices))
    if cfg.algorithm == "refl":
        return TrainingSamples(policy(lr).clamp(0.0, 1.0), lr, hr)
    g = cfg.group_size
    sr = policy.rollout(lr, g, noise_generators(cfg.seed, step - 1, indices, dev)).sr
    return TrainingSamples(sr, lr.repeat_interleave(g, 0), hr.repeat_interleave(g, 0))


def reference_rewards(
    cfg: RLConfig, points: Iterable[tuple[int, int]], device: str | torch.device = "cpu"
) -> dict[tuple[int, int], float]:
    """The mean reward of the *pretrained* generator at every ``(stage, step)`` of ``points``: on the batch
    and policy noise of that step of a run with ``cfg``, scored by reward-model stage RM_stage with the
    run's map penalty (its reward model's stages; ``rm_weight`` and ``extra_rewards`` are not applied)."""
    policy = pretrained_policy(cfg, device).eval()
    data = training_data(cfg, policy.scale)
    rewards = StagedRMRewards(cfg.reward_model, cfg.map_penalty, torch.device(device))
    out: dict[tuple[int, int], float] = {}
    for stage, step in sorted(set(points)):
        s = training_samples(policy, cfg, data, step)
        with torch.no_grad():
            out[(stage, step)] = float(rewards[stage](s.sr, s.lr, s.hr).float().mean())
    return out


__all__ = [
    "TrainingSamples",
    "build_policy",
    "checkpoint_step",
    "is_run_dir",
    "load_policy",
    "pretrained_policy",
    "reference_rewards",
    "run_config",
    "training_data",
    "training_samples",
]
