"""Where saved reward models are: the packaged default, run or export folders with ``stage_<k>``
sub-folders, and single model folders (``config.json`` + ``model.safetensors``)."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from ..errors import FinPercepError

CONFIG_NAME = "config.json"
STAGE_PREFIX = "stage_"


def default_checkpoint_dir() -> Path:
    """Where the packaged default checkpoint lives (``finpercep/assets/rm_default``)."""
    return Path(str(resources.files("finpercep"))) / "assets" / "rm_default"


def saved_stage(directory: Path) -> int:
    """The stage k of the model saved in ``directory``."""
    return int(json.loads((directory / CONFIG_NAME).read_text())["stage"])


def checkpoint_folder(path: str | Path | None) -> Path:
    """``path`` as a folder: ``None`` is the packaged default, a file stands for its folder."""
    if path is None:
        directory = default_checkpoint_dir()
        if not directory.exists():
            raise FinPercepError(
                f"no packaged default reward model at {directory}; train one with "
                "`finpercep rm train --data DIR --out DIR` and pass its folder as the checkpoint"
            )
        return directory
    directory = Path(path)
    if directory.is_file():
        directory = directory.parent
    if not directory.exists():
        raise FinPercepError(f"reward model checkpoint not found: {directory}")
    return directory


def stage_dirs(path: str | Path | None, *, require: str = CONFIG_NAME) -> dict[int, Path]:
    """``{k: folder of RM_k}``, by increasing k, for ``path``: a run or export folder (its ``stage_<k>``
    sub-folders), a single model folder (``{its stage: it}``) or ``None`` (the packaged default).

    Only folders holding ``require`` count: ``config.json`` (a saved model) by default, ``metrics.json``
    for the stages whose training finished. Empty when there are none; raises when ``path`` does not exist.
    """
    directory = checkpoint_folder(path)
    out = {}
    for p in directory.glob(STAGE_PREFIX + "*"):
        suffix = p.name[len(STAGE_PREFIX) :]
        if suffix.isdigit() and (p / require).is_file():
            out[int(suffix)] = p
    if not out and (directory / CONFIG_NAME).is_file() and (directory / require).is_file():
        out[saved_stage(directory)] = directory
    return dict(sorted(out.items()))


def resolve_checkpoint(path: str | Path | None, stage: int | None) -> Path:
    """The model folder of RM_``stage`` (``None``: the highest) for ``path`` (see :func:`stage_dirs`);
    a model folder of another stage stands for its ``stage_<k>`` siblings."""
    directory = checkpoint_folder(path)
    if (directory / CONFIG_NAME).is_file():
        found = saved_stage(directory)
        if stage is None or found == stage:
            return directory
        siblings = stage_dirs(directory.parent)
        if stage in siblings:
            return siblings[stage]
        raise FinPercepError(f"{directory} holds RM_{found}, not RM_{stage}")
    stages = stage_dirs(directory)
    if not stages:
        raise FinPercepError(f"{directory}: no {CONFIG_NAME} and no stage_<k> folders with one")
    if stage is None:
        return stages[max(stages)]
    if stage not in stages:
        raise FinPercepError(f"{directory}: no RM_{stage}; available stages: {sorted(stages)}")
    return stages[stage]
