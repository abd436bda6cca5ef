"""Before a reward-model run trains: the architecture (given, saved by the run being resumed, or brought by
``--init``) and the output folder (what was run and on which photos; a different run there is refused)."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

from .. import dist as D
from ..checkpoint import check_resume
from ..config import to_dict
from ..errors import FinPercepError
from ..io import atomic_write_json, remove_stale_temps
from .dataset import Split
from .model import CONFIG_NAME, RewardModel, RMConfig, resolve_checkpoint, saved_rm_config, stage_dirs
from .train_config import RMTrainConfig

logger = logging.getLogger(__name__)

TRAIN_CONFIG_NAME = "train_config.json"
MODEL_CONFIG_NAME = "model_config.json"
SPLIT_NAME = "split.json"
RESUME_IGNORES = frozenset(
    {"out", "num_workers", "progress", "threads", "device", "val_batch", "curves", "export"}
)
"""Options a run may be resumed with other values of."""


def init_stages(init: str) -> dict[int, Path]:
    """``{k: model folder}`` of the stages of ``init`` (``'default'``: the packaged checkpoint)."""
    top = resolve_checkpoint(None if init == "default" else init, None)
    found = stage_dirs(top.parent)
    if top not in found.values():  # a lone model folder
        found = {int(json.loads((top / CONFIG_NAME).read_text())["stage"]): top}
    return found


def init_architecture(stages: dict[int, Path]) -> RMConfig:
    """The architecture (stage 0, default score range) shared by every stage in ``stages``."""
    archs = {
        k: dataclasses.replace(
            saved_rm_config(json.loads((d / CONFIG_NAME).read_text())["rm_config"]),
            stage=0,
            score_range=RMConfig().score_range,
        )
        for k, d in stages.items()
    }
    first = next(iter(archs.values()))
    if any(a != first for a in archs.values()):
        where = next(iter(stages.values())).parent
        raise FinPercepError(f"the stages in {where} have different architectures")
    return first


def model_config_or_none(cfg: RMTrainConfig, model_cfg: RMConfig) -> RMConfig | None:
    """The command line's model options, or None with ``--init`` (which brings its architecture).

    Model options other than the defaults together with ``--init`` are an error rather than ignored.
    """
    if not cfg.init:
        return model_cfg
    if model_cfg != RMConfig():
        raise FinPercepError(f"--init {cfg.init} brings its own architecture; drop the --model-* options")
    return None


def with_init_architecture(
    cfg: RMTrainConfig, model_cfg: RMConfig | None, init_dirs: dict[int, Path]
) -> RMConfig | None:
    """``model_cfg``, or with ``--init`` the checkpoint's architecture (refusing another given one)."""
    if not init_dirs:
        return model_cfg
    arch = init_architecture(init_dirs)
    given = dataclasses.replace(model_cfg, stage=0, score_range=arch.score_range) if model_cfg else arch
    if given != arch:
        raise FinPercepError(f"--init {cfg.init} has another architecture than the given model config")
    return arch


def check_saved_run(out: Path, cfg: RMTrainConfig, model_cfg: RMConfig | None) -> RMConfig | None:
    """The saved model config of a run in ``out`` (None: no run there); refuses a different training or
    model configuration. Options the saved run lacks were added later: their defaults are what it did."""
    if not check_resume(
        out / TRAIN_CONFIG_NAME, cfg, ignore=RESUME_IGNORES, added_later=to_dict(RMTrainConfig())
    ):
        return None
    saved_model = saved_rm_config(json.loads((out / MODEL_CONFIG_NAME).read_text()))
    if model_cfg is not None and dataclasses.replace(model_cfg, stage=0) != saved_model:
        raise FinPercepError(f"{out} holds a run with a different model configuration; use another --out")
    return saved_model


def _write_run_files(out: Path, cfg: RMTrainConfig, model_cfg: RMConfig, split: Split) -> None:
    out.mkdir(parents=True, exist_ok=True)
    if stale := remove_stale_temps(out):
        logger.info("removed %d partial file(s) that a killed run left in %s", stale, out)
    atomic_write_json(out / TRAIN_CONFIG_NAME, to_dict(cfg))
    atomic_write_json(out / MODEL_CONFIG_NAME, to_dict(model_cfg))
    split_info = {
        "train_sources": split.train_sources,
        "val_sources": split.val_sources,
        "train_chains": len(split.train_chains),
        "val_chains": len(split.val_chains),
        "val_samples": len(split.val_samples),
    }
    atomic_write_json(out / SPLIT_NAME, split_info)


def prepare_output(d: D.Dist, cfg: RMTrainConfig, model_cfg: RMConfig | None, split: Split) -> RMConfig:
    """Check and write the output folder's configuration; returns the architecture (stage 0) to train.

    The main process checks and writes, the others then read what it wrote; a refusal is raised on all.
    """
    out = Path(cfg.out)
    problem = ""
    if d.main:
        try:
            saved_model_cfg = check_saved_run(out, cfg, model_cfg)
        except FinPercepError as exc:
            problem = str(exc)
        else:
            model_cfg = dataclasses.replace(
                saved_model_cfg or model_cfg or RMConfig(init_seed=cfg.seed), stage=0
            )
            _write_run_files(out, cfg, model_cfg, split)
    problem = D.gather_strings(d, problem)[0]  # also a barrier
    if problem:
        raise FinPercepError(problem)
    if not d.main:
        model_cfg = saved_rm_config(json.loads((out / MODEL_CONFIG_NAME).read_text()))
    assert model_cfg is not None
    return model_cfg


def load_init_stage(model: RewardModel, folder: Path) -> None:
    """Start ``model`` (grown to the stage) from the trained model in ``folder``, its score range included."""
    start = RewardModel.from_pretrained(folder)
    model.load_state_dict(start.state_dict())
    model.config = dataclasses.replace(model.config, score_range=start.config.score_range)
    logger.info("RM_%d starts from %s", model.stage, folder)
