"""Super-resolution candidate sources for FGR data synthesis (real Real-ISR models on the CPU)."""

from __future__ import annotations

from .ncnn_backend import NcnnGraph, NcnnLayer, NcnnSR, check_rgb01, package_model_files, parse_param
from .sources import (
    SR_MODELS,
    FolderSR,
    InterpSR,
    NcnnSource,
    SRKind,
    SRSource,
    SRSpec,
    available_sr_models,
    folder_source,
    get_sr_source,
    make_sr_source,
    sr_model_names,
    sr_spec,
)

__all__ = [
    "SR_MODELS",
    "FolderSR",
    "InterpSR",
    "NcnnGraph",
    "NcnnLayer",
    "NcnnSR",
    "NcnnSource",
    "SRKind",
    "SRSource",
    "SRSpec",
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
