"""The reward-hacking experiment: one pretrained generator, four rows, one table, curves and a report.

``finpercep experiment hacking --reward-model RM_DIR --judge JUDGE_DIR --out DIR`` and
``run_hacking(HackingConfig(...))`` run the same code. From the same generator, data, step count and seed:

* ``baseline``       -- the pretrained generator, no RL;
* ``global``         -- RL against the global IQA reward RM_0 (curriculum ``global``);
* ``finpercep``      -- RL against the full FinPercep-RM RM_N from the first step (curriculum ``full``);
* ``finpercep_ccl``  -- RL with the co-evolutionary curriculum RM_0 -> ... -> RM_N (curriculum ``ccl``).

Every RL row is evaluated every ``eval_every`` steps on the first ``curve_pairs`` evaluation pairs (held-out
judge score and artifact measure) and, at the end, on all pairs with every metric of
:mod:`finpercep.eval`, plus the scores of RM_0 (the global reward's own score) and RM_N. Evaluation pairs
come from photos RL never trains on (:data:`~finpercep.eval.evaluate.EVAL_PHOTOS`).

The per-step training reward moves with the content of each batch far more than with learning. Every row
sees the same batches and the same policy noise (both derive from the seed and the step), so the report
also scores the *pretrained* generator on exactly those samples with the same reward-model stage: the
row's *gain* is its reward minus that reference (0 at step 1), and the oscillation measure is the rolling
std of the gain, over the steps after the curriculum's last transition where the ``full`` and ``ccl`` rows
both train against RM_N (the raw reward's rolling std is reported too). Output::

    hacking_config.json              what was run (a re-run with other settings is refused)
    photos/train/                    the embedded training photos (RL never sees the evaluation photos)
    rows/<row>/                      the RL run (finpercep rl train layout), curve.json, eval.json,
                                     per_image.csv, images/ (the report's crops)
    report/report.html               findings, table, curves, crops with FinPercep heatmaps
    report/table.md table.json       the paper-style table (the same numbers)
    report/curves.png curves.json    training reward, its gain and the gain's rolling std, judge, artifacts
    reference_rewards.json           the pretrained generator's reward per (stage, step)

Re-running the same command skips finished rows (those with ``eval.json``) and resumes an interrupted RL
run where it stopped.
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
from ..eval.pyiqa_metrics import IQA_NAMES, IQAScorer, iqa_spec
from ..io import atomic_write_json, atomic_write_text, load_image, save_png
from ..rm.model import RewardModel, default_checkpoint_dir, resolve_checkpoint, stage_dirs

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
_RESUME_IGNORES = {"out", "rows", "threads", "progress", "iqa_weights", "report_crops"}


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
    seed: int = option(0, help="seed of every RL row (data, policy noise)")
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

    def rl_config(self, row: RowSpec, out: Path, hr_folders: tuple[str, ...]) -> Any:
        """The :class:`~finpercep.rl.train.RLConfig` of an RL row."""
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
            seed=self.seed,
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

    def curve_eval(self, net: torch.nn.Module, step: int) -> dict[str, float]:
        res = evaluate(net, self.pairs[: self.cfg.curve_pairs], self.judge, tau=self.cfg.tau)
        return _curve_point(step, res)

    def final_eval(self, net: torch.nn.Module, row: RowSpec) -> Path:
        res = evaluate(
            net,
            self.pairs,
            self.judge,
            scorers=self.scorers,
            iqa=self.iqa,
            tau=self.cfg.tau,
            keep_outputs=self.cfg.report_crops,
        )
        return write_result(res, self.row_dir(row.name), {"row": row.name, "label": row.label}, self.pairs)

    def run_baseline(self) -> None:
        from ..rl.generators import build_generator

        d = self.row_dir("baseline")
        curve = d / CURVE_NAME
        if (d / EVAL_JSON).is_file() and curve.is_file():
            logger.info("baseline: finished earlier; skipped")
            return
        net = build_generator(self.cfg.generator).net
        atomic_write_json(curve, [self.curve_eval(net, 0)])
        self.final_eval(net, row_spec("baseline"))

    def run_rl_row(self, row: RowSpec, hr_folders: tuple[str, ...]) -> None:
        from ..rl.generators import build_generator
        from ..rl.train import STATE_NAME, train

        d = self.row_dir(row.name)
        if (d / EVAL_JSON).is_file():
            logger.info("%s: finished earlier; skipped", row.name)
            return
        rl_cfg = self.cfg.rl_config(row, d, hr_folders)
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
                "%s: RL with curriculum %s for %d steps -> %s", row.name, row.curriculum, self.cfg.steps, d
            )
            train(rl_cfg, on_step=on_step)
        self.final_eval(build_generator(str(d)).net, row)


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
    for name in cfg.rows:
        row = row_spec(name)
        if row.curriculum is not None:
            exp.run_rl_row(row, hr_folders)
    return write_report(exp)


# --------------------------------------------------------------------------------------------------
# table, curves, findings, report


@dataclass(frozen=True)
class Column:
    """One table column: a key in a row's metrics, its header, decimals and direction."""

    key: str
    header: str
    decimals: int
    higher_better: bool | None


