"""Which reward-model stage the generator trains against at each step (pure logic, no torch).

Kinds (``stages`` are the RM stages available, e.g. ``(0, 1, 2, 3)`` for RM_0..RM_3):

* ``global`` -- RM_0, the plain global IQA model, throughout;
* ``full``   -- the full FinPercep-RM (the last stage) from the first step;
* ``ccl``    -- co-evolutionary curriculum: RM_0 -> RM_1 -> ... -> RM_N.

Schedules for ``ccl``:

* ``fixed``    -- stage ``i`` starts at ``stage_steps[i - 1]``; without them, every stage but the last lasts
  ``early_steps`` steps (no longer than an even split) and the last gets the rest, and with
  ``early_steps = 0`` the run is split evenly;
* ``adaptive`` -- advance once the current stage's per-step mean reward has plateaued and its variance
  is stable: over the last two windows of ``plateau_window`` steps, ``|mean_2 - mean_1| <= plateau_tol * sd``
  (``sd`` the pooled within-window standard deviation) and ``max(var) <= plateau_var_ratio * min(var)``. A
  stage lasts at least ``max(2 * plateau_window, min_stage_steps)`` steps and, if ``max_stage_steps`` is set,
  at most that.

Steps are counted as completed steps: :meth:`Curriculum.update` is called with ``done = step + 1`` after
a step, and a transition recorded at ``step=done`` means the stage is used from step index ``done`` on.
The state is JSON-serialisable, so a resumed run continues exactly where it stopped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from ..config import check, option

CurriculumKind = Literal["global", "full", "ccl"]
ScheduleKind = Literal["fixed", "adaptive"]


@dataclass(frozen=True)
class CurriculumConfig:
    """Reward curriculum over the reward-model stages.

    Its options are named as its fields, but for ``kind``: ``--curriculum``."""

    kind: CurriculumKind = option(
        "ccl", help="global = RM_0, full = RM_N, ccl = RM_0 -> ... -> RM_N", flag="curriculum"
    )
    schedule: ScheduleKind = option("fixed", help="ccl transitions: fixed steps or adaptive (reward plateau)")
    stage_steps: tuple[int, ...] = option(
        (), help="fixed: step at which each later stage starts; empty = early_steps or an even split"
    )
    early_steps: int = option(
        0, help="fixed, no stage_steps: steps of every stage but the last, at most an even split (0 = even)"
    )
    plateau_window: int = option(20, help="adaptive: window (steps) of the plateau test")
    plateau_tol: float = option(1.0, help="adaptive: plateau when the mean gain between windows <= tol * sd")
    plateau_var_ratio: float = option(
        4.0, help="adaptive: variance stable when max/min window variance <= this"
    )
    min_stage_steps: int = option(0, help="adaptive: minimum steps per stage (at least 2 * window)")
    max_stage_steps: int | None = option(
        None, help="adaptive: advance anyway after this many steps in a stage"
    )

    def __post_init__(self) -> None:
        check(
            self.kind in ("global", "full", "ccl"),
            f"curriculum must be global, full or ccl, got {self.kind!r}",
        )
        check(
            self.schedule in ("fixed", "adaptive"),
            f"schedule must be fixed or adaptive, got {self.schedule!r}",
        )
        check(all(s > 0 for s in self.stage_steps), "stage_steps must be positive")
        check(self.early_steps >= 0, f"early_steps must be >= 0, got {self.early_steps}")
        check(
            list(self.stage_steps) == sorted(set(self.stage_steps)), "stage_steps must be strictly increasing"
        )
        check(self.plateau_window >= 1, f"plateau_window must be >= 1, got {self.plateau_window}")
        check(self.plateau_tol >= 0, "plateau_tol must be >= 0")
        check(self.plateau_var_ratio >= 1, "plateau_var_ratio must be >= 1")
        check(self.min_stage_steps >= 0, "min_stage_steps must be >= 0")
        check(
            self.max_stage_steps is None or self.max_stage_steps >= 1, "max_stage_steps must be >= 1 or none"
        )


@dataclass(frozen=True)
class Transition:
    step: int
    from_stage: int
    to_stage: int
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"step": self.step, "from": self.from_stage, "to": self.to_stage, "reason": self.reason}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Transition:
        return cls(int(d["step"]), int(d["from"]), int(d["to"]), str(d["reason"]))


def even_boundaries(num_stages: int, total_steps: int) -> tuple[int, ...]:
    """Start steps of stages 1..K-1 when ``total_steps`` are split evenly over ``num_stages`` stages."""
    return tuple(round(total_steps * k / num_stages) for k in range(1, num_stages))


def plateau_test(history: Sequence[float], window: int, tol: float, var_ratio: float) -> tuple[bool, str]:
    """The adaptive schedule's test on the last ``2 * window`` values: (advance?, explanation)."""
    if len(history) < 2 * window:
        return False, f"only {len(history)} of {2 * window} steps"
    a, b = history[-2 * window : -window], history[-window:]
    ma, mb = sum(a) / window, sum(b) / window
    va = sum((x - ma) ** 2 for x in a) / window
    vb = sum((x - mb) ** 2 for x in b) / window
    sd = math.sqrt((va + vb) / 2)
    gain = mb - ma
    flat = abs(gain) <= tol * sd + 1e-12
    lo, hi = min(va, vb), max(va, vb)
    stable = hi <= var_ratio * lo + 1e-24
    ratio = hi / lo if lo > 0 else (1.0 if hi == 0 else math.inf)
    why = (
        f"mean gain {gain:+.4g} vs {tol:g}*sd {sd:.4g} over two {window}-step windows, "
        f"variance ratio {ratio:.3g} (limit {var_ratio:g})"
    )
    return flat and stable, why


