"""build_judge: FGR data from the judge's own photos and seed, then a staged reward model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from finpercep.errors import ConfigError
from finpercep.eval.judge import JudgeConfig, build_judge
from finpercep.rm.model import RewardModel

torch.set_num_threads(1)


def test_judge_is_trained_only_on_its_photos_with_its_seed(tmp_path: Path) -> None:
    cfg = JudgeConfig(
        out=str(tmp_path / "judge"),
        photos=("coffee", "chelsea"),
        num=2,
        sr_models=("bicubic",),
        val_sources=("chelsea*",),
        stages=1,
        epochs=(1,),
        seed=5,
        progress=False,
        curves=False,
    )
    path = build_judge(cfg)
    assert path == tmp_path / "judge" / "rm"
    judge = RewardModel.from_pretrained(path)
    assert judge.stage == 1
    rows = [
        json.loads(line) for line in (tmp_path / "judge" / "data" / "manifest.jsonl").read_text().splitlines()
    ]
    assert {r["source_image"] for r in rows} == {"coffee.png", "chelsea.png"}
    assert json.loads((tmp_path / "judge" / "data" / "build_config.json").read_text())["seed"] == 5
    assert json.loads((path / "train_config.json").read_text())["seed"] == 5
    with torch.no_grad():
        s = judge(torch.rand(2, 3, 64, 64)).score
    assert s.shape == (2,) and torch.isfinite(s).all()


def test_judge_config_checks() -> None:
    with pytest.raises(ConfigError, match="unknown embedded photo"):
        JudgeConfig(photos=("coffee", "nope"))
    with pytest.raises(ConfigError, match="two photos"):
        JudgeConfig(photos=("coffee",))
