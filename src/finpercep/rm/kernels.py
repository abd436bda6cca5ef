"""CPU kernels of the reward model's decoder, each equal to the PyTorch op it replaces (tested).

On the CPU, PyTorch's bilinear upsampling (forward and backward) and oneDNN's depthwise 3x3 at a few
channels are slow next to the rest of the small decoder, and a reward is a forward *and* a backward pass
to the input. So:

* :func:`resize_bilinear` upsamples by integer factors as one lerp per output phase and axis
  (:func:`upsample_integer`), with the adjoint stencil as its backward (an autograd function, itself
  differentiable).
* :class:`PointwiseConv2d` (1x1) runs as a batched matrix product: with more than one thread PyTorch
  sends 1x1 convolutions to oneDNN, up to 32 times slower there at the decoder's few channels.
* :class:`DepthwiseConv3x3` runs as nine shifted multiply-adds up to
  :attr:`~DepthwiseConv3x3.SHIFT_MAX_CHANNELS` channels; its backward to the input is the same stencil with
  the kernel flipped. With gradients to the weights (training the reward model) it stays oneDNN's
  convolution, whose weight gradient is faster.

``python benchmarks/bench_decoder.py --mode ops`` times each against the PyTorch op, with and without the
backward pass. Under ``torch.compile`` the upsampling and the depthwise 3x3 stay the PyTorch ops, which the
compiler fuses itself (the stencils write through ``out=``, which it cannot trace).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

UPSAMPLE_MIN_OUTPUT = 1 << 14
"""Smallest output (elements per image) that goes through the stencil; PyTorch's fixed cost is lower below."""


def _phase_offsets(s: int) -> list[float]:
    """Signed source offset of each output phase of an upsampling by ``s`` (align_corners=False)."""
    return [(p + 0.5) / s - 0.5 for p in range(s)]


def _lerp_phases(x: torch.Tensor, dim: int, s: int) -> torch.Tensor:
    """Bilinear (align_corners=False) upsampling of ``x`` by the integer ``s`` along ``dim`` (-1 or -2):
    output phase p of source pixel i is the lerp from x[i] towards x[i -/+ 1] by |(p + 1/2)/s - 1/2|, with
    the edges replicated. Writes through ``out=``: call it without autograd."""
    pad = (1, 1, 0, 0) if dim == -1 else (0, 0, 1, 1)
    xp = F.pad(x, pad, mode="replicate")
    n = xp.shape[dim] - 2
    centre, before, after = (xp.narrow(dim, k, n) for k in (1, 0, 2))
    out = x.new_empty(*x.shape[: x.ndim + dim + 1], s, *x.shape[x.ndim + dim + 1 :])
    for p, off in enumerate(_phase_offsets(s)):
        torch.lerp(centre, before if off < 0 else after, abs(off), out=out.select(dim, p))
    shape = list(x.shape)
    shape[dim] *= s
    return out.view(shape)


def _lerp_phases_adjoint(g: torch.Tensor, dim: int, s: int) -> torch.Tensor:
    """Adjoint of :func:`_lerp_phases` (its backward): ``g`` is ``s`` times longer along ``dim``.

    Each phase's gradient goes, weighted, to its centre pixel and to the neighbour it lerps towards; the
    replicated edges fold back onto the first and last pixel. In-place only on tensors made here, so it is
    differentiable itself (double backward)."""
    shape = list(g.shape)
    n = shape[dim] // s
    phased = g.reshape(*shape[: g.ndim + dim], n, s, *shape[g.ndim + dim + 1 :])
    phase_dim = -1 if dim == -1 else -2
    total: torch.Tensor | None = None
    before: torch.Tensor | None = None
    after: torch.Tensor | None = None
    for p, off in enumerate(_phase_offsets(s)):
        gp = phased.select(phase_dim, p)
        w = abs(off)
        total = gp * (1 - w) if total is None else total.add_(gp, alpha=1 - w)
        if off < 0:
            before = gp * w if before is None else before.add_(gp, alpha=w)
        elif off > 0:
            after = gp * w if after is None else after.add_(gp, alpha=w)
    assert total is not None
    if before is not None:  # towards pixel i - 1, pixel 0 for i = 0
        total.narrow(dim, 0, n - 1).add_(before.narrow(dim, 1, n - 1))
        total.narrow(dim, 0, 1).add_(before.narrow(dim, 0, 1))
    if after is not None:  # towards pixel i + 1, pixel n - 1 for i = n - 1
        total.narrow(dim, 1, n - 1).add_(after.narrow(dim, 0, n - 1))
        total.narrow(dim, n - 1, 1).add_(after.narrow(dim, n - 1, 1))
    return total


