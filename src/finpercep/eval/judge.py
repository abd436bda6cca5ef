"""The held-out judge: a reward model trained on other photos with another seed, used only to evaluate.

A generator fine-tuned against a reward can learn to please that reward (reward hacking), so its score
after RL says little. The judge is a second FinPercep-RM that no RL run ever trains against: its FGR data
come from photos the training reward model does not train on (by default the three embedded photos the
reward model only validates on) and from another seed, and it is trained with another seed. Its score of
an output is an independent, if imperfect, opinion: it shares the architecture and kind of training data
of the training reward, so blind spots they have in common are not caught.

:func:`build_judge` synthesises the judge's FGR data and trains it, both resumable. With ``like`` set to the
training reward model's folder the judge is trained with the same recipe (architecture, losses, epochs),
so the two differ only in their photos and seeds::

    OUT/photos/   the judge's HR photos (PNG)      OUT/data/   its FGR dataset
    OUT/rm/       its reward-model training folder (pass this to --judge)
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import check, from_dict, option
from ..data.photos import EMBEDDED_PHOTOS, embedded_photos
from ..errors import FinPercepError
from ..io import save_png

logger = logging.getLogger(__name__)

JUDGE_PHOTOS: tuple[str, ...] = ("coffee", "motorcycle_left", "motorcycle_right")
"""The embedded photos the default reward model holds out for validation (``val_sources``)."""


@dataclass(frozen=True)
class JudgeConfig:
    """Data synthesis and training of a held-out judge reward model."""

    out: str = option("runs/judge", help="output folder (the trained judge is OUT/rm)")
    photos: tuple[str, ...] = option(JUDGE_PHOTOS, help="embedded photos the judge's data are cut from")
    hr_folders: tuple[str, ...] = option((), help="use these HR photo folders instead of embedded photos")
    num: int = option(36, help="GT crops (groups) of the judge's FGR dataset")
    sr_models: tuple[str, ...] = option(
        ("realesrgan-x4plus", "realsr-df2k", "realesrgan-animevideov3", "bicubic"), help="SR sources"
    )
    val_sources: tuple[str, ...] = option(("motorcycle_right*",), help="photos it validates on (fnmatch)")
    stages: int = option(4, help="judge stages RM_0 ... RM_stages (its score is that of the last)")
    epochs: tuple[int, ...] = option((3,), help="epochs per stage")
    seed: int = option(1, help="seed of the data and the training (use one the training reward does not)")
    workers: int = option(1, help="data synthesis processes")
    threads: int = option(0, help="torch threads (0 = default)")
    progress: bool = option(True, help="progress bars")
    curves: bool = option(True, help="draw the judge's training curves after every stage")
    like: str | None = option(
        None,
        help="reward-model training folder whose recipe the judge copies (model and training settings, "
        "stages and epochs included; data, seed and validation photos stay the judge's own)",
    )

    def __post_init__(self) -> None:
        check(self.num >= 2, "num must be >= 2")
        check(bool(self.hr_folders) or len(self.photos) >= 2, "the judge needs at least two photos")
        for name in self.photos:
            check(name in EMBEDDED_PHOTOS, f"unknown embedded photo {name!r}; see {sorted(EMBEDDED_PHOTOS)}")


def read_recipe(folder: str | Path) -> tuple[dict[str, Any], dict[str, Any], list[str]] | None:
    """``(train_config, model_config, train_sources)`` of a reward-model training folder or of an exported
    checkpoint (``provenance.json``); None when the folder records neither."""
    folder = Path(folder)
    if (folder / "provenance.json").is_file():
        prov = json.loads((folder / "provenance.json").read_text())
        return prov["train_config"], prov["model_config"], list(prov.get("train_sources", []))
    if (folder / "train_config.json").is_file() and (folder / "model_config.json").is_file():
        split = json.loads((folder / "split.json").read_text()) if (folder / "split.json").is_file() else {}
        return (json.loads((folder / "train_config.json").read_text()),
                json.loads((folder / "model_config.json").read_text()), list(split.get("train_sources", [])))
    return None


def judge_training_config(cfg: JudgeConfig) -> tuple[Any, Any]:
    """``(RMTrainConfig, RMConfig | None)`` of the judge: its own data, output, seed and validation photos,
    and either the judge's stage/epoch settings or the whole recipe of ``cfg.like``.

    Refuses a judge that would share a seed or a training photo with the ``like`` model."""
    from ..rm.model import saved_rm_config
    from ..rm.train import RMTrainConfig

    out = Path(cfg.out)
    overrides: dict[str, Any] = {
        "data": str(out / "data"), "out": str(out / "rm"), "seed": cfg.seed, "val_sources": cfg.val_sources,
        "threads": cfg.threads, "device": "cpu", "progress": cfg.progress,
        "curves": "stage" if cfg.curves else "off",
    }
    if cfg.like is None:
        return RMTrainConfig(stages=cfg.stages, epochs=cfg.epochs, **overrides), None
    recipe = read_recipe(cfg.like)
    if recipe is None:
        raise FinPercepError(f"{cfg.like}: not a reward-model training folder or exported checkpoint "
                             "(needs train_config.json and model_config.json, or provenance.json)")
    train_cfg, model, train_sources = recipe
    if int(train_cfg.get("seed", -1)) == cfg.seed:
        raise FinPercepError(f"the judge's seed {cfg.seed} is the seed of {cfg.like}; give it another one")
    shared = sorted({Path(s).stem for s in train_sources} & set(cfg.photos)) if not cfg.hr_folders else []
    if shared:
        raise FinPercepError(f"{cfg.like} trained on {shared}; the judge must be trained on other photos")
    train_cfg = {**train_cfg, **overrides}
    if "export" in train_cfg:
        train_cfg["export"] = None  # never overwrite the copied model's exported checkpoint
    model_cfg = dataclasses.replace(saved_rm_config(model), init_seed=cfg.seed)
    return from_dict(RMTrainConfig, train_cfg), model_cfg


def build_judge(cfg: JudgeConfig) -> Path:
    """Synthesise the judge's FGR data and train it; returns its reward-model folder (``OUT/rm``)."""
    from ..data.synthesis import SynthesisConfig, build
    from ..rm.train import train

    out = Path(cfg.out)
    if cfg.hr_folders:
        hr = cfg.hr_folders
    else:
        folder = out / "photos"
        for photo in embedded_photos(cfg.photos):
            if not (folder / f"{photo.name}.png").is_file():
                save_png(folder / f"{photo.name}.png", photo.load())
        hr = (str(folder),)
    data = SynthesisConfig(
        out=str(out / "data"), hr=hr, num=cfg.num, sr_models=cfg.sr_models, seed=cfg.seed, workers=cfg.workers
    )
    build(data, progress=cfg.progress)
    train(*judge_training_config(cfg))
    logger.info("judge: %s", out / "rm")
    return out / "rm"