class Curriculum:
    """Stage bookkeeping for one run; see the module docstring."""

    def __init__(self, cfg: CurriculumConfig, stages: Sequence[int], total_steps: int) -> None:
        stages = tuple(sorted(set(int(s) for s in stages)))
        check(len(stages) > 0, "the curriculum needs at least one reward stage")
        self.cfg = cfg
        self.total_steps = total_steps
        if cfg.kind == "global":
            check(0 in stages, f"curriculum 'global' needs RM_0; the reward model has stages {list(stages)}")
            self.order: tuple[int, ...] = (0,)
        elif cfg.kind == "full":
            self.order = (stages[-1],)
        else:
            self.order = stages
        self.boundaries: tuple[int, ...] = ()
        if cfg.kind == "ccl" and cfg.schedule == "fixed":
            if cfg.stage_steps:
                check(
                    len(cfg.stage_steps) == len(self.order) - 1,
                    f"stage_steps needs {len(self.order) - 1} entries (one per stage after the first) for "
                    f"stages {list(self.order)}, got {len(cfg.stage_steps)}",
                )
                self.boundaries = tuple(cfg.stage_steps)
            elif cfg.early_steps:
                even = even_boundaries(len(self.order), total_steps)
                self.boundaries = tuple(min(cfg.early_steps * k, b) for k, b in enumerate(even, start=1))
            else:
                self.boundaries = even_boundaries(len(self.order), total_steps)
        self.index = 0
        self.stage_start = 0
        self.history: list[float] = []
        self.transitions: list[Transition] = []

    @property
    def stage(self) -> int:
        """The RM stage used by the next step."""
        return self.order[self.index]

    @property
    def final(self) -> bool:
        return self.index == len(self.order) - 1

    def update(self, done: int, reward: float) -> Transition | None:
        """Record the mean reward of the step that made ``done`` steps complete; maybe advance."""
        if self.final:
            return None
        if self.cfg.schedule == "adaptive":
            self.history = [*self.history, float(reward)][-2 * self.cfg.plateau_window :]
        in_stage = done - self.stage_start
        reason: str | None = None
        if self.cfg.schedule == "fixed":
            if done >= self.boundaries[self.index]:
                reason = (
                    f"fixed schedule: stage {self.index + 1} starts at step {self.boundaries[self.index]}"
                )
        else:
            if self.cfg.max_stage_steps is not None and in_stage >= self.cfg.max_stage_steps:
                reason = f"max_stage_steps: {in_stage} steps in RM_{self.stage} without a plateau"
            elif in_stage >= max(2 * self.cfg.plateau_window, self.cfg.min_stage_steps):
                ok, why = plateau_test(
                    self.history, self.cfg.plateau_window, self.cfg.plateau_tol, self.cfg.plateau_var_ratio
                )
                if ok:
                    reason = f"plateau: {why}"
        if reason is None:
            return None
        t = Transition(done, self.stage, self.order[self.index + 1], reason)
        self.index += 1
        self.stage_start = done
        self.history = []
        self.transitions.append(t)
        return t

    def state_dict(self) -> dict[str, Any]:
        return {
            "config": asdict(self.cfg),
            "order": list(self.order),
            "index": self.index,
            "stage_start": self.stage_start,
            "history": list(self.history),
            "transitions": [t.as_dict() for t in self.transitions],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if list(state["order"]) != list(self.order):
            raise ValueError(f"saved curriculum stages {state['order']} differ from {list(self.order)}")
        self.index = int(state["index"])
        self.stage_start = int(state["stage_start"])
        self.history = [float(x) for x in state["history"]]
        self.transitions = [Transition.from_dict(d) for d in state["transitions"]]
