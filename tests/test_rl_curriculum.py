"""Curriculum logic: which RM stage each step uses, and when and why it changes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from finpercep.errors import ConfigError
from finpercep.rl.curriculum import Curriculum, CurriculumConfig, even_boundaries, plateau_test


def run(cur: Curriculum, rewards: list[float]) -> list[int]:
    """Stage used by each step when the steps' mean rewards are ``rewards``."""
    used = []
    for i, r in enumerate(rewards):
        used.append(cur.stage)
        cur.update(i + 1, r)
    return used


def test_global_uses_rm0_and_never_transitions() -> None:
    cur = Curriculum(
        CurriculumConfig(kind="global", schedule="adaptive", plateau_window=2), (0, 1, 2, 3), 100
    )
    used = run(cur, [0.0] * 100)
    assert set(used) == {0}
    assert cur.transitions == []


def test_full_starts_at_the_last_stage() -> None:
    cur = Curriculum(CurriculumConfig(kind="full"), (0, 1, 2, 3), 50)
    assert run(cur, list(np.linspace(0, 1, 50))) == [3] * 50
    assert cur.transitions == []


def test_global_needs_rm0() -> None:
    with pytest.raises(ConfigError, match="RM_0"):
        Curriculum(CurriculumConfig(kind="global"), (2, 3), 10)


def test_fixed_schedule_transitions_at_the_given_steps() -> None:
    cur = Curriculum(CurriculumConfig(kind="ccl", stage_steps=(3, 7)), (0, 1, 2), 10)
    used = run(cur, [0.5] * 10)
    assert used == [0, 0, 0, 1, 1, 1, 1, 2, 2, 2]
    assert [(t.step, t.from_stage, t.to_stage) for t in cur.transitions] == [(3, 0, 1), (7, 1, 2)]
    assert all("fixed schedule" in t.reason for t in cur.transitions)


def test_fixed_schedule_default_is_an_even_split() -> None:
    assert even_boundaries(4, 100) == (25, 50, 75)
    cur = Curriculum(CurriculumConfig(kind="ccl"), (0, 1, 2, 3), 100)
    used = run(cur, [0.0] * 100)
    assert [used.count(k) for k in range(4)] == [25, 25, 25, 25]


def test_early_steps_give_short_early_stages_and_the_rest_to_the_last() -> None:
    cur = Curriculum(CurriculumConfig(kind="ccl", early_steps=4), (0, 1, 2, 3), 30)
    used = run(cur, [0.0] * 30)
    assert [used.count(k) for k in range(4)] == [4, 4, 4, 18]
    assert [t.step for t in cur.transitions] == [4, 8, 12]
    explicit_cfg = CurriculumConfig(kind="ccl", stage_steps=(2, 5, 9), early_steps=4)
    explicit = Curriculum(explicit_cfg, (0, 1, 2, 3), 30)
    assert explicit.boundaries == (2, 5, 9)
    short = Curriculum(CurriculumConfig(kind="ccl", early_steps=4), (0, 1, 2, 3), 12)
    assert short.boundaries == (3, 6, 9)  # too short a run for 4-step early stages: the even split
    with pytest.raises(ConfigError, match="early_steps must be >= 0"):
        CurriculumConfig(early_steps=-1)


def test_fixed_schedule_needs_one_boundary_per_later_stage() -> None:
    with pytest.raises(ConfigError, match="stage_steps needs 2"):
        Curriculum(CurriculumConfig(kind="ccl", stage_steps=(5,)), (0, 1, 2), 10)
    with pytest.raises(ConfigError, match="increasing"):
        CurriculumConfig(stage_steps=(5, 5))


def rising_then_flat(rise: int, flat: int, noise: float, seed: int = 0) -> list[float]:
    rng = np.random.default_rng(seed)
    trend = np.concatenate([np.linspace(0.0, 1.0, rise), np.ones(flat)])
    return list(trend + noise * rng.standard_normal(rise + flat))


def test_adaptive_waits_for_the_plateau() -> None:
    window = 10
    cfg = CurriculumConfig(kind="ccl", schedule="adaptive", plateau_window=window)
    cur = Curriculum(cfg, (0, 1), 200)
    rewards = rising_then_flat(rise=60, flat=80, noise=0.01)
    used = run(cur, rewards)
    assert len(cur.transitions) == 1
    t = cur.transitions[0]
    # not while the reward still rises, and within a few windows once it is flat
    assert 60 + window <= t.step <= 60 + 4 * window
    assert t.reason.startswith("plateau")
    assert used.index(1) == t.step


def test_adaptive_never_advances_on_a_steady_rise() -> None:
    cur = Curriculum(CurriculumConfig(kind="ccl", schedule="adaptive", plateau_window=10), (0, 1), 300)
    run(cur, rising_then_flat(rise=300, flat=0, noise=0.01))
    assert cur.transitions == []


def test_adaptive_respects_unstable_variance_and_max_stage_steps() -> None:
    # flat mean but the noise doubles and doubles again: variance not stable, so no plateau
    rng = np.random.default_rng(1)
    scales = np.repeat([0.01, 0.04, 0.16, 0.64], 10)
    rewards = list(scales * rng.standard_normal(40))
    ok, why = plateau_test(rewards[-20:], 10, tol=1.0, var_ratio=4.0)
    assert not ok and "variance ratio" in why
    cfg = CurriculumConfig(kind="ccl", schedule="adaptive", plateau_window=5, max_stage_steps=30)
    cur = Curriculum(cfg, (0, 1, 2), 100)
    run(cur, list(np.linspace(0, 10, 100)))  # never flat
    assert [t.step for t in cur.transitions] == [30, 60]
    assert all(t.reason.startswith("max_stage_steps") for t in cur.transitions)


def test_adaptive_min_stage_steps() -> None:
    cfg = CurriculumConfig(kind="ccl", schedule="adaptive", plateau_window=5, min_stage_steps=25)
    cur = Curriculum(cfg, (0, 1), 100)
    run(cur, [1.0] * 100)  # flat from the start: advance as soon as allowed
    assert [t.step for t in cur.transitions] == [25]


def test_state_round_trip_continues_identically() -> None:
    cfg = CurriculumConfig(kind="ccl", schedule="adaptive", plateau_window=8)
    rewards = rising_then_flat(rise=40, flat=200, noise=0.02, seed=3)
    whole = Curriculum(cfg, (0, 1, 2, 3), 240)
    used_whole = run(whole, rewards)

    first = Curriculum(cfg, (0, 1, 2, 3), 240)
    used = run(first, rewards[:50])
    saved = json.loads(json.dumps(first.state_dict()))  # must survive JSON
    second = Curriculum(cfg, (0, 1, 2, 3), 240)
    second.load_state_dict(saved)
    for i, r in enumerate(rewards[50:], start=50):
        used.append(second.stage)
        second.update(i + 1, r)
    assert used == used_whole
    assert [t.as_dict() for t in second.transitions] == [t.as_dict() for t in whole.transitions]
    assert len(whole.transitions) >= 2


def test_transitions_serialise_with_step_from_to_reason() -> None:
    cur = Curriculum(CurriculumConfig(kind="ccl", stage_steps=(2,)), (0, 1), 4)
    run(cur, [0.0] * 4)
    assert cur.transitions[0].as_dict().keys() == {"step", "from", "to", "reason"}
