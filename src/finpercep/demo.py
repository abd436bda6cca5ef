"""``finpercep demo``: the main job end to end on scikit-image's photos.

Steps run so far: FGR data synthesis with real SR models, then a contact sheet of the dataset. Each step
is resumable: re-running the same command continues where a killed run stopped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .config import check, option
from .data.show import contact_sheet
from .data.synthesis import SynthesisConfig, build

log = logging.getLogger(__name__)

PRESETS: dict[str, dict[str, int]] = {
    "full": {"num": 24, "workers": 2},
    "quick": {"num": 6, "workers": 2},
}


@dataclass(frozen=True)
class DemoConfig:
    """End-to-end demo on the embedded photos."""

    out: str = option("runs/demo", help="output folder")
    preset: Literal["full", "quick"] = option("full", help="full: the README's demo; quick: a CI smoke run")
    seed: int = option(0, help="random seed")

    def __post_init__(self) -> None:
        check(bool(self.out), "out must be a folder")


def run_demo(cfg: DemoConfig, *, progress: bool = True) -> Path:
    """Run every step and return the path of the report."""
    out = Path(cfg.out)
    preset = PRESETS[cfg.preset]
    data_cfg = SynthesisConfig(
        out=str(out / "data"), num=preset["num"], workers=preset["workers"], seed=cfg.seed
    )
    manifest = build(data_cfg, progress=progress)
    sheet = contact_sheet(manifest.parent, out / "data_sheet.png", num=6, seed=cfg.seed)
    log.info("contact sheet: %s", sheet)
    return sheet
