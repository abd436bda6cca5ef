"""RLConfig's nested curriculum: the same CLI, and run folders with the flat rl_config.json of older runs."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from finpercep import dist as D
from finpercep.config import flatten, from_args, from_dict, option_names, to_dict
from finpercep.errors import FinPercepError
from finpercep.rl import CurriculumConfig, RLConfig, run_config
from finpercep.rl.cli import add_rl
from finpercep.rl.train import CONFIG_NAME, _prepare_output

FLAT_DEFAULTS: dict[str, Any] = {
    "generator": "realesrgan-animevideov3", "scale": None, "reward_model": None, "map_penalty": 0.0,
    "rm_weight": 1.0, "extra_rewards": [], "algorithm": "grpo", "curriculum": "ccl", "schedule": "fixed",
    "stage_steps": [], "early_steps": 0, "plateau_window": 20, "plateau_tol": 1.0, "plateau_var_ratio": 4.0,
    "min_stage_steps": 0, "max_stage_steps": None, "steps": 500, "batch_size": 4, "group_size": 4,
    "ppo_epochs": 1, "lr": 1e-05, "weight_decay": 0.0, "clip_eps": 0.2, "kl_coef": 0.05, "policy_std": 0.05,
    "learn_std": False, "exploration": "antithetic", "fidelity_weight": 1.0, "lora_rank": 0,
    "lora_alpha": None, "lora": None, "vae_lora": False, "precision": "fp32", "gradient_checkpointing": False,
    "ema_decay": None,
    "grad_clip": 1.0, "save_every": 50, "lr_size": 64, "hr_folders": [], "paired_lr": None, "paired_hr": None,
    "degradation": "realesrgan", "seed": 0, "out": "runs/rl", "num_processes": 1, "device": "cpu",
    "threads": 0, "tensorboard": True, "preview": 4, "progress": True,
}  # fmt: skip
"""``rl_config.json`` of ``RLConfig()`` as the code before the nested curriculum wrote it."""

HELP = {
    "curriculum": "global = RM_0, full = RM_N, ccl = RM_0 -> ... -> RM_N (default: ccl)",
    "schedule": "ccl transitions: fixed steps or adaptive (reward plateau) (default: fixed)",
    "plateau_window": "adaptive: window (steps) of the plateau test (default: 20)",
    "plateau_tol": "adaptive: plateau when the mean gain between windows <= tol * sd (default: 1.0)",
    "plateau_var_ratio": "adaptive: variance stable when max/min window variance <= this (default: 4.0)",
    "max_stage_steps": "adaptive: advance anyway after this many steps in a stage (default: None) "
    "('none' to unset)",
}


def _train_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add_rl(parser.add_subparsers(dest="cmd"))
    return parser


def test_the_nested_curriculum_keeps_the_flags_defaults_and_help_of_the_flat_config() -> None:
    assert option_names(RLConfig) == list(FLAT_DEFAULTS)
    assert flatten(RLConfig, to_dict(RLConfig())) == {
        k: tuple(v) if isinstance(v, list) else v for k, v in FLAT_DEFAULTS.items()
    }
    parser = _train_parser()
    rl = parser._subparsers._group_actions[0].choices["rl"]  # type: ignore[union-attr]
    sub = rl._subparsers._group_actions[0].choices["train"]  # type: ignore[union-attr]
    actions = {a.option_strings[0]: a for a in sub._actions if a.option_strings}
    assert set(actions) - {"-h"} == {"--" + k.replace("_", "-") for k in FLAT_DEFAULTS}
    for name, text in HELP.items():
        assert (actions["--" + name.replace("_", "-")].dest, actions["--" + name.replace("_", "-")].help) == (
            name,
            text,
        )
    argv = "rl train --curriculum full --schedule adaptive --plateau-window 5 --plateau-var-ratio 2 --steps 9"
    cfg = from_args(RLConfig, parser.parse_args(argv.split()))
    assert cfg == RLConfig(
        steps=9,
        curriculum=CurriculumConfig(kind="full", schedule="adaptive", plateau_window=5, plateau_var_ratio=2),
    )
    ns = parser.parse_args("rl train --stage-steps 3 7 --early-steps 2 --max-stage-steps none".split())
    assert from_args(RLConfig, ns).curriculum == CurriculumConfig(stage_steps=(3, 7), early_steps=2)


def test_a_flat_rl_config_loads_as_todays_defaults(tmp_path: Path) -> None:
    assert from_dict(RLConfig, FLAT_DEFAULTS) == RLConfig()
    changed = {**FLAT_DEFAULTS, "curriculum": "global", "plateau_window": 7, "stage_steps": [4]}
    assert from_dict(RLConfig, changed).curriculum == CurriculumConfig(
        kind="global", plateau_window=7, stage_steps=(4,)
    )
    nested = json.loads(json.dumps(to_dict(RLConfig())))
    assert nested["curriculum"]["kind"] == "ccl" and from_dict(RLConfig, nested) == RLConfig()
    assert from_dict(RLConfig, {k: v for k, v in FLAT_DEFAULTS.items() if k != "early_steps"}) == RLConfig()
    (tmp_path / CONFIG_NAME).write_text(json.dumps(FLAT_DEFAULTS))
    assert run_config(tmp_path) == RLConfig()  # rl.policy reads the flat file of an old run
    (tmp_path / CONFIG_NAME).write_text(
        json.dumps({k: v for k, v in FLAT_DEFAULTS.items() if k != "exploration"})
    )
    assert run_config(tmp_path) == RLConfig(exploration="iid")  # a run from before the option explored iid
    with pytest.raises(FinPercepError, match="set twice"):
        from_dict(RLConfig, {**nested, "plateau_window": 3})


def test_a_run_folder_with_the_flat_rl_config_resumes(tmp_path: Path) -> None:
    d = D.Dist(0, 1, torch.device("cpu"), False)
    path = tmp_path / CONFIG_NAME
    old = {k: v for k, v in FLAT_DEFAULTS.items() if k != "early_steps"}
    path.write_text(json.dumps({**old, "out": str(tmp_path)}))
    cfg = RLConfig(out=str(tmp_path))
    assert _prepare_output(d, cfg) == tmp_path
    assert json.loads(path.read_text())["curriculum"] == "ccl"  # accepted as it is, not rewritten
    for curriculum, diff in (
        (CurriculumConfig(kind="global"), "curriculum"),
        (CurriculumConfig(schedule="adaptive"), "schedule"),
        (CurriculumConfig(plateau_var_ratio=2.0), "plateau_var_ratio"),
        (CurriculumConfig(early_steps=3), "early_steps"),
    ):
        with pytest.raises(FinPercepError, match=rf"different settings \({diff}\)"):
            _prepare_output(d, dataclasses.replace(cfg, curriculum=curriculum))
    with pytest.raises(FinPercepError, match=r"different settings \(lr\)"):
        _prepare_output(d, dataclasses.replace(cfg, lr=1e-3))
    fresh = tmp_path / "fresh"
    _prepare_output(d, RLConfig(out=str(fresh)))
    assert json.loads((fresh / CONFIG_NAME).read_text())["curriculum"]["kind"] == "ccl"  # new runs: nested
    assert _prepare_output(d, RLConfig(out=str(fresh))) == fresh


def test_rl_config_needs_a_curriculum_config() -> None:
    with pytest.raises(FinPercepError, match="CurriculumConfig"):
        RLConfig(curriculum="ccl")  # type: ignore[arg-type]
