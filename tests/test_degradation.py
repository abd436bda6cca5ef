"""Tests for the Real-ESRGAN second-order degradation."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math

import cv2
import numpy as np
import pytest
from scipy import stats

from finpercep.config import add_arguments, from_args, from_dict, to_dict
from finpercep.data import degradation as deg
from finpercep.data.degradation import (
    KERNEL_TYPES,
    DegradationConfig,
    anisotropic_gaussian_kernel,
    apply_params,
    circular_lowpass_kernel,
    degrade,
    degrade_batch,
    filter2d,
    generalized_gaussian_kernel,
    isotropic_gaussian_kernel,
    jpeg_compress,
    plateau_kernel,
    random_mixed_kernel,
    sample_params,
    simple_degrade,
)
from finpercep.errors import ConfigError, FinPercepError


def texture(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A deterministic photo-like test image: smooth colour field, sinusoidal detail and a sharp edge."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.zeros((h, w, 3), np.float32)
    for c in range(3):
        for _ in range(4):
            fx, fy = rng.uniform(0.01, 0.35, 2)
            img[..., c] += np.sin(fx * xx + fy * yy + rng.uniform(0, 2 * np.pi)).astype(np.float32)
    img = 0.5 + 0.1 * img
    img[:, w // 2 :] += 0.15
    return np.clip(img, 0.0, 1.0)


def smooth(h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    channels = [
        0.5 + 0.3 * np.sin(xx / 9.0),
        0.5 + 0.3 * np.cos(yy / 11.0),
        0.4 + 0.2 * np.sin((xx + yy) / 13.0),
    ]
    img = np.stack(channels, axis=-1)
    return img.astype(np.float32)


def hf_energy(img: np.ndarray) -> float:
    return float(np.mean(cv2.Laplacian(img, cv2.CV_32F) ** 2))


# ------------------------------------------------------------------------------------------- kernels


def _all_kernels() -> list[tuple[str, np.ndarray, bool]]:
    """(name, kernel, fully symmetric?)."""
    return [
        ("iso", isotropic_gaussian_kernel(21, 2.0), True),
        ("aniso", anisotropic_gaussian_kernel(21, 3.0, 1.0, 0.7), False),
        ("generalized_iso", generalized_gaussian_kernel(15, 1.5, beta=0.6), True),
        ("generalized_aniso", generalized_gaussian_kernel(15, 2.5, 0.8, 1.1, beta=3.0), False),
        ("plateau_iso", plateau_kernel(13, 1.2, beta=1.5), True),
        ("plateau_aniso", plateau_kernel(13, 2.0, 0.5, -0.4, beta=1.2), False),
        ("sinc", circular_lowpass_kernel(math.pi / 3, 13), True),
        ("sinc_padded", circular_lowpass_kernel(math.pi / 2, 9, pad_to=21), True),
    ]


@pytest.mark.parametrize("name,kernel,fully_symmetric", _all_kernels(), ids=[k[0] for k in _all_kernels()])
def test_kernels_normalised_and_symmetric(name: str, kernel: np.ndarray, fully_symmetric: bool) -> None:
    assert kernel.ndim == 2 and kernel.shape[0] == kernel.shape[1] and kernel.shape[0] % 2 == 1
    assert np.isfinite(kernel).all()
    assert kernel.sum() == pytest.approx(1.0, abs=1e-9)
    np.testing.assert_allclose(kernel, kernel[::-1, ::-1], atol=1e-12)
    c = kernel.shape[0] // 2
    assert kernel[c, c] == kernel.max()
    if fully_symmetric:
        np.testing.assert_allclose(kernel, kernel.T, atol=1e-12)
        np.testing.assert_allclose(kernel, kernel[::-1, :], atol=1e-12)
    else:
        assert not np.allclose(kernel, kernel.T, atol=1e-6)


@pytest.mark.parametrize("kind", KERNEL_TYPES)
def test_random_mixed_kernel_each_type(kind: str) -> None:
    rng = np.random.default_rng(3)
    for size in (7, 21):
        k = random_mixed_kernel(rng, size, (kind,), (1.0,), (0.2, 3.0), (0.5, 4.0), (1.0, 2.0))
        assert k.shape == (size, size)
        assert k.sum() == pytest.approx(1.0, abs=1e-9)
        assert (k >= 0).all()
        np.testing.assert_allclose(k, k[::-1, ::-1], atol=1e-12)
        if kind.endswith("_iso") or kind == "iso":
            np.testing.assert_allclose(k, k.T, atol=1e-12)


def _principal_axis(kernel: np.ndarray) -> tuple[np.ndarray, float]:
    n = kernel.shape[0]
    ax = np.arange(n) - n // 2
    xx, yy = np.meshgrid(ax, ax)
    m = np.array(
        [
            [np.sum(kernel * xx * xx), np.sum(kernel * xx * yy)],
            [np.sum(kernel * xx * yy), np.sum(kernel * yy * yy)],
        ]
    )
    evals, evecs = np.linalg.eigh(m)
    return evecs[:, 1], evals[1] / evals[0]


@pytest.mark.parametrize("theta", [0.0, math.pi / 6, math.pi / 2, 2.0])
def test_anisotropic_orientation(theta: float) -> None:
    for kernel in (
        anisotropic_gaussian_kernel(41, 4.0, 1.0, theta),
        generalized_gaussian_kernel(41, 4.0, 1.0, theta, beta=2.0),
        plateau_kernel(41, 4.0, 1.0, theta, beta=2.0),
    ):
        axis, elongation = _principal_axis(kernel)
        assert abs(float(axis @ np.array([math.cos(theta), math.sin(theta)]))) > 0.999
        assert elongation > 4.0
    # theta=0 is elongated along columns (x): spread along a row beats spread along a column
    k0 = anisotropic_gaussian_kernel(21, 3.0, 1.0, 0.0)
    assert k0[10, 14] > 100 * k0[14, 10]


def test_anisotropic_covariance_matches_sigmas() -> None:
    kernel = anisotropic_gaussian_kernel(41, 3.0, 1.5, 0.5)
    n = kernel.shape[0]
    ax = np.arange(n) - n // 2
    xx, yy = np.meshgrid(ax, ax)
    cov = np.array(
        [
            [np.sum(kernel * xx * xx), np.sum(kernel * xx * yy)],
            [np.sum(kernel * xx * yy), np.sum(kernel * yy * yy)],
        ]
    )
    c, s = math.cos(0.5), math.sin(0.5)
    rot = np.array([[c, -s], [s, c]])
    np.testing.assert_allclose(cov, rot @ np.diag([9.0, 2.25]) @ rot.T, atol=0.02)


def test_generalized_beta_one_is_gaussian_and_shape_controls_tails() -> None:
    np.testing.assert_allclose(
        generalized_gaussian_kernel(15, 2.0, 1.0, 0.3, beta=1.0),
        anisotropic_gaussian_kernel(15, 2.0, 1.0, 0.3),
        atol=1e-12,
    )
    heavy = generalized_gaussian_kernel(21, 2.0, beta=0.5)
    flat = generalized_gaussian_kernel(21, 2.0, beta=4.0)
    assert heavy[10, 0] > 100 * flat[10, 0]
    assert plateau_kernel(21, 2.0, beta=1.0)[10, 0] > isotropic_gaussian_kernel(21, 2.0)[10, 0] * 10


@pytest.mark.parametrize("cutoff", [math.pi / 5, math.pi / 3, math.pi / 2])
@pytest.mark.parametrize("size", [7, 13, 21])
def test_sinc_kernel_is_lowpass(cutoff: float, size: int) -> None:
    kernel = circular_lowpass_kernel(cutoff, size)
    spec = np.abs(np.fft.fft2(kernel, s=(128, 128)))
    f = np.fft.fftfreq(128) * 2 * np.pi
    radius = np.hypot(f[:, None], f[None, :])
    low = spec[radius < 0.5 * cutoff].mean()
    high = spec[(radius > 1.5 * cutoff) & (radius < np.pi)].mean()
    assert low > 0.7
    assert high < 0.1
    assert spec[0, 0] == pytest.approx(1.0)


def test_kernel_argument_errors() -> None:
    with pytest.raises(ConfigError):
        isotropic_gaussian_kernel(8, 1.0)
    with pytest.raises(ConfigError):
        anisotropic_gaussian_kernel(7, 0.0, 1.0, 0.0)
    with pytest.raises(ConfigError):
        circular_lowpass_kernel(4.0, 7)
    with pytest.raises(ConfigError):
        random_mixed_kernel(np.random.default_rng(0), 7, ("iso", "bogus"), (0.5, 0.5))


def test_filter2d_fast_paths_match_opencv() -> None:
    rng = np.random.default_rng(5)
    img = texture(48, 40)
    cfg = DegradationConfig()
    kernels = [deg._sample_blur_kernel(rng, cfg, "") for _ in range(40)]
    kernels += [
        isotropic_gaussian_kernel(21, 0.3),
        isotropic_gaussian_kernel(21, 3.0),
        anisotropic_gaussian_kernel(21, 3.0, 0.4, 1.0),
        plateau_kernel(21, 3.0, 0.4, 1.0, 2.0),
    ]
    for kernel in kernels:
        ref = cv2.filter2D(img, -1, kernel.astype(np.float32), borderType=cv2.BORDER_REFLECT_101)
        np.testing.assert_allclose(filter2d(img, kernel), ref, atol=1e-4)


# ---------------------------------------------------------------------------------- noise and JPEG


@pytest.mark.parametrize("vals,level", [(256, 10), (256, 128), (256, 255), (4, 200), (64, 3)])
def test_poisson_sampler_matches_poisson_distribution(vals: int, level: int) -> None:
    rng = np.random.default_rng(level)
    lam = level * vals / 255.0
    draws = deg._sample_poisson_levels(np.full((200, 100), level, np.uint8), vals, rng).ravel()
    assert abs(draws.mean() - lam) < 5 * math.sqrt(lam / draws.size) + 1e-9
    assert draws.var() == pytest.approx(lam, rel=0.06)
    ks = np.arange(draws.max() + 1)
    observed = np.bincount(draws, minlength=ks.size) / draws.size
    assert 0.5 * np.abs(observed - stats.poisson.pmf(ks, lam)).sum() < 0.03


def test_poisson_noise_scale_and_gray() -> None:
    img = texture(64, 64)
    rng = np.random.default_rng(0)
    weak = deg.add_poisson_noise(img, 0.2, False, rng) - img
    strong = deg.add_poisson_noise(img, 2.0, False, rng) - img
    assert strong.std() > 5 * weak.std() > 0
    noisy = deg.add_poisson_noise(img, 1.0, True, rng)
    unclipped = ((noisy > 0) & (noisy < 1)).all(-1)
    gray = noisy - img
    assert unclipped.mean() > 0.9
    np.testing.assert_allclose(gray[..., 0][unclipped], gray[..., 1][unclipped], atol=1e-6)
    assert gray[..., 0][unclipped].std() > 0.01
    colour = deg.add_gaussian_noise(img, 10.0, False, rng) - img
    assert not np.allclose(colour[..., 0], colour[..., 1], atol=1e-3)


def test_jpeg_lower_quality_larger_error() -> None:
    img = texture(64, 64, seed=2)
    errs = [float(np.abs(jpeg_compress(img, q) - img).mean()) for q in (10, 40, 95)]
    assert errs[0] > errs[1] > errs[2] > 0
    out = jpeg_compress(img, 50)
    assert out.dtype == np.float32 and out.shape == img.shape
    # RGB order survives the BGR round trip
    red = np.zeros((16, 16, 3), np.float32)
    red[..., 0] = 1.0
    assert jpeg_compress(red, 90)[..., 0].mean() > 0.9 > jpeg_compress(red, 90)[..., 2].mean() + 0.8


# ------------------------------------------------------------------------------------------- pipeline


@pytest.mark.parametrize("scale", [2, 4])
def test_output_shape_range_and_levels(scale: int) -> None:
    cfg = DegradationConfig(scale=scale)
    hr = texture(96, 64)
    rng = np.random.default_rng(0)
    for _ in range(6):
        lr = degrade(hr, cfg, rng)
        assert lr.shape == (96 // scale, 64 // scale, 3)
        assert lr.dtype == np.float32
        assert lr.min() >= 0.0 and lr.max() <= 1.0
        np.testing.assert_allclose(lr * 255.0, np.rint(lr * 255.0), atol=1e-3)


def test_same_seed_identical_different_seed_differs() -> None:
    cfg = DegradationConfig()
    hr = texture(64, 64)
    a = degrade(hr, cfg, np.random.default_rng(7))
    b = degrade(hr, cfg, np.random.default_rng(7))
    assert a.tobytes() == b.tobytes()
    others = [degrade(hr, cfg, np.random.default_rng(s)) for s in (8, 9, 10)]
    assert all(o.tobytes() != a.tobytes() for o in others)


def test_params_split_reproduces_degrade_and_is_image_independent() -> None:
    cfg = DegradationConfig()
    hr = texture(64, 64)
    lr = degrade(hr, cfg, np.random.default_rng(11))
    params = sample_params(cfg, np.random.default_rng(11))
    assert apply_params(hr, params).tobytes() == lr.tobytes()
    again = sample_params(cfg, np.random.default_rng(11))
    assert again.describe() == params.describe()
    assert isinstance(params.describe()["first"], dict)


def test_degrade_batch_items_independent_of_neighbours() -> None:
    cfg = DegradationConfig(scale=2)
    a, b, c = texture(32, 32, 1), texture(32, 32, 2), texture(32, 32, 3)
    first = degrade_batch([a, b], cfg, seed=5)
    second = degrade_batch([c, b], cfg, seed=5)
    assert first[1].tobytes() == second[1].tobytes()
    assert first[0].tobytes() != degrade_batch([a, b], cfg, seed=6)[0].tobytes()


@pytest.mark.parametrize("scale", [2, 4])
@pytest.mark.parametrize("mode,interp", [("area", cv2.INTER_AREA), ("bicubic", cv2.INTER_CUBIC)])
def test_all_disabled_equals_plain_downscale(scale: int, mode: str, interp: int) -> None:
    hr = texture(64, 96)
    cfg = DegradationConfig.downscale_only(scale, mode)
    ref = np.clip(cv2.resize(hr, (96 // scale, 64 // scale), interpolation=interp), 0, 1)
    for seed in range(3):
        lr = degrade(hr, cfg, np.random.default_rng(seed))
        np.testing.assert_allclose(lr, ref, atol=0.5 / 255 + 1e-6)


def test_default_config_degrades_strongly() -> None:
    hr = texture(64, 64)
    plain = degrade(hr, DegradationConfig.downscale_only(4, "area"), np.random.default_rng(0))
    cfg = DegradationConfig()
    diffs = [np.abs(degrade(hr, cfg, np.random.default_rng(s)) - plain).mean() for s in range(4)]
    assert min(diffs) > 2.0 / 255


@pytest.mark.parametrize("gaussian", [True, False])
def test_noise_increases_high_frequency_energy(gaussian: bool) -> None:
    hr = smooth(128, 128)
    clean_cfg = DegradationConfig.downscale_only(4, "area")
    noisy_cfg = dataclasses.replace(
        clean_cfg,
        gaussian_noise_prob2=1.0 if gaussian else 0.0,
        noise_range2=(15.0, 15.0),
        poisson_scale_range2=(2.0, 2.0),
    )
    clean = degrade(hr, clean_cfg, np.random.default_rng(0))
    noisy = degrade(hr, noisy_cfg, np.random.default_rng(0))
    assert hf_energy(noisy) > 3 * hf_energy(clean)


def test_gray_noise_keeps_gray_images_gray() -> None:
    gray_hr = np.repeat(smooth(64, 64)[..., :1], 3, axis=2)
    base = dataclasses.replace(
        DegradationConfig.downscale_only(2, "area"),
        gaussian_noise_prob=1.0,
        noise_range=(12.0, 12.0),
        gaussian_noise_prob2=0.0,
        poisson_scale_range2=(1.0, 1.0),
    )
    gray = degrade(
        gray_hr,
        dataclasses.replace(base, gray_noise_prob=1.0, gray_noise_prob2=1.0),
        np.random.default_rng(0),
    )
    colour = degrade(
        gray_hr,
        dataclasses.replace(base, gray_noise_prob=0.0, gray_noise_prob2=0.0),
        np.random.default_rng(0),
    )
    assert np.array_equal(gray[..., 0], gray[..., 1]) and np.array_equal(gray[..., 1], gray[..., 2])
    assert not np.array_equal(colour[..., 0], colour[..., 1])


def test_final_jpeg_quality_orders_error() -> None:
    hr = texture(128, 128, seed=4)
    base = DegradationConfig.downscale_only(2, "area")
    plain = degrade(hr, base, np.random.default_rng(0))

    def err(q: float) -> float:
        cfg = dataclasses.replace(base, jpeg_prob2=1.0, jpeg_range2=(q, q))
        errs = [np.abs(degrade(hr, cfg, np.random.default_rng(s)) - plain).mean() for s in range(3)]
        return float(np.mean(errs))

    e20, e60, e95 = err(20.0), err(60.0), err(95.0)
    assert e20 > e60 > e95 > 0


def test_blur_reduces_high_frequencies() -> None:
    hr = texture(128, 128)
    base = DegradationConfig.downscale_only(2, "area")
    blurred = dataclasses.replace(
        base, blur_prob=1.0, kernel_list=("iso",), kernel_prob=(1.0,), blur_sigma=(2.5, 3.0), sinc_prob=0.0
    )
    assert hf_energy(degrade(hr, blurred, np.random.default_rng(0))) < 0.5 * hf_energy(
        degrade(hr, base, np.random.default_rng(0))
    )


def test_sampled_choices_follow_recipe_probabilities() -> None:
    cfg = DegradationConfig()
    rng = np.random.default_rng(0)
    params = [sample_params(cfg, rng) for _ in range(1500)]
    n = len(params)
    up = sum(p.first.resize_factor > 1 for p in params) / n
    down = sum(p.first.resize_factor < 1 for p in params) / n
    assert up == pytest.approx(0.2, abs=0.04) and down == pytest.approx(0.7, abs=0.04)
    assert sum(p.second.kernel is not None for p in params) / n == pytest.approx(0.8, abs=0.04)
    assert sum(p.final_sinc is not None for p in params) / n == pytest.approx(0.8, abs=0.04)
    assert sum(p.jpeg_before_resize for p in params) / n == pytest.approx(0.5, abs=0.05)
    assert sum(p.first.noise == "gaussian" for p in params) / n == pytest.approx(0.5, abs=0.05)
    qualities = [p.first.jpeg_quality for p in params]
    assert all(q is not None and 30 <= q <= 95 for q in qualities)
    factors = [p.second.resize_factor for p in params]
    assert min(factors) >= 0.3 and max(factors) <= 1.2
    assert {p.final_mode for p in params} == {"area", "bilinear", "bicubic"}


def test_small_images_survive_extreme_resizes() -> None:
    for seed in range(4):
        params = sample_params(DegradationConfig(), np.random.default_rng(seed))
        params = dataclasses.replace(
            params,
            first=dataclasses.replace(params.first, resize_factor=0.15),
            second=dataclasses.replace(params.second, resize_factor=0.3),
        )
        lr = apply_params(texture(16, 16), params)
        assert lr.shape == (4, 4, 3) and np.isfinite(lr).all()


def test_simple_degrade_is_antialiased_bicubic() -> None:
    hr = smooth(64, 64)
    lr = simple_degrade(hr, 2)
    assert lr.shape == (32, 32, 3) and lr.dtype == np.float32
    np.testing.assert_allclose(lr, cv2.resize(hr, (32, 32), interpolation=cv2.INTER_AREA), atol=0.02)
    checker = np.broadcast_to(((np.indices((32, 32)).sum(0) % 2).astype(np.float32))[..., None], (32, 32, 3))
    np.testing.assert_allclose(simple_degrade(np.ascontiguousarray(checker), 4), 0.5, atol=0.03)
    with pytest.raises(ConfigError):
        simple_degrade(hr, 3)


# ----------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "kwargs",
    [
        {"sinc_prob": 1.5},
        {"gray_noise_prob2": -0.1},
        {"blur_sigma": (3.0, 0.2)},
        {"jpeg_range": (95.0, 30.0)},
        {"noise_range": (5.0, 1.0)},
        {"scale": 3},
        {"scale": 1},
        {"kernel_size_range": (7, 20)},
        {"kernel_size_range": (8, 21)},
        {"kernel_size_range": (21, 7)},
        {"kernel_list": ("iso", "box")},
        {"kernel_prob": (0.5, 0.5)},
        {"kernel_prob2": (1.0, 0.0, 0.0, 0.0, 0.0, -0.1)},
        {"resize_prob": (0.0, 0.0, 0.0)},
        {"resize_range": (1.1, 1.5)},
        {"resize_modes": ("nearest",)},
        {"resize_modes": ()},
        {"jpeg_range2": (0.0, 120.0)},
    ],
)
def test_config_rejects_bad_values(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        DegradationConfig(**kwargs)  # type: ignore[arg-type]


def test_config_defaults_are_x4plus() -> None:
    cfg = DegradationConfig()
    assert cfg.scale == 4 and cfg.kernel_size_range == (7, 21)
    assert cfg.kernel_prob == (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
    assert cfg.resize_prob == (0.2, 0.7, 0.1) and cfg.resize_prob2 == (0.3, 0.4, 0.3)
    assert cfg.blur_sigma2 == (0.2, 1.5) and cfg.final_sinc_prob == 0.8 and cfg.second_blur_prob == 0.8
    assert DegradationConfig(scale=2).scale == 2


def test_config_round_trips_through_cli_and_json() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser, DegradationConfig)
    argv = "--scale 2 --kernel-list iso aniso --kernel-prob 0.7 0.3 --resize-prob 0 1 0"
    argv += " --kernel-size-range 7 13"
    cfg = from_args(DegradationConfig, parser.parse_args(argv.split()))
    assert (cfg.scale, cfg.kernel_list, cfg.kernel_prob) == (2, ("iso", "aniso"), (0.7, 0.3))
    assert cfg.resize_prob == (0.0, 1.0, 0.0) and cfg.kernel_size_range == (7, 13)
    assert from_dict(DegradationConfig, json.loads(json.dumps(to_dict(cfg)))) == cfg
    with pytest.raises(ConfigError):
        from_args(DegradationConfig, parser.parse_args(["--kernel-size-range", "6", "12"]))


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((64, 64), np.float32),
        np.zeros((64, 64, 4), np.float32),
        np.zeros((62, 64, 3), np.float32),
        np.zeros((8, 8, 3), np.float32),
        np.zeros((64, 64, 3), np.uint8),
        np.full((64, 64, 3), 2.0, np.float32),
        [[0.0]],
    ],
    ids=["2d", "rgba", "not_divisible", "too_small", "uint8", "out_of_range", "list"],
)
def test_bad_inputs_raise(bad: object) -> None:
    with pytest.raises(FinPercepError):
        degrade(bad, DegradationConfig(), np.random.default_rng(0))  # type: ignore[arg-type]


def test_nan_input_raises_clear_error() -> None:
    hr = texture(32, 32)
    hr[3, 4, 1] = np.nan
    with pytest.raises(FinPercepError, match="NaN"):
        degrade(hr, DegradationConfig(), np.random.default_rng(0))
