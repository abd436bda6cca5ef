"""Exponential moving average of the trainable weights (frozen ones never change, so they are not copied).

Used by RL training (the policy) and reward-model training (``rm train --ema``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


class EMA:
    """``shadow <- decay * shadow + (1 - decay) * param`` for every trainable parameter of ``module``."""

    def __init__(self, module: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must lie in (0, 1), got {decay}")
        self.decay = decay
        self.shadow = {k: p.detach().clone() for k, p in module.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        for k, p in module.named_parameters():
            if k in self.shadow:
                self.shadow[k].lerp_(p.detach(), 1.0 - self.decay)

    @torch.no_grad()
    def copy_to(self, module: nn.Module) -> None:
        """Overwrite ``module``'s trainable parameters with the averages."""
        params = dict(module.named_parameters())
        for k, v in self.shadow.items():
            params[k].copy_(v)

    @contextlib.contextmanager
    def swapped_in(self, module: nn.Module) -> Iterator[None]:
        """Run the body with the averages in ``module``, then put its own trainable weights back."""
        params = dict(module.named_parameters())
        own = {k: params[k].detach().clone() for k in self.shadow}
        self.copy_to(module)
        try:
            yield
        finally:
            with torch.no_grad():
                for k, v in own.items():
                    params[k].copy_(v)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in self.shadow.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if set(state) != set(self.shadow):
            raise ValueError("EMA state does not match the model's trainable parameters")
        for k, v in state.items():
            self.shadow[k].copy_(v)
