"""FinPercep: fine-grained perceptual rewards for RL fine-tuning of real-world super-resolution."""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import ConfigError, FinPercepError, ImageError

__all__ = ["ConfigError", "FinPercepError", "ImageError", "RMOutput", "RewardModel", "__version__"]


def __getattr__(name: str) -> object:
    """``finpercep.RewardModel`` / ``finpercep.RMOutput`` without importing torch on ``import finpercep``."""
    if name in ("RewardModel", "RMOutput"):
        from . import rm

        return getattr(rm, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