def table_columns(n_stage: int, iqa_names: Sequence[str]) -> list[Column]:
    cols = [
        Column("psnr", "PSNR↑", 2, True),
        Column("ssim", "SSIM↑", 4, True),
        Column("artifact_frac", "artifact frac↓", 4, False),
        Column("artifact_mean", "artifact mean↓", 4, False),
        Column("judge", "judge↑", 4, True),
        Column("score:RM_0", "RM_0 score", 4, True),
        Column(f"score:RM_{n_stage}", f"RM_{n_stage} score", 4, True),
        Column("train_reward", "final train reward", 4, None),
        Column("train_gain", "final reward gain", 4, True),
        Column("reward_osc", "gain rolling std", 4, False),
    ]
    for name in iqa_names:
        spec = iqa_spec(name)
        cols.append(Column(name, spec.label + ("↓" if spec.lower_better else "↑"), 4, not spec.lower_better))
    return cols


REFERENCE_NAME = "reference_rewards.json"


def reference_rewards(exp: _Experiment, needed: set[tuple[int, int]]) -> dict[tuple[int, int], float]:
    """Reward the *pretrained* generator gets at ``(stage, step)``: the same batch, the same policy noise and
    the same reward model as the RL row at that step (cached in ``OUT/reference_rewards.json``).

    An RL row's logged reward minus this is its gain; batch content, which moves the raw reward from step to
    step far more than learning does, cancels out. The gain is exactly 0 at step 1.
    """
    from ..rl.data import PairSource
    from ..rl.generators import GaussianPolicy, build_generator
    from ..rl.rewards import StagedRMRewards
    from ..rl.train import noise_generators

    cfg = exp.cfg
    path = exp.out / REFERENCE_NAME
    saved = json.loads(path.read_text()) if path.is_file() else {}
    cache: dict[tuple[int, int], float] = {}
    for key, value in saved.items():
        stage_s, step_s = key.split(":")
        cache[(int(stage_s), int(step_s))] = value
    todo = sorted(needed - set(cache), key=lambda t: (t[1], t[0]))
    if todo:
        loaded = build_generator(cfg.generator)
        policy = GaussianPolicy(loaded.net, loaded.scale, cfg.policy_std).eval()
        data = PairSource(loaded.scale, cfg.lr_size, cfg.seed, exp.hr_folders, degradation=cfg.degradation)
        rewards = StagedRMRewards(cfg.rm_dir(), cfg.map_penalty)
        by_stage: dict[int, list[int]] = {}
        for stage, step in todo:
            by_stage.setdefault(stage, []).append(step)
        logger.info("reference rewards of the pretrained generator at %d (stage, step) points", len(todo))
        with torch.no_grad():
            for stage, steps in sorted(by_stage.items()):
                reward = rewards[stage]
                for step in steps:
                    idx = range(cfg.batch_size)
                    lr, hr = data.batch(step - 1, idx)
                    if cfg.algorithm == "grpo":
                        gens = noise_generators(cfg.seed, step - 1, idx, torch.device("cpu"))
                        sr = policy.rollout(lr, cfg.group_size, gens).sr
                        g = cfg.group_size
                        value = reward(sr, lr.repeat_interleave(g, 0), hr.repeat_interleave(g, 0))
                    else:
                        value = reward(policy(lr).clamp(0, 1), lr, hr)
                    cache[(stage, step)] = float(value.float().mean())
        atomic_write_json(path, {f"{k[0]}:{k[1]}": v for k, v in sorted(cache.items())})
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


