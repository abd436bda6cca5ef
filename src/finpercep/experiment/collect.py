"""Everything the report shows, gathered from the files the experiment's runs wrote.

Per row: its runs (one per RL seed; the baseline: one without), their final evaluations, training
summaries and curves, and the means over the runs. The training reward of a run is read against the
pretrained generator's reward on the same batches and policy noise (:func:`reference_rewards`, cached in
``OUT/reference_rewards.json``): the difference is the run's *gain*.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..eval.evaluate import EVAL_JSON, read_result
from ..io import atomic_write_json
from .config import ROW_NAMES, row_spec
from .hacking import CURVE_NAME, Experiment, read_curve
from .stats import crop_stderr, seed_means
from .table import table_columns

logger = logging.getLogger(__name__)

REFERENCE_NAME = "reference_rewards.json"
TRAIN_KEYS = ("train_reward", "train_gain", "reward_osc", "reward_osc_raw")


def rolling_std(values: Sequence[float], window: int) -> list[float]:
    """Standard deviation of the last ``window`` values at every position (NaN until two are seen)."""
    out = []
    for i in range(len(values)):
        w = np.asarray(values[max(0, i - window + 1) : i + 1], dtype=np.float64)
        out.append(float(w.std(ddof=1)) if len(w) >= 2 else math.nan)
    return out


def _nanmean(values: Sequence[float]) -> float:
    v = [x for x in values if math.isfinite(x)]
    return float(np.mean(v)) if v else math.nan


def _read_reference(path: Path, default_seed: int) -> dict[tuple[int, int, int], float]:
    """``{(seed, stage, step): reward}``; keys ``stage:step`` (files from before seeds) are
    ``default_seed``'s."""
    cache: dict[tuple[int, int, int], float] = {}
    for key, value in (json.loads(path.read_text()) if path.is_file() else {}).items():
        parts = [int(x) for x in key.split(":")]
        seed, stage, step = parts if len(parts) == 3 else [default_seed, *parts]
        cache[(seed, stage, step)] = value
    return cache


def reference_rewards(
    exp: Experiment, needed: set[tuple[int, int, int]]
) -> dict[tuple[int, int, int], float]:
    """Reward the *pretrained* generator gets at ``(seed, stage, step)``: the same batch, the same policy
    noise and the same reward model as the RL run with that seed at that step
    (:func:`finpercep.rl.policy.reference_rewards`; cached in ``OUT/reference_rewards.json``).

    An RL run's logged reward minus this is its gain; batch content, which moves the raw reward from step to
    step far more than learning does, cancels out. The gain is exactly 0 at step 1.
    """
    from ..rl.policy import reference_rewards as pretrained_rewards

    path = exp.out / REFERENCE_NAME
    cache = _read_reference(path, exp.cfg.seed)
    todo: dict[int, list[tuple[int, int]]] = {}
    for seed, stage, step in needed - set(cache):
        todo.setdefault(seed, []).append((stage, step))
    for seed, points in sorted(todo.items()):
        logger.info("reference rewards of the pretrained generator: %d points of seed %d", len(points), seed)
        rl_cfg = exp.rl_config(row_spec("global"), seed)  # batches and noise are the same in every row
        for (stage, step), value in pretrained_rewards(rl_cfg, points).items():
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


def _read_per_image(d: Path) -> list[dict[str, Any]]:
    p = d / "per_image.csv"
    if not p.is_file():
        return []
    with open(p, newline="") as f:
        return [{k: (v if k == "pair" else float(v)) for k, v in r.items()} for r in csv.DictReader(f)]


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


def _row_runs(exp: Experiment, names: Sequence[str]) -> dict[str, list[tuple[int | None, Path]]]:
    """The evaluated runs of every row (rows without one are left out)."""
    found = {n: [(s, d) for s, d in exp.runs(n) if (d / EVAL_JSON).is_file()] for n in names}
    return {n: r for n, r in found.items() if r}


def collect(exp: Experiment) -> dict[str, Any]:
    """Everything the report shows, from the files the runs wrote: per row its runs (one per RL seed; the
    baseline: one without), the means over them, and per run its curves."""
    from ..rl.logs import read_log

    cfg = exp.cfg
    runs = _row_runs(exp, [n for n in ROW_NAMES if n in cfg.rows or n == "baseline"])
    osc_from = {s: _last_transition(exp.run_dir("finpercep_ccl", s)) for s in cfg.rl_seeds()}
    needed = {
        (s, int(r["stage"]), int(r["step"]))
        for rr in runs.values()
        for s, d in rr
        if s is not None
        for r in read_log(d)
    }
    reference = reference_rewards(exp, needed)
    base_curve = read_curve(exp.row_dir("baseline") / CURVE_NAME)[:1]
    rows, curves = [], {}
    for n, rr in runs.items():
        records, per_seed = [], []
        for s, d in rr:
            train = None
            if s is not None:
                ref = {(st, sp): v for (se, st, sp), v in reference.items() if se == s}
                train = training_stats(d, cfg.rolling_window, osc_from.get(s, 0), ref)
            records.append(_run_record(d, s, train))
            ev = base_curve + ([p for p in read_curve(d / CURVE_NAME) if p["step"] > 0] if train else [])
            per_seed.append({"seed": s, "eval": ev, "train": train})
        curves[n] = {**per_seed[0], "other_seeds": {str(c["seed"]): c for c in per_seed[1:]}}
        rows.append(
            {
                "row": n,
                "label": row_spec(n).label,
                "runs": records,
                "metrics": seed_means(records),
                "stderr": crop_stderr(records),
            }
        )
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
