"""The one stage-folder lookup: run/export folders, single model folders, finished stages, the default."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from finpercep.errors import FinPercepError
from finpercep.rl.rewards import StagedRMRewards
from finpercep.rm import RewardModel, RMConfig
from finpercep.rm.stages import default_checkpoint_dir, stage_dirs

TINY = RMConfig(cnn_widths=(8, 12, 16), cnn_blocks=(1, 1, 1), head_hidden=8, decoder_widths=(4, 8, 8))


@pytest.fixture()
def run(tmp_path: Path) -> Path:
    model = RewardModel(replace(TINY, stage=0))
    for k in range(3):
        if k:
            model.grow()
        model.save_pretrained(tmp_path / "run" / f"stage_{k}")
    model.save_pretrained(tmp_path / "run" / "stage_10")  # sorted as a number, not as text
    (tmp_path / "run" / "stage_1" / "metrics.json").write_text("{}")
    (tmp_path / "run" / "stage_3").mkdir()  # no model in it
    (tmp_path / "run" / "stage_x").mkdir()
    return tmp_path / "run"


def test_a_run_folder_gives_its_saved_stages_in_order(run: Path) -> None:
    found = stage_dirs(run)
    assert list(found) == [0, 1, 2, 10]
    assert all(found[k] == run / f"stage_{k}" for k in found)
    assert stage_dirs(run, require="metrics.json") == {1: run / "stage_1"}  # finished training only


def test_a_model_folder_or_a_file_in_it_is_its_own_stage(run: Path) -> None:
    assert stage_dirs(run / "stage_2") == {2: run / "stage_2"}
    assert stage_dirs(run / "stage_2" / "model.safetensors") == {2: run / "stage_2"}
    assert stage_dirs(run / "stage_2", require="metrics.json") == {}
    assert stage_dirs(run / "stage_1", require="metrics.json") == {1: run / "stage_1"}


def test_no_models_is_empty_and_a_missing_path_raises(run: Path, tmp_path: Path) -> None:
    assert stage_dirs(run / "stage_3") == {}
    with pytest.raises(FinPercepError, match="not found"):
        stage_dirs(tmp_path / "missing")
    with pytest.raises(FinPercepError, match="no reward model"):
        StagedRMRewards(run / "stage_3")
    assert StagedRMRewards(run / "stage_2").stages == (2,)
    assert StagedRMRewards(run).stages == (0, 1, 2, 10)


def test_none_is_the_packaged_default() -> None:
    if not default_checkpoint_dir().exists():
        with pytest.raises(FinPercepError, match="no packaged default"):
            stage_dirs(None)
        return
    found = stage_dirs(None)
    assert found and all(p.parent == default_checkpoint_dir() for p in found.values())
    assert found == stage_dirs(default_checkpoint_dir())
