"""LoRA for convolutions: a frozen conv plus a trainable low-rank branch that starts at zero.

``LoRAConv2d(base)`` computes ``base(x) + (alpha / rank) * up(down(x))`` where ``down`` has the base
conv's kernel, stride, padding and dilation with ``rank`` output channels, and ``up`` is a 1x1 conv
initialised to zero, so a freshly wrapped model computes exactly what the base model computed.
:func:`merge_lora` folds the branch back into plain ``nn.Conv2d`` weights for export.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError


class LoRAConv2d(nn.Module):
    """A frozen ``nn.Conv2d`` with a zero-initialised low-rank residual branch."""

    def __init__(self, base: nn.Conv2d, rank: int, alpha: float | None = None) -> None:
        super().__init__()
        if rank < 1:
            raise ConfigError(f"LoRA rank must be >= 1, got {rank}")
        if base.groups != 1:
            raise ConfigError("LoRA supports only convolutions with groups=1")
        self.base = base
        self.rank = rank
        self.scaling = (alpha if alpha is not None else rank) / rank
        ref = base.weight
        self.down = nn.Conv2d(
            base.in_channels,
            rank,
            base.kernel_size,
            base.stride,
            base.padding,
            base.dilation,
            bias=False,
            padding_mode=base.padding_mode,
        ).to(device=ref.device, dtype=ref.dtype)
        self.up = nn.Conv2d(rank, base.out_channels, 1, bias=False).to(device=ref.device, dtype=ref.dtype)
        nn.init.kaiming_uniform_(self.down.weight, a=5**0.5)
        nn.init.zeros_(self.up.weight)
        for p in self.base.parameters():
            p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scaling * self.up(self.down(x))

    def merged(self) -> nn.Conv2d:
        """A plain conv equal to this module (the 1x1 ``up`` composed with ``down``, added to the base)."""
        b = self.base
        conv = nn.Conv2d(
            b.in_channels,
            b.out_channels,
            b.kernel_size,
            b.stride,
            b.padding,
            b.dilation,
            bias=b.bias is not None,
            padding_mode=b.padding_mode,
        ).to(device=b.weight.device, dtype=b.weight.dtype)
        delta = torch.einsum("or,rikl->oikl", self.up.weight[:, :, 0, 0], self.down.weight)
        with torch.no_grad():
            conv.weight.copy_(b.weight + self.scaling * delta)
            if b.bias is not None:
                conv.bias.copy_(b.bias)  # type: ignore[union-attr]
        return conv


def apply_lora(model: nn.Module, rank: int, alpha: float | None = None, seed: int = 0) -> nn.Module:
    """Wrap every ``nn.Conv2d`` of ``model`` in :class:`LoRAConv2d` (in place) and freeze everything else.

    The low-rank ``down`` projections are initialised from ``seed``, so all processes agree.
    """
    for p in model.parameters():
        p.requires_grad_(False)
    targets = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not targets:
        raise ConfigError("LoRA found no nn.Conv2d to adapt in this generator")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for name, conv in targets:
            _set_submodule(model, name, LoRAConv2d(conv, rank, alpha))
    return model


def merge_lora(model: nn.Module) -> nn.Module:
    """Replace every :class:`LoRAConv2d` by its merged ``nn.Conv2d`` (in place); returns ``model``."""
    targets = [(name, m) for name, m in model.named_modules() if isinstance(m, LoRAConv2d)]
    for name, m in targets:
        _set_submodule(model, name, m.merged())
    return model


def has_lora(model: nn.Module) -> bool:
    return any(isinstance(m, LoRAConv2d) for m in model.modules())


def _set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)
