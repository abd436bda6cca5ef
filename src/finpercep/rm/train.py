"""Staged reward-model training: RM_0, then grow and train RM_1 ... RM_N, saving every stage.

``finpercep rm train --data DIR --out DIR --stages N`` calls :func:`train`. For several processes run
``torchrun --standalone --nproc_per_node P -m finpercep.rm.train ...`` (DDP: gloo on CPU, NCCL on GPU);
on GPUs ``accelerate launch --multi_gpu --num_processes P -m finpercep.rm.train ...`` works too (it sets
the same ``RANK`` / ``WORLD_SIZE`` / ``MASTER_ADDR`` environment).

Output folder::

    train_config.json model_config.json split.json   what was run, on which photos
    state.pt                                         resume point, rewritten atomically after every epoch
    history.jsonl  curves.png                        per-epoch losses and validation metrics
    stage_<k>/config.json stage_<k>/model.safetensors  RM_k (load with RewardModel.from_pretrained)
    stage_<k>/metrics.json  summary.json             validation metrics of the saved epoch (vs. the HF-energy
                                                     baseline): the last, or with --keep best the best one

Re-running the same command continues after the last finished epoch. All randomness derives from
``seed`` and the (stage, epoch, step) position, so a resumed run is identical to an uninterrupted one.

The parts: :mod:`.train_config` (the options), :mod:`.prepare` (architecture, output folder, resume check),
:mod:`.train_data` (chains, anchors, epoch order), :mod:`.stage` (one stage's loop), :mod:`.objective`
(the loss), :mod:`.validate` (validation, ``--keep best``), :mod:`.evaluate` (the metrics) and
:mod:`.export`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import dist as D
from ..checkpoint import load_state
from ..config import add_arguments, from_args
from ..errors import FinPercepError
from ..io import atomic_write_json
from .dataset import Split, load_split
from .export import export_stages
from .model import RewardModel, RMConfig
from .prepare import init_stages, model_config_or_none, prepare_output, with_init_architecture
from .stage import STATE_NAME, Progress, Run, run_stage
from .train_config import RMTrainConfig
from .train_data import build_data

__all__ = ["RMTrainConfig", "main", "train"]

logger = logging.getLogger(__name__)


def _restore(model: RewardModel, split: Split, state: dict[str, Any] | None, out: Path) -> Progress:
    """The progress saved in ``state`` (None: a fresh run), with ``model`` grown to its stage and loaded."""
    progress = Progress(history=[], hardness=np.full(len(split.train_chains), np.nan), baseline=None)
    if state is None:
        return progress
    if state.get("hardness") is not None:
        progress.hardness = np.asarray(state["hardness"], np.float64)
    while model.stage < state["stage"]:
        model.grow()
    model.load_state_dict(state["model"])
    progress.history = state["history"]
    progress.baseline = state.get("baseline")
    logger.info(
        "resuming from %s: stage %d, %d epochs done", out / STATE_NAME, state["stage"], state["epoch"]
    )
    return progress


def _finished_before(cfg: RMTrainConfig, model: RewardModel, state: dict[str, Any]) -> bool:
    """Whether the stage of ``state`` was trained and saved before the restart; if so, ``model`` gets the
    weights RM_k was saved from (the kept epoch's or the weight average) to grow the next stage from."""
    stage = state["stage"]
    saved = (Path(cfg.out) / f"stage_{stage}" / "metrics.json").is_file()
    if state["epoch"] < cfg.epochs_for(stage) or not saved:
        return False
    if state.get("kept") is not None:
        model.load_state_dict(state["kept"]["weights"])
    elif state.get("ema") is not None:
        model.load_state_dict({**model.state_dict(), **state["ema"]})
    return True


def _write_summary(cfg: RMTrainConfig, progress: Progress) -> None:
    out = Path(cfg.out)
    summary = {
        f"stage_{k}": json.loads((out / f"stage_{k}" / "metrics.json").read_text()).get("val")
        for k in range(cfg.stages + 1)
    }
    atomic_write_json(out / "summary.json", {"stages": summary, "baseline": progress.baseline})


def train(cfg: RMTrainConfig, model_cfg: RMConfig | None = None) -> Path:
    """Train RM_0 ... RM_{cfg.stages} on ``cfg.data``; returns the folder of the last stage."""
    d = D.setup(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    split = load_split(Path(cfg.data), cfg.val_sources, cfg.val_fraction, cfg.train_sr_models)
    init_dirs = init_stages(cfg.init) if cfg.init else {}  # --init: its stages, whose architecture we take
    model_cfg = prepare_output(d, cfg, with_init_architecture(cfg, model_cfg, init_dirs), split)

    state = load_state(out / STATE_NAME)
    model = RewardModel(model_cfg).to(d.device)
    if cfg.stages > model.num_levels:
        raise FinPercepError(
            f"--stages {cfg.stages} exceeds the decoder depth N={model.num_levels} of this encoder"
        )
    progress = _restore(model, split, state, out)
    run = Run(cfg, d, model, build_data(cfg, d, split), progress)

    for stage in range(state["stage"] if state else 0, cfg.stages + 1):
        if state is not None and _finished_before(cfg, model, state):
            state = None
            continue
        run_stage(run, stage, resume=state, init_dir=init_dirs.get(stage))
        state = None

    if d.main:
        _write_summary(cfg, run.progress)
        if cfg.export:
            export_stages(out, cfg.export)
    D.teardown(d)
    return out / f"stage_{cfg.stages}"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m finpercep.rm.train`` (for torchrun / accelerate launch); same options as ``rm train``."""
    from ..config import run_main

    def model_options(parser: argparse.ArgumentParser) -> None:
        add_arguments(parser, RMConfig, prefix="model_", skip=("stage",))

    def run(cfg: RMTrainConfig, ns: argparse.Namespace) -> Path:
        return train(cfg, model_config_or_none(cfg, from_args(RMConfig, ns, prefix="model_")))

    return run_main(
        RMTrainConfig,
        run,
        argv,
        prog="finpercep.rm.train",
        description=__doc__.splitlines()[0],
        add_more=model_options,
    )


if __name__ == "__main__":
    sys.exit(main())
