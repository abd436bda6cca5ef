"""The reward-hacking experiment: one pretrained generator, four rows, one table, curves and a report.

``finpercep experiment hacking --reward-model RM_DIR --judge JUDGE_DIR --out DIR`` and
``run_hacking(HackingConfig(...))`` run the same code. From the same generator, data, step count and seeds:

* ``baseline``       -- the pretrained generator, no RL;
* ``global``         -- RL against the global IQA reward RM_0 (curriculum ``global``);
* ``finpercep``      -- RL against the full FinPercep-RM RM_N from the first step (curriculum ``full``);
* ``finpercep_ccl``  -- RL with the co-evolutionary curriculum RM_0 -> ... -> RM_N (curriculum ``ccl``).

Every RL row is run ``seeds`` times, with RL seeds ``seed``, ``seed + 1``, ... (data order and policy noise;
the reward model, the judge and the evaluation pairs stay fixed). Every run is evaluated every
``eval_every`` steps on the first ``curve_pairs`` evaluation pairs (held-out judge score and artifact
measure) and, at the end, on all pairs with every metric of :mod:`finpercep.eval` (NIQE included, as
``finpercep eval`` computes it: "–" in the table when the outputs are under 96x96 pixels after the border
crop), plus the scores of RM_0 (the global reward's own score) and RM_N. Evaluation pairs come from photos
RL never trains on (:data:`~finpercep.eval.evaluate.EVAL_PHOTOS`). With several seeds every table cell is
mean ± the 95 % t-interval over the seeds, and a finding is stated only when the t-interval of its
per-seed paired difference excludes zero (:mod:`.stats`, :mod:`.findings`).

The per-step training reward moves with the content of each batch far more than with learning. Every row
sees the same batches and the same policy noise (both derive from the seed and the step), so the report
also scores the *pretrained* generator on exactly those samples with the same reward-model stage: the
row's *gain* is its reward minus that reference (0 at step 1), and the oscillation measure is the rolling
std of the gain, over the steps after the curriculum's last transition where the ``full`` and ``ccl`` rows
both train against RM_N (the raw reward's rolling std is reported too). Output::

    hacking_config.json              what was run (a re-run with other settings is refused)
    photos/train/                    the embedded training photos (RL never sees the evaluation photos)
    rows/baseline/                   the pretrained generator's eval.json, per_image.csv, images/, curve.json
    rows/<row>/seed_<s>/             the RL run with seed s (finpercep rl train layout), curve.json,
                                     eval.json, per_image.csv, images/ (the report's crops)
    report/report.html               findings, table, curves, crops with FinPercep heatmaps
    report/table.md table.json       the paper-style table (the same numbers)
    report/curves.png curves.json    training reward, its gain and the gain's rolling std, judge, artifacts
    reference_rewards.json           the pretrained generator's reward per (seed, stage, step)

Re-running the same command skips finished (row, seed) runs (those with an ``eval.json`` that has NIQE or
says why not; an older one without is evaluated again, not trained again) and resumes an interrupted RL
run where it stopped; a re-run with more ``seeds`` adds the missing ones. An experiment from before
``seeds`` existed, with its RL run in ``rows/<row>/`` itself, is read as that run's seed (its
``rl_config.json``), so it is neither trained nor moved.
"""

from __future__ import annotations

import html
import json
import logging
import math
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from ..config import check, option, to_dict
from ..data.photos import EMBEDDED_PHOTOS, embedded_photos
from ..errors import FinPercepError
from ..eval.evaluate import (
    EVAL_JSON,
    EVAL_PHOTOS,
    degraded_pairs,
    evaluate,
    json_safe,
    read_result,
    write_result,
)
from ..eval.pyiqa_metrics import IQA_NAMES, IQAScorer
from ..io import atomic_write_json, atomic_write_text, load_image, save_png
from ..rm.model import RewardModel, default_checkpoint_dir, resolve_checkpoint, stage_dirs
from .findings import findings
from .report import fmt, html_page, plot_experiment_curves, table_columns, table_json, table_markdown
from .stats import crop_stderr, seed_means

logger = logging.getLogger(__name__)

