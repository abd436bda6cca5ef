"""Super-resolution candidate sources for FGR data synthesis (real Real-ISR models on the CPU).

The registered sources are the SR-source view of :mod:`finpercep.gen.registry`, re-exported here.
"""

from __future__ import annotations

from ..gen.registry import (
    SR_MODELS,
    ModelSpec,
    available_sr_models,
    package_model_files,
    sr_model_names,
    sr_spec,
)
from .ncnn_backend import NcnnGraph, NcnnLayer, NcnnSR, check_rgb01, parse_param
from .sources import (
    FolderSR,
    InterpSR,
    NcnnSource,
    SRSource,
    folder_source,
    get_sr_source,
    make_sr_source,
)

__all__ = [
    "SR_MODELS",
    "FolderSR",
    "InterpSR",
    "ModelSpec",
    "NcnnGraph",
    "NcnnLayer",
    "NcnnSR",
    "NcnnSource",
    "SRSource",
    "available_sr_models",
    "check_rgb01",
    "folder_source",
    "get_sr_source",
    "make_sr_source",
    "package_model_files",
    "parse_param",
    "sr_model_names",
    "sr_spec",
]
