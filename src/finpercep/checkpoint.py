"""The resume point of a training run, shared by the reward-model and RL trainers.

A run folder holds the configuration it was started with (a JSON file) and ``state.pt``, rewritten
atomically after every save. Re-running the same command in the same folder resumes; a command with other
settings is refused, so two runs never mix in one folder.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

import torch

from .config import to_dict
from .errors import FinPercepError
from .io import atomic_path


def save_state(path: str | Path, state: dict[str, Any]) -> None:
    """``torch.save`` to a temporary file that replaces ``path`` only once complete: a run killed while
    saving keeps its previous resume point (:func:`~finpercep.io.remove_stale_temps` clears the rest)."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_state(path: str | Path) -> dict[str, Any] | None:
    """The state :func:`save_state` wrote to ``path``, on the CPU; None if there is none."""
    path = Path(path)
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=False)


def _as_json(obj: Any) -> Any:
    return json.loads(json.dumps(obj))


def check_resume(
    path: str | Path,
    cfg: Any,
    *,
    ignore: Collection[str] = (),
    added_later: Mapping[str, Any] | None = None,
    what: str = "a run",
    layout: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> bool:
    """True if ``path`` holds the saved configuration of a run with ``cfg``'s settings, False if there is
    no such file; a :class:`FinPercepError` naming the options that differ otherwise.

    ``ignore``: options that may change between a run and its resumption (output folder, threads, device,
    progress bars ...). ``added_later``: the values of options that were added after some runs were saved,
    as those runs did without them; a saved run that lacks one of them is compared with that value.
    ``layout`` maps a saved or current config dict to the keys that are compared (e.g. nested configs
    flattened into their options, so that a file in an older layout still matches).
    """
    path = Path(path)
    if not path.is_file():
        return False
    same = layout or (lambda d: d)
    saved = {**_as_json(dict(added_later or {})), **same(json.loads(path.read_text()))}
    now = same(_as_json(to_dict(cfg)))
    diff = sorted(k for k in set(saved) | set(now) if k not in ignore and saved.get(k) != now.get(k))
    if diff:
        raise FinPercepError(
            f"{path.parent} holds {what} with different settings ({', '.join(diff)}); use another --out"
        )
    return True