CONFIG_NAME = "hacking_config.json"
CURVE_NAME = "curve.json"
REPORT_DIR = "report"
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
_RESUME_IGNORES = {"out", "rows", "seeds", "threads", "progress", "iqa_weights", "report_crops"}
SEED_DIR = "seed_{}"
"""Folder of one RL seed's run below ``rows/<row>/``."""


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
    algorithm: Literal["grpo", "refl"] = option("grpo", help="RL algorithm of every RL row")
    steps: int = option(300, help="RL steps of every RL row")
    batch_size: int = option(4, help="LR inputs per step")
    group_size: int = option(4, help="grpo: samples per LR input")
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
        check(self.steps >= 1 and self.eval_every >= 1, "steps and eval_every must be >= 1")
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

    def rl_config(self, row: RowSpec, out: Path, hr_folders: tuple[str, ...], seed: int | None = None) -> Any:
        """The :class:`~finpercep.rl.train.RLConfig` of an RL row's run with RL seed ``seed`` (default: the
        first)."""
        from ..rl.train import RLConfig

        return RLConfig(
            generator=self.generator,
            reward_model=str(self.rm_dir()),
            map_penalty=self.map_penalty,
            algorithm=self.algorithm,
            curriculum=row.curriculum or "global",
            schedule=self.schedule,
            stage_steps=self.stage_steps,
            early_steps=self.early_steps,
            steps=self.steps,
            batch_size=self.batch_size,
            group_size=self.group_size,
            lr=self.lr,
            kl_coef=self.kl_coef,
            policy_std=self.policy_std,
            fidelity_weight=self.fidelity_weight,
            lora_rank=self.lora_rank,
            save_every=self.eval_every,
            lr_size=self.lr_size,
            hr_folders=hr_folders,
            degradation=self.degradation,
            seed=self.seed if seed is None else seed,
            out=str(out),
            threads=self.threads,
            tensorboard=False,
            preview=0,
            progress=self.progress,
        )


# --------------------------------------------------------------------------------------------------
# pieces


def _check_config(out: Path, cfg: HackingConfig) -> None:
    path = out / CONFIG_NAME
    now = json.loads(json.dumps(to_dict(cfg)))
    if path.is_file():
        saved = {"early_steps": 0, **json.loads(path.read_text())}  # runs from before the option had none
        diff = sorted(
            k for k in set(saved) | set(now) if k not in _RESUME_IGNORES and saved.get(k) != now.get(k)
        )
        if diff:
            raise FinPercepError(
                f"{out} holds an experiment with different settings ({', '.join(diff)}); use another --out"
            )
    atomic_write_json(path, now)


def export_train_photos(names: Sequence[str], folder: Path) -> Path:
    """Write the embedded photos ``names`` as PNG into ``folder`` (once), so RL can train on just them."""
    for photo in embedded_photos(names):
        path = folder / f"{photo.name}.png"
        if not path.is_file():
            save_png(path, photo.load())
    return folder


def policy_template(cfg: HackingConfig) -> torch.nn.Module:
    """A Gaussian policy shaped like the RL runs' (LoRA included), to load their resume points into."""
    from ..rl.generators import GaussianPolicy, build_generator
    from ..rl.lora import apply_lora

    loaded = build_generator(cfg.generator)
    policy = GaussianPolicy(loaded.net, loaded.scale, cfg.policy_std)
    if cfg.lora_rank:
        apply_lora(policy.network, cfg.lora_rank, None, seed=cfg.seed)
    return policy


def load_policy_checkpoint(policy: torch.nn.Module, state_path: Path) -> torch.nn.Module:
    """The generator network of an RL resume point (``state.pt``), loaded into ``policy``."""
    state = torch.load(state_path, map_location="cpu", weights_only=False)
    policy.load_state_dict(state["policy"])
    return policy.network.eval()


def rolling_std(values: Sequence[float], window: int) -> list[float]:
    """Standard deviation of the last ``window`` values at every position (NaN until two are seen)."""
    out = []
    for i in range(len(values)):
        w = np.asarray(values[max(0, i - window + 1) : i + 1], dtype=np.float64)
        out.append(float(w.std(ddof=1)) if len(w) >= 2 else math.nan)
    return out


def _curve_point(step: int, result: Any) -> dict[str, float]:
    return {
        "step": step,
        **{
            k: result.metrics[k]
            for k in ("judge", "artifact_frac", "artifact_mean", "psnr")
            if k in result.metrics
        },
    }


def _read_curve(path: Path) -> list[dict[str, float]]:
    return json.loads(path.read_text()) if path.is_file() else []


