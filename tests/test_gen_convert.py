"""PyTorch generators vs. the ncnn models they are converted from, plus the ``.bin`` reader's formats."""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import ncnn
import numpy as np
import pytest
import torch
from torch import nn

from finpercep.errors import FinPercepError
from finpercep.gen import (
    GENERATORS,
    RRDBNet,
    SRVGGNetCompact,
    get_generator_spec,
    load_ncnn_generator,
    load_ncnn_weights,
    ncnn_model_files,
    read_ncnn_model,
    read_ncnn_param,
)

TAG_FP16, TAG_INT8, TAG_FP32 = 0x01306B47, 0x000D4B38, 0x0002C056


def run_ncnn(param: Path, weights: Path, chw: np.ndarray) -> np.ndarray:
    """ncnn CPU inference in float32 (fp16/bf16 storage off, so only the conversion error remains)."""
    net = ncnn.Net()
    net.opt.use_vulkan_compute = False
    net.opt.num_threads = 1
    for opt in ("use_fp16_storage", "use_fp16_packed", "use_fp16_arithmetic", "use_bf16_storage"):
        setattr(net.opt, opt, False)
    assert net.load_param(str(param)) == 0 and net.load_model(str(weights)) == 0
    ex = net.create_extractor()
    arr = np.ascontiguousarray(chw, dtype=np.float32)  # ncnn.Mat borrows this buffer
    ex.input("data", ncnn.Mat(arr))
    ret, out = ex.extract("output")
    assert ret == 0
    result = np.array(out).copy()
    del ex, net, arr
    return result


