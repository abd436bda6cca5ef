"""The model registry as a test matrix: every registered generator and SR source, built from the list itself.

Cheap checks only (structure, shapes, lookups); ``test_gen_convert.py`` and ``test_sr.py`` compare outputs
with ncnn. Entries whose ncnn package is not installed are skipped.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util

import numpy as np
import pytest
import torch
from torch import nn

from finpercep import cli
from finpercep.errors import FinPercepError
from finpercep.gen import weight_modules
from finpercep.gen.ncnn_weights import read_ncnn_param
from finpercep.gen.registry import (
    ADAPTER_ENTRIES,
    GENERATORS,
    MODELS,
    SR_MODELS,
    TRAINABLE,
    ModelSpec,
    find_adapter,
    generator_names,
    get_generator_spec,
    ncnn_model_files,
    sr_spec,
)
from finpercep.rl.generators import build_generator
from finpercep.sr import get_sr_source

SMALL_BIN = 5_000_000  # bytes: weights this small load in well under a second


def _id(spec: ModelSpec) -> str:
    return f"{spec.name}-x{spec.scale}"


def _skip_without_package(spec: ModelSpec) -> None:
    if spec.package is not None and importlib.util.find_spec(spec.package) is None:
        pytest.skip(f"{spec.package} is not installed")


@functools.cache
def _network(spec: ModelSpec) -> nn.Module:
    """``spec.build()``, once per spec (the 23-block RRDBNets take seconds to initialise)."""
    assert spec.build is not None
    return spec.build()


def _cheap(spec: ModelSpec) -> bool:
    return spec.kind != "ncnn" or ncnn_model_files(spec)[1].stat().st_size < SMALL_BIN


def test_names_and_scales_are_unique_and_every_entry_has_a_use() -> None:
    pairs = [(m.name, m.scale) for m in MODELS]
    assert len(pairs) == len(set(pairs))
    assert all(m.sr_source or m.trainable for m in MODELS)
    assert set(SR_MODELS) | set(TRAINABLE) == set(MODELS)
    assert set(GENERATORS) == {m for m in TRAINABLE if m.kind == "ncnn"}
    adapters = [e.name for e in ADAPTER_ENTRIES]
    assert generator_names() == (*dict.fromkeys(m.name for m in TRAINABLE), *adapters)
    assert not {m.name for m in TRAINABLE} & set(adapters)


@pytest.mark.parametrize(
    "fields",
    [
        {"kind": "ncnn", "sr_source": True},  # no package / model file
        {"kind": "interp", "sr_source": True},  # no interpolation method
        {"kind": "pytorch"},  # neither an SR source nor buildable
        {"kind": "interp", "sr_source": True, "interp": "bicubic", "scale": 0},
    ],
)
def test_inconsistent_specs_are_rejected(fields: dict) -> None:
    with pytest.raises(ValueError, match="inconsistent model spec"):
        ModelSpec(**{"name": "x", "scale": 4, "arch": "a", "description": "", **fields})


@pytest.mark.parametrize("spec", TRAINABLE, ids=_id)
def test_every_generator_builds_at_its_declared_scale(spec: ModelSpec) -> None:
    net = _network(spec)
    assert isinstance(net, nn.Module) and net.scale == spec.scale
    with torch.no_grad():
        assert net(torch.rand(1, 3, 6, 5)).shape == (1, 3, 6 * spec.scale, 5 * spec.scale)
    assert get_generator_spec(spec.name, spec.scale) is spec


@pytest.mark.parametrize("spec", GENERATORS, ids=_id)
def test_every_ncnn_export_fits_its_network(spec: ModelSpec) -> None:
    """The export's weight layers pair one to one with the network's convs and PReLUs (``.param`` only)."""
    _skip_without_package(spec)
    layers = [
        layer
        for layer in read_ncnn_param(ncnn_model_files(spec)[0])
        if layer.type in ("Convolution", "PReLU")
    ]
    modules = weight_modules(_network(spec))
    want = [
        ("PReLU", m.num_parameters) if isinstance(m, nn.PReLU) else ("Convolution", m.out_channels)
        for m in modules
    ]
    assert [(layer.type, layer.get_int(0)) for layer in layers] == want


@pytest.mark.parametrize("spec", TRAINABLE, ids=_id)
def test_build_generator_resolves_every_cheap_generator(spec: ModelSpec) -> None:
    _skip_without_package(spec)
    if not _cheap(spec):
        pytest.skip("large weights: loaded against ncnn in test_gen_convert.py")
    loaded = build_generator(spec.name, spec.scale)
    assert (loaded.source, loaded.scale) == (spec.name, spec.scale)
    assert loaded.arch == type(_network(spec)).__name__


@pytest.mark.parametrize("spec", SR_MODELS, ids=_id)
def test_every_sr_source_resolves_and_upscales_by_its_scale(spec: ModelSpec) -> None:
    _skip_without_package(spec)
    assert sr_spec(spec.name, spec.scale) is spec
    src = get_sr_source(spec.name, scale=spec.scale, tile_size=0)
    assert (src.name, src.scale, src.weak, src.spec) == (spec.name, spec.scale, spec.weak, spec)
    if _cheap(spec):
        lr = np.random.default_rng(0).uniform(0.1, 0.9, (6, 10, 3)).astype(np.float32)
        out = src(lr)
        assert out.shape == (6 * spec.scale, 10 * spec.scale, 3) and 0 <= out.min() <= out.max() <= 1


def test_models_that_are_not_sr_sources_are_not_resolved_as_sources() -> None:
    only_trainable = [m for m in TRAINABLE if not m.sr_source]
    assert only_trainable
    for spec in only_trainable:
        with pytest.raises(FinPercepError, match="unknown SR model"):
            sr_spec(spec.name, spec.scale)


def test_adapter_entries_resolve_by_name_or_prefix() -> None:
    for entry in ADAPTER_ENTRIES:
        module, _, attr = entry.factory.partition(":")
        assert callable(getattr(importlib.import_module(module), attr))
        name = entry.name + "some/dir" if entry.name.endswith(":") else entry.name
        assert find_adapter(name) is entry
        assert entry.argument(name) == ("some/dir" if entry.name.endswith(":") else None)
    assert find_adapter(TRAINABLE[0].name) is None


@pytest.mark.parametrize(
    ("argv", "specs"),
    [(["rl", "generators"], (*TRAINABLE, *ADAPTER_ENTRIES)), (["data", "models"], SR_MODELS)],
)
def test_cli_listings_show_every_registered_entry(
    argv: list[str], specs: tuple, capsys: pytest.CaptureFixture[str]
) -> None:
    cli.main(argv)
    lines = capsys.readouterr().out.splitlines()
    assert [tuple(line.split()[:2]) for line in lines] == [(s.name, f"x{s.scale}") for s in specs]
