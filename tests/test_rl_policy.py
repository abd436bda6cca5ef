"""finpercep.rl.policy: a run folder's policy rebuilt from its export and its resume points, and the
pretrained generator's rewards on the run's own batches and noise."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from finpercep.errors import FinPercepError
from finpercep.io import save_png
from finpercep.rl import (
    CurriculumConfig,
    RLConfig,
    build_generator,
    checkpoint_step,
    load_policy,
    pretrained_policy,
    read_log,
    reference_rewards,
    run_config,
    train,
    training_data,
    training_samples,
)
from finpercep.rl.lora import has_lora
from finpercep.rl.toy import tiny_reward_model

torch.set_num_threads(1)


def _train(root: Path, name: str, **kw: Any) -> tuple[RLConfig, dict[int, torch.nn.Module]]:
    """A 4-step run that saves at steps 2 and 4; returns its config and the policy loaded at each save."""
    cfg = RLConfig(
        **{
            "generator": "srvgg-tiny",
            "reward_model": str(root / "rm"),
            "curriculum": CurriculumConfig(kind="ccl"),
            "steps": 4,
            "batch_size": 2,
            "group_size": 2,
            "lr": 1e-2,
            "lr_size": 16,
            "hr_folders": (str(root / "hr"),),
            "degradation": "bicubic",
            "save_every": 2,
            "out": str(root / name),
            "progress": False,
            "tensorboard": False,
            "preview": 0,
            **kw,
        }
    )
    saved: dict[int, torch.nn.Module] = {}

    def on_step(step: int, row: dict[str, float]) -> None:
        if step % 2 == 0:  # the resume point was just written: it holds this step
            saved[step] = load_policy(cfg.out, step)

    train(cfg, on_step=on_step)
    return cfg, saved


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("rl_policy")
    yy, xx = np.mgrid[0:64, 0:64] / 64.0
    photo = np.stack([0.5 + 0.3 * np.sin(9 * xx), 0.4 + 0.3 * yy, 0.3 + 0.2 * np.cos(7 * yy * xx)], axis=-1)
    save_png(root / "hr" / "one.png", photo.astype(np.float32))
    tiny_reward_model(root / "rm", stages=2)
    return root


@pytest.fixture(scope="module")
def grpo(root: Path) -> tuple[RLConfig, dict[int, torch.nn.Module]]:
    return _train(root, "grpo")


@pytest.fixture(scope="module")
def refl_lora(root: Path) -> tuple[RLConfig, dict[int, torch.nn.Module]]:
    return _train(root, "refl_lora", algorithm="refl", lora_rank=2)


@pytest.fixture(scope="module")
def grpo_antithetic(root: Path) -> tuple[RLConfig, dict[int, torch.nn.Module]]:
    return _train(root, "grpo_antithetic", exploration="antithetic")


def _lr() -> torch.Tensor:
    return torch.rand(1, 3, 12, 12, generator=torch.Generator().manual_seed(3))


@torch.no_grad()
def test_the_loaded_policy_reproduces_the_exported_generator_and_its_checkpoints(
    grpo: tuple[RLConfig, dict[int, torch.nn.Module]],
) -> None:
    cfg, saved = grpo
    x = _lr()
    exported = build_generator(cfg.out).net(x)
    final = load_policy(cfg.out)
    assert not final.training and run_config(cfg.out) == cfg and checkpoint_step(cfg.out) == 4
    assert torch.equal(final(x), exported)
    assert torch.equal(load_policy(cfg.out, 4)(x), exported)  # the last resume point is the export
    assert torch.equal(saved[4](x), exported)
    pretrained = pretrained_policy(cfg)(x)
    assert not torch.allclose(saved[2](x), pretrained) and not torch.allclose(saved[2](x), exported)
    with pytest.raises(FinPercepError, match="holds step 4, not step 2"):
        load_policy(cfg.out, 2)
    with pytest.raises(FinPercepError, match="not an RL output folder"):
        load_policy(Path(cfg.out) / "nowhere")


@torch.no_grad()
def test_a_lora_run_loads_from_its_resume_point_with_lora_and_from_its_export_merged(
    refl_lora: tuple[RLConfig, dict[int, torch.nn.Module]],
) -> None:
    cfg, saved = refl_lora
    x = _lr()
    at_4, final = load_policy(cfg.out, 4), load_policy(cfg.out)
    assert has_lora(at_4.network) and not has_lora(final.network)
    torch.testing.assert_close(at_4(x), final(x), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(saved[4](x), build_generator(cfg.out).net(x), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(final(x), pretrained_policy(cfg)(x))  # it trained


@pytest.mark.parametrize("run", ["grpo", "refl_lora", "grpo_antithetic"])
def test_the_reference_at_step_1_is_the_logged_reward(run: str, request: pytest.FixtureRequest) -> None:
    """At step 1 the policy is the pretrained generator: scored on the same batch with the same noise and
    reward stage, it gets exactly the reward the run logged (the gain is 0)."""
    cfg, _ = request.getfixturevalue(run)
    log = read_log(Path(cfg.out))
    first, later = log[0], log[-1]
    ref = reference_rewards(cfg, [(int(first["stage"]), 1), (int(later["stage"]), 4)])
    assert ref[(int(first["stage"]), 1)] == pytest.approx(first["reward"], rel=1e-6, abs=1e-7)
    assert ref[(int(later["stage"]), 4)] != pytest.approx(later["reward"], rel=1e-6, abs=1e-7)
    policy = pretrained_policy(cfg).eval()
    s = training_samples(policy, cfg, training_data(cfg, policy.scale), 1)
    n = cfg.batch_size * (cfg.group_size if cfg.algorithm == "grpo" else 1)
    assert s.sr.shape == (n, 3, 64, 64) and s.lr.shape == (n, 3, 16, 16) and s.hr.shape == s.sr.shape
    again = training_samples(policy, cfg, training_data(cfg, policy.scale), 1)
    assert torch.equal(s.sr, again.sr)  # the noise is the step's, not a fresh draw