def _nanmean(values: Sequence[float]) -> float:
    v = [x for x in values if math.isfinite(x)]
    return float(np.mean(v)) if v else math.nan


# --------------------------------------------------------------------------------------------------
# the experiment


class _Experiment:
    """State shared by the steps of one :func:`run_hacking` call."""

    def __init__(self, cfg: HackingConfig) -> None:
        from ..rl.generators import build_generator

        self.cfg = cfg
        self.out = Path(cfg.out)
        rm_dir = cfg.rm_dir()
        stages = stage_dirs(rm_dir) if rm_dir.is_dir() else {}
        if not stages:
            raise FinPercepError(
                f"{rm_dir}: no reward-model stages (stage_<k> folders); train them with `finpercep rm train`"
            )
        if len(stages) < 2:
            raise FinPercepError(
                f"{rm_dir}: the experiment needs RM_0 and at least one grown stage, found only {list(stages)}"
            )
        self.n_stage = max(stages)
        self.rm0 = RewardModel.from_pretrained(stages[min(stages)])
        self.rmn = RewardModel.from_pretrained(stages[self.n_stage])
        judge_path = Path(cfg.judge) if cfg.judge is not None else self.build_judge(rm_dir)
        judge_dir = resolve_checkpoint(judge_path, cfg.judge_stage).resolve()
        rm_dirs = {rm_dir.resolve()} | {p.resolve() for p in stages.values()}
        if judge_dir in rm_dirs:
            raise FinPercepError(f"the judge {judge_path} is the training reward model; give a held-out one")
        self.judge_dir = judge_dir
        self.judge = RewardModel.from_pretrained(judge_dir)
        base = build_generator(cfg.generator)
        self.scale = base.scale
        self.pairs = degraded_pairs(
            embedded_photos(cfg.eval_photos),
            cfg.num_pairs,
            cfg.eval_lr_size,
            base.scale,
            cfg.eval_seed,
            cfg.degradation,
        )
        self.iqa = IQAScorer(cfg.iqa_weights, cfg.iqa) if cfg.iqa else None
        self.scorers = {"RM_0": self.rm0, f"RM_{self.n_stage}": self.rmn}
        self._policy: torch.nn.Module | None = None
        self.hr_folders: tuple[str, ...] = cfg.hr_folders

    def build_judge(self, rm_dir: Path) -> Path:
        """A judge with the reward model's recipe on the judge photos and ``judge_seed`` (resumable)."""
        from ..eval.judge import JudgeConfig, build_judge, read_recipe

        cfg = self.cfg
        like = str(rm_dir) if read_recipe(rm_dir) is not None else None
        logger.info("building the held-out judge in %s (recipe: %s)", self.out / "judge", like or "defaults")
        judge_cfg = JudgeConfig(
            out=str(self.out / "judge"), num=cfg.judge_num, seed=cfg.judge_seed, like=like,
            threads=cfg.threads, progress=cfg.progress,
        )
        return build_judge(judge_cfg)

    def policy(self) -> torch.nn.Module:
        if self._policy is None:
            self._policy = policy_template(self.cfg)
        return self._policy

    def row_dir(self, name: str) -> Path:
        return self.out / "rows" / name

    def run_dir(self, name: str, seed: int | None) -> Path:
        """Folder of one run: the baseline's row folder (``seed`` None), ``rows/<row>/seed_<s>``, or
        ``rows/<row>`` itself when it holds a run from before seeds existed with that RL seed."""
        d = self.row_dir(name)
        if seed is None:
            return d
        return d if legacy_seed(d) == seed else d / SEED_DIR.format(seed)

    def runs(self, name: str) -> list[tuple[int | None, Path]]:
        """``(seed, folder)`` of every run of row ``name`` (the baseline: one, seed None)."""
        if row_spec(name).curriculum is None:
            return [(None, self.row_dir(name))]
        return [(s, self.run_dir(name, s)) for s in self.cfg.rl_seeds()]

    def curve_eval(self, net: torch.nn.Module, step: int) -> dict[str, float]:
        res = evaluate(net, self.pairs[: self.cfg.curve_pairs], self.judge, tau=self.cfg.tau)
        return _curve_point(step, res)

    def final_eval(self, net: torch.nn.Module, row: RowSpec, d: Path, seed: int | None = None) -> Path:
        """Every metric on every pair (NIQE as ``finpercep eval`` computes it), written into ``d``."""
        res = evaluate(
            net,
            self.pairs,
            self.judge,
            scorers=self.scorers,
            iqa=self.iqa,
            tau=self.cfg.tau,
            keep_outputs=self.cfg.report_crops,
            niqe=True,
        )
        return write_result(res, d, {"row": row.name, "label": row.label, "seed": seed}, self.pairs)

    def run_baseline(self) -> None:
        from ..rl.generators import build_generator

        d = self.row_dir("baseline")
        curve = d / CURVE_NAME
        if evaluated(d) and curve.is_file():
            logger.info("baseline: finished earlier; skipped")
            return
        net = build_generator(self.cfg.generator).net
        if not curve.is_file():
            atomic_write_json(curve, [self.curve_eval(net, 0)])
        self.final_eval(net, row_spec("baseline"), d)

    def run_rl_row(self, row: RowSpec, hr_folders: tuple[str, ...], seed: int | None = None) -> None:
        """Train (or resume) and evaluate the run of ``row`` with RL seed ``seed`` (default: the first)."""
        from ..rl.generators import build_generator
        from ..rl.train import STATE_NAME, train

        seed = self.cfg.seed if seed is None else seed
        d = self.run_dir(row.name, seed)
        if evaluated(d):
            logger.info("%s seed %d: finished earlier; skipped", row.name, seed)
            return
        rl_cfg = self.cfg.rl_config(row, d, hr_folders, seed)
        curve_path = d / CURVE_NAME
        state_path = d / STATE_NAME
        done = (
            torch.load(state_path, map_location="cpu", weights_only=False)["step"]
            if state_path.is_file()
            else 0
        )
        curve = [p for p in _read_curve(curve_path) if p["step"] <= done]
        at_checkpoint = done % self.cfg.eval_every == 0 or done == self.cfg.steps
        if done and at_checkpoint and all(p["step"] != done for p in curve):
            curve.append(self.curve_eval(load_policy_checkpoint(self.policy(), state_path), done))
        d.mkdir(parents=True, exist_ok=True)
        atomic_write_json(curve_path, curve)

        def on_step(step: int, row_log: dict[str, float]) -> None:
            if step % self.cfg.eval_every == 0 or step == self.cfg.steps:
                curve.append(self.curve_eval(load_policy_checkpoint(self.policy(), state_path), step))
                atomic_write_json(curve_path, curve)

        summary = d / "summary.json"
        finished = summary.is_file() and json.loads(summary.read_text()).get("steps") == self.cfg.steps
        if not finished:
            logger.info(
                "%s seed %d: RL with curriculum %s for %d steps -> %s",
                row.name, seed, row.curriculum, self.cfg.steps, d,
            )
            train(rl_cfg, on_step=on_step)
        self.final_eval(build_generator(str(d)).net, row, d, seed)


