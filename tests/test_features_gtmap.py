"""Dense feature extractors and the ground-truth degradation map M_gt."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage import data

from finpercep.data.features import (
    FEATURE_EXTRACTORS,
    FeatureExtractor,
    FilterBankFeatures,
    HFBackboneFeatures,
    get_feature_extractor,
)
from finpercep.data.gtmap import (
    GTMapConfig,
    feature_diff,
    gt_degradation_map,
    gt_degradation_maps,
    pixel_diff,
)
from finpercep.data.masks import feather, random_mask
from finpercep.errors import ConfigError, FinPercepError


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Iterator[None]:
    """Tiny models are dominated by thread-pool overhead on a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def gt() -> np.ndarray:
    return np.ascontiguousarray(data.astronaut()[::4, ::4].astype(np.float32) / 255.0)  # 128 x 128


@pytest.fixture(scope="module")
def region() -> np.ndarray:
    hard = random_mask(128, 128, (0.2, 0.3), np.random.default_rng(0), shapes=("ellipse", "rectangle"))
    return feather(hard, 2.0)


@pytest.fixture(scope="module")
def fb() -> FilterBankFeatures:
    return FilterBankFeatures()


def _t(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).unsqueeze(0)


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(img, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)


def _noisy(img: np.ndarray, k: float, seed: int = 0) -> np.ndarray:
    noise = np.random.default_rng(seed).standard_normal(img.shape).astype(np.float32)
    return np.clip(img + k * noise, 0.0, 1.0)


def _swap(m: np.ndarray, sr: np.ndarray, gt: np.ndarray) -> np.ndarray:
    return (m[..., None] * sr + (1.0 - m[..., None]) * gt).astype(np.float32)


def _mean_dist(extractor: FeatureExtractor, a: np.ndarray, b: np.ndarray) -> float:
    return float(feature_diff(a, b, extractor).mean())


# ---- filter bank ----------------------------------------------------------------------------------


def test_filterbank_shape_protocol_and_registry(fb: FilterBankFeatures) -> None:
    assert isinstance(fb, FeatureExtractor)
    out = fb(torch.rand(2, 3, 37, 50))
    assert out.shape == (2, fb.channels, 19, 25) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert [s.name for s in FEATURE_EXTRACTORS] == ["filterbank", "dinov2", "dinov3", "hf"]
    assert get_feature_extractor("filterbank").name == "filterbank"


@pytest.mark.parametrize("shape", [(2, 3, 64, 64), (1, 3, 37, 53), (1, 3, 8, 12)])
def test_filterbank_opencv_and_torch_backends_agree(shape: tuple[int, ...]) -> None:
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(0))
    a = FilterBankFeatures(backend="opencv")(x)
    b = FilterBankFeatures(backend="torch")(x)
    assert a.shape == b.shape
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_filterbank_distance_zero_for_identical_and_grows_with_blur(
    fb: FilterBankFeatures, gt: np.ndarray
) -> None:
    assert feature_diff(gt, gt, fb).max() < 1e-5
    d = [_mean_dist(fb, _blur(gt, s), gt) for s in (0.5, 1.0, 2.0, 4.0)]
    assert all(b > a for a, b in zip(d, d[1:], strict=False)), d
    assert d[0] > 1e-4


def test_filterbank_distance_grows_with_noise_colour_and_sharpening(
    fb: FilterBankFeatures, gt: np.ndarray
) -> None:
    noise = [_mean_dist(fb, _noisy(gt, k), gt) for k in (0.01, 0.03, 0.1)]
    assert noise[0] < noise[1] < noise[2], noise
    shift = np.array([1.0, 0.0, -1.0], np.float32)
    colour = [_mean_dist(fb, np.clip(gt + c * shift, 0, 1), gt) for c in (0.03, 0.1, 0.2)]
    assert 0 < colour[0] < colour[1] < colour[2], colour
    sharp = [_mean_dist(fb, np.clip(gt + a * (gt - _blur(gt, 1.5)), 0, 1), gt) for a in (0.5, 1.5, 3.0)]
    assert 0 < sharp[0] < sharp[1] < sharp[2], sharp  # ringing / halos