def collect(exp: _Experiment) -> dict[str, Any]:
    """Everything the report shows, from the files the run wrote."""
    cfg = exp.cfg
    names = [n for n in ROW_NAMES if n in cfg.rows or n == "baseline"]
    names = [n for n in names if (exp.row_dir(n) / EVAL_JSON).is_file()]
    ccl_dir = exp.row_dir("finpercep_ccl")
    osc_from = _last_transition(ccl_dir) if ccl_dir.is_dir() else 0
    from ..rl.logs import read_log

    needed = {
        (int(r["stage"]), int(r["step"]))
        for n in names
        if row_spec(n).curriculum
        for r in read_log(exp.row_dir(n))
    }
    reference = reference_rewards(exp, needed)
    rows, curves = [], {}
    for n in names:
        d = exp.row_dir(n)
        res = read_result(d)
        metrics = dict(res["metrics"])
        train = training_stats(d, cfg.rolling_window, osc_from, reference) if row_spec(n).curriculum else None
        if train is not None:
            for k in ("train_reward", "train_gain", "reward_osc", "reward_osc_raw"):
                metrics[k] = train[k]
        base_curve = _read_curve(exp.row_dir("baseline") / CURVE_NAME)[:1]
        curve = _read_curve(d / CURVE_NAME)
        curves[n] = {
            "eval": base_curve + [p for p in curve if p["step"] > 0] if train else base_curve,
            "train": train,
        }
        rows.append(
            {
                "row": n,
                "label": row_spec(n).label,
                "metrics": metrics,
                "stderr": res.get("stderr", {}),
                "per_image": _read_per_image(d),
            }
        )
    saved = read_result(exp.row_dir(names[0])).get("unavailable", {}) if names else {}
    unavailable = {k: saved[k] for k in cfg.iqa if k in saved}
    iqa_present = [m for m in cfg.iqa if m not in unavailable]
    columns = table_columns(exp.n_stage, iqa_present)
    return {
        "rows": rows,
        "curves": curves,
        "columns": columns,
        "unavailable": unavailable,
        "osc_from": osc_from,
        "n_stage": exp.n_stage,
    }


def _read_per_image(d: Path) -> list[dict[str, Any]]:
    import csv

    p = d / "per_image.csv"
    if not p.is_file():
        return []
    with open(p, newline="") as f:
        return [{k: (v if k == "pair" else float(v)) for k, v in r.items()} for r in csv.DictReader(f)]


def fmt(value: Any, decimals: int) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.{decimals}f}"


def table_markdown(data: Mapping[str, Any]) -> str:
    """The paper-style table as Markdown (values rounded as in ``table.json``'s ``decimals``)."""
    cols: list[Column] = data["columns"]
    lines = [
        "| method | " + " | ".join(c.header for c in cols) + " |",
        "|---|" + "|".join("---:" for _ in cols) + "|",
    ]
    for r in data["rows"]:
        cells = [fmt(r["metrics"].get(c.key), c.decimals) for c in cols]
        lines.append(f"| {r['label']} | " + " | ".join(cells) + " |")
    notes = [f"- {k}: unavailable: {v}" for k, v in data["unavailable"].items()]
    return "\n".join(lines) + ("\n\n" + "\n".join(notes) if notes else "") + "\n"


