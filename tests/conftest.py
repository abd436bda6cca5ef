"""Shared fixtures."""

from __future__ import annotations

import pytest

import finpercep.allocator
import finpercep.cli


@pytest.fixture(autouse=True)
def _keep_the_system_allocator(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests run ``finpercep`` entry points in-process; the ``retain`` policy they apply would stay for the
    rest of the session and keep every test's peak memory (``tests/test_allocator.py`` runs it in
    subprocesses)."""
    monkeypatch.setattr(finpercep.allocator, "configure_allocator", lambda mode="retain": False)
    monkeypatch.setattr(finpercep.cli, "configure_allocator", lambda mode="retain": False)
