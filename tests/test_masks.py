"""Defect masks: area ranges, determinism, segment unions, feathering and the SAM segmenter."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage
from skimage import data

from finpercep.data.masks import (
    MaskConfig,
    SamSegmenter,
    feather,
    make_mask,
    random_mask,
    select_segments,
    semantic_mask,
)
from finpercep.errors import ConfigError, FinPercepError

SMALL = (0.05, 0.15)
LARGE = (0.30, 0.55)


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Iterator[None]:
    """Tiny models are dominated by thread-pool overhead on a busy 2-core machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    img = data.astronaut()[::4, ::4].astype(np.float32) / 255.0
    return np.ascontiguousarray(img[:, :112])  # 128 x 112, non-square


def _in_range(mask: np.ndarray, area_range: tuple[float, float]) -> bool:
    lo, hi = area_range
    return lo <= float(mask.mean()) <= hi


def _is_binary(mask: np.ndarray) -> bool:
    return mask.dtype == np.float32 and bool(np.isin(mask, (0.0, 1.0)).all())


# ---- config ---------------------------------------------------------------------------------------


def test_mask_config_defaults_are_valid_and_bad_values_are_rejected() -> None:
    cfg = MaskConfig()
    assert cfg.small_area[1] <= cfg.large_area[0]
    with pytest.raises(ConfigError, match="random_shapes"):
        MaskConfig(random_shapes=("brush", "star"))
    with pytest.raises(ConfigError, match="small_area"):
        MaskConfig(small_area=(0.2, 0.1))
    with pytest.raises(ConfigError, match="large_area"):
        MaskConfig(large_area=(0.3, 0.3))
    with pytest.raises(ConfigError, match="sam_path"):
        MaskConfig(semantic_method="sam")
    with pytest.raises(ConfigError, match="feather_px"):
        MaskConfig(feather_px=-1.0)


# ---- random masks ---------------------------------------------------------------------------------


@pytest.mark.parametrize("area_range", [SMALL, LARGE, (0.01, 0.03)])
@pytest.mark.parametrize("size", [(64, 96), (256, 256)])
def test_random_mask_area_in_range_for_many_seeds(
    area_range: tuple[float, float], size: tuple[int, int]
) -> None:
    for seed in range(40):
        m = random_mask(*size, area_range, np.random.default_rng(seed))
        assert m.shape == size
        assert _is_binary(m)
        assert _in_range(m, area_range), (seed, m.mean())


@pytest.mark.parametrize("shape", ["brush", "ellipse", "rectangle"])
def test_each_random_shape_alone_respects_the_range(shape: str) -> None:
    for seed in range(15):
        for area_range in (SMALL, LARGE):
            m = random_mask(96, 128, area_range, np.random.default_rng(seed), shapes=(shape,))
            assert _in_range(m, area_range), (shape, seed, m.mean())


def test_random_masks_are_varied_free_form_shapes() -> None:
    masks = [random_mask(128, 128, SMALL, np.random.default_rng(s), shapes=("brush",)) for s in range(10)]
    centroids = {tuple(np.round(ndimage.center_of_mass(m)).astype(int)) for m in masks}
    assert len(centroids) >= 8
    # brush strokes are thin: the bounding box is much larger than the painted area
    fill = [m.sum() / ((np.ptp(np.nonzero(m)[0]) + 1) * (np.ptp(np.nonzero(m)[1]) + 1)) for m in masks]
    assert np.median(fill) < 0.8


def test_random_mask_is_deterministic_per_seed() -> None:
    a = random_mask(80, 120, LARGE, np.random.default_rng(7))
    b = random_mask(80, 120, LARGE, np.random.default_rng(7))
    c = random_mask(80, 120, LARGE, np.random.default_rng(8))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_random_mask_impossible_range_raises_clearly() -> None:
    with pytest.raises(FinPercepError, match="no whole pixel count"):
        random_mask(4, 4, (0.52, 0.55), np.random.default_rng(0))
    with pytest.raises(FinPercepError, match="could not compose"):
        random_mask(32, 32, SMALL, np.random.default_rng(0), max_tries=0)
    with pytest.raises(FinPercepError, match="shapes"):
        random_mask(32, 32, SMALL, np.random.default_rng(0), shapes=("star",))
    with pytest.raises(FinPercepError, match="area range"):
        random_mask(32, 32, (0.3, 0.2), np.random.default_rng(0))


# ---- semantic masks -------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["slic", "felzenszwalb"])
@pytest.mark.parametrize("area_range", [SMALL, LARGE])
def test_semantic_mask_area_in_range(photo: np.ndarray, method: str, area_range: tuple[float, float]) -> None:
    for seed in range(6):
        m = semantic_mask(photo, area_range, np.random.default_rng(seed), method=method)  # type: ignore[arg-type]
        assert m.shape == photo.shape[:2]
        assert _is_binary(m)
        assert _in_range(m, area_range), (method, seed, m.mean())


def test_semantic_mask_quickshift(photo: np.ndarray) -> None:
    m = semantic_mask(photo, SMALL, np.random.default_rng(0), method="quickshift")
    assert _is_binary(m) and _in_range(m, SMALL)