def paired_diff(a: Mapping[str, Any], b: Mapping[str, Any], key: str) -> tuple[float, float]:
    """Mean and standard error of ``a - b`` over the evaluation pairs (both rows see the same pairs)."""
    pa = {r["pair"]: r.get(key) for r in a["per_image"]}
    d = [
        float(pa[r["pair"]]) - float(r[key])
        for r in b["per_image"]
        if r.get(key) is not None and pa.get(r["pair"]) is not None
    ]
    if not d:
        return math.nan, math.nan
    arr = np.asarray(d)
    se = float(arr.std(ddof=1) / math.sqrt(len(arr))) if len(arr) > 1 else math.nan
    return float(arr.mean()), se


def _pm(a: Mapping[str, Any], b: Mapping[str, Any], key: str) -> str:
    """``"+0.0123 ± 0.0045"`` (paired mean difference ± standard error), flagged when within two errors."""
    m, se = paired_diff(a, b, key)
    noise = ", within noise" if math.isfinite(se) and abs(m) < 2 * se else ""
    return f"{m:+.4g} ± {se:.2g}{noise}"


def _clear(a: Mapping[str, Any], b: Mapping[str, Any], key: str, sign: float) -> bool:
    """Whether ``sign * (a - b)`` is positive by more than two standard errors (paired over the crops)."""
    m, se = paired_diff(a, b, key)
    return bool(math.isfinite(m) and sign * m > 2 * (se if math.isfinite(se) else 0.0))


def _metric(r: Mapping[str, Any], k: str) -> float:
    v = r["metrics"].get(k)
    return math.nan if v is None else float(v)


def _finding_hacking(b: Mapping[str, Any], g: Mapping[str, Any]) -> dict[str, Any]:
    m = _metric
    own_up = m(g, "score:RM_0") > m(b, "score:RM_0")
    art_up = m(g, "artifact_frac") > m(b, "artifact_frac")
    psnr_down = m(g, "psnr") < m(b, "psnr")
    ok = own_up and (art_up or psnr_down)
    clear = _clear(g, b, "score:RM_0", 1) and (_clear(g, b, "artifact_frac", 1) or _clear(g, b, "psnr", -1))
    text = (
        f"With the global reward, RM_0's own score went {m(b, 'score:RM_0'):.4f} → {m(g, 'score:RM_0'):.4f} "
        f"({_pm(g, b, 'score:RM_0')}), the artifact fraction {m(b, 'artifact_frac'):.4f} → "
        f"{m(g, 'artifact_frac'):.4f} ({_pm(g, b, 'artifact_frac')}) and PSNR {m(b, 'psnr'):.2f} → "
        f"{m(g, 'psnr'):.2f} dB ({_pm(g, b, 'psnr')}), against the baseline. "
    )
    if ok:
        text += "The reward rose while fidelity to the HR image fell: reward hacking"
        text += "." if clear else ", though only within the noise of this evaluation."
    elif not own_up:
        text += "RL did not raise the global reward on the held-out crops, so there was nothing to hack."
    else:
        text += "The reward rose without more artifacts or lower PSNR: no hacking at this scale."
    return {"finding": "global reward hacking", "reproduced": ok, "clear": ok and clear, "text": text}


OSC_RATIO = 1.2
"""How much larger the reward-gain std without CCL must be than with it to count as oscillation."""


