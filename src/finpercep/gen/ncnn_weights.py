"""Read ncnn ``.param``/``.bin`` models and load their weights into the PyTorch generators of :mod:`.arch`.

Which files belong to which generator is the registry's business (:mod:`.registry`); this module only
reads the format.

``.bin`` layout (ncnn ``ModelBin::load``): layers are stored in ``.param`` order, each weight-bearing
layer's blobs back to back. A blob loaded with type 0 (convolution / inner-product weights) starts
with a little-endian uint32 tag: ``0`` raw float32, ``0x01306B47`` float16 (padded to 4 bytes),
``0x0002C056`` float32, ``0x000D4B38`` int8 (unsupported here), any other non-zero tag a 256-entry
float32 codebook followed by uint8 indices (padded to 4 bytes). Type-1 blobs (biases, PReLU slopes)
are raw float32 without a tag.

Pre/post-processing: the ncnn graphs take ``[3, H, W]`` RGB in [0, 1] and return RGB in about [0, 1]
(realesrgan-ncnn-vulkan and realsr-ncnn-vulkan normalise 8-bit RGB by 1/255 and clamp the output), so
the PyTorch model takes ``[B, 3, H, W]`` RGB in [0, 1] with no extra scaling or channel swap.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import FinPercepError
from .arch import weight_modules

PARAM_MAGIC = "7767517"
_ARRAY_KEY_BASE = -23300

_TAG_FP16 = 0x01306B47
_TAG_INT8 = 0x000D4B38
_TAG_FP32 = 0x0002C056

# layer type -> (param id of the weight element count, param id of bias_term); num_output is id 0
_WEIGHTED: dict[str, tuple[int, int]] = {
    "Convolution": (6, 5),
    "ConvolutionDepthWise": (6, 5),
    "Deconvolution": (6, 5),
    "InnerProduct": (2, 1),
}
_WEIGHTLESS = frozenset(
    {
        "Input", "Split", "Concat", "Eltwise", "BinaryOp", "UnaryOp", "Interp", "PixelShuffle", "Reorg",
        "ReLU", "Sigmoid", "TanH", "Clip", "Swish", "HardSigmoid", "HardSwish", "Mish", "ELU", "GELU",
        "Crop", "Padding", "Reshape", "Permute", "Flatten", "Slice", "Pooling", "Softmax", "Noop",
        "Dropout",
    }
)  # fmt: skip


@dataclass(frozen=True)
class NcnnLayer:
    """One layer of an ncnn model: its ``.param`` line and, once read from the ``.bin``, its weights.

    ``params`` maps ncnn param ids to their text values; array params (written ``-233xx=n,a,b,...``)
    are stored under their plain id (``xx``) as a tuple of strings without the leading count.
    ``weights`` holds ``"weight"`` / ``"bias"`` (conv-like layers) or ``"slope"`` (PReLU) as float32.
    """

    type: str
    name: str
    bottoms: tuple[str, ...]
    tops: tuple[str, ...]
    params: dict[int, str | tuple[str, ...]]
    weights: dict[str, np.ndarray] = field(default_factory=dict)

    def get_int(self, key: int, default: int = 0) -> int:
        value = self.params.get(key)
        return default if value is None else int(float(value))  # type: ignore[arg-type]

    def get_float(self, key: int, default: float = 0.0) -> float:
        value = self.params.get(key)
        return default if value is None else float(value)  # type: ignore[arg-type]

    def get_floats(self, key: int) -> tuple[float, ...]:
        value = self.params.get(key, ())
        return tuple(float(v) for v in value) if isinstance(value, tuple) else (float(value),)


def read_ncnn_param(param_path: str | Path) -> list[NcnnLayer]:
    """Parse a text ncnn ``.param`` file into layers (without weights), in file order."""
    path = Path(param_path)
    try:
        lines = [ln.split() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise FinPercepError(f"{path}: cannot read ncnn param file: {exc}") from None
    if len(lines) < 2 or lines[0] != [PARAM_MAGIC]:
        raise FinPercepError(f"{path}: not a text ncnn param file (first line must be {PARAM_MAGIC})")
    try:
        n_layers = int(lines[1][0])
    except (ValueError, IndexError):
        raise FinPercepError(f"{path}: malformed layer/blob count line {' '.join(lines[1])!r}") from None
    layers: list[NcnnLayer] = []
    for lineno, tok in enumerate(lines[2:], start=3):
        try:
            n_bottom, n_top = int(tok[2]), int(tok[3])
            io_end = 4 + n_bottom + n_top
            if len(tok) < io_end:
                raise ValueError
            params: dict[int, str | tuple[str, ...]] = {}
            for kv in tok[io_end:]:
                key_s, value = kv.split("=", 1)
                key = int(key_s)
                if key <= _ARRAY_KEY_BASE:
                    items = value.split(",")
                    if int(items[0]) != len(items) - 1:
                        raise ValueError
                    params[_ARRAY_KEY_BASE - key] = tuple(items[1:])
                else:
                    params[key] = value
        except (ValueError, IndexError):
            raise FinPercepError(f"{path}:{lineno}: malformed layer line {' '.join(tok)[:80]!r}") from None
        layers.append(
            NcnnLayer(tok[0], tok[1], tuple(tok[4 : 4 + n_bottom]), tuple(tok[4 + n_bottom : io_end]), params)
        )
    if len(layers) != n_layers:
        raise FinPercepError(f"{path}: header announces {n_layers} layers, found {len(layers)}")
    return layers


class _BinReader:
    """Sequential reader over a ``.bin`` buffer that names the layer when data runs out."""

    def __init__(self, data: bytes, path: Path) -> None:
        self.data, self.path, self.offset = data, path, 0
        self.layer = ""

    def take(self, nbytes: int) -> bytes:
        end = self.offset + nbytes
        if end > len(self.data):
            raise FinPercepError(
                f"{self.path}: truncated weight file: layer {self.layer!r} needs {nbytes} bytes at offset "
                f"{self.offset}, but the file has {len(self.data)} bytes (does it match the .param?)"
            )
        chunk = self.data[self.offset : end]
        self.offset = end
        return chunk

    def raw(self, count: int) -> np.ndarray:
        return np.frombuffer(self.take(4 * count), dtype="<f4").astype(np.float32)

    def tagged(self, count: int) -> np.ndarray:
        tag = int.from_bytes(self.take(4), "little")
        if tag == _TAG_FP16:
            return np.frombuffer(self.take(_align4(2 * count))[: 2 * count], dtype="<f2").astype(np.float32)
        if tag == _TAG_INT8:
            raise FinPercepError(f"{self.path}: layer {self.layer!r} has int8 weights (unsupported)")
        if tag in (0, _TAG_FP32):
            return self.raw(count)
        codebook = self.raw(256)
        index = np.frombuffer(self.take(_align4(count))[:count], dtype=np.uint8)
        return codebook[index]


def _align4(n: int) -> int:
    return (n + 3) // 4 * 4


def read_ncnn_model(param_path: str | Path, bin_path: str | Path) -> list[NcnnLayer]:
    """Parse ``.param`` and attach each layer's float32 weights from ``.bin``.

    Raises :class:`FinPercepError` for a truncated or oversized ``.bin``, int8 weights, or a layer
    type whose weight layout is not known (its weights could not be skipped safely).
    """
    layers = read_ncnn_param(param_path)
    path = Path(bin_path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise FinPercepError(f"{path}: cannot read ncnn weight file: {exc}") from None
    reader = _BinReader(data, path)
    for layer in layers:
        reader.layer = layer.name
        if layer.type in _WEIGHTED:
            size_key, bias_key = _WEIGHTED[layer.type]
            if layer.get_int(8):
                raise FinPercepError(f"{param_path}: layer {layer.name!r} is int8-quantised (unsupported)")
            layer.weights["weight"] = reader.tagged(layer.get_int(size_key))
            if layer.get_int(bias_key):
                layer.weights["bias"] = reader.raw(layer.get_int(0))
        elif layer.type == "PReLU":
            layer.weights["slope"] = reader.raw(layer.get_int(0))
        elif layer.type not in _WEIGHTLESS:
            raise FinPercepError(f"{param_path}: unsupported ncnn layer type {layer.type!r} ({layer.name})")
    if reader.offset != len(data):
        raise FinPercepError(
            f"{path}: {len(data) - reader.offset} trailing bytes after the last layer; "
            "the weight file does not match the .param"
        )
    return layers


def load_ncnn_weights(model: nn.Module, layers: list[NcnnLayer]) -> None:
    """Copy the weights of ``layers`` into ``model``'s convs and PReLUs, pairing both in order.

    Every pair is checked (layer type, output channels, kernel, stride, padding, dilation, bias, weight
    count) so a model whose structure differs from the ``.param`` fails loudly instead of loading
    shifted weights.
    """
    src = [layer for layer in layers if layer.weights]
    dst = weight_modules(model)
    if len(src) != len(dst):
        raise FinPercepError(
            f"ncnn model has {len(src)} weight layers but {type(model).__name__} has {len(dst)} convs/PReLUs"
        )
    with torch.no_grad():
        for layer, module in zip(src, dst, strict=True):
            if isinstance(module, nn.PReLU):
                _expect(layer, layer.type == "PReLU", "a PReLU")
                _copy(layer, "slope", module.weight)
                continue
            want = (module.out_channels, module.kernel_size, module.stride, module.padding, module.dilation)
            _expect(layer, layer.type == "Convolution", "a Convolution")
            _expect(layer, _conv_geometry(layer) == want, f"(out, kernel, stride, padding, dilation) {want}")
            _expect(layer, ("bias" in layer.weights) == (module.bias is not None), "a matching bias term")
            _copy(layer, "weight", module.weight)
            if module.bias is not None:
                _copy(layer, "bias", module.bias)


def _copy(layer: NcnnLayer, key: str, param: torch.Tensor) -> None:
    values = layer.weights[key]
    _expect(layer, values.size == param.numel(), f"{param.numel()} {key} values, not {values.size}")
    param.copy_(torch.from_numpy(values).view_as(param))


def _conv_geometry(layer: NcnnLayer) -> tuple[object, ...] | None:
    """(out, kernel, stride, padding, dilation) as PyTorch writes them; ``None`` for asymmetric padding."""
    get = layer.get_int
    kw, sw, dw, pw = get(1), get(3, 1), get(2, 1), get(4)
    kh, sh, dh, ph = get(11, kw), get(13, sw), get(12, dw), get(14, pw)
    if get(15, pw) != pw or get(16, ph) != ph:
        return None
    return (get(0), (kh, kw), (sh, sw), (ph, pw), (dh, dw))


def _expect(layer: NcnnLayer, ok: bool, what: str) -> None:
    if not ok:
        raise FinPercepError(
            f"ncnn layer {layer.name!r} ({layer.type}) does not fit the PyTorch model: expected {what}"
        )
