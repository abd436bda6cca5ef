"""End-to-end checks of `finpercep data build` on tiny settings (fast SR sources, 64 px crops)."""

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from finpercep.data.degradation import DegradationConfig
from finpercep.data.manifest import chains, merge, read_manifest
from finpercep.data.synthesis import SynthesisConfig, build
from finpercep.errors import ConfigError, FinPercepError
from finpercep.io import atomic_path, load_image, load_map16

FAST = dict(hr_size=64, sr_models=("bicubic", "lanczos"), seed=3)


def _cfg(out, **kw):
    return SynthesisConfig(out=str(out), **{**FAST, **kw})


def _files(root: Path) -> dict[str, bytes]:
    keep = ("images", "maps", "masks", "lr")
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.relative_to(root).parts[0] in keep
    } | {"manifest.jsonl": (root / "manifest.jsonl").read_bytes()}


@pytest.fixture(scope="module")
def small_build(tmp_path_factory):
    out = tmp_path_factory.mktemp("build") / "a"
    build(_cfg(out, num=3), progress=False)
    return out


def test_manifest_structure_and_chains(small_build):
    rows = read_manifest(small_build)
    assert len(rows) == 3 * (1 + 3 * 2)
    ch = chains(rows)
    assert len(ch) == 3 * 2
    for chain in ch:
        assert [r["role"] for r in chain] == ["gt", "small", "large", "sr"]
        areas = [r["defect_area"] for r in chain]
        assert areas[0] == 0.0 and areas[-1] == 1.0 and areas[1] < areas[2] < 1.0
        for r in chain:
            img = load_image(small_build / r["image"])
            assert img.shape == (64, 64, 3)
            assert load_image(small_build / r["lr"]).shape == (16, 16, 3)
            m = load_map16(small_build / r["map"])
            assert m.shape == (64, 64) and 0.0 <= m.min() and m.max() <= 1.0
            assert abs(float(m.mean()) - r["map_mean"]) < 1e-3
    assert all(rows[i]["id"] < rows[i + 1]["id"] for i in range(len(rows) - 1))


def test_map_is_zero_outside_swap_and_large_mask_contains_small(small_build):
    for chain in chains(read_manifest(small_build)):
        gt = load_image(small_build / chain[0]["image"])
        small_mask = load_image(small_build / chain[1]["mask"])[..., 0]
        large_mask = load_image(small_build / chain[2]["mask"])[..., 0]
        assert np.all(large_mask >= small_mask - 1e-6)
        for r, mask in ((chain[1], small_mask), (chain[2], large_mask)):
            syn = load_image(small_build / r["image"])
            m = load_map16(small_build / r["map"])
            same = np.all(syn == gt, axis=2)
            assert np.all(m[same] == 0.0)
            assert np.all(syn[mask == 0] == gt[mask == 0])
            assert m[mask > 0.5].mean() > 0.0
        assert np.all(load_map16(small_build / chain[0]["map"]) == 0.0)


def test_same_seed_gives_byte_identical_outputs(small_build, tmp_path):
    other = tmp_path / "b"
    build(_cfg(other, num=3), progress=False)
    assert _files(other) == _files(small_build)
    third = tmp_path / "c"
    build(_cfg(third, num=3, seed=4), progress=False)
    assert _files(third)["manifest.jsonl"] != _files(small_build)["manifest.jsonl"]


def test_rerun_skips_finished_groups_and_refuses_other_config(small_build, monkeypatch):
    from finpercep.data import synthesis

    def boom(*a, **k):
        raise AssertionError("finished groups must not be recomputed")

    monkeypatch.setattr(synthesis._Worker, "run", boom)
    before = (small_build / "manifest.jsonl").read_bytes()
    build(_cfg(small_build, num=3), progress=False)
    assert (small_build / "manifest.jsonl").read_bytes() == before
    with pytest.raises(FinPercepError, match="different configuration"):
        build(_cfg(small_build, num=3, semantic_prob=0.9), progress=False)


def test_interrupted_build_resumes_to_same_manifest(small_build, tmp_path, monkeypatch):
    from finpercep.data import synthesis

    out = tmp_path / "resumed"
    real_run = synthesis._Worker.run
    in_flight = []  # kept alive: a process killed mid-write never leaves atomic_path's block

    def flaky(self, index, photo):
        if index == 1:
            in_flight.append(atomic_path(self.out / "images" / "c000001" / "gt.png"))
            in_flight[-1].__enter__().write_bytes(b"half a PNG")
            raise KeyboardInterrupt
        return real_run(self, index, photo)

    monkeypatch.setattr(synthesis._Worker, "run", flaky)
    with pytest.raises(KeyboardInterrupt):
        build(_cfg(out, num=3), progress=False)
    assert (out / "records" / "c000000.json").is_file() and not (out / "records" / "c000001.json").exists()
    assert len(list((out / "images" / "c000001").iterdir())) == 1  # the partial file
    monkeypatch.setattr(synthesis._Worker, "run", real_run)
    build(_cfg(out, num=3), progress=False)
    assert _files(out) == _files(small_build)