class _UpsampleInteger(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, sh: int, sw: int) -> torch.Tensor:
        ctx.factors = (sh, sw)
        return _lerp_phases(_lerp_phases(x, -1, sw), -2, sh)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        sh, sw = ctx.factors
        return _lerp_phases_adjoint(_lerp_phases_adjoint(g, -2, sh), -1, sw), None, None


def upsample_integer(x: torch.Tensor, sh: int, sw: int) -> torch.Tensor:
    """``F.interpolate(x, scale_factor=(sh, sw), mode="bilinear", align_corners=False)`` for integer
    factors, as one pass per axis; differentiable (the adjoint stencil), twice too."""
    return _UpsampleInteger.apply(x, sh, sw)


def resize_bilinear(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``F.interpolate(x, size, mode="bilinear", align_corners=False)``. Upsampling by integer factors on
    the CPU goes through :func:`upsample_integer`, faster there than PyTorch's NCHW kernel forward and
    backward (``benchmarks/bench_decoder.py --mode ops``); small outputs stay with PyTorch, whose fixed
    cost is lower."""
    h, w = x.shape[-2:]
    sh, sw = size[0] // h, size[1] // w
    exact = (sh * h, sw * w) == tuple(size) and sh * sw > 1
    eager_cpu = x.device.type == "cpu" and not torch.compiler.is_compiling()
    if exact and eager_cpu and x[0].numel() * sh * sw >= UPSAMPLE_MIN_OUTPUT:
        return upsample_integer(x, sh, sw)  # the threshold is per image: batch-independent
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def _depthwise_shifts(x: torch.Tensor, k: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``conv2d(x, k[:, None], bias, padding=1, groups=C)`` as nine shifted multiply-adds (k: [C, 3, 3])."""
    h, w = x.shape[-2:]
    xp = F.pad(x, (1, 1, 1, 1))
    if bias is None:
        out = torch.zeros_like(x)
    else:
        out = bias.view(1, -1, 1, 1).expand_as(x).clone()
    for i in range(3):
        for j in range(3):
            out.addcmul_(xp[:, :, i : i + h, j : j + w], k[:, i, j].view(1, -1, 1, 1))
    return out


class _DepthwiseShifts(torch.autograd.Function):
    """Depthwise 3x3 with fixed weights: shifts forward, shifts with the flipped kernel backward."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, k: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(k)
        return _depthwise_shifts(x, k, bias)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (k,) = ctx.saved_tensors
        return _depthwise_shifts(g, k.flip(-2, -1), None), None, None


class DepthwiseConv3x3(nn.Conv2d):
    """``nn.Conv2d(c, c, 3, padding=1, groups=c)`` (same parameters). On the CPU and at most
    :attr:`SHIFT_MAX_CHANNELS` channels it runs as nine shifted multiply-adds, faster there than oneDNN's
    depthwise kernel, which wins from 16 channels on (``benchmarks/bench_decoder.py --mode ops``); the
    backward to the input is the same stencil. When the weights need a gradient (training) it is the
    convolution, whose weight gradient is faster."""

    SHIFT_MAX_CHANNELS = 8

    def __init__(self, c: int) -> None:
        super().__init__(c, c, 3, padding=1, groups=c)
        self.use_shifts = c <= self.SHIFT_MAX_CHANNELS

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias
        weights_need_grad = torch.is_grad_enabled() and (
            self.weight.requires_grad or (bias is not None and bias.requires_grad)
        )
        eager_cpu = x.device.type == "cpu" and not torch.compiler.is_compiling()
        if not self.use_shifts or not eager_cpu or weights_need_grad:
            return super().forward(x)
        return _DepthwiseShifts.apply(x, self.weight[:, 0], bias)


class PointwiseConv2d(nn.Conv2d):
    """``nn.Conv2d(c_in, c_out, 1)`` (same parameters), on the CPU as ``baddbmm`` over the flattened
    pixels, forward and backward: single-threaded about as fast as PyTorch's own 1x1 kernel (faster with
    autograd), and many times faster than the oneDNN kernel PyTorch picks for 1x1 convolutions with more
    threads (``benchmarks/bench_decoder.py --mode ops``)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(c_in, c_out, 1)
        self.use_bmm = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias
        if not self.use_bmm or x.device.type != "cpu" or bias is None:
            return super().forward(x)
        b, c, h, w = x.shape
        weight = self.weight.view(self.out_channels, c).expand(b, -1, -1)
        out = torch.baddbmm(bias.view(1, -1, 1), weight, x.reshape(b, c, h * w))
        return out.view(b, self.out_channels, h, w)
