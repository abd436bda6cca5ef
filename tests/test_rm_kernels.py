"""The decoder's CPU kernels equal the PyTorch ops they replace: values, gradients, second derivatives."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from finpercep.rm import kernels as rm_kernels
from finpercep.rm.kernels import (
    UPSAMPLE_MIN_OUTPUT,
    DepthwiseConv3x3,
    PointwiseConv2d,
    resize_bilinear,
    upsample_integer,
)

FACTOR_CASES = [
    ((2, 3, 5, 7), (2, 2)),
    ((1, 2, 6, 4), (3, 1)),
    ((1, 1, 16, 16), (16, 16)),
    ((2, 1, 1, 9), (4, 2)),
]


@pytest.mark.parametrize(("c", "size"), [(6, (5, 7)), (6, (32, 33)), (8, (9, 9)), (16, (12, 10))])
def test_depthwise_conv_equals_the_grouped_convolution(c: int, size: tuple[int, int]) -> None:
    """Shifts without autograd and with frozen weights (their backward: the flipped stencil), the
    convolution when the weights need a gradient; every path gives the convolution's output and input
    gradient."""
    torch.manual_seed(0)
    dw = DepthwiseConv3x3(c)
    assert dw.use_shifts == (c <= DepthwiseConv3x3.SHIFT_MAX_CHANNELS)
    x = torch.randn(2, c, *size)
    g = torch.randn(2, c, *size)
    ref = x.clone().requires_grad_(True)
    want = F.conv2d(ref, dw.weight.detach(), dw.bias.detach(), padding=1, groups=c)
    want.backward(g)
    with torch.no_grad():
        torch.testing.assert_close(dw(x), want.detach(), rtol=1e-5, atol=1e-5)
    for frozen in (False, True):
        dw.requires_grad_(not frozen)
        dw.zero_grad(set_to_none=True)
        xg = x.clone().requires_grad_(True)
        out = dw(xg)
        out.backward(g)
        torch.testing.assert_close(out.detach(), want.detach(), rtol=1e-5, atol=1e-5)
        assert xg.grad is not None and ref.grad is not None
        torch.testing.assert_close(xg.grad, ref.grad, rtol=1e-5, atol=1e-5)
        assert (dw.weight.grad is None) == frozen


def test_frozen_depthwise_shifts_pass_gradcheck_and_gradgradcheck() -> None:
    dw = DepthwiseConv3x3(4).double().requires_grad_(False)
    x = torch.randn(2, 4, 6, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(dw, (x,))
    assert torch.autograd.gradgradcheck(lambda t: dw(t).square(), (x,))


@pytest.mark.parametrize(("shape", "factors"), FACTOR_CASES)
def test_integer_upsampling_equals_torch_bilinear(shape: tuple[int, ...], factors: tuple[int, int]) -> None:
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    want = F.interpolate(x, scale_factor=factors, mode="bilinear", align_corners=False)
    torch.testing.assert_close(upsample_integer(x, *factors), want, rtol=0, atol=2e-6)


# the 16x case on a 3x3 input: gradgradcheck's Jacobians grow with inputs x outputs, and on
# FACTOR_CASES' 16x16 input (65,536 outputs) they took over 20 GB
GRAD_CASES = [c for c in FACTOR_CASES if c[1] != (16, 16)]
GRAD_CASES += [((1, 1, 3, 3), (16, 16)), ((2, 2, 3, 3), (5, 3))]


@pytest.mark.parametrize(("shape", "factors"), GRAD_CASES)
def test_integer_upsampling_gradient_is_torch_bilinear_gradient(
    shape: tuple[int, ...], factors: tuple[int, int]
) -> None:
    """The adjoint stencil is the backward of F.interpolate, including the replicated edges and one-pixel
    axes; it passes gradcheck and gradgradcheck (it is built from differentiable ops)."""
    x = torch.randn(
        *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3), requires_grad=True
    )
    ref = F.interpolate(x, scale_factor=factors, mode="bilinear", align_corners=False)
    g = torch.randn(ref.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    (want,) = torch.autograd.grad(ref, x, g)
    (got,) = torch.autograd.grad(upsample_integer(x, *factors), x, g)
    torch.testing.assert_close(got, want)
    assert torch.autograd.gradcheck(lambda t: upsample_integer(t, *factors), (x,))
    assert torch.autograd.gradgradcheck(lambda t: upsample_integer(t, *factors).square(), (x,))


@pytest.mark.parametrize(
    ("size", "stencil"), [((64, 64), True), ((256, 256), True), ((96, 50), False), ((70, 64), False)]
)
def test_resize_bilinear_equals_interpolate_on_every_path(
    size: tuple[int, int], stencil: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Integer factors with a large output take the stencil, others PyTorch; same values and gradients."""
    x = torch.randn(2, 8, 32, 32, generator=torch.Generator().manual_seed(2))
    assert 8 * 64 * 64 >= UPSAMPLE_MIN_OUTPUT
    calls: list[tuple[int, int]] = []

    def counted(t: torch.Tensor, sh: int, sw: int) -> torch.Tensor:
        calls.append((sh, sw))
        return upsample_integer(t, sh, sw)

    monkeypatch.setattr(rm_kernels, "upsample_integer", counted)
    ref = x.clone().requires_grad_(True)
    want = F.interpolate(ref, size=size, mode="bilinear", align_corners=False)
    g = torch.randn(want.shape, generator=torch.Generator().manual_seed(5))
    want.backward(g)
    with torch.no_grad():
        torch.testing.assert_close(resize_bilinear(x, size), want.detach(), rtol=0, atol=2e-6)
    xg = x.clone().requires_grad_(True)
    resize_bilinear(xg, size).backward(g)
    assert len(calls) == (2 if stencil else 0)
    assert xg.grad is not None and ref.grad is not None
    torch.testing.assert_close(xg.grad, ref.grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("c_in", "c_out", "size"), [(16, 8, (9, 13)), (8, 1, (32, 32)), (3, 5, (1, 1))])
def test_pointwise_conv_equals_the_convolution(c_in: int, c_out: int, size: tuple[int, int]) -> None:
    """The batched matrix product gives the 1x1 convolution's output and gradients (input, weight, bias)."""
    torch.manual_seed(0)
    pw = PointwiseConv2d(c_in, c_out)
    x = torch.randn(3, c_in, *size)
    g = torch.randn(3, c_out, *size)
    xg, ref = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    w, b = pw.weight.detach().clone().requires_grad_(True), pw.bias.detach().clone().requires_grad_(True)
    want = F.conv2d(ref, w, b)
    want.backward(g)
    out = pw(xg)
    out.backward(g)
    torch.testing.assert_close(out.detach(), want.detach(), rtol=1e-5, atol=1e-5)
    for got, exp in ((xg.grad, ref.grad), (pw.weight.grad, w.grad), (pw.bias.grad, b.grad)):
        assert got is not None and exp is not None
        torch.testing.assert_close(got, exp, rtol=1e-5, atol=1e-5)