def _finding_oscillation(
    f: Mapping[str, Any], c: Mapping[str, Any], osc_from: int, n_stage: int
) -> dict[str, Any]:
    fo, co = _metric(f, "reward_osc"), _metric(c, "reward_osc")
    ratio = fo / co if math.isfinite(fo) and math.isfinite(co) and co > 0 else math.nan
    # a difference of a few percent in a std over one run is no evidence either way
    ok = None if math.isnan(ratio) else ratio >= OSC_RATIO
    text = (
        f"Mean rolling std of the per-step reward gain over the pretrained generator (same batch, policy "
        f"noise and reward model, so batch content cancels) after step {osc_from}, where both rows train "
        f"against RM_{n_stage}: {fo:.4g} without CCL, {co:.4g} with CCL (raw reward: "
        f"{_metric(f, 'reward_osc_raw'):.4g} and {_metric(c, 'reward_osc_raw'):.4g}). "
    )
    if ok is None:
        text += "Not measurable: a training log is missing."
    elif ok:
        text += f"Training against the full FinPercep-RM from the start fluctuates more ({ratio:.2f}x)."
    elif ratio > 1.0:
        text += (
            f"The run without CCL fluctuates only {ratio:.2f}x as much, less than the {OSC_RATIO}x this "
            "report asks for: no clear oscillation at this scale."
        )
    else:
        text += "The run without CCL did not fluctuate more by this measure."
    return {"finding": "FinPercep-RM without CCL oscillates", "reproduced": ok, "ratio": ratio, "text": text}


