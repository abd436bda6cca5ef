"""Rewards: callables ``reward(sr, lr, hr=None) -> Tensor[B]``, higher = better.

``sr`` is the generator output ``[B, 3, sH, sW]`` in [0, 1], ``lr`` the input ``[B, 3, H, W]`` and ``hr``
the ground truth (``None`` when the training data have none). Any function with that signature is a
reward; the classes here cover the FinPercep reward model (:class:`RMScoreReward`), pyiqa metrics
(:class:`PyIQAReward`) and weighted sums (:class:`WeightedReward`). ReFL back-propagates through the
reward, so a reward used with ``algorithm="refl"`` must be differentiable in ``sr``.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from ..errors import FinPercepError
from ..rm.model import RewardModel
from ..rm.stages import CONFIG_NAME, stage_dirs

logger = logging.getLogger(__name__)


class RewardFn(Protocol):
    def __call__(
        self, sr: torch.Tensor, lr: torch.Tensor, hr: torch.Tensor | None = None
    ) -> torch.Tensor: ...


def reward_name(fn: object) -> str:
    name = getattr(fn, "name", None)
    if isinstance(name, str):
        return name
    return getattr(fn, "__qualname__", None) or type(fn).__name__


def check_reward(value: object, batch: int, name: str) -> torch.Tensor:
    """A reward's output must be a finite float tensor of shape [B]."""
    if not isinstance(value, torch.Tensor) or not value.is_floating_point():
        raise FinPercepError(
            f"reward {name!r} must return a float tensor of shape [{batch}], got {type(value).__name__}"
        )
    if value.shape != (batch,):
        raise FinPercepError(f"reward {name!r} must return shape [{batch}], got {tuple(value.shape)}")
    if not bool(torch.isfinite(value.detach()).all()):
        raise FinPercepError(f"reward {name!r} returned NaN or infinite values")
    return value


class RMScoreReward(nn.Module):
    """FinPercep-RM score minus ``map_penalty`` times the mean of its degradation map.

    The map of RM_0 is constant 1, so the penalty only shifts RM_0's reward; it bites from RM_1 on.
    """

    def __init__(self, rm: RewardModel, map_penalty: float = 0.0) -> None:
        super().__init__()
        self.rm = rm.eval()
        for p in self.rm.parameters():
            p.requires_grad_(False)
        self.map_penalty = map_penalty

    @property
    def name(self) -> str:
        return f"RM_{self.rm.stage}"

    def forward(self, sr: torch.Tensor, lr: torch.Tensor, hr: torch.Tensor | None = None) -> torch.Tensor:
        out = self.rm(sr)
        if self.map_penalty:
            return out.score - self.map_penalty * out.map.mean(dim=(1, 2, 3))
        return out.score


class WeightedReward:
    """``sum_i w_i * reward_i(sr, lr, hr)``; each term is checked to be a finite [B] tensor."""

    def __init__(self, terms: Sequence[tuple[float, RewardFn]]) -> None:
        if not terms:
            raise FinPercepError("a weighted reward needs at least one term")
        self.terms = tuple((float(w), r) for w, r in terms)

    @property
    def name(self) -> str:
        return " + ".join(f"{w:g}*{reward_name(r)}" for w, r in self.terms)

    def __call__(self, sr: torch.Tensor, lr: torch.Tensor, hr: torch.Tensor | None = None) -> torch.Tensor:
        total: torch.Tensor | None = None
        for w, r in self.terms:
            v = w * check_reward(r(sr, lr, hr), sr.shape[0], reward_name(r))
            total = v if total is None else total + v
        assert total is not None
        return total


