"""build_judge: FGR data from the judge's own photos and seed, then a staged reward model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from finpercep.errors import ConfigError, FinPercepError
from finpercep.eval.judge import JudgeConfig, build_judge, judge_training_config
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


def test_judge_copies_the_recipe_of_a_reward_model_but_not_its_data_or_seed(tmp_path: Path) -> None:
    from finpercep.config import to_dict
    from finpercep.rm.model import RMConfig
    from finpercep.rm.train import RMTrainConfig

    rm = tmp_path / "rm"
    rm.mkdir()
    recipe = RMTrainConfig(data="runs/fgr", out=str(rm), stages=2, epochs=(2, 3, 1), lr=1e-3, seed=0)
    (rm / "train_config.json").write_text(json.dumps(to_dict(recipe)))
    (rm / "split.json").write_text(json.dumps({"train_sources": ["astronaut", "rocket"]}))
    model = RMConfig(cnn_widths=(8, 16, 32), cnn_blocks=(1, 1, 1), init_seed=0)
    (rm / "model_config.json").write_text(json.dumps(to_dict(model)))
    cfg = JudgeConfig(out=str(tmp_path / "judge"), seed=9, like=str(rm), progress=False)
    train_cfg, model_cfg = judge_training_config(cfg)
    assert (train_cfg.stages, train_cfg.epochs, train_cfg.lr) == (2, (2, 3, 1), 1e-3)
    assert train_cfg.data == str(tmp_path / "judge" / "data")
    assert train_cfg.out == str(tmp_path / "judge" / "rm")
    assert train_cfg.seed == 9 and train_cfg.val_sources == ("motorcycle_right*",)
    assert model_cfg.cnn_widths == (8, 16, 32) and model_cfg.init_seed == 9
    own, none = judge_training_config(JudgeConfig(out=str(tmp_path / "j2"), stages=3, epochs=(1,)))
    assert none is None and own.stages == 3 and own.epochs == (1,)
    with pytest.raises(FinPercepError, match="not a reward-model training folder"):
        judge_training_config(JudgeConfig(like=str(tmp_path), seed=3))
    with pytest.raises(FinPercepError, match="seed 0 is the seed"):
        judge_training_config(JudgeConfig(like=str(rm), seed=0))
    with pytest.raises(FinPercepError, match="other photos"):
        judge_training_config(JudgeConfig(like=str(rm), photos=("rocket", "coffee")))
    exported = tmp_path / "exported"
    exported.mkdir()
    prov = {"train_config": to_dict(recipe), "model_config": to_dict(model), "train_sources": ["coffee"]}
    (exported / "provenance.json").write_text(json.dumps(prov))
    with pytest.raises(FinPercepError, match="other photos"):
        judge_training_config(JudgeConfig(like=str(exported)))
    from_export, _ = judge_training_config(JudgeConfig(like=str(exported), photos=("chelsea", "astronaut")))
    assert from_export.epochs == (2, 3, 1) and from_export.seed == 1


def test_judge_like_a_checkpoint_copies_its_score_pool(tmp_path: Path) -> None:
    from finpercep.rm.model import default_checkpoint_dir

    provenance = json.loads((default_checkpoint_dir() / "provenance.json").read_text())
    train_cfg, model_cfg = judge_training_config(
        JudgeConfig(out=str(tmp_path / "judge"), like=str(default_checkpoint_dir()), seed=1)
    )
    assert model_cfg.score_pool == provenance["model_config"].get("score_pool", "product")
    assert model_cfg.init_seed == 1 and train_cfg.seed == 1
    old = tmp_path / "old_export"
    old.mkdir()
    provenance["model_config"].pop("score_pool", None)  # exported before the option existed: the product pool
    (old / "provenance.json").write_text(json.dumps(provenance))
    _, old_cfg = judge_training_config(JudgeConfig(out=str(tmp_path / "judge2"), like=str(old), seed=1))
    assert old_cfg.score_pool == "product"
