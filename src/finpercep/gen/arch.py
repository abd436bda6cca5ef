"""Trainable PyTorch Real-ISR generators: Real-ESRGAN's SRVGGNetCompact and ESRGAN/BasicSR's RRDBNet.

Blocks first, then the models, then named constructors (timm style). Parameter names follow the
reference implementations (``basicsr/archs/rrdbnet_arch.py``, ``realesrgan/archs/srvgg_arch.py``) so
their PyTorch checkpoints load with ``load_state_dict`` as well. Inputs and outputs are
``[B, 3, H, W]`` float RGB in [0, 1]; outputs are not clamped (the networks overshoot slightly, as the
ncnn originals do).

Weight-bearing modules (``nn.Conv2d``, ``nn.PReLU``) are registered in forward order, which is the
order their layers appear in the ncnn ``.param`` exports; :func:`weight_modules` relies on that.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

ActType = Literal["prelu", "relu", "leakyrelu"]


def _conv3x3(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, 1, 1)


def _activation(act_type: ActType, num_feat: int) -> nn.Module:
    if act_type == "prelu":
        return nn.PReLU(num_parameters=num_feat)
    if act_type == "relu":
        return nn.ReLU(inplace=False)
    if act_type == "leakyrelu":
        return nn.LeakyReLU(negative_slope=0.1)
    raise ValueError(f"unknown act_type {act_type!r}; expected 'prelu', 'relu' or 'leakyrelu'")


class ResidualDenseBlock(nn.Module):
    """Five densely connected 3x3 convs (LeakyReLU 0.2 after the first four), output scaled by 0.2."""

    def __init__(self, num_feat: int = 64, num_grow_ch: int = 32) -> None:
        super().__init__()
        self.conv1 = _conv3x3(num_feat, num_grow_ch)
        self.conv2 = _conv3x3(num_feat + num_grow_ch, num_grow_ch)
        self.conv3 = _conv3x3(num_feat + 2 * num_grow_ch, num_grow_ch)
        self.conv4 = _conv3x3(num_feat + 3 * num_grow_ch, num_grow_ch)
        self.conv5 = _conv3x3(num_feat + 4 * num_grow_ch, num_feat)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2)
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4, self.conv5):
            nn.init.kaiming_normal_(conv.weight)
            conv.weight.data.mul_(0.1)  # BasicSR's default_init_weights(scale=0.1): near-identity blocks
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.lrelu(self.conv1(x))
        x2 = self.lrelu(self.conv2(torch.cat((x, x1), 1)))
        x3 = self.lrelu(self.conv3(torch.cat((x, x1, x2), 1)))
        x4 = self.lrelu(self.conv4(torch.cat((x, x1, x2, x3), 1)))
        x5 = self.conv5(torch.cat((x, x1, x2, x3, x4), 1))
        return x5 * 0.2 + x


class RRDB(nn.Module):
    """Residual-in-residual dense block: three :class:`ResidualDenseBlock`, output scaled by 0.2."""

    def __init__(self, num_feat: int, num_grow_ch: int = 32) -> None:
        super().__init__()
        self.rdb1 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb2 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb3 = ResidualDenseBlock(num_feat, num_grow_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rdb3(self.rdb2(self.rdb1(x))) * 0.2 + x


class RRDBNet(nn.Module):
    """ESRGAN / Real-ESRGAN generator (BasicSR layout).

    x4 upsamples with two (nearest x2 -> conv -> LeakyReLU) stages; for x2 and x1 the input is first
    pixel-unshuffled by 2 or 4, so the body always runs at 1/4 of the output resolution.
    """

    def __init__(
        self,
        num_in_ch: int = 3,
        num_out_ch: int = 3,
        scale: int = 4,
        num_feat: int = 64,
        num_block: int = 23,
        num_grow_ch: int = 32,
    ) -> None:
        super().__init__()
        if scale not in (1, 2, 4):
            raise ValueError(f"RRDBNet supports scale 1, 2 or 4, got {scale}")
        self.scale = scale
        unshuffle = {1: 16, 2: 4, 4: 1}[scale]
        self.conv_first = _conv3x3(num_in_ch * unshuffle, num_feat)
        self.body = nn.Sequential(*(RRDB(num_feat, num_grow_ch) for _ in range(num_block)))
        self.conv_body = _conv3x3(num_feat, num_feat)
        self.conv_up1 = _conv3x3(num_feat, num_feat)
        self.conv_up2 = _conv3x3(num_feat, num_feat)
        self.conv_hr = _conv3x3(num_feat, num_feat)
        self.conv_last = _conv3x3(num_feat, num_out_ch)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.scale < 4:
            x = F.pixel_unshuffle(x, 4 // self.scale)
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        feat = self.lrelu(self.conv_up1(F.interpolate(feat, scale_factor=2, mode="nearest")))
        feat = self.lrelu(self.conv_up2(F.interpolate(feat, scale_factor=2, mode="nearest")))
        return self.conv_last(self.lrelu(self.conv_hr(feat)))


class SRVGGNetCompact(nn.Module):
    """Real-ESRGAN's compact VGG-style generator (``realesr-animevideov3``, ``realesr-general-x4v3``).

    ``num_conv`` 3x3 convs with activations at low resolution, a pixel shuffle by ``net_upscale`` and a
    nearest-upsampled copy of the input added as residual. When ``net_upscale`` differs from
    ``upscale`` the result is bicubically resized to ``upscale`` times the input: this is how the ncnn
    exports of animevideov3 x2/x3 are built (the x4 network followed by a bicubic downscale).
    """

    def __init__(
        self,
        num_in_ch: int = 3,
        num_out_ch: int = 3,
        num_feat: int = 64,
        num_conv: int = 16,
        upscale: int = 4,
        act_type: ActType = "prelu",
        net_upscale: int | None = None,
    ) -> None:
        super().__init__()
        if upscale < 1 or (net_upscale is not None and net_upscale < 1):
            raise ValueError(f"upscale factors must be >= 1, got {upscale} and {net_upscale}")
        if num_out_ch != num_in_ch:
            raise ValueError("the input residual needs num_out_ch == num_in_ch")
        self.scale = upscale
        self.net_upscale = net_upscale or upscale
        layers: list[nn.Module] = [_conv3x3(num_in_ch, num_feat), _activation(act_type, num_feat)]
        for _ in range(num_conv):
            layers += [_conv3x3(num_feat, num_feat), _activation(act_type, num_feat)]
        layers.append(_conv3x3(num_feat, num_out_ch * self.net_upscale**2))
        self.body = nn.ModuleList(layers)
        self.upsampler = nn.PixelShuffle(self.net_upscale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for layer in self.body:
            out = layer(out)
        out = self.upsampler(out) + F.interpolate(x, scale_factor=self.net_upscale, mode="nearest")
        if self.net_upscale != self.scale:
            size = (x.shape[-2] * self.scale, x.shape[-1] * self.scale)
            out = F.interpolate(out, size=size, mode="bicubic", align_corners=False)
        return out


def weight_modules(model: nn.Module) -> list[nn.Conv2d | nn.PReLU]:
    """The model's convs and PReLUs in forward order (= layer order of the ncnn export)."""
    return [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.PReLU)]