def test_filterbank_fake_texture_is_far(fb: FilterBankFeatures, gt: np.ndarray) -> None:
    grass = data.grass()[:128, :128].astype(np.float32) / 255.0
    fake = np.repeat(grass[..., None], 3, axis=2)
    assert _mean_dist(fb, fake, gt) > 5 * _mean_dist(fb, _blur(gt, 1.0), gt)


def test_filterbank_contrast_masking(fb: FilterBankFeatures) -> None:
    """The same pixel noise is a larger feature difference on a flat region than inside strong texture."""
    flat = np.full((96, 96, 3), 0.5, np.float32)
    checker = np.kron((np.indices((24, 24)).sum(0) % 2).astype(np.float32), np.ones((4, 4), np.float32))
    texture = np.repeat((0.2 + 0.6 * checker)[..., None], 3, axis=2)
    noise = 0.03 * np.random.default_rng(1).standard_normal(flat.shape).astype(np.float32)
    on_flat = _mean_dist(fb, flat + noise, flat)
    on_texture = _mean_dist(fb, texture + noise, texture)
    assert np.abs(pixel_diff(flat + noise, flat) - pixel_diff(texture + noise, texture)).max() < 1e-6
    assert on_flat > 3 * on_texture


# ---- transformers backbones -----------------------------------------------------------------------


def _save(tmp: Path, name: str, model: torch.nn.Module) -> Path:
    path = tmp / name
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def hf_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tf = pytest.importorskip("transformers")
    torch.manual_seed(0)
    tmp = tmp_path_factory.mktemp("hf")
    common = dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32
    )
    paths = {
        "dinov2": _save(tmp, "dinov2", tf.Dinov2Model(tf.Dinov2Config(patch_size=8, **common))),
        "dinov2reg": _save(
            tmp,
            "dinov2reg",
            tf.Dinov2WithRegistersModel(
                tf.Dinov2WithRegistersConfig(patch_size=8, num_register_tokens=4, **common)
            ),
        ),
        "vit": _save(tmp, "vit", tf.ViTModel(tf.ViTConfig(patch_size=8, **common), add_pooling_layer=False)),
    }
    if hasattr(tf, "DINOv3ViTConfig"):
        cfg = tf.DINOv3ViTConfig(patch_size=8, num_register_tokens=4, **common)
        paths["dinov3"] = _save(tmp, "dinov3", tf.DINOv3ViTModel(cfg))
    return paths


