"""``finpercep demo``: the whole method end to end on scikit-image's photos, ending with a report.

Steps (each resumable: re-running the same command continues where a killed run stopped)::

    OUT/data/            1. FGR data synthesis with real SR models (finpercep data build)
    OUT/data_sheet.png      a contact sheet of the dataset (images and their M_gt)
    OUT/rm/              2. the reward model, RM_0 ... RM_N (finpercep rm train)
    OUT/judge/           3. a held-out judge: the same recipe on the validation photos, another seed
    OUT/experiment/      4. RL from the same pretrained generator: baseline, global reward (RM_0),
                            FinPercep-RM + CCL; evaluation on held-out photos; report/report.html

The ``full`` preset is the README's main job (three RL seeds a row; 22 min measured on 2 shared CPU cores);
``quick`` is a smoke run of every step at toy scale (under a minute), whose numbers mean nothing.

The same seed gives the same table, byte for byte, whatever the output folder, the number of ``workers``
and the number of cores: every step runs on the CPU with ``threads`` torch threads (the rounding of a
convolution or matrix product depends on how many threads split it, so torch's default, the machine's core
count, would make the numbers depend on the machine), and every random draw comes from the seed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .config import check, option

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoPreset:
    """The sizes of one demo preset."""

    num: int
    """GT crops (groups) of the reward model's FGR dataset."""
    sr_models: tuple[str, ...]
    rm_stages: int
    rm_epochs: tuple[int, ...]
    rm_crop: int
    rm_lr: float
    rm_refine_lr: float
    rm_steps_per_epoch: int
    """Cap on steps per epoch (0: one pass over the chains)."""
    rm_val_samples: int
    judge_num: int
    rl_steps: int
    rl_lr: float
    rl_early_steps: int
    """CCL: steps of every stage but the last (0: even split)."""
    rl_map_penalty: float
    rl_seeds: int
    """RL seeds per RL row: the table reports mean ± 95 % interval over them."""
    rl_rows: tuple[str, ...]
    eval_every: int
    num_pairs: int
    curve_pairs: int


SR_MODELS = ("realesrgan-x4plus", "realsr-df2k", "realesrgan-animevideov3", "bicubic")

PRESETS: dict[str, DemoPreset] = {
    "full": DemoPreset(
        num=32,
        sr_models=SR_MODELS,
        rm_stages=3,
        rm_epochs=(3, 3, 2),
        rm_crop=128,
        rm_lr=1e-3,  # 2e-3 (the rm train default, for 144 crops) diverged on 32 crops
        rm_refine_lr=0.5,
        rm_steps_per_epoch=0,
        rm_val_samples=104,
        judge_num=12,
        rl_steps=150,
        rl_lr=1e-4,  # the experiment's RL defaults (docs/experiments.md), at half its steps
        rl_early_steps=20,
        rl_map_penalty=0.5,
        rl_seeds=3,
        rl_rows=("baseline", "global", "finpercep_ccl"),
        eval_every=25,
        num_pairs=12,
        curve_pairs=6,
    ),
    "quick": DemoPreset(
        num=4,
        sr_models=("realesrgan-animevideov3", "bicubic"),
        rm_stages=2,
        rm_epochs=(1,),
        rm_crop=64,
        rm_lr=1e-3,
        rm_refine_lr=0.5,
        rm_steps_per_epoch=4,
        rm_val_samples=12,
        judge_num=3,
        rl_steps=6,
        rl_lr=1e-4,
        rl_early_steps=0,
        rl_map_penalty=0.5,
        rl_seeds=1,
        rl_rows=("baseline", "global", "finpercep_ccl"),
        eval_every=3,
        num_pairs=2,
        curve_pairs=2,
    ),
}


@dataclass(frozen=True)
class DemoConfig:
    """End-to-end demo on the embedded photos: data, reward model stages, RL with CCL, evaluation, report."""

    out: str = option("runs/demo", help="output folder")
    preset: Literal["full", "quick"] = option("full", help="full: the README's demo; quick: a smoke run")
    seed: int = option(0, help="random seed of every step (the judge uses seed + 1)")
    workers: int = option(2, help="data synthesis processes")
    threads: int = option(
        2, help="torch threads of every step (fixed, not the core count: the numbers depend on it)"
    )

    def __post_init__(self) -> None:
        check(bool(self.out), "out must be a folder")
        check(self.workers >= 1, f"workers must be >= 1, got {self.workers}")
        check(self.threads >= 1, f"threads must be >= 1, got {self.threads}")


def run_demo(cfg: DemoConfig, *, progress: bool = True) -> Path:
    """Run every step and return the path of the report (HTML).

    Every step runs with ``cfg.threads`` torch threads; the caller's thread count is restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        return _run_demo(cfg, progress=progress)
    finally:
        torch.set_num_threads(before)


def _run_demo(cfg: DemoConfig, *, progress: bool) -> Path:
    from .data.show import contact_sheet
    from .data.synthesis import SynthesisConfig, build
    from .eval.judge import JudgeConfig, build_judge
    from .experiment import HackingConfig, RLSettings, run_hacking
    from .rm.train import RMTrainConfig, train

    out = Path(cfg.out)
    p = PRESETS[cfg.preset]

    log.info("demo 1/4: FGR data synthesis")
    data_cfg = SynthesisConfig(
        out=str(out / "data"), num=p.num, sr_models=p.sr_models, workers=cfg.workers, seed=cfg.seed
    )
    manifest = build(data_cfg, progress=progress)
    sheet = contact_sheet(manifest.parent, out / "data_sheet.png", num=6, seed=cfg.seed)
    log.info("contact sheet: %s", sheet)

    log.info("demo 2/4: reward model RM_0 ... RM_%d", p.rm_stages)
    rm_dir = out / "rm"
    train(
        RMTrainConfig(
            data=str(out / "data"),
            out=str(rm_dir),
            stages=p.rm_stages,
            epochs=p.rm_epochs,
            crop=p.rm_crop,
            lr=p.rm_lr,
            refine_lr=p.rm_refine_lr,
            max_steps_per_epoch=p.rm_steps_per_epoch,
            max_val_samples=p.rm_val_samples,
            seed=cfg.seed,
            device="cpu",  # as the judge and RL do ("auto" takes a GPU when there is one: other numbers)
            threads=cfg.threads,
            progress=progress,
        )
    )

    log.info("demo 3/4: held-out judge")
    judge_dir = build_judge(
        JudgeConfig(
            out=str(out / "judge"),
            num=p.judge_num,
            sr_models=p.sr_models,
            seed=cfg.seed + 1,
            workers=cfg.workers,
            threads=cfg.threads,
            progress=progress,
            like=str(rm_dir),
        )
    )

    log.info("demo 4/4: RL (global reward vs FinPercep-RM + CCL), evaluation, report")
    report = run_hacking(
        HackingConfig(
            reward_model=str(rm_dir),
            judge=str(judge_dir),
            out=str(out / "experiment"),
            rows=p.rl_rows,
            rl=RLSettings(
                steps=p.rl_steps, lr=p.rl_lr, early_steps=p.rl_early_steps, map_penalty=p.rl_map_penalty
            ),
            seed=cfg.seed,
            seeds=p.rl_seeds,
            eval_every=p.eval_every,
            num_pairs=p.num_pairs,
            curve_pairs=p.curve_pairs,
            report_crops=min(3, p.num_pairs),
            threads=cfg.threads,
            progress=progress,
        )
    )
    log.info("report: %s", report)
    return report
