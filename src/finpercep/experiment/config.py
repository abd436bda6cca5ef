"""The reward-hacking experiment's settings: its rows, :class:`HackingConfig` with the RL settings every RL
row shares (:class:`RLSettings`, nested), and the check that an output folder holds this experiment.

``finpercep experiment hacking`` is generated from :class:`HackingConfig`; the nested RL settings keep their
own option names (``--lr``, ``--kl-coef``, ``--steps``, ...). The experiment's RL defaults are its own
(tuned for it), not :class:`~finpercep.rl.train.RLConfig`'s; :meth:`HackingConfig.rl_config` is the one
place that turns them into a run's ``RLConfig``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from ..config import check, flatten, option, to_dict
from ..data.photos import EMBEDDED_PHOTOS
from ..errors import FinPercepError
from ..eval.evaluate import EVAL_PHOTOS
from ..eval.pyiqa_metrics import IQA_NAMES
from ..io import atomic_write_json
from ..rm.model import default_checkpoint_dir

if TYPE_CHECKING:
    from ..rl.train import RLConfig

CONFIG_NAME = "hacking_config.json"
TRAIN_PHOTOS: tuple[str, ...] = (
    "astronaut",
    "chelsea",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
)
"""Embedded photos RL trains on: all but the evaluation photos and ``motorcycle_right`` (a near-duplicate of
``motorcycle_left``)."""


@dataclass(frozen=True)
class RowSpec:
    """One row of the table: its key, its label and the RL curriculum (None = no RL)."""

    name: str
    label: str
    curriculum: Literal["global", "full", "ccl"] | None


ROWS: tuple[RowSpec, ...] = (
    RowSpec("baseline", "baseline (no RL)", None),
    RowSpec("global", "RL + global IQA reward (RM_0)", "global"),
    RowSpec("finpercep", "RL + FinPercep-RM w/o CCL", "full"),
    RowSpec("finpercep_ccl", "RL + FinPercep-RM + CCL", "ccl"),
)
ROW_NAMES: tuple[str, ...] = tuple(r.name for r in ROWS)


def row_spec(name: str) -> RowSpec:
    for r in ROWS:
        if r.name == name:
            return r
    raise FinPercepError(f"unknown row {name!r}; rows are {', '.join(ROW_NAMES)}")


@dataclass(frozen=True)
class RLSettings:
    """RL settings of every RL row (fields of RLConfig or its curriculum; the experiment's own defaults)."""

    algorithm: Literal["grpo", "refl"] = option("grpo", help="RL algorithm of every RL row")
    steps: int = option(300, help="RL steps of every RL row")
    batch_size: int = option(4, help="LR inputs per step")
    group_size: int = option(4, help="grpo: samples per LR input")
    exploration: Literal["iid", "antithetic"] = option(
        "antithetic", help="grpo: group noise, antithetic (mirrored pairs +eps, -eps) or iid"
    )
    lr: float = option(
        1e-4, help="learning rate (at 3e-4 every RL row, FinPercep's too, gained artifacts within 25 steps)"
    )
    kl_coef: float = option(0.01, help="grpo: KL weight to the pretrained generator")
    policy_std: float = option(0.05, help="grpo: std of the Gaussian policy")
    fidelity_weight: float = option(1.0, help="refl: weight of the MSE to the pretrained generator's output")
    lora_rank: int = option(0, help="LoRA rank (0 = train all weights)")
    map_penalty: float = option(
        0.5, help="subtract this times the mean FinPercep map from every reward (RM_0's map is 1: a shift)"
    )
    schedule: Literal["fixed", "adaptive"] = option("fixed", help="ccl stage transitions")
    stage_steps: tuple[int, ...] = option(
        (), help="ccl fixed: step at which each later stage starts; empty = early_steps or an even split"
    )
    early_steps: int = option(
        20,
        help="ccl fixed, no stage_steps: steps of every stage but the last (0 = even split); a long RM_0 "
        "phase hacks the global reward just as the global row does",
    )
    lr_size: int = option(32, help="LR training crop size")

    def __post_init__(self) -> None:
        check(self.steps >= 1, f"steps must be >= 1, got {self.steps}")


@dataclass(frozen=True)
class HackingConfig:
    """The reward-hacking experiment (``finpercep experiment hacking``)."""

    generator: str = option("realesrgan-animevideov3", help="pretrained generator every row starts from")
    reward_model: str | None = option(
        None, help="reward-model folder with stage_0 ... stage_N; none = the packaged default checkpoint"
    )
    judge: str | None = option(
        None,
        help="held-out judge reward model (trained on other photos with another seed); none = build one in "
        "OUT/judge with the reward model's recipe (finpercep.eval.judge)",
    )
    judge_stage: int | None = option(None, help="judge stage RM_k; none = its highest stage")
    judge_seed: int = option(1, help="seed of the judge built when judge is none (not the reward model's)")
    judge_num: int = option(36, help="GT crops of the FGR data of the judge built when judge is none")
    out: str = option("runs/hacking", help="output folder")
    rows: tuple[str, ...] = option(ROW_NAMES, help="rows to run, in table order")
    rl: RLSettings = option(default_factory=RLSettings, help="RL settings of every RL row")
    train_photos: tuple[str, ...] = option(TRAIN_PHOTOS, help="embedded photos RL trains on")
    hr_folders: tuple[str, ...] = option((), help="train on these HR folders instead of embedded photos")
    degradation: Literal["realesrgan", "bicubic"] = option(
        "realesrgan", help="LR synthesis of train/eval pairs"
    )
    seed: int = option(0, help="first RL seed of every RL row (data, policy noise)")
    seeds: int = option(
        1,
        help="RL seeds per RL row (seed, seed+1, ...; reward model, judge and evaluation pairs fixed): the "
        "table reports mean ± 95-percent t-interval over them and states a finding only when the interval "
        "of its per-seed difference excludes zero",
    )
    eval_every: int = option(25, help="evaluate the RL checkpoints every this many steps (curves)")
    curve_pairs: int = option(8, help="evaluation pairs used for the curves")
    eval_photos: tuple[str, ...] = option(
        EVAL_PHOTOS, help="held-out embedded photos of the evaluation pairs"
    )
    num_pairs: int = option(16, help="evaluation pairs of the table")
    eval_lr_size: int = option(64, help="LR size of the evaluation pairs")
    eval_seed: int = option(2024, help="seed of the evaluation pairs")
    tau: float = option(0.8, help="artifact threshold on M_gt(output, HR)")
    iqa: tuple[str, ...] = option(IQA_NAMES, help="pyiqa metrics to report when their weights are local")
    iqa_weights: str | None = option(None, help="folder with the pyiqa weight files (nothing is downloaded)")
    report_crops: int = option(3, help="evaluation pairs shown side by side in the report")
    rolling_window: int = option(10, help="window (steps) of the rolling std of the training reward")
    threads: int = option(0, help="torch threads (0 = default)")
    progress: bool = option(True, help="progress bars")

    def __post_init__(self) -> None:
        check(
            len(self.rows) >= 1 and len(set(self.rows)) == len(self.rows),
            "rows must be distinct and non-empty",
        )
        for r in self.rows:
            check(r in ROW_NAMES, f"unknown row {r!r}; rows are {', '.join(ROW_NAMES)}")
        check(self.eval_every >= 1, f"eval_every must be >= 1, got {self.eval_every}")
        check(self.seeds >= 1, f"seeds must be >= 1, got {self.seeds}")
        check(1 <= self.curve_pairs <= self.num_pairs, "curve_pairs must lie in [1, num_pairs]")
        check(0 <= self.report_crops <= self.num_pairs, "report_crops must lie in [0, num_pairs]")
        check(self.rolling_window >= 2, "rolling_window must be >= 2")
        check(0.0 <= self.tau < 1.0, f"tau must lie in [0, 1), got {self.tau}")
        for name in (*self.train_photos, *self.eval_photos):
            check(
                name in EMBEDDED_PHOTOS,
                f"unknown embedded photo {name!r}; available: {sorted(EMBEDDED_PHOTOS)}",
            )
        check(
            bool(self.hr_folders) or not set(self.train_photos) & set(self.eval_photos),
            f"train_photos and eval_photos overlap: {sorted(set(self.train_photos) & set(self.eval_photos))}",
        )
        check(bool(self.hr_folders) or bool(self.train_photos), "train_photos is empty")
        for name in self.iqa:
            check(name in IQA_NAMES, f"unknown IQA metric {name!r}; available: {', '.join(IQA_NAMES)}")

    def rm_dir(self) -> Path:
        """The training reward model's folder (the packaged default when ``reward_model`` is none)."""
        return Path(self.reward_model) if self.reward_model is not None else default_checkpoint_dir()

    def rl_seeds(self) -> list[int]:
        """The RL seeds every RL row runs with: ``seed``, ``seed + 1``, ..."""
        return [self.seed + i for i in range(self.seeds)]

    def rl_config(self, row: RowSpec, out: Path, hr_folders: Sequence[str], seed: int) -> RLConfig:
        """The :class:`~finpercep.rl.train.RLConfig` of RL row ``row``'s run with RL seed ``seed`` in ``out``,
        training on ``hr_folders``."""
        from ..rl.curriculum import CurriculumConfig
        from ..rl.train import RLConfig

        rl = to_dict(self.rl)
        schedule = {f.name: rl.pop(f.name) for f in fields(CurriculumConfig) if f.name in rl}
        return RLConfig(
            **rl,
            generator=self.generator,
            reward_model=str(self.rm_dir()),
            curriculum=CurriculumConfig(kind=row.curriculum or "global", **schedule),
            save_every=self.eval_every,
            hr_folders=tuple(hr_folders),
            degradation=self.degradation,
            seed=seed,
            out=str(out),
            threads=self.threads,
            tensorboard=False,
            preview=0,
            progress=self.progress,
        )


_RESUME_IGNORES = {"out", "rows", "seeds", "threads", "progress", "iqa_weights", "report_crops"}
_ADDED_LATER = {"early_steps": 0, "exploration": "iid"}
"""Options added after experiments were run, with the value that reproduces what those experiments did."""


def check_config(out: Path, cfg: HackingConfig) -> None:
    """Refuse an ``out`` that holds an experiment with other settings (those of ``_RESUME_IGNORES`` may
    differ); write ``cfg`` there. The saved config may be in the flat layout of the time before the RL
    settings were nested: keys are compared as the CLI's options."""
    from ..checkpoint import check_resume  # imports torch, which building the CLI does not need

    path = out / CONFIG_NAME
    now = json.loads(json.dumps(to_dict(cfg)))
    check_resume(
        path,
        cfg,
        ignore=_RESUME_IGNORES,
        added_later=_ADDED_LATER,
        what="an experiment",
        layout=lambda d: flatten(HackingConfig, d),
    )
    atomic_write_json(path, now)


__all__ = [
    "CONFIG_NAME",
    "ROWS",
    "ROW_NAMES",
    "TRAIN_PHOTOS",
    "HackingConfig",
    "RLSettings",
    "RowSpec",
    "check_config",
    "row_spec",
]