def legacy_seed(row_dir: Path) -> int | None:
    """The RL seed of a run written straight into ``rows/<row>/`` (before seeds existed), else None."""
    from ..rl.train import CONFIG_NAME as RL_CONFIG

    p = row_dir / RL_CONFIG
    if not p.is_file():
        return None
    return int(json.loads(p.read_text()).get("seed", 0))


def evaluated(d: Path) -> bool:
    """Whether ``d`` holds a final evaluation with NIQE (measured or unavailable with the reason)."""
    if not (d / EVAL_JSON).is_file():
        return False
    res = read_result(d)
    return "niqe" in res.get("metrics", {}) or "niqe" in res.get("unavailable", {})


def run_hacking(cfg: HackingConfig) -> Path:
    """Run (or resume) the experiment and return the path of ``report/report.html``."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    _check_config(out, cfg)
    exp = _Experiment(cfg)
    hr_folders = cfg.hr_folders or (str(export_train_photos(cfg.train_photos, out / "photos" / "train")),)
    exp.hr_folders = hr_folders
    exp.run_baseline()  # the curves' step-0 point and the reference of every comparison
    for seed in cfg.rl_seeds():  # seed by seed: a killed run leaves whole seeds behind it
        for name in cfg.rows:
            row = row_spec(name)
            if row.curriculum is not None:
                exp.run_rl_row(row, hr_folders, seed)
    return write_report(exp)


# --------------------------------------------------------------------------------------------------
# collecting the runs' files; the report (its text, table and plots: .report, .findings, .stats)


REFERENCE_NAME = "reference_rewards.json"
TRAIN_KEYS = ("train_reward", "train_gain", "reward_osc", "reward_osc_raw")


def _read_reference(path: Path, default_seed: int) -> dict[tuple[int, int, int], float]:
    """``{(seed, stage, step): reward}``; keys ``stage:step`` (files from before seeds) are
    ``default_seed``'s."""
    cache: dict[tuple[int, int, int], float] = {}
    for key, value in (json.loads(path.read_text()) if path.is_file() else {}).items():
        parts = [int(x) for x in key.split(":")]
        seed, stage, step = parts if len(parts) == 3 else [default_seed, *parts]
        cache[(seed, stage, step)] = value
    return cache