@pytest.mark.parametrize(
    ("key", "registry", "prefix"),
    [("dinov2", "dinov2", 1), ("dinov2reg", "dinov2", 5), ("dinov3", "dinov3", 5), ("vit", "hf", 1)],
)
def test_hf_backbone_patch_grid(hf_models: dict[str, Path], key: str, registry: str, prefix: int) -> None:
    if key not in hf_models:
        pytest.skip(f"{key} not in this transformers version")
    ext = get_feature_extractor(registry, str(hf_models[key]))
    assert isinstance(ext, HFBackboneFeatures) and isinstance(ext, FeatureExtractor)
    x = torch.rand(2, 3, 50, 70, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        grid = ext(x)
        assert grid.shape == (2, 32, 6, 9)  # 50 x 70 -> 48 x 72 -> 6 x 9 patches of 8
        xr = (x - ext.mean) / ext.std
        xr = F.interpolate(xr, size=(48, 72), mode="bilinear", align_corners=False, antialias=True)
        kw = {"interpolate_pos_encoding": True} if key == "vit" else {}
        tokens = ext.model(pixel_values=xr, **kw).last_hidden_state
    assert tokens.shape[1] == prefix + 6 * 9
    expect = tokens[:, prefix:].transpose(1, 2).reshape(2, 32, 6, 9)
    torch.testing.assert_close(grid, expect)
    m = gt_degradation_map(np.zeros((40, 40, 3), np.float32), np.full((40, 40, 3), 0.5, np.float32), ext)
    assert m.shape == (40, 40) and m.dtype == np.float32 and m.min() > 0


def test_hf_backbone_layer_and_image_size(hf_models: dict[str, Path]) -> None:
    last = HFBackboneFeatures.from_pretrained(hf_models["dinov2reg"])
    first = HFBackboneFeatures.from_pretrained(hf_models["dinov2reg"], layer=1, image_size=96)
    x = torch.rand(1, 3, 48, 64)
    with torch.inference_mode():
        a, b = last(x), first(x)
    assert a.shape == (1, 32, 6, 8)
    assert b.shape == (1, 32, 9, 12)  # longest side resized to 96
    assert not torch.allclose(F.interpolate(a, size=(9, 12)), b)


def test_feature_extractor_errors(hf_models: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(FinPercepError, match="needs a local weights folder"):
        get_feature_extractor("dinov3", None)
    with pytest.raises(FinPercepError, match="unknown feature extractor"):
        get_feature_extractor("lpips")
    with pytest.raises(FinPercepError, match="not found"):
        get_feature_extractor("hf", str(tmp_path / "missing"))
    with pytest.raises(FinPercepError, match="expected a model of type"):
        get_feature_extractor("dinov3", str(hf_models["dinov2"]))
    with pytest.raises(FinPercepError, match="not a loadable"):
        get_feature_extractor("hf", str(tmp_path))


# ---- M_gt -----------------------------------------------------------------------------------------


def test_gtmap_config_validation() -> None:
    assert GTMapConfig().norm == "tanh"
    with pytest.raises(ConfigError):
        GTMapConfig(alpha=1.5)
    with pytest.raises(ConfigError):
        GTMapConfig(feat_scale=0.0)
    with pytest.raises(ConfigError):
        GTMapConfig(norm="sigmoid")  # type: ignore[arg-type]


@pytest.mark.parametrize("norm", ["tanh", "clip", "minmax"])
@pytest.mark.parametrize("kind", ["noise", "blur"])
def test_gtmap_zero_outside_swap_positive_inside(
    gt: np.ndarray, region: np.ndarray, norm: str, kind: str
) -> None:
    sr = _noisy(gt, 0.1) if kind == "noise" else _blur(gt, 2.0)
    syn = _swap(region, sr, gt)
    m = gt_degradation_map(syn, gt, cfg=GTMapConfig(norm=norm))  # type: ignore[arg-type]
    assert m.dtype == np.float32 and m.shape == gt.shape[:2]
    assert m.min() >= 0.0 and m.max() <= 1.0
    assert (m[region == 0] == 0).all()
    assert (m[region == 1] > 0).mean() > 0.95
    assert m[region == 1].mean() > 0.1


def test_gtmap_identical_images_all_zero(gt: np.ndarray) -> None:
    for norm in ("tanh", "clip", "minmax"):
        m = gt_degradation_map(gt, gt.copy(), cfg=GTMapConfig(norm=norm))  # type: ignore[arg-type]
        assert m.dtype == np.float32 and not m.any()


def test_gtmap_grows_with_the_difference(gt: np.ndarray, region: np.ndarray) -> None:
    inside = region == 1
    noise = [
        gt_degradation_map(_swap(region, _noisy(gt, k), gt), gt)[inside].mean()
        for k in (0.01, 0.03, 0.1, 0.3)
    ]
    blur = [
        gt_degradation_map(_swap(region, _blur(gt, s), gt), gt)[inside].mean() for s in (0.5, 1.0, 2.0, 4.0)
    ]
    for seq in (noise, blur):
        assert all(b > a for a, b in zip(seq, seq[1:], strict=False)), seq
    assert noise[0] < 0.3 and noise[-1] > 0.7


def test_gtmap_fixed_norm_is_comparable_across_images_minmax_is_not(
    gt: np.ndarray, region: np.ndarray
) -> None:
    weak, strong = _swap(region, _noisy(gt, 0.01), gt), _swap(region, _noisy(gt, 0.2), gt)
    tanh_w, tanh_s = (gt_degradation_map(s, gt).max() for s in (weak, strong))
    mm = GTMapConfig(norm="minmax")
    assert tanh_w < 0.8 * tanh_s
    assert gt_degradation_map(weak, gt, cfg=mm).max() == pytest.approx(1.0)
    assert gt_degradation_map(strong, gt, cfg=mm).max() == pytest.approx(1.0)


def test_gtmap_alpha_one_is_the_gated_pixel_term(gt: np.ndarray, region: np.ndarray) -> None:
    syn = _swap(region, _blur(gt, 2.0), gt)
    cfg = GTMapConfig(alpha=1.0, pixel_scale=0.05)
    expect = np.where(region > 0, np.tanh(pixel_diff(syn, gt) / 0.05), 0.0)
    np.testing.assert_allclose(gt_degradation_map(syn, gt, cfg=cfg), expect, atol=1e-6)
    d_feat = feature_diff(syn, gt)
    assert (d_feat[region == 0] > 0).any()  # features spread beyond the swap: the gate removes that


def test_gtmap_gate_eps_ignores_tiny_changes(gt: np.ndarray) -> None:
    syn = gt.copy()
    syn[:64] = np.clip(syn[:64] + 0.001, 0, 1)
    syn[64:] = _noisy(gt, 0.1)[64:]
    m0 = gt_degradation_map(syn, gt)
    m1 = gt_degradation_map(syn, gt, cfg=GTMapConfig(gate_eps=0.002))
    changed = np.abs(syn - gt).max(axis=2) > 0.002
    assert m0[:60].all() and not m1[:64].any()
    np.testing.assert_array_equal(m1[changed], m0[changed])
    assert not m1[~changed].any()


def test_gtmap_batch_matches_single_and_torch(gt: np.ndarray, region: np.ndarray) -> None:
    srs = [_noisy(gt, 0.05, seed=1), _blur(gt, 1.5), _noisy(gt, 0.2, seed=2)]
    syns = np.stack([_swap(region, srs[0], gt), _swap(region, srs[1], gt), gt, _swap(region, srs[2], gt)])
    single = np.stack([gt_degradation_map(s, gt) for s in syns])
    broadcast = gt_degradation_maps(syns, np.broadcast_to(gt, syns.shape))
    other = np.ascontiguousarray(gt[::-1])
    mixed_gt = np.stack([gt, gt, other, other])
    mixed = gt_degradation_maps(syns, mixed_gt)
    assert broadcast.dtype == np.float32 and broadcast.shape == (4, 128, 128)
    np.testing.assert_allclose(broadcast, single, atol=1e-5)
    np.testing.assert_allclose(mixed[:2], single[:2], atol=1e-5)
    np.testing.assert_allclose(mixed[2], gt_degradation_map(syns[2], other), atol=1e-5)
    assert not broadcast[2].any()  # sr == gt: nothing swapped
    tm = gt_degradation_maps(
        torch.from_numpy(syns).permute(0, 3, 1, 2), torch.from_numpy(mixed_gt).permute(0, 3, 1, 2)
    )
    assert isinstance(tm, torch.Tensor) and tm.shape == (4, 128, 128)
    np.testing.assert_allclose(tm.numpy(), mixed, atol=1e-5)


def test_gtmap_rejects_bad_input(gt: np.ndarray) -> None:
    with pytest.raises(FinPercepError, match="differ in shape"):
        gt_degradation_maps(gt[None], gt[None, :64])
    bad = gt.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(FinPercepError, match="NaN"):
        gt_degradation_map(bad, gt)
    with pytest.raises(FinPercepError):
        gt_degradation_map(gt[..., 0], gt[..., 0])