def test_killed_process_resumes_to_same_manifest(small_build, tmp_path):
    out = tmp_path / "killed"
    cmd = [
        sys.executable,
        "-m",
        "finpercep.cli",
        "-q",
        "data",
        "build",
        "--out",
        str(out),
        "--num",
        "3",
        "--hr-size",
        "64",
        "--sr-models",
        "bicubic",
        "lanczos",
        "--seed",
        "3",
    ]
    proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.time() + 60
    while time.time() < deadline and not (out / "records" / "c000000.json").exists():
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    subprocess.run(cmd, check=True)
    assert _files(out) == _files(small_build)


def test_shards_merge_to_the_unsharded_manifest(small_build, tmp_path):
    parts = []
    for i in range(2):
        part = tmp_path / f"shard{i}"
        build(_cfg(part, num=3, shard_index=i, num_shards=2), progress=False)
        parts.append(part)
    assert len({r["group"] for r in read_manifest(parts[0])}) == 2
    merged = tmp_path / "merged"
    merge(parts, merged)
    assert _files(merged) == _files(small_build)
    bad = tmp_path / "bad"
    build(_cfg(bad, num=3, seed=9, shard_index=1, num_shards=2), progress=False)
    with pytest.raises(FinPercepError, match="different configuration"):
        merge([parts[0], bad], tmp_path / "merged2")


