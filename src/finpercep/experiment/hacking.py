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

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..data.photos import embedded_photos
from ..errors import FinPercepError
from ..eval.evaluate import EVAL_JSON, degraded_pairs, evaluate, read_result, write_result
from ..eval.pyiqa_metrics import IQAScorer
from ..io import atomic_write_json, save_png
from ..rm.model import RewardModel, resolve_checkpoint, stage_dirs
from .config import ROW_NAMES, ROWS, TRAIN_PHOTOS, HackingConfig, RLSettings, RowSpec, check_config, row_spec

if TYPE_CHECKING:
    from ..rl.train import RLConfig

logger = logging.getLogger(__name__)

CURVE_NAME = "curve.json"
CURVE_KEYS = ("judge", "artifact_frac", "artifact_mean", "psnr")
SEED_DIR = "seed_{}"
"""Folder of one RL seed's run below ``rows/<row>/``."""


def export_train_photos(names: Sequence[str], folder: Path) -> Path:
    """Write the embedded photos ``names`` as PNG into ``folder`` (once), so RL can train on just them."""
    for photo in embedded_photos(names):
        path = folder / f"{photo.name}.png"
        if not path.is_file():
            save_png(path, photo.load())
    return folder


def read_curve(path: Path) -> list[dict[str, float]]:
    return json.loads(path.read_text()) if path.is_file() else []


def legacy_seed(row_dir: Path) -> int | None:
    """The RL seed of a run written straight into ``rows/<row>/`` (before seeds existed), else None."""
    from ..rl.policy import is_run_dir, run_config

    return run_config(row_dir).seed if is_run_dir(row_dir) else None


def evaluated(d: Path) -> bool:
    """Whether ``d`` holds a final evaluation with NIQE (measured or unavailable with the reason)."""
    if not (d / EVAL_JSON).is_file():
        return False
    res = read_result(d)
    return "niqe" in res.get("metrics", {}) or "niqe" in res.get("unavailable", {})


class Experiment:
    """The reward models, judge and evaluation pairs of one :func:`run_hacking` call, and its folders."""

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
        self.scale = build_generator(cfg.generator).scale
        self.pairs = degraded_pairs(
            embedded_photos(cfg.eval_photos),
            cfg.num_pairs,
            cfg.eval_lr_size,
            self.scale,
            cfg.eval_seed,
            cfg.degradation,
        )
        self.iqa = IQAScorer(cfg.iqa_weights, cfg.iqa) if cfg.iqa else None
        self.scorers = {"RM_0": self.rm0, f"RM_{self.n_stage}": self.rmn}
        self.hr_folders: tuple[str, ...] = cfg.hr_folders

    def build_judge(self, rm_dir: Path) -> Path:
        """A judge with the reward model's recipe on the judge photos and ``judge_seed`` (resumable)."""
        from ..eval.judge import JudgeConfig, build_judge, read_recipe

        cfg = self.cfg
        like = str(rm_dir) if read_recipe(rm_dir) is not None else None
        logger.info("building the held-out judge in %s (recipe: %s)", self.out / "judge", like or "defaults")
        judge_cfg = JudgeConfig(
            out=str(self.out / "judge"),
            num=cfg.judge_num,
            seed=cfg.judge_seed,
            like=like,
            threads=cfg.threads,
            progress=cfg.progress,
        )
        return build_judge(judge_cfg)

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

    def rl_config(self, row: RowSpec, seed: int) -> RLConfig:
        """The RLConfig of ``row``'s run with RL seed ``seed``."""
        return self.cfg.rl_config(row, self.run_dir(row.name, seed), self.hr_folders, seed)

    def curve_eval(self, net: torch.nn.Module, step: int) -> dict[str, float]:
        """A point of the curves: judge and artifacts of ``net`` on the first ``curve_pairs`` pairs."""
        res = evaluate(net, self.pairs[: self.cfg.curve_pairs], self.judge, tau=self.cfg.tau)
        return {"step": step, **{k: res.metrics[k] for k in CURVE_KEYS if k in res.metrics}}

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

    def run_rl_row(self, row: RowSpec, seed: int) -> None:
        """Train (or resume) and evaluate the run of ``row`` with RL seed ``seed``; its curve gets a point
        at every ``eval_every`` steps, from the resume point the run saved there."""
        from ..rl.policy import checkpoint_step, load_policy
        from ..rl.train import train

        d = self.run_dir(row.name, seed)
        if evaluated(d):
            logger.info("%s seed %d: finished earlier; skipped", row.name, seed)
            return
        rl_cfg = self.rl_config(row, seed)
        steps = self.cfg.rl.steps
        curve_path = d / CURVE_NAME
        done = checkpoint_step(d)
        curve = [p for p in read_curve(curve_path) if p["step"] <= done]
        at_checkpoint = done % self.cfg.eval_every == 0 or done == steps
        if done and at_checkpoint and all(p["step"] != done for p in curve):
            curve.append(self.curve_eval(load_policy(d, done).network, done))
        d.mkdir(parents=True, exist_ok=True)
        atomic_write_json(curve_path, curve)

        def on_step(step: int, row_log: dict[str, float]) -> None:
            if step % self.cfg.eval_every == 0 or step == steps:
                curve.append(self.curve_eval(load_policy(d, step).network, step))
                atomic_write_json(curve_path, curve)

        summary = d / "summary.json"
        if not (summary.is_file() and json.loads(summary.read_text()).get("steps") == steps):
            logger.info(
                "%s seed %d: RL with curriculum %s for %d steps -> %s",
                row.name,
                seed,
                row.curriculum,
                steps,
                d,
            )
            train(rl_cfg, on_step=on_step)
        self.final_eval(load_policy(d).network, row, d, seed)


def run_hacking(cfg: HackingConfig) -> Path:
    """Run (or resume) the experiment and return the path of ``report/report.html``."""
    from .report import write_report

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    check_config(out, cfg)
    exp = Experiment(cfg)
    exp.hr_folders = cfg.hr_folders or (str(export_train_photos(cfg.train_photos, out / "photos" / "train")),)
    exp.run_baseline()  # the curves' step-0 point and the reference of every comparison
    for seed in cfg.rl_seeds():  # seed by seed: a killed run leaves whole seeds behind it
        for name in cfg.rows:
            row = row_spec(name)
            if row.curriculum is not None:
                exp.run_rl_row(row, seed)
    return write_report(exp)


__all__ = [
    "ROWS",
    "ROW_NAMES",
    "TRAIN_PHOTOS",
    "Experiment",
    "HackingConfig",
    "RLSettings",
    "RowSpec",
    "run_hacking",
]
