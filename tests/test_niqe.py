"""NIQE: equal to BasicSR 1.4.2 on rebuilt scikit-image pictures, worse for blur and noise, MATLAB-style
imresize, border crop, input checks, and the NIQE column of ``evaluate``."""

from __future__ import annotations

import functools
import importlib.util
import json
import math
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.special import gamma

from finpercep.data.photos import embedded_photos
from finpercep.errors import FinPercepError
from finpercep.eval import evaluate
from finpercep.eval.evaluate import LOWER_BETTER, degraded_pairs
from finpercep.eval.niqe import (
    ALPHA_GRID,
    aggd_fit,
    imresize,
    niqe,
    niqe_luma,
    pristine_model,
    resize_matrix,
)

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = json.loads((ROOT / "tests" / "data" / "niqe_reference.json").read_text())


@functools.lru_cache(maxsize=1)
def maker() -> ModuleType:
    """``scripts/make_niqe_reference.py``, for the image recipes (it imports BasicSR only in ``main``)."""
    path = ROOT / "scripts" / "make_niqe_reference.py"
    spec = importlib.util.spec_from_file_location("make_niqe_reference", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@functools.lru_cache(maxsize=1)
def images() -> dict[str, np.ndarray]:
    return {name: img for name, (_, img) in maker().reference_images().items()}


# --------------------------------------------------------------------------------------------------
# the reference


def test_the_packaged_model_is_the_matlab_release_one() -> None:
    m = pristine_model()
    assert m.mu.shape == (36,) and m.cov.shape == (36, 36) and m.window.shape == (7, 7)
    assert np.allclose(m.cov, m.cov.T) and m.window.sum() == pytest.approx(1.0)
    assert np.array_equal(m.window, m.window[::-1, ::-1])


@pytest.mark.parametrize(
    "entry", REFERENCE["images"], ids=[f"{e['name']}-crop{e['crop_border']}" for e in REFERENCE["images"]]
)
def test_equals_basicsr(entry: dict[str, Any]) -> None:
    img = images()[entry["name"]]
    assert list(img.shape) == entry["shape"]
    assert maker().sha256(img) == entry["sha256"], "the rebuilt image differs from the one BasicSR measured"
    assert niqe(img, crop_border=entry["crop_border"]) == pytest.approx(entry["niqe"], abs=1e-3)


def test_the_reference_covers_colour_gray_degraded_and_cropped_images() -> None:
    entries = REFERENCE["images"]
    assert REFERENCE["basicsr_version"] == "1.4.2"
    assert len({e["name"] for e in entries}) >= 4
    assert any(len(e["shape"]) == 2 for e in entries) and any(len(e["shape"]) == 3 for e in entries)
    assert any(e["crop_border"] for e in entries)
    assert max(e["niqe"] for e in entries) > 2 * min(e["niqe"] for e in entries)


@pytest.mark.parametrize("entry", REFERENCE["imresize"], ids=lambda e: f"x{e['scale']}")
def test_imresize_equals_basicsr(entry: dict[str, Any]) -> None:
    src = maker().resize_inputs()[entry["input"]]
    got = imresize(src, entry["scale"], antialiasing=entry["antialiasing"])
    np.testing.assert_allclose(got, np.asarray(entry["output"]), atol=1e-5)


# --------------------------------------------------------------------------------------------------
# behaviour


@pytest.mark.parametrize("name", ["astronaut", "coffee", "chelsea", "camera"])
def test_blur_and_noise_make_niqe_worse_step_by_step(name: str) -> None:
    mk, img = maker(), images()[name]
    clean = niqe(img)
    blur3, blur5 = niqe(mk.box_blur(img, 3)), niqe(mk.box_blur(img, 5))
    noise15, noise30 = niqe(mk.add_noise(img, 15)), niqe(mk.add_noise(img, 30))
    assert 2.0 < clean < 5.0  # natural photographs
    assert clean + 0.5 < blur3 < blur5
    assert clean + 0.5 < noise15 < noise30


def test_crop_border_equals_measuring_the_cropped_image() -> None:
    img = images()["chelsea"]
    for c in (1, 5, 20):
        assert niqe(img, crop_border=c) == niqe(img[c:-c, c:-c])
    assert niqe(img, crop_border=5) != niqe(img)
    h, w = img.shape[:2]  # 300 x 451: a 102 px crop leaves 96 x 247, one more pixel leaves too little
    assert math.isfinite(niqe(img, crop_border=(h - 96) // 2))
    with pytest.raises(FinPercepError, match=r"96x96 block.*245x94 after the 103 px border crop"):
        niqe(img, crop_border=(h - 96) // 2 + 1)
    with pytest.raises(FinPercepError, match="crop_border"):
        niqe(img, crop_border=-1)


def test_input_formats_agree() -> None:
    rgb, gray = images()["coffee"][:200, :300], images()["camera"][:200, :300]
    assert niqe(rgb.astype(np.float32) / 255) == pytest.approx(niqe(rgb), abs=1e-9)
    assert niqe(gray[..., None]) == niqe(gray) == pytest.approx(niqe(gray / 255.0), abs=1e-9)
    y = niqe_luma(rgb)
    assert y.min() >= 16 and y.max() <= 235 and np.array_equal(y, np.round(y))
    # the luma MATLAB's rgb2ycbcr gives for pure red, green, blue and white
    probe = np.zeros((96, 96, 3), np.uint8)
    probe[:24, :, 0] = probe[24:48, :, 1] = probe[48:72, :, 2] = 255
    probe[72:] = 255
    assert niqe_luma(probe)[[0, 24, 48, 72], 0].tolist() == [81.0, 145.0, 41.0, 235.0]
    assert math.isfinite(niqe(images()["astronaut"][:96, :96]))  # one block: MATLAB's zero covariance


@pytest.mark.parametrize(
    ("img", "match"),
    [
        (np.zeros((128, 128, 4), np.uint8), r"RGB \(H, W, 3\) or grayscale \(H, W\).*\(128, 128, 4\)"),
        (np.zeros((2, 128, 128, 3), np.uint8), r"got shape \(2, 128, 128, 3\)"),
        (np.zeros(4096, np.uint8), r"got shape \(4096,\)"),
        (np.full((128, 128), np.nan), "NaN"),
        (np.full((128, 128, 3), 2.0), r"float images in \[0, 1\].*uint8"),
        (np.zeros((128, 128), np.int16), "uint8 or float.*int16"),
        (np.zeros((95, 300, 3), np.uint8), r"96x96 block.*300x95"),
        (np.full((192, 192, 3), 0.5), "flat"),
    ],
    ids=["4-channels", "batch", "1-d", "nan", "0-255-floats", "int16", "too-small", "flat"],
)
def test_bad_input_errors_name_the_problem(img: np.ndarray, match: str) -> None:
    with pytest.raises(FinPercepError, match=match):
        niqe(img)


# --------------------------------------------------------------------------------------------------
# the pieces


def test_imresize_keeps_constants_and_ramps() -> None:
    for scale in (0.5, 0.25, 1 / 3, 0.75, 2.0, 1.5):
        out = imresize(np.full((30, 41, 3), 0.37), scale)
        assert out.shape == (math.ceil(30 * scale), math.ceil(41 * scale), 3)
        np.testing.assert_allclose(out, 0.37, atol=1e-12)
    ramp = np.tile(np.arange(40, dtype=np.float64), (6, 1))  # value = 0-based column
    down = imresize(ramp, 0.5)
    # output column k sits at input position 2k + 0.5; a symmetric kernel keeps a ramp exact away from the
    # mirrored borders (the x1/2 kernel reaches 4 input pixels either side)
    np.testing.assert_allclose(down[:, 2:-2], np.tile(2 * np.arange(2, 18) + 0.5, (3, 1)), atol=1e-12)
    # at the edge the mirror folds taps back (weights: see the next test): 0.3984375 + 2 * 0.1015625 - ...
    assert down[0, 0] == pytest.approx(0.3984375 + 2 * 0.1015625 - 3 * 0.03515625 - 4 * 0.01171875)
    up = imresize(ramp, 2.0)  # output column k sits at (k - 0.5) / 2
    np.testing.assert_allclose(up[:, 4:-4], np.tile(np.arange(4, 76) / 2 - 0.25, (12, 1)), atol=1e-12)


def test_the_half_size_kernel_is_matlabs() -> None:
    # antialiased x1/2: Keys' cubic (a = -0.5) stretched by 2; the input pixels lie 0.5, 1.5, 2.5, 3.5
    # pixels from an output's centre, i.e. 0.25, 0.75, 1.25, 1.75 on the stretched kernel:
    # 1 - 2.5 t^2 + 1.5 t^3 = 0.8671875, 0.2265625; 2 - 4 t + 2.5 t^2 - 0.5 t^3 = -0.0703125, -0.0234375;
    # they sum to 1 per side, so the taps are these halved
    c1, c2, c3, c4 = 0.43359375, 0.11328125, -0.03515625, -0.01171875
    taps = np.array([c4, c3, c2, c1, c1, c2, c3, c4])
    m = resize_matrix(20, 10, 0.5)
    assert m.shape == (10, 20)
    np.testing.assert_allclose(m.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(m[4, 5:13], taps, atol=1e-12)  # output 4 (0-based) centres on 8.5
    assert np.count_nonzero(m[4]) == 8
    # output 0 centres on 0.5: taps for pixels -3, -2, -1 are mirrored onto pixels 2, 1, 0
    np.testing.assert_allclose(m[0, :5], [c1 + c2, c1 + c3, c2 + c4, c3, c4], atol=1e-12)


def test_aggd_fit_recovers_known_shapes_and_picks_the_nearest_grid_value() -> None:
    rng = np.random.default_rng(0)
    normal = rng.normal(0.0, 0.7, size=(3, 200_000))
    alpha, bl, br = aggd_fit(normal)
    np.testing.assert_allclose(alpha, 2.0, atol=0.05)  # a Gaussian is a GGD of shape 2 ...
    np.testing.assert_allclose(bl, 0.7 * math.sqrt(2), rtol=0.02)  # ... and scale sigma * sqrt(2)
    np.testing.assert_allclose(br, 0.7 * math.sqrt(2), rtol=0.02)
    laplace = rng.laplace(0.0, 1.0, size=(2, 200_000))
    np.testing.assert_allclose(aggd_fit(laplace)[0], 1.0, atol=0.05)
    skewed = np.concatenate([-rng.exponential(0.5, (1, 50_000)), rng.exponential(2.0, (1, 50_000))], axis=1)
    _, bl, br = aggd_fit(skewed)
    assert br[0] > 3 * bl[0]
    # the grid search equals MATLAB's min over all grid values (first index on ties, 0.2 when undefined)
    samples = rng.standard_t(df=rng.uniform(1.5, 30, size=(200, 1)), size=(200, 300))
    samples[0] = np.abs(samples[0])  # no negative values: undefined ratio
    alpha = aggd_fit(samples)[0]
    r = gamma(2 / ALPHA_GRID) ** 2 / (gamma(1 / ALPHA_GRID) * gamma(3 / ALPHA_GRID))
    neg, pos = samples < 0, samples > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        g = np.sqrt((samples**2 * neg).sum(1) / neg.sum(1)) / np.sqrt((samples**2 * pos).sum(1) / pos.sum(1))
        rhat = np.abs(samples).mean(1) ** 2 / (samples**2).mean(1)
    rnorm = rhat * (g**3 + 1) * (g + 1) / (g**2 + 1) ** 2
    brute = ALPHA_GRID[np.argmin((r[None, :] - rnorm[:, None]) ** 2, axis=1)]
    assert np.array_equal(alpha, brute) and alpha[0] == pytest.approx(0.2)


# --------------------------------------------------------------------------------------------------
# evaluate()


class _Bicubic(torch.nn.Module):
    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        return F.interpolate(lr, scale_factor=4, mode="bicubic", align_corners=False).clamp(0, 1)


class _Noisy(_Bicubic):
    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        up = super().forward(lr)
        return (up + 0.1 * torch.randn(up.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)


def test_evaluate_reports_a_finite_niqe_per_method() -> None:
    assert "niqe" in LOWER_BETTER
    pairs = degraded_pairs(embedded_photos(["coffee"]), 2, 56, 4, seed=1, degradation="bicubic")  # HR 224
    methods = {"bicubic": _Bicubic(), "noisy": _Noisy()}
    results = {name: evaluate(net, pairs, niqe=True) for name, net in methods.items()}
    for res in results.values():
        assert all(math.isfinite(r["niqe"]) for r in res.rows) and math.isfinite(res.metrics["niqe"])
        assert "niqe" not in res.unavailable
    assert results["bicubic"].metrics["niqe"] != results["noisy"].metrics["niqe"]
    # the value is niqe() of the saved 8-bit output with the PSNR border (the scale)
    sr = _Bicubic()(torch.from_numpy(pairs[0].lr).permute(2, 0, 1)[None])
    out = (torch.round(sr * 255) / 255)[0].permute(1, 2, 0).numpy()
    assert results["bicubic"].rows[0]["niqe"] == pytest.approx(niqe(out, crop_border=4), abs=1e-9)
    assert "niqe" not in evaluate(_Bicubic(), pairs[:1]).rows[0]  # off by default in the API


def test_evaluate_names_outputs_too_small_for_niqe() -> None:
    pairs = degraded_pairs(embedded_photos(["coffee"]), 1, 24, 4, seed=1, degradation="bicubic")  # HR 96
    res = evaluate(_Bicubic(), pairs, niqe=True)
    assert "niqe" not in res.rows[0]
    assert "96x96" in res.unavailable["niqe"] and "88x88" in res.unavailable["niqe"]
