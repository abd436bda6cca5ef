"""PSNR / SSIM against scikit-image and known values; the artifact measure on controlled outputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from finpercep.errors import FinPercepError
from finpercep.eval.metrics import (
    artifact_maps,
    artifact_measure,
    artifact_stats,
    gaussian_window,
    psnr,
    rgb_to_y,
    ssim,
)


def pair(seed: int = 0, size: int = 48, noise: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    ref = np.stack([0.5 + 0.3 * np.sin(8 * xx), 0.4 + 0.4 * yy, 0.3 + 0.2 * np.cos(6 * xx * yy)], -1)
    out = np.clip(ref + noise * rng.standard_normal(ref.shape), 0, 1)
    return out.astype(np.float32), ref.astype(np.float32)


def test_psnr_known_values_and_skimage_agreement() -> None:
    ref = np.full((16, 16, 3), 0.5, np.float32)
    assert psnr(ref + 0.1, ref) == pytest.approx(20.0, abs=1e-4)  # MSE 0.01 -> 20 dB
    assert psnr(ref, ref) == math.inf
    for seed in range(3):
        out, ref = pair(seed)
        expected = peak_signal_noise_ratio(ref.astype(np.float64), out.astype(np.float64), data_range=1.0)
        assert psnr(out, ref) == pytest.approx(expected, abs=1e-3)
        crop = peak_signal_noise_ratio(
            ref[4:-4, 4:-4].astype(np.float64), out[4:-4, 4:-4].astype(np.float64), data_range=1.0
        )
        assert psnr(out, ref, crop_border=4) == pytest.approx(crop, abs=1e-3)
        y = peak_signal_noise_ratio(rgb_to_y(ref), rgb_to_y(out), data_range=1.0)
        assert psnr(out, ref, y_channel=True) == pytest.approx(y, abs=1e-3)


def test_ssim_matches_skimage_gaussian_ssim() -> None:
    kw = dict(data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    for seed, noise in ((0, 0.02), (1, 0.1), (2, 0.3)):
        out, ref = pair(seed, noise=noise)
        a, b = out.astype(np.float64), ref.astype(np.float64)
        assert ssim(out, ref) == pytest.approx(structural_similarity(a, b, channel_axis=2, **kw), abs=1e-3)
        assert ssim(out, ref, crop_border=4) == pytest.approx(
            structural_similarity(a[4:-4, 4:-4], b[4:-4, 4:-4], channel_axis=2, **kw), abs=1e-3
        )
        assert ssim(out, ref, y_channel=True) == pytest.approx(
            structural_similarity(rgb_to_y(a), rgb_to_y(b), **kw), abs=1e-3
        )


def test_ssim_is_one_for_identical_images_and_falls_with_noise() -> None:
    out, ref = pair(0, noise=0.0)
    assert ssim(ref, ref) == pytest.approx(1.0, abs=1e-9)
    values = [ssim(pair(0, noise=n)[0], ref) for n in (0.01, 0.05, 0.2)]
    assert values[0] > values[1] > values[2]
    g = gaussian_window()
    assert g.shape == (11,) and g.sum() == pytest.approx(1.0) and g[5] == g.max()


def test_luma_of_black_and_white() -> None:
    assert rgb_to_y(np.zeros((1, 1, 3)))[0, 0] == pytest.approx(16 / 255)
    assert rgb_to_y(np.ones((1, 1, 3)))[0, 0] == pytest.approx(235 / 255, abs=1e-4)


def test_shape_and_crop_errors_are_clear() -> None:
    a = np.zeros((8, 8, 3), np.float32)
    with pytest.raises(FinPercepError, match="one size"):
        psnr(a, np.zeros((8, 9, 3), np.float32))
    with pytest.raises(FinPercepError, match="nothing left"):
        psnr(a, a + 0.1, crop_border=4)
    with pytest.raises(FinPercepError, match="at least 11"):
        ssim(a, a)


def test_artifact_measure_is_zero_for_the_hr_and_grows_with_damage() -> None:
    _, hr = pair(0, size=64, noise=0.0)
    clean = artifact_measure(hr, hr, 0.5)
    assert clean.fraction == 0.0 and clean.mean == 0.0
    damaged = hr.copy()
    damaged[:32] = np.clip(
        damaged[:32] + 0.3 * np.random.default_rng(0).standard_normal(damaged[:32].shape), 0, 1
    )
    stats = artifact_measure(damaged, hr, 0.5)
    assert 0.4 < stats.fraction <= 0.6  # the damaged top half, give or take the feature term's spread
    maps = artifact_maps(np.stack([hr, damaged]), np.stack([hr, hr]))
    assert maps.shape == (2, 64, 64) and maps[1, 40:].mean() < 0.1 < maps[1, :24].mean()
    both = artifact_stats(maps, 0.5)
    assert both[0] == clean and both[1].fraction == pytest.approx(stats.fraction)
    lower = artifact_stats(maps, 0.1)[1]
    assert lower.fraction >= stats.fraction and lower.mean == stats.mean
    with pytest.raises(FinPercepError, match="tau"):
        artifact_stats(maps, 1.5)