def _pretrained_rewards(
    exp: _Experiment, seed: int, points: Sequence[tuple[int, int]]
) -> dict[tuple[int, int], float]:
    """The pretrained generator's reward at each ``(stage, step)`` of RL seed ``seed``'s runs."""
    from ..rl.data import PairSource
    from ..rl.generators import GaussianPolicy, build_generator
    from ..rl.rewards import StagedRMRewards
    from ..rl.train import noise_generators

    cfg = exp.cfg
    loaded = build_generator(cfg.generator)
    policy = GaussianPolicy(loaded.net, loaded.scale, cfg.policy_std).eval()
    data = PairSource(loaded.scale, cfg.lr_size, seed, exp.hr_folders, degradation=cfg.degradation)
    rewards = StagedRMRewards(cfg.rm_dir(), cfg.map_penalty)
    out: dict[tuple[int, int], float] = {}
    with torch.no_grad():
        for stage, step in sorted(points):
            reward = rewards[stage]
            idx = range(cfg.batch_size)
            lr, hr = data.batch(step - 1, idx)
            if cfg.algorithm == "grpo":
                gens = noise_generators(seed, step - 1, idx, torch.device("cpu"))
                sr = policy.rollout(lr, cfg.group_size, gens).sr
                g = cfg.group_size
                value = reward(sr, lr.repeat_interleave(g, 0), hr.repeat_interleave(g, 0))
            else:
                value = reward(policy(lr).clamp(0, 1), lr, hr)
            out[(stage, step)] = float(value.float().mean())
    return out


def reference_rewards(
    exp: _Experiment, needed: set[tuple[int, int, int]]
) -> dict[tuple[int, int, int], float]:
    """Reward the *pretrained* generator gets at ``(seed, stage, step)``: the same batch, the same policy
    noise and the same reward model as the RL run with that seed at that step (cached in
    ``OUT/reference_rewards.json``).

    An RL run's logged reward minus this is its gain; batch content, which moves the raw reward from step to
    step far more than learning does, cancels out. The gain is exactly 0 at step 1.
    """
    path = exp.out / REFERENCE_NAME
    cache = _read_reference(path, exp.cfg.seed)
    todo: dict[int, list[tuple[int, int]]] = {}
    for seed, stage, step in needed - set(cache):
        todo.setdefault(seed, []).append((stage, step))
    for seed, points in sorted(todo.items()):
        logger.info("reference rewards of the pretrained generator: %d points of seed %d", len(points), seed)
        for (stage, step), value in _pretrained_rewards(exp, seed, points).items():
            cache[(seed, stage, step)] = value
    if todo:
        atomic_write_json(path, {f"{k[0]}:{k[1]}:{k[2]}": v for k, v in sorted(cache.items())})
    return cache