def _finding_ccl(
    c: Mapping[str, Any], g: Mapping[str, Any], others: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    m = _metric
    judge_ok = m(c, "judge") > m(g, "judge")
    art_ok = m(c, "artifact_frac") < m(g, "artifact_frac")
    best_judge = all(m(c, "judge") >= m(r, "judge") for r in others)
    best_art = all(m(c, "artifact_frac") <= m(r, "artifact_frac") for r in others)
    text = (
        f"FinPercep-RM + CCL against the global reward: judge {m(c, 'judge'):.4f} vs {m(g, 'judge'):.4f} "
        f"({_pm(c, g, 'judge')}), artifact fraction {m(c, 'artifact_frac'):.4f} vs "
        f"{m(g, 'artifact_frac'):.4f} "
        f"({_pm(c, g, 'artifact_frac')}). "
    )
    clear = _clear(c, g, "judge", 1) and _clear(c, g, "artifact_frac", -1)
    lost = [x for x, won in (("the judge", judge_ok), ("the artifact measure", art_ok)) if not won]
    if lost:
        text += f"It does not beat it on {' and '.join(lost)}. "
    else:
        text += "It beats it on both" + (". " if clear else ", though not by two standard errors on both. ")
    text += (
        f"Among all rows it is {'the best' if best_judge else 'not the best'} on the judge and "
        f"{'the best' if best_art else 'not the best'} on the artifact measure."
    )
    return {
        "finding": "FinPercep-RM + CCL best on judge and artifacts",
        "reproduced": judge_ok and art_ok,
        "clear": judge_ok and art_ok and clear,
        "best_of_all_rows": best_judge and best_art,
        "text": text,
    }


def findings(data: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The paper's three findings, each with ``reproduced`` (True / False / None = not measurable) and a text
    written from the measured numbers."""
    rows = {r["row"]: r for r in data["rows"]}
    b, g, f, c = (rows.get(k) for k in ("baseline", "global", "finpercep", "finpercep_ccl"))
    out: list[dict[str, Any]] = []
    if b and g:
        out.append(_finding_hacking(b, g))
    if f and c:
        out.append(_finding_oscillation(f, c, data["osc_from"], data["n_stage"]))
    if c and g:
        out.append(_finding_ccl(c, g, [r for k, r in rows.items() if k != "finpercep_ccl"]))
    if out:
        n_pairs = len(next(iter(rows.values()))["per_image"])
        note = (
            f"Differences are paired over the same {n_pairs} held-out evaluation crops (mean ± standard "
            "error; 'within noise' marks differences smaller than two standard errors). Verdicts compare "
            "means only."
        )
        out.append({"finding": "note", "reproduced": None, "text": note})
    return out


def table_json(data: Mapping[str, Any], found: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    cols: list[Column] = data["columns"]
    return {
        "columns": [
            {"key": c.key, "header": c.header, "decimals": c.decimals, "higher_better": c.higher_better}
            for c in cols
        ],
        "rows": [
            {
                "row": r["row"],
                "label": r["label"],
                "metrics": {c.key: r["metrics"].get(c.key) for c in cols},
                "all_metrics": r["metrics"],
                "stderr": r["stderr"],
            }
            for r in data["rows"]
        ],
        "unavailable": data["unavailable"],
        "findings": list(found),
    }


def plot_experiment_curves(data: Mapping[str, Any], path: Path, window: int) -> Path:
    """Training reward, its gain over the pretrained generator, the gain's rolling std, judge score and
    artifact measure per step, one line per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..rl.logs import moving_average

    fig, axes = plt.subplots(5, 1, figsize=(8, 12), sharex=True)
    fig.subplots_adjust(left=0.13, right=0.98, top=0.98, bottom=0.05, hspace=0.12)
    colors = {"baseline": "k", "global": "tab:red", "finpercep": "tab:orange", "finpercep_ccl": "tab:blue"}
    for name, cur in data["curves"].items():
        label, color = row_spec(name).label, colors.get(name)
        tr = cur["train"]
        if tr is not None and tr["steps"]:
            axes[0].plot(tr["steps"], tr["reward"], color=color, lw=0.6, alpha=0.3)
            axes[0].plot(tr["steps"], moving_average(tr["reward"], window), color=color, lw=1.4, label=label)
            axes[1].plot(tr["steps"], tr["gain"], color=color, lw=0.6, alpha=0.3)
            axes[1].plot(tr["steps"], moving_average(tr["gain"], window), color=color, lw=1.4, label=label)
            axes[2].plot(tr["steps"], tr["rolling_std"], color=color, lw=1.2, label=label)
        ev = cur["eval"]
        if name == "baseline":
            for ax, key in ((axes[3], "judge"), (axes[4], "artifact_frac")):
                if ev and key in ev[0]:
                    ax.axhline(ev[0][key], color=color, ls="--", lw=1, label=label)
        else:
            steps = [p["step"] for p in ev]
            for ax, key in ((axes[3], "judge"), (axes[4], "artifact_frac")):
                ax.plot(steps, [p.get(key, math.nan) for p in ev], marker="o", ms=3, color=color, label=label)
    if data["osc_from"]:
        for ax in axes:
            ax.axvline(data["osc_from"] + 0.5, color="gray", ls=":", lw=1)
    labels = ("training reward\n(own RM, per step)", "reward gain over\npretrained (same batch)",
              f"rolling std of gain\n({window} steps)", "held-out judge\n(curve crops)",
              "artifact fraction\n(M_gt > tau)")
    for ax, ylabel in zip(axes, labels, strict=True):
        ax.set_ylabel(ylabel, fontsize=9)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("RL step")
    axes[3].legend(fontsize=7, loc="best")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    tmp.replace(path)
    return path


def _crops(
    exp: _Experiment, data: Mapping[str, Any], folder: Path
) -> list[list[tuple[str, str, str | None]]]:
    """For each shown pair: (title, image file, heatmap file) per column, files relative to the report."""
    from ..rm.score import heat_overlay

    folder.mkdir(parents=True, exist_ok=True)
    shown: list[list[tuple[str, str, str | None]]] = []
    names = [r["row"] for r in data["rows"]]
    for i, pair in enumerate(exp.pairs[: exp.cfg.report_crops]):
        cells: list[tuple[str, str, str | None]] = []
        lr_up = np.repeat(np.repeat(pair.lr, exp.scale, axis=0), exp.scale, axis=1)
        images: list[tuple[str, str, np.ndarray]] = [("lr", "LR (nearest)", lr_up), ("hr", "HR", pair.hr)]
        for n in names:
            p = exp.row_dir(n) / "images" / f"{pair.name}_sr.png"
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


def _html_table(data: Mapping[str, Any]) -> str:
    cols: list[Column] = data["columns"]
    head = "".join(f"<th>{html.escape(c.header)}</th>" for c in cols)
    body = []
    for r in data["rows"]:
        cells = "".join(f"<td>{fmt(r['metrics'].get(c.key), c.decimals)}</td>" for c in cols)
        body.append(f"<tr><th>{html.escape(r['label'])}</th>{cells}</tr>")
    return f"<table><tr><th>method</th>{head}</tr>{''.join(body)}</table>"


def write_report(exp: _Experiment) -> Path:
    """Write table.md, table.json, curves.png, curves.json and report.html into ``out/report``."""
    cfg = exp.cfg
    rep = exp.out / REPORT_DIR
    rep.mkdir(parents=True, exist_ok=True)
    data = collect(exp)
    found = findings(data)
    atomic_write_json(rep / "table.json", json_safe(table_json(data, found)))
    atomic_write_text(rep / "table.md", table_markdown(data))
    atomic_write_json(rep / "curves.json", json_safe(data["curves"]))
    plot_experiment_curves(data, rep / "curves.png", cfg.rolling_window)
    crops_dir = rep / "crops"
    if crops_dir.is_dir():
        shutil.rmtree(crops_dir)
    shown = _crops(exp, data, crops_dir)
    verdict = {True: "reproduced", False: "not reproduced", None: ""}
    items = "".join(
        f"<li><b>{html.escape(x['finding'])}</b>"
        f"{' — ' + verdict[x['reproduced']] if x['reproduced'] is not None else ''}: "
        f"{html.escape(x['text'])}</li>"
        for x in found
    )
    grids = []
    for cells in shown:
        tds = "".join(
            f"<td><div class='t'>{html.escape(t)}</div><img src='{html.escape(img)}'>"
            + (f"<br><img src='{html.escape(h)}'>" if h else "")
            + "</td>"
            for t, img, h in cells
        )
        grids.append(f"<table class='crops'><tr>{tds}</tr></table>")
    unavailable = "".join(
        f"<li>{html.escape(k)}: unavailable: {html.escape(v)}</li>" for k, v in data["unavailable"].items()
    )
    judge_hr = fmt(data["rows"][0]["metrics"].get("judge_hr") if data["rows"] else None, 4)
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>FinPercep reward-hacking experiment</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1400px}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}
.crops td{{text-align:center;vertical-align:top}}
.crops img{{width:192px;image-rendering:pixelated}} .t{{font-size:11px;max-width:192px}}</style></head><body>
<h1>Reward hacking in RL fine-tuning of {html.escape(cfg.generator)}</h1>
<p>{len(exp.pairs)} held-out evaluation crops from {html.escape(", ".join(cfg.eval_photos))}
({cfg.eval_lr_size} px LR, x{exp.scale}, {html.escape(cfg.degradation)} degradation, seed {cfg.eval_seed});
{cfg.steps} RL steps ({html.escape(cfg.algorithm)}, batch {cfg.batch_size}, seed {cfg.seed}) per RL row;
reward model {html.escape(str(cfg.rm_dir()))} (RM_0 … RM_{exp.n_stage});
held-out judge {html.escape(str(exp.judge_dir))} (it scores the HR crops {judge_hr});
artifact measure: share of pixels with M_gt(output, HR) &gt; {cfg.tau}.</p>
<h2>Findings</h2><ul>{items}</ul>
<h2>Table</h2>{_html_table(data)}<ul>{unavailable}</ul>
<p>Same numbers: <a href="table.md">table.md</a>, <a href="table.json">table.json</a>.</p>
<h2>Curves</h2><img src="curves.png"><p>Data: <a href="curves.json">curves.json</a>.</p>
<h2>Crops</h2><p>Top: output; bottom: its RM_{exp.n_stage} (FinPercep) degradation map (brighter = more
degraded).</p>{"".join(grids)}
</body></html>
"""
    path = rep / "report.html"
    atomic_write_text(path, page)
    logger.info("report: %s", path)
    return path


__all__ = ["ROWS", "ROW_NAMES", "TRAIN_PHOTOS", "HackingConfig", "RowSpec", "run_hacking"]