def realesrgan_x4plus() -> RRDBNet:
    """Real-ESRGAN x4plus (also the layout of RealSR DF2K): 23 RRDBs, 64 features."""
    return RRDBNet(3, 3, scale=4, num_feat=64, num_block=23, num_grow_ch=32)


def realesrgan_x4plus_anime() -> RRDBNet:
    """Real-ESRGAN x4plus anime_6B: the x4plus layout with 6 RRDBs."""
    return RRDBNet(3, 3, scale=4, num_feat=64, num_block=6, num_grow_ch=32)


def realsr_df2k() -> RRDBNet:
    """RealSR DF2K (Ji et al. 2020): an ESRGAN RRDBNet, same layout as Real-ESRGAN x4plus."""
    return RRDBNet(3, 3, scale=4, num_feat=64, num_block=23, num_grow_ch=32)


def realesr_animevideov3(scale: int = 4) -> SRVGGNetCompact:
    """realesr-animevideov3 as exported to ncnn: the x4 network, bicubically resized for x2/x3."""
    return SRVGGNetCompact(3, 3, num_feat=64, num_conv=16, upscale=scale, act_type="prelu", net_upscale=4)


def srvgg_tiny(scale: int = 4, seed: int = 0) -> SRVGGNetCompact:
    """A tiny randomly initialised SRVGGNetCompact (8 features, 2 convs) whose last conv is zero.

    It starts as nearest-neighbour upsampling; meant for tests and smoke runs, not for quality.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = SRVGGNetCompact(3, 3, num_feat=8, num_conv=2, upscale=scale, act_type="prelu")
    last = net.body[-1]
    assert isinstance(last, nn.Conv2d)
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    return net
