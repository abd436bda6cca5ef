"""The checkpointer shared by the RM and RL trainers: atomic state files and the resume-config check."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from finpercep import checkpoint
from finpercep.checkpoint import check_resume, load_state, save_state
from finpercep.config import option, to_dict
from finpercep.errors import FinPercepError


@dataclass(frozen=True)
class Cfg:
    out: str = option("runs/x")
    lr: float = option(1e-3)
    sizes: tuple[int, ...] = option((1, 2))
    mode: str = option("a")
    added: int = option(0)


def _write(path: Path, cfg: Cfg, drop: tuple[str, ...] = ()) -> None:
    saved = {k: v for k, v in to_dict(cfg).items() if k not in drop}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(saved, indent=2, sort_keys=True))


def test_no_saved_config_is_a_fresh_run(tmp_path: Path) -> None:
    assert check_resume(tmp_path / "run" / "cfg.json", Cfg()) is False


def test_same_settings_resume_and_tuples_match_saved_lists(tmp_path: Path) -> None:
    path = tmp_path / "run" / "cfg.json"
    _write(path, Cfg(sizes=(3, 4)))
    assert check_resume(path, Cfg(sizes=(3, 4))) is True


def test_different_settings_are_refused_with_their_names(tmp_path: Path) -> None:
    path = tmp_path / "run" / "cfg.json"
    _write(path, Cfg())
    with pytest.raises(FinPercepError, match=r"run holds a run with different settings \(lr, mode\); use"):
        check_resume(path, Cfg(lr=1e-2, mode="b"))
    with pytest.raises(FinPercepError, match=r"holds an experiment with different settings \(sizes\)"):
        check_resume(path, Cfg(sizes=(1,)), what="an experiment")


def test_ignored_settings_may_change(tmp_path: Path) -> None:
    path = tmp_path / "run" / "cfg.json"
    _write(path, Cfg(out="a"))
    assert check_resume(path, Cfg(out="b"), ignore={"out"}) is True
    with pytest.raises(FinPercepError, match=r"\(out\)"):
        check_resume(path, Cfg(out="b"))


def test_options_added_later_take_the_value_old_runs_had(tmp_path: Path) -> None:
    path = tmp_path / "run" / "cfg.json"
    _write(path, Cfg(), drop=("added", "sizes"))  # a run saved before these options existed
    later = {"added": 0, "sizes": (1, 2)}
    assert check_resume(path, Cfg(), added_later=later) is True
    with pytest.raises(FinPercepError, match=r"\(added\)"):
        check_resume(path, Cfg(added=5), added_later=later)
    with pytest.raises(FinPercepError, match=r"\(added, sizes\)"):  # without the defaults: missing = None
        check_resume(path, Cfg())
    _write(path, Cfg(added=5))  # what a saved run holds wins over the added-later value
    assert check_resume(path, Cfg(added=5), added_later=later) is True


def test_state_round_trip_and_missing_state(tmp_path: Path) -> None:
    assert load_state(tmp_path / "state.pt") is None
    state = {"step": 3, "weights": torch.arange(4.0), "history": [{"a": 1}]}
    save_state(tmp_path / "sub" / "state.pt", state)
    back = load_state(tmp_path / "sub" / "state.pt")
    assert back is not None and back["step"] == 3 and back["history"] == [{"a": 1}]
    assert torch.equal(back["weights"], state["weights"])


def test_a_save_that_fails_midway_keeps_the_previous_state_and_no_partial_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "state.pt"
    save_state(path, {"step": 1})
    real_save = torch.save

    def half_then_fail(obj: object, f: Path) -> None:
        real_save({"step": "partial"}, f)
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint.torch, "save", half_then_fail)
    with pytest.raises(KeyboardInterrupt):
        save_state(path, {"step": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.pt"]
    monkeypatch.undo()
    assert load_state(path) == {"step": 1}