def smooth_noisy_image(size: int = 24) -> np.ndarray:
    """Deterministic [3, size, size] RGB in [0, 1] with edges, gradients and noise."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = np.stack([0.5 + 0.4 * np.sin(7 * xx + 3 * yy), 0.5 + 0.4 * np.cos(15 * xx * yy), (xx + yy) / 2])
    img[:, size // 3 : size // 2, :] = 0.9
    noise = 0.05 * np.random.default_rng(0).standard_normal(img.shape)
    return np.clip(img + noise, 0, 1).astype(np.float32)


@pytest.mark.parametrize("spec", GENERATORS, ids=lambda s: f"{s.name}-x{s.scale}")
def test_pytorch_matches_ncnn(spec) -> None:
    torch.set_num_threads(1)
    x = smooth_noisy_image()
    model = load_ncnn_generator(spec.name, spec.scale)
    with torch.no_grad():
        ours = model(torch.from_numpy(x)[None])[0].numpy()
    ref = run_ncnn(*ncnn_model_files(spec), x)
    assert ours.shape == ref.shape == (3, 24 * spec.scale, 24 * spec.scale)
    err = float(np.abs(ours - ref).max())
    print(f"{spec.name} x{spec.scale}: max abs error vs ncnn {err:.2e}")
    assert err < 1e-3
    # the network adds real detail: far from a plain nearest upsampling of the input
    nearest = np.repeat(np.repeat(x, spec.scale, axis=1), spec.scale, axis=2)
    assert np.abs(ours - nearest).mean() > 1e-2


def test_registry_lookup() -> None:
    assert get_generator_spec("realesrgan-animevideov3").scale == 4
    assert get_generator_spec("realesrgan-animevideov3", 2).model.endswith("UP2X")
    with pytest.raises(FinPercepError, match="realesrgan-x4plus.*realsr-df2k"):
        load_ncnn_generator("esrgan-x8")
    with pytest.raises(FinPercepError, match="available scales: 4"):
        get_generator_spec("realsr-df2k", 2)
    assert len({(s.name, s.scale) for s in GENERATORS}) == len(GENERATORS)


TINY = [
    RRDBNet(3, 3, scale=4, num_feat=8, num_block=1, num_grow_ch=4),
    RRDBNet(3, 3, scale=2, num_feat=8, num_block=1, num_grow_ch=4),
    RRDBNet(3, 3, scale=1, num_feat=8, num_block=1, num_grow_ch=4),
    SRVGGNetCompact(num_feat=8, num_conv=2, upscale=4),
    SRVGGNetCompact(num_feat=8, num_conv=2, upscale=2),
    SRVGGNetCompact(num_feat=8, num_conv=2, upscale=2, net_upscale=4),
]


@pytest.mark.parametrize("model", TINY, ids=lambda m: f"{type(m).__name__}-x{m.scale}")
def test_forward_backward_shapes_and_finite_grads(model: nn.Module) -> None:
    torch.manual_seed(0)
    x = torch.rand(2, 3, 8, 12, requires_grad=True)
    y = model(x)
    assert y.shape == (2, 3, 8 * model.scale, 12 * model.scale)
    y.square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert sum(float(p.grad.abs().sum()) for p in model.parameters()) > 0


def test_param_parsing_reads_scalars_and_arrays() -> None:
    param, _ = ncnn_model_files(get_generator_spec("realesrgan-animevideov3", 2))
    layers = read_ncnn_param(param)
    assert [layer.type for layer in layers[:3]] == ["Input", "Split", "Convolution"]
    assert layers[2].bottoms == ("input.1_splitncnn_1",) and layers[2].get_int(6) == 3 * 64 * 9
    resize = layers[-1]
    assert (resize.type, resize.get_int(0), resize.get_float(1)) == ("Interp", 3, 0.5)  # bicubic x0.5
    assert resize.tops == ("output",)
    x4plus, _ = ncnn_model_files(get_generator_spec("realesrgan-x4plus"))
    conv1 = read_ncnn_param(x4plus)[3]
    assert conv1.get_int(9) == 2 and conv1.get_floats(10) == (0.2,)


def test_truncated_bin_is_rejected(tmp_path: Path) -> None:
    param, weights = ncnn_model_files(get_generator_spec("realesrgan-animevideov3"))
    data = weights.read_bytes()
    shutil.copy(param, tmp_path / "m.param")
    (tmp_path / "m.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(FinPercepError, match=r"truncated weight file: layer 'Conv_\d+'"):
        read_ncnn_model(tmp_path / "m.param", tmp_path / "m.bin")
    (tmp_path / "m.bin").write_bytes(data + b"\0" * 8)
    with pytest.raises(FinPercepError, match="8 trailing bytes"):
        read_ncnn_model(tmp_path / "m.param", tmp_path / "m.bin")


def test_structure_mismatch_is_rejected() -> None:
    param, weights = ncnn_model_files(get_generator_spec("realesrgan-animevideov3"))
    layers = read_ncnn_model(param, weights)
    with pytest.raises(FinPercepError, match="weight layers"):
        load_ncnn_weights(SRVGGNetCompact(num_conv=15), layers)
    with pytest.raises(FinPercepError, match="Conv_34.*48 weight|Conv_34.*out, kernel"):
        load_ncnn_weights(SRVGGNetCompact(upscale=2), layers)


# A tiny conv -> PReLU -> conv network whose first conv is stored in each ncnn weight encoding.
TINY_PARAM = """7767517
4 4
Input            data   0 1 data
Convolution      conv0  1 1 data c0 0=4 1=3 4=1 5=1 6=108 9=2 -23310=1,2.000000e-01
PReLU            prelu0 1 1 c0 c1 0=4
Convolution      conv1  1 1 c1 output 0=3 1=3 4=1 5=1 6=108
"""


def encode(values: np.ndarray, encoding: str) -> bytes:
    if encoding == "raw":
        return struct.pack("<I", 0) + values.astype("<f4").tobytes()
    if encoding == "fp32-tag":
        return struct.pack("<I", TAG_FP32) + values.astype("<f4").tobytes()
    if encoding == "fp16":
        return struct.pack("<I", TAG_FP16) + values.astype("<f2").tobytes()  # 108 halves: already 4-aligned
    if encoding == "codebook":
        codebook = np.linspace(-0.5, 0.5, 256, dtype="<f4")
        index = np.abs(values[:, None] - codebook[None]).argmin(1).astype(np.uint8)
        return struct.pack("<I", 0x01020304) + codebook.tobytes() + index.tobytes()
    if encoding == "int8":
        return struct.pack("<I", TAG_INT8) + np.zeros(values.size, np.int8).tobytes()
    raise AssertionError(encoding)


@pytest.mark.parametrize("encoding", ["raw", "fp32-tag", "fp16", "codebook"])
def test_weight_encodings_match_ncnn(tmp_path: Path, encoding: str) -> None:
    rng = np.random.default_rng(1)
    w0, w1 = (rng.uniform(-0.4, 0.4, 108).astype(np.float32) for _ in range(2))
    b0, slope, b1 = rng.uniform(-0.1, 0.1, 4), rng.uniform(0, 0.3, 4), rng.uniform(-0.1, 0.1, 3)
    blob = encode(w0, encoding) + b0.astype("<f4").tobytes() + slope.astype("<f4").tobytes()
    blob += encode(w1, "raw") + b1.astype("<f4").tobytes()
    (tmp_path / "t.param").write_text(TINY_PARAM)
    (tmp_path / "t.bin").write_bytes(blob)

    layers = read_ncnn_model(tmp_path / "t.param", tmp_path / "t.bin")
    keys = [[], ["bias", "weight"], ["slope"], ["bias", "weight"]]
    assert [sorted(layer.weights) for layer in layers] == keys
    tol = {"raw": 0, "fp32-tag": 0, "fp16": 2e-4, "codebook": 2.5e-3}[encoding]
    np.testing.assert_allclose(layers[1].weights["weight"], w0, atol=tol, rtol=0)

    model = nn.Sequential(nn.Conv2d(3, 4, 3, 1, 1), nn.LeakyReLU(0.2), nn.PReLU(4), nn.Conv2d(4, 3, 3, 1, 1))
    load_ncnn_weights(model, layers)
    x = smooth_noisy_image(10)
    with torch.no_grad():
        ours = model(torch.from_numpy(x)[None])[0].numpy()
    ref = run_ncnn(tmp_path / "t.param", tmp_path / "t.bin", x)
    assert np.abs(ours - ref).max() < 1e-5


def test_int8_weights_are_rejected(tmp_path: Path) -> None:
    (tmp_path / "t.param").write_text(TINY_PARAM)
    (tmp_path / "t.bin").write_bytes(encode(np.zeros(108, np.float32), "int8") + bytes(1024))
    with pytest.raises(FinPercepError, match="conv0.*int8"):
        read_ncnn_model(tmp_path / "t.param", tmp_path / "t.bin")
