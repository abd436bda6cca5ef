"""FinPercep: fine-grained perceptual rewards for RL fine-tuning of real-world super-resolution."""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import ConfigError, FinPercepError, ImageError

__all__ = ["ConfigError", "FinPercepError", "ImageError", "__version__"]
