"""FinPercep-RM: the fine-grained perceptual reward model (score + degradation map), its losses,
metrics, staged training (:func:`finpercep.rm.train.train`) and scoring API (:class:`Scorer`,
:func:`score_paths`)."""

from __future__ import annotations

from typing import Any

from .model import RewardModel, RMConfig, RMInputError, RMOutput

__all__ = [
    "RMConfig",
    "RMInputError",
    "RMMetric",
    "RMOutput",
    "RMTrainConfig",
    "RewardModel",
    "Scorer",
    "score_images",
    "score_paths",
]

_SCORE = ("RMMetric", "Scorer", "score_images", "score_paths")


def __getattr__(name: str) -> Any:
    """Lazy exports: training and scoring pull in the data pipeline and plotting only when used."""
    if name == "RMTrainConfig":
        from .train_config import RMTrainConfig

        return RMTrainConfig
    if name in _SCORE:
        from . import score

        return getattr(score, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