def test_bad_photos_are_reported_and_do_not_stop_the_build(tmp_path, caplog):
    hr = tmp_path / "hr"
    (hr / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (80, 90, 3), dtype=np.uint8)).save(hr / "good.png")
    Image.fromarray(rng.integers(0, 256, (70, 70), dtype=np.uint16)).save(hr / "sub" / "gray16.png")
    (hr / "corrupt.png").write_bytes(b"\x89PNG not really")
    Image.fromarray(rng.integers(0, 256, (1, 1, 3), dtype=np.uint8)).save(hr / "tiny.png")
    Image.fromarray(rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)).save(hr / "trunc.jpg", quality=95)
    data = (hr / "trunc.jpg").read_bytes()
    (hr / "trunc.jpg").write_bytes(data[: len(data) // 2])
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING):
        build(_cfg(out, num=6, hr=(str(hr),)), progress=False)
    text = caplog.text
    assert "corrupt.png" in text and "tiny.png" in text and "trunc.jpg" in text
    rows = read_manifest(out)
    assert {r["source_image"] for r in rows} == {"good.png", "sub/gray16.png"}
    errors = [json.loads(p.read_text()) for p in (out / "records").glob("*.json")]
    assert any("trunc.jpg" in e.get("error", "") for e in errors)


def test_config_validation():
    with pytest.raises(ConfigError):
        SynthesisConfig(hr_size=66)
    with pytest.raises(ConfigError):
        SynthesisConfig(scale=2)  # degradation.scale stays 4
    assert SynthesisConfig(scale=2, degradation=DegradationConfig(scale=2)).scale == 2
    with pytest.raises(ConfigError):
        SynthesisConfig(sr_folders=("nodir",))
    with pytest.raises(ConfigError):
        SynthesisConfig(shard_index=2, num_shards=2)
    with pytest.raises(ConfigError, match="unknown embedded photos"):
        SynthesisConfig(photos=("grass", "nope"))


def test_hr_folders_and_embedded_photos_build_together(tmp_path):
    for split in ("train", "val"):
        (tmp_path / split).mkdir()
        Image.fromarray(np.full((80, 90, 3), 100, np.uint8)).save(tmp_path / split / "a.png")
    out = tmp_path / "mixed"
    cfg = _cfg(out, num=3, photos=("grass",), hr=(str(tmp_path / "train"), str(tmp_path / "val")))
    build(cfg, progress=False)
    sources = [r["source_image"] for r in read_manifest(out) if r["role"] == "gt"]
    # group i takes photo i mod 3 of [embedded..., folders...]; folder photos are named by their folder
    assert sources == ["grass", "train/a.png", "val/a.png"]


def test_in_process_build_leaves_the_callers_thread_counts(tmp_path):
    """A one-worker build pins torch and OpenCV to 1 thread while it runs, then gives the caller back its
    own: a reward model trained next in the same process must round as it would after a multi-process build
    (the demo's table once depended on ``--workers`` this way)."""
    import cv2
    import torch

    before = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(2)
    cv2.setNumThreads(2)
    try:
        build(_cfg(tmp_path / "t", num=2, photos=("grass", "gravel"), workers=1), progress=False)
        assert (torch.get_num_threads(), cv2.getNumThreads()) == (2, 2)
    finally:
        torch.set_num_threads(before[0])
        cv2.setNumThreads(before[1])


def test_grayscale_embedded_photos_build_as_rgb(tmp_path):
    out = tmp_path / "gray"
    build(_cfg(out, num=2, photos=("grass", "gravel")), progress=False)
    rows = read_manifest(out)
    assert {r["source_image"] for r in rows} == {"grass", "gravel"}
    gt = load_image(out / next(r for r in rows if r["role"] == "gt")["image"])
    assert gt.shape == (64, 64, 3) and np.array_equal(gt[..., 0], gt[..., 2])


def test_builds_from_before_the_photos_option_resume(small_build, tmp_path):
    import shutil

    from finpercep.data.manifest import BUILD_CONFIG

    out = tmp_path / "old"
    shutil.copytree(small_build, out)
    saved = json.loads((out / BUILD_CONFIG).read_text())
    del saved["photos"]
    (out / BUILD_CONFIG).write_text(json.dumps(saved))
    build(_cfg(out, num=3), progress=False)
    assert _files(out) == _files(small_build)
    with pytest.raises(FinPercepError, match="different configuration"):
        build(_cfg(out, num=3, photos=("grass",)), progress=False)


def test_changing_num_extends_or_truncates_the_same_dataset(small_build, tmp_path):
    out = tmp_path / "grow"
    build(_cfg(out, num=2), progress=False)
    two = (out / "manifest.jsonl").read_bytes()
    build(_cfg(out, num=3), progress=False)
    assert _files(out) == _files(small_build)
    build(_cfg(out, num=2), progress=False)
    assert (out / "manifest.jsonl").read_bytes() == two


def test_data_photos_lists_every_embedded_photo(capsys):
    from finpercep.cli import main
    from finpercep.data.photos import EMBEDDED_PHOTOS

    main(["data", "photos"])
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == list(EMBEDDED_PHOTOS)
    assert "grayscale" in next(line for line in lines if line.startswith("grass"))
    assert "colour" in next(line for line in lines if line.startswith("coffee"))


@pytest.mark.parametrize("name", ["grace_hopper", "china", "flower", "coins", "motorcycle_right"])
def test_embedded_photos_load_as_float_rgb_of_the_listed_size(name):
    from finpercep.data.photos import EMBEDDED_PHOTOS, embedded_photos

    (photo,) = embedded_photos([name])
    arr = photo.load()
    assert arr.shape == (*EMBEDDED_PHOTOS[name], 3) and arr.dtype == np.float32
    assert 0.0 <= arr.min() and arr.max() <= 1.0 and arr.std() > 0.05
    if name == "coins":  # grayscale: three equal channels
        assert np.array_equal(arr[..., 0], arr[..., 2])
    else:
        assert np.abs(arr[..., 0] - arr[..., 2]).mean() > 0.01


def test_resuming_after_photos_were_added_is_refused(tmp_path):
    hr = tmp_path / "hr"
    hr.mkdir()
    rng = np.random.default_rng(1)
    for name in ("b.png", "d.png"):
        Image.fromarray(rng.integers(0, 256, (80, 80, 3), dtype=np.uint8)).save(hr / name)
    out = tmp_path / "out"
    build(_cfg(out, num=2, hr=(str(hr),)), progress=False)
    Image.fromarray(rng.integers(0, 256, (80, 80, 3), dtype=np.uint8)).save(hr / "a.png")  # sorts first
    before = _files(out)
    with pytest.raises(FinPercepError, match="c000000 was built from 'b.png'.*now maps it to 'a.png'"):
        build(_cfg(out, num=4, hr=(str(hr),)), progress=False)
    assert _files(out) == before
    (hr / "a.png").unlink()
    build(_cfg(out, num=4, hr=(str(hr),)), progress=False)  # the same list again: the build goes on
    assert [r["source_image"] for r in read_manifest(out) if r["role"] == "gt"] == ["b.png", "d.png"] * 2