class PyIQAReward:
    """A pyiqa metric as a reward (sign flipped for lower-is-better metrics; FR metrics get ``hr``)."""

    def __init__(self, metric_name: str, device: str | torch.device = "cpu") -> None:
        try:
            import pyiqa
        except ImportError as exc:
            raise FinPercepError(
                f"reward 'pyiqa:{metric_name}' needs the pyiqa package (pip install pyiqa): {exc}"
            ) from None
        self.metric = pyiqa.create_metric(metric_name, device=torch.device(device), as_loss=True)
        self.lower_better = bool(getattr(self.metric, "lower_better", False))
        self.full_reference = getattr(self.metric, "metric_mode", "NR") == "FR"
        self.metric_name = metric_name

    @property
    def name(self) -> str:
        return f"pyiqa:{self.metric_name}"

    def __call__(self, sr: torch.Tensor, lr: torch.Tensor, hr: torch.Tensor | None = None) -> torch.Tensor:
        if self.full_reference:
            if hr is None:
                raise FinPercepError(
                    f"{self.name} is a full-reference metric and the training data have no HR images"
                )
            s = self.metric(sr, hr)
        else:
            s = self.metric(sr)
        s = s.reshape(sr.shape[0]).to(sr.dtype)
        return -s if self.lower_better else s


def load_reward(spec: str, device: str | torch.device = "cpu") -> RewardFn:
    """``pyiqa:NAME`` or ``package.module:attribute`` (a reward callable) -> the reward."""
    kind, sep, rest = spec.partition(":")
    if not sep or not rest:
        raise FinPercepError(f"reward {spec!r}: expected 'pyiqa:NAME' or 'package.module:function'")
    if kind == "pyiqa":
        return PyIQAReward(rest, device)
    try:
        obj = getattr(importlib.import_module(kind), rest)
    except (ImportError, AttributeError) as exc:
        raise FinPercepError(f"reward {spec!r}: cannot import it: {exc}") from None
    if not callable(obj):
        raise FinPercepError(f"reward {spec!r} is not callable")
    return obj


def parse_weighted_spec(spec: str, device: str | torch.device = "cpu") -> tuple[float, RewardFn]:
    """``"0.5*pyiqa:musiq"`` -> ``(0.5, reward)``; without ``WEIGHT*`` the weight is 1."""
    weight, sep, rest = spec.partition("*")
    if not sep:
        return 1.0, load_reward(spec, device)
    try:
        w = float(weight)
    except ValueError:
        raise FinPercepError(f"reward {spec!r}: {weight!r} is not a weight (write WEIGHT*REWARD)") from None
    return w, load_reward(rest, device)


class StagedRMRewards:
    """RM_0 ... RM_N of one training folder as stage rewards, loaded on demand (one in memory at a time).

    ``path``: an RM training or export folder (``stage_<k>`` sub-folders), one model folder, or ``None``:
    every stage of the packaged default (:func:`~finpercep.rm.stages.stage_dirs`).
    """

    def __init__(
        self,
        path: str | Path | None,
        map_penalty: float = 0.0,
        device: str | torch.device = "cpu",
        wrap: Callable[[RewardFn], RewardFn] | None = None,
    ) -> None:
        self.dirs = stage_dirs(path)
        if not self.dirs:
            raise FinPercepError(f"{path}: no reward model ({CONFIG_NAME} or stage_<k> folders with one)")
        self.map_penalty = map_penalty
        self.device = device
        self.wrap = wrap
        self._cache: tuple[int, RewardFn] | None = None

    @property
    def stages(self) -> tuple[int, ...]:
        return tuple(self.dirs)

    def __getitem__(self, k: int) -> RewardFn:
        if k not in self.dirs:
            raise FinPercepError(f"the reward model has no RM_{k}; available stages: {list(self.dirs)}")
        if self._cache is None or self._cache[0] != k:
            rm = RewardModel.from_pretrained(self.dirs[k], device=self.device)
            reward: RewardFn = RMScoreReward(rm, self.map_penalty)
            self._cache = (k, self.wrap(reward) if self.wrap else reward)
            logger.info("reward: RM_%d from %s", k, self.dirs[k])
        return self._cache[1]