@pytest.mark.parametrize("method", ["slic", "felzenszwalb"])
def test_semantic_mask_is_deterministic_per_seed(photo: np.ndarray, method: str) -> None:
    a = semantic_mask(photo, LARGE, np.random.default_rng(3), method=method)  # type: ignore[arg-type]
    b = semantic_mask(photo, LARGE, np.random.default_rng(3), method=method)  # type: ignore[arg-type]
    c = semantic_mask(photo, LARGE, np.random.default_rng(4), method=method)  # type: ignore[arg-type]
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def _boundary_on_edges(mask: np.ndarray, edges: np.ndarray) -> float:
    b = np.zeros(mask.shape, bool)
    b[:, 1:] |= mask[:, 1:] != mask[:, :-1]
    b[1:, :] |= mask[1:, :] != mask[:-1, :]
    return float(edges[b].mean())


@pytest.mark.parametrize("method", ["slic", "felzenszwalb"])
def test_semantic_mask_follows_image_boundaries(method: str) -> None:
    """On an image of flat coloured tiles, semantic mask edges lie on tile edges far above chance."""
    colours = np.random.default_rng(0).random((8, 8, 3)).astype(np.float32)
    img = np.kron(colours, np.ones((16, 16, 1), np.float32))  # 128 x 128, 64 tiles of 16 x 16
    edges = np.zeros((128, 128), bool)
    for k in range(1, 8):
        edges[:, 16 * k - 2 : 16 * k + 2] = True
        edges[16 * k - 2 : 16 * k + 2, :] = True
    sem = [semantic_mask(img, (0.2, 0.3), np.random.default_rng(s), method=method) for s in range(4)]  # type: ignore[arg-type]
    rnd = [random_mask(128, 128, (0.2, 0.3), np.random.default_rng(s)) for s in range(4)]
    assert all(_in_range(m, (0.2, 0.3)) for m in sem)
    assert np.mean([_boundary_on_edges(m, edges) for m in sem]) > 0.7
    assert np.mean([_boundary_on_edges(m, edges) for m in rnd]) < 0.55  # chance level is edges.mean() ~ 0.39


def test_semantic_mask_on_flat_image_still_works() -> None:
    img = np.full((96, 96, 3), 0.5, np.float32)
    m = semantic_mask(img, SMALL, np.random.default_rng(0), method="slic")
    assert _in_range(m, SMALL)


def test_select_segments_takes_whole_connected_segments() -> None:
    labels = np.kron(np.arange(100).reshape(10, 10), np.ones((6, 6), np.int64))
    for seed in range(20):
        m = select_segments(labels, (0.2, 0.3), np.random.default_rng(seed))
        assert m is not None and _in_range(m, (0.2, 0.3))
        per_label = ndimage.mean(m, labels, index=np.arange(100))
        assert np.isin(per_label, (0.0, 1.0)).all()
        assert ndimage.label(m)[1] == 1  # grown through neighbours: one connected region


def test_select_segments_returns_none_when_all_segments_are_too_large() -> None:
    labels = np.zeros((20, 20), np.int64)
    labels[:, 10:] = 1
    assert select_segments(labels, (0.1, 0.2), np.random.default_rng(0)) is None


def test_semantic_mask_rejects_bad_input(photo: np.ndarray) -> None:
    with pytest.raises(FinPercepError, match=r"\(H, W, 3\)"):
        semantic_mask(photo[..., 0], SMALL, np.random.default_rng(0))
    with pytest.raises(FinPercepError, match="SamSegmenter"):
        semantic_mask(photo, SMALL, np.random.default_rng(0), method="sam")


def test_large_masks_grow_around_an_included_small_mask(photo: np.ndarray) -> None:
    h, w = photo.shape[:2]
    for seed in range(6):
        rng = np.random.default_rng(seed)
        small = random_mask(h, w, SMALL, rng)
        large = random_mask(h, w, LARGE, rng, include=small)
        assert _in_range(large, LARGE) and (large >= small).all()
        small = semantic_mask(photo, SMALL, rng)
        large = semantic_mask(photo, LARGE, rng, include=small)
        assert _is_binary(large) and _in_range(large, LARGE) and (large >= small).all()
    big = np.ones((h, w), np.float32)
    with pytest.raises(FinPercepError, match="included mask"):
        random_mask(h, w, SMALL, np.random.default_rng(0), include=big)
    labels = np.kron(np.arange(16).reshape(4, 4), np.ones((8, 8), np.int64))
    assert select_segments(labels, SMALL, np.random.default_rng(0), include=np.ones((32, 32))) is None


# ---- feathering and make_mask ---------------------------------------------------------------------


@pytest.mark.parametrize("sigma", [1.0, 3.0, 6.0])
def test_feather_soft_mask_is_exact_far_away_and_inside(sigma: float) -> None:
    hard = random_mask(160, 160, LARGE, np.random.default_rng(1), shapes=("ellipse", "rectangle"))
    soft = feather(hard, sigma)
    assert soft.dtype == np.float32 and soft.shape == hard.shape
    assert soft.min() >= 0.0 and soft.max() <= 1.0
    outside = ndimage.distance_transform_edt(hard == 0)
    inside = ndimage.distance_transform_edt(hard == 1)
    assert (soft[outside > 4 * sigma] == 0.0).all()
    assert (soft[inside > 4 * sigma] == 1.0).all()
    edge = (outside > 0) & (outside <= sigma)
    assert ((soft[edge] > 0) & (soft[edge] < 1)).mean() > 0.9
    assert abs(float(soft.mean()) - float(hard.mean())) < 0.02


