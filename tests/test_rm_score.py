"""Scoring image files: JSONL, overlays, HTML page, batching by size, tiling of large images."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from finpercep.errors import FinPercepError
from finpercep.io import load_image, save_png
from finpercep.rm import RewardModel, RMConfig, score_paths
from finpercep.rm.score import _tile_starts, heat_colors, heat_overlay, score_tiled

TINY = RMConfig(cnn_widths=(8, 12, 16), cnn_blocks=(1, 1, 1), head_hidden=8, decoder_widths=(4, 8, 8))


@pytest.fixture()
def checkpoint(tmp_path: Path) -> Path:
    model = RewardModel(TINY)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    model.save_pretrained(tmp_path / "ckpt" / "stage_3")
    rm1 = RewardModel(replace(TINY, stage=1))
    rm1.save_pretrained(tmp_path / "ckpt" / "stage_1")
    return tmp_path / "ckpt"


def _img(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((h, w, 3)).astype(np.float32)


def test_score_paths_writes_jsonl_overlays_and_html(tmp_path: Path, checkpoint: Path) -> None:
    src = tmp_path / "in"
    sizes = {"a.png": (48, 64), "b.png": (48, 64), "c.png": (40, 40), "sub/d.png": (48, 64),
             "big.png": (150, 90)}
    for name, (h, w) in sizes.items():
        save_png(src / name, _img(h, w, len(name)))
    (src / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    jsonl = score_paths([src, src / "a.png"], out, checkpoint, batch_size=2, tile=64, overlap=16,
                        progress=False)
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert len(rows) == 6  # a.png given twice is scored once
    by_name = {Path(r["path"]).name: r for r in rows}
    assert "not a readable image" in by_name["broken.png"]["error"]
    model = RewardModel.from_pretrained(checkpoint)
    for name, (h, w) in sizes.items():
        r = by_name[Path(name).name]
        assert (r["height"], r["width"]) == (h, w) and r["stage"] == 3
        assert (out / r["overlay"]).is_file() and (out / r["thumbnail"]).is_file()
        assert load_image(out / r["overlay"]).shape[:2] == (h, w)
        if name != "big.png":  # batched images score exactly as one-by-one
            x = torch.from_numpy(load_image(src / name)).permute(2, 0, 1)[None]
            with torch.no_grad():
                res = model(x)
            assert r["score"] == pytest.approx(float(res.score[0]), abs=1e-5)
            assert r["tiles"] == 1
            expected = heat_colors(res.map[0, 0].numpy())
            np.testing.assert_allclose(load_image(out / r["map"]), expected, atol=0.02)
    assert by_name["big.png"]["tiles"] == len(_tile_starts(150, 64, 16)) * len(_tile_starts(90, 64, 16)) > 1
    page = (out / "index.html").read_text()
    for r in rows:
        if "error" not in r:
            assert r["overlay"] in page and r["thumbnail"] in page and r["map"] in page
    assert (out / "colorbar.png").is_file() and "colorbar.png" in page
    assert "broken.png" in page


def test_heat_overlay_leaves_clean_pixels_and_covers_degraded_ones() -> None:
    img = np.full((2, 3, 3), 0.5, np.float32)
    m = np.array([[0.0, 0.5, 1.0], [-1.0, 2.0, 0.25]], np.float32)
    out = heat_overlay(img, m, alpha=0.8)
    colors = heat_colors(m)
    np.testing.assert_allclose(out[0, 0], img[0, 0])  # map 0: the photo unchanged
    np.testing.assert_allclose(out[1, 0], img[1, 0])  # below 0 is clipped to 0
    np.testing.assert_allclose(out[0, 2], 0.2 * img[0, 2] + 0.8 * colors[0, 2], rtol=1e-6)
    np.testing.assert_allclose(out[1, 1], out[0, 2], rtol=1e-6)  # above 1 is clipped to 1
    np.testing.assert_allclose(out[0, 1], 0.6 * img[0, 1] + 0.4 * colors[0, 1], rtol=1e-6)
    assert colors[0, 2].sum() > colors[0, 1].sum() > colors[0, 0].sum()  # brighter = more degraded
    with pytest.raises(ValueError, match="alpha"):
        heat_overlay(img, m, alpha=1.5)


def test_score_paths_stage_choice_and_errors(tmp_path: Path, checkpoint: Path) -> None:
    save_png(tmp_path / "x.png", _img(40, 40, 0))
    jsonl = score_paths([tmp_path / "x.png"], tmp_path / "o1", checkpoint, stage=1, progress=False)
    assert json.loads(jsonl.read_text())["stage"] == 1
    (tmp_path / "empty").mkdir()
    with pytest.raises(FinPercepError, match="no images"):
        score_paths([tmp_path / "empty"], tmp_path / "o2", checkpoint, progress=False)
    with pytest.raises(FinPercepError, match="no such file"):
        score_paths([tmp_path / "missing.png"], tmp_path / "o2", checkpoint, progress=False)
    with pytest.raises(FinPercepError, match="available stages"):
        score_paths([tmp_path / "x.png"], tmp_path / "o3", checkpoint, stage=2, progress=False)


def test_tiling_covers_the_image_and_matches_untiled_when_one_tile_fits() -> None:
    assert _tile_starts(150, 64, 16) == [0, 48, 86]
    assert _tile_starts(64, 64, 16) == [0]
    model = RewardModel(TINY).eval()
    x = torch.rand(1, 3, 64, 48, generator=torch.Generator().manual_seed(1))
    s, m = score_tiled(model, x, tile=64, overlap=16)
    with torch.no_grad():
        ref = model(x)
    torch.testing.assert_close(s, ref.score)
    torch.testing.assert_close(m, ref.map)
    big = torch.rand(1, 3, 150, 90, generator=torch.Generator().manual_seed(2))
    s, m = score_tiled(model, big, tile=64, overlap=16)
    assert m.shape == (1, 1, 150, 90) and torch.isfinite(s).all()
    assert float(m.min()) >= 0 and float(m.max()) <= 1


def test_score_cli_with_flips_tta_scores_an_image_and_its_mirror_alike(
    tmp_path: Path, checkpoint: Path
) -> None:
    from finpercep.cli import main

    img = _img(48, 64, 7)
    save_png(tmp_path / "in" / "a.png", img)
    save_png(tmp_path / "in" / "b.png", img[:, ::-1].copy())
    scores = {}
    for tta in ("none", "flips"):
        main(["--quiet", "score", str(tmp_path / "in"), "--out", str(tmp_path / tta), "--checkpoint",
              str(checkpoint), "--tta", tta])
        rows = [json.loads(line) for line in (tmp_path / tta / "scores.jsonl").read_text().splitlines()]
        assert {r["tta"] for r in rows} == {tta}
        scores[tta] = {Path(r["path"]).name: r["score"] for r in rows}
    assert scores["none"]["a.png"] != pytest.approx(scores["none"]["b.png"], abs=1e-5)
    assert scores["flips"]["a.png"] == pytest.approx(scores["flips"]["b.png"], abs=1e-5)


def test_tiled_scoring_averages_each_tile_over_the_flips() -> None:
    from finpercep.rm.score import Scorer

    model = RewardModel(TINY).eval()
    x = torch.rand(1, 3, 64, 48, generator=torch.Generator().manual_seed(1))
    s, m = score_tiled(model, x, tile=64, overlap=16, tta="flips")
    with torch.no_grad():
        ref, plain = Scorer(model, "flips")(x), model(x)
    torch.testing.assert_close(s, ref.score)
    torch.testing.assert_close(m, ref.map)
    assert not torch.allclose(m, plain.map)