def training_stats(
    run_dir: Path, window: int, from_step: int, reference: Mapping[tuple[int, int], float] | None = None
) -> dict[str, Any]:
    """Per-step training reward, its gain over the pretrained generator (when ``reference`` is given), the
    gain's rolling std, and summaries: ``train_reward`` / ``train_gain`` (means over the last 10 % of steps)
    and ``reward_osc`` (mean rolling std of the gain after ``from_step``; ``reward_osc_raw``: raw reward)."""
    from ..rl.logs import read_log

    rows = read_log(run_dir)
    steps = [int(r["step"]) for r in rows]
    reward = [r["reward"] for r in rows]
    stage = [int(r["stage"]) for r in rows]
    if reference is not None:
        gain = [r - reference[(k, st)] for r, k, st in zip(reward, stage, steps, strict=True)]
    else:
        gain = [math.nan] * len(reward)
    rstd = rolling_std(gain if reference is not None else reward, window)
    raw_std = rolling_std(reward, window)
    n_tail = max(1, len(reward) // 10)
    osc = [v for st, v in zip(steps, rstd, strict=True) if st > from_step]
    return {
        "steps": steps,
        "reward": reward,
        "gain": gain,
        "stage": stage,
        "rolling_std": rstd,
        "rolling_std_raw": raw_std,
        "train_reward": _nanmean(reward[-n_tail:]),
        "train_gain": _nanmean(gain[-n_tail:]),
        "reward_osc": _nanmean(osc),
        "reward_osc_raw": _nanmean([v for st, v in zip(steps, raw_std, strict=True) if st > from_step]),
    }


def _last_transition(run_dir: Path) -> int:
    p = run_dir / "transitions.json"
    if not p.is_file():
        return 0
    ts = json.loads(p.read_text())
    return max((int(t["step"]) for t in ts), default=0)


def _run_record(d: Path, seed: int | None, train: Mapping[str, Any] | None) -> dict[str, Any]:
    """One run's final evaluation (and training summaries) as the report reads it."""
    res = read_result(d)
    metrics = dict(res["metrics"])
    if train is not None:
        metrics.update({k: train[k] for k in TRAIN_KEYS})
    return {
        "seed": seed,
        "dir": d,
        "metrics": metrics,
        "stderr": res.get("stderr", {}),
        "per_image": _read_per_image(d),
        "unavailable": res.get("unavailable", {}),
    }


def _row_runs(exp: _Experiment, names: Sequence[str]) -> dict[str, list[tuple[int | None, Path]]]:
    """The evaluated runs of every row (rows without one are left out)."""
    found = {n: [(s, d) for s, d in exp.runs(n) if (d / EVAL_JSON).is_file()] for n in names}
    return {n: r for n, r in found.items() if r}


def collect(exp: _Experiment) -> dict[str, Any]:
    """Everything the report shows, from the files the runs wrote: per row its runs (one per RL seed; the
    baseline: one without), the means over them, and per run its curves."""
    from ..rl.logs import read_log

    cfg = exp.cfg
    runs = _row_runs(exp, [n for n in ROW_NAMES if n in cfg.rows or n == "baseline"])
    osc_from = {s: _last_transition(exp.run_dir("finpercep_ccl", s)) for s in cfg.rl_seeds()}
    needed = {
        (s, int(r["stage"]), int(r["step"])) for rr in runs.values() for s, d in rr if s is not None
        for r in read_log(d)
    }
    reference = reference_rewards(exp, needed)
    base_curve = _read_curve(exp.row_dir("baseline") / CURVE_NAME)[:1]
    rows, curves = [], {}
    for n, rr in runs.items():
        records, per_seed = [], []
        for s, d in rr:
            train = None
            if s is not None:
                ref = {(st, sp): v for (se, st, sp), v in reference.items() if se == s}
                train = training_stats(d, cfg.rolling_window, osc_from.get(s, 0), ref)
            records.append(_run_record(d, s, train))
            ev = base_curve + ([p for p in _read_curve(d / CURVE_NAME) if p["step"] > 0] if train else [])
            per_seed.append({"seed": s, "eval": ev, "train": train})
        curves[n] = {**per_seed[0], "other_seeds": {str(c["seed"]): c for c in per_seed[1:]}}
        rows.append({"row": n, "label": row_spec(n).label, "runs": records, "metrics": seed_means(records),
                     "stderr": crop_stderr(records)})
    saved = rows[0]["runs"][0]["unavailable"] if rows else {}
    unavailable = {k: saved[k] for k in (*cfg.iqa, "niqe") if k in saved}
    iqa_present = [m for m in cfg.iqa if m not in unavailable]
    return {
        "rows": rows,
        "curves": curves,
        "columns": table_columns(exp.n_stage, iqa_present),
        "unavailable": unavailable,
        "osc_from": osc_from.get(cfg.seed, 0),
        "n_stage": exp.n_stage,
        "seeds": cfg.rl_seeds(),
        "n_seeds": cfg.seeds,
    }


def _read_per_image(d: Path) -> list[dict[str, Any]]:
    import csv

    p = d / "per_image.csv"
    if not p.is_file():
        return []
    with open(p, newline="") as f:
        return [{k: (v if k == "pair" else float(v)) for k, v in r.items()} for r in csv.DictReader(f)]


def _crops(
    exp: _Experiment, data: Mapping[str, Any], folder: Path
) -> list[list[tuple[str, str, str | None]]]:
    """For each shown pair: (title, image file, heatmap file) per column, files relative to the report."""
    from ..rm.score import heat_overlay

    folder.mkdir(parents=True, exist_ok=True)
    shown: list[list[tuple[str, str, str | None]]] = []
    first_runs = {r["row"]: r["runs"][0]["dir"] for r in data["rows"]}
    for i, pair in enumerate(exp.pairs[: exp.cfg.report_crops]):
        cells: list[tuple[str, str, str | None]] = []
        lr_up = np.repeat(np.repeat(pair.lr, exp.scale, axis=0), exp.scale, axis=1)
        images: list[tuple[str, str, np.ndarray]] = [("lr", "LR (nearest)", lr_up), ("hr", "HR", pair.hr)]
        for n, d in first_runs.items():
            p = d / "images" / f"{pair.name}_sr.png"
            if p.is_file():
                images.append((n, row_spec(n).label, load_image(p)))
        for key, title, img in images:
            fname = f"pair{i}_{key}.png"
            save_png(folder / fname, img)
            heat = None
            if key != "lr":
                with torch.no_grad():
                    m = exp.rmn(torch.from_numpy(img).permute(2, 0, 1)[None].float()).map[0, 0].numpy()
                heat = f"pair{i}_{key}_map.png"
                save_png(folder / heat, heat_overlay(img, m))
                title = f"{title} (RM_{exp.n_stage} map mean {float(m.mean()):.3f})"
            cells.append((title, f"{folder.name}/{fname}", f"{folder.name}/{heat}" if heat else None))
        shown.append(cells)
    return shown


def _setup_html(exp: _Experiment, judge_hr: str) -> str:
    """The report's paragraph on what was run."""
    cfg = exp.cfg
    seeds = cfg.rl_seeds()
    seed_text = f"seed {seeds[0]}"
    if len(seeds) > 1:
        seed_text = f"RL seeds {seeds[0]} … {seeds[-1]} ({len(seeds)} runs)"
    return f"""<p>{len(exp.pairs)} held-out evaluation crops from {html.escape(", ".join(cfg.eval_photos))}
({cfg.eval_lr_size} px LR, x{exp.scale}, {html.escape(cfg.degradation)} degradation, seed {cfg.eval_seed});
{cfg.steps} RL steps ({html.escape(cfg.algorithm)}, batch {cfg.batch_size}, {seed_text}) per RL row;
reward model {html.escape(str(cfg.rm_dir()))} (RM_0 … RM_{exp.n_stage});
held-out judge {html.escape(str(exp.judge_dir))} (it scores the HR crops {judge_hr});
artifact measure: share of pixels with M_gt(output, HR) &gt; {cfg.tau}.</p>"""


def write_report(exp: _Experiment) -> Path:
    """Write table.md, table.json, curves.png, curves.json and report.html into ``out/report``."""
    rep = exp.out / REPORT_DIR
    rep.mkdir(parents=True, exist_ok=True)
    data = collect(exp)
    found = findings(data)
    atomic_write_json(rep / "table.json", json_safe(table_json(data, found)))
    atomic_write_text(rep / "table.md", table_markdown(data))
    atomic_write_json(rep / "curves.json", json_safe(data["curves"]))
    plot_experiment_curves(data, rep / "curves.png", exp.cfg.rolling_window)
    crops_dir = rep / "crops"
    if crops_dir.is_dir():
        shutil.rmtree(crops_dir)
    shown = _crops(exp, data, crops_dir)
    judge_hr = fmt(data["rows"][0]["metrics"].get("judge_hr") if data["rows"] else None, 4)
    setup = _setup_html(exp, judge_hr)
    title = f"Reward hacking in RL fine-tuning of {exp.cfg.generator}"
    path = rep / "report.html"
    atomic_write_text(path, html_page(title, setup, data, found, shown))
    logger.info("report: %s", path)
    return path


__all__ = ["ROWS", "ROW_NAMES", "TRAIN_PHOTOS", "HackingConfig", "RowSpec", "run_hacking"]
