"""Exceptions raised by FinPercep. Every user-facing failure is a :class:`FinPercepError`."""

from __future__ import annotations

from pathlib import Path


class FinPercepError(Exception):
    """Base class for errors the CLI reports as one clear line instead of a traceback."""


class ImageError(FinPercepError):
    """An image file that cannot be used: names the file and the problem."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class ConfigError(FinPercepError, ValueError):
    """An invalid configuration value."""