def test_feather_zero_sigma_keeps_the_hard_mask() -> None:
    hard = random_mask(64, 64, SMALL, np.random.default_rng(2))
    assert np.array_equal(feather(hard, 0.0), hard)
    with pytest.raises(FinPercepError):
        feather(hard, -1.0)


def test_make_mask_returns_soft_mask_and_hard_area(photo: np.ndarray) -> None:
    cfg = MaskConfig(feather_px=2.0)
    for kind in ("random", "semantic"):
        soft, area = make_mask(kind, photo, SMALL, np.random.default_rng(5), cfg)  # type: ignore[arg-type]
        assert SMALL[0] <= area <= SMALL[1]
        assert soft.shape == photo.shape[:2] and soft.dtype == np.float32
        assert 0.0 < soft.mean() < 1.0 and ((soft > 0) & (soft < 1)).any()
    with pytest.raises(FinPercepError, match="kind"):
        make_mask("blob", photo, SMALL, np.random.default_rng(0), cfg)  # type: ignore[arg-type]


# ---- SAM ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_sam(tmp_path_factory: pytest.TempPathFactory) -> Path:
    transformers = pytest.importorskip("transformers")
    import torch

    torch.manual_seed(0)
    vc = transformers.SamVisionConfig(
        hidden_size=32,
        output_channels=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=64,
        patch_size=8,
        window_size=4,
        global_attn_indexes=(1,),
        mlp_dim=64,
        num_pos_feats=8,
    )
    pc = transformers.SamPromptEncoderConfig(
        hidden_size=16, image_size=64, patch_size=8, mask_input_channels=4
    )
    mc = transformers.SamMaskDecoderConfig(
        hidden_size=16, mlp_dim=32, num_attention_heads=2, iou_head_hidden_dim=16
    )
    cfg = transformers.SamConfig(vision_config=vc, prompt_encoder_config=pc, mask_decoder_config=mc)
    path = tmp_path_factory.mktemp("tiny_sam")
    transformers.SamModel(cfg).save_pretrained(path)
    return path


def test_sam_preprocessing_resizes_longest_side_and_pads(tiny_sam: Path, photo: np.ndarray) -> None:
    seg = SamSegmenter.from_pretrained(tiny_sam, points_per_side=4)
    x, (nh, nw) = seg._preprocess(photo)
    assert tuple(x.shape) == (1, 3, 64, 64)
    assert (nh, nw) == (64, 56)  # 128 x 112 -> longest side 64
    assert (x[..., :, nw:] == 0).all() and (x[..., nh:, :] == 0).all()
    assert x[..., :nh, :nw].abs().sum() > 0


def test_sam_candidates_shapes_dtypes_determinism(tiny_sam: Path, photo: np.ndarray) -> None:
    seg = SamSegmenter.from_pretrained(tiny_sam, points_per_side=4, iou_thresh=-1e9)
    masks, scores = seg.candidates(photo)
    masks2, scores2 = seg.candidates(photo)
    assert masks.dtype == bool and masks.ndim == 3 and masks.shape[1:] == photo.shape[:2]
    assert scores.shape == (masks.shape[0],) and scores.dtype == np.float32
    assert 1 <= masks.shape[0] <= 4 * 4 * 3
    assert (np.diff(scores) <= 0).all()
    assert masks.reshape(len(masks), -1).any(axis=1).all()
    assert np.array_equal(masks, masks2) and np.array_equal(scores, scores2)
    labels = seg.partition(photo)
    assert labels.shape == photo.shape[:2] and labels.min() == 0


@pytest.mark.parametrize("iou_thresh", [-1e9, 1e9])
def test_sam_semantic_mask_respects_area(tiny_sam: Path, photo: np.ndarray, iou_thresh: float) -> None:
    seg = SamSegmenter.from_pretrained(tiny_sam, points_per_side=4, iou_thresh=iou_thresh)
    for seed in range(2):
        for area_range in (SMALL, LARGE):
            m = semantic_mask(photo, area_range, np.random.default_rng(seed), method="sam", segmenter=seg)
            assert _is_binary(m) and m.shape == photo.shape[:2]
            assert _in_range(m, area_range)
    a = semantic_mask(photo, SMALL, np.random.default_rng(9), method="sam", segmenter=seg)
    b = semantic_mask(photo, SMALL, np.random.default_rng(9), method="sam", segmenter=seg)
    assert np.array_equal(a, b)


def test_sam_missing_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FinPercepError, match="not found"):
        SamSegmenter.from_pretrained(tmp_path / "nope")
    with pytest.raises(FinPercepError, match="SAM checkpoint"):
        SamSegmenter.from_pretrained(tmp_path)
