import numpy as np
import pytest
import tifffile
from PIL import Image

from finpercep.errors import ImageError
from finpercep.io import (
    atomic_path,
    atomic_write_text,
    list_images,
    load_image,
    load_map16,
    remove_stale_temps,
    save_map16,
    save_png,
)


def _rgb(h=20, w=30, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_rgb_png_round_trip(tmp_path):
    arr = _rgb()
    Image.fromarray(arr).save(tmp_path / "a.png")
    img = load_image(tmp_path / "a.png")
    assert img.dtype == np.float32 and img.shape == (20, 30, 3)
    assert np.array_equal(np.round(img * 255).astype(np.uint8), arr)
    save_png(tmp_path / "b.png", img)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "b.png")), arr)


def test_16bit_png_and_tiff_keep_precision(tmp_path):
    import cv2

    arr = np.random.default_rng(1).integers(0, 65536, (12, 10, 3), dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "a.png"), arr[..., ::-1])
    tifffile.imwrite(tmp_path / "a.tif", arr)
    for name in ("a.png", "a.tif"):
        img = load_image(tmp_path / name)
        assert np.allclose(img, arr / 65535.0, atol=1e-6), name


def test_grayscale_rgba_palette_rules(tmp_path):
    g = np.arange(0, 200, dtype=np.uint8).reshape(10, 20)
    Image.fromarray(g, "L").save(tmp_path / "g.png")
    img = load_image(tmp_path / "g.png")
    assert img.shape == (10, 20, 3) and np.allclose(img[..., 0], img[..., 2])

    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[:2, ..., 3] = 255  # top half opaque red, bottom half transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    img = load_image(tmp_path / "a.png")
    assert np.allclose(img[0, 0], [1, 0, 0]) and np.allclose(img[3, 0], [1, 1, 1])  # over white

    pal = Image.fromarray(_rgb(8, 8)).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    pal.save(tmp_path / "p.png")
    assert load_image(tmp_path / "p.png").shape == (8, 8, 3)

    g16 = (np.arange(64, dtype=np.uint16) * 1000).reshape(8, 8)
    Image.fromarray(g16).save(tmp_path / "g16.png")
    assert np.allclose(load_image(tmp_path / "g16.png")[..., 1], g16 / 65535.0, atol=1e-6)


@pytest.mark.parametrize("kind", ["garbage", "truncated_jpg", "truncated_png", "empty"])
def test_corrupt_files_name_the_file(tmp_path, kind):
    path = tmp_path / f"bad_{kind}.{'jpg' if 'jpg' in kind else 'png'}"
    if kind == "garbage":
        path.write_bytes(b"this is not an image at all" * 10)
    elif kind == "empty":
        path.write_bytes(b"")
    else:
        Image.fromarray(_rgb(64, 64)).save(path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError) as ei:
        load_image(path)
    assert str(path) in str(ei.value)


def test_too_small_too_large_and_nan(tmp_path):
    Image.fromarray(_rgb(1, 1)).save(tmp_path / "one.png")
    with pytest.raises(ImageError, match="too small"):
        load_image(tmp_path / "one.png", min_size=32)
    Image.fromarray(_rgb(50, 50)).save(tmp_path / "big.png")
    with pytest.raises(ImageError, match="too large"):
        load_image(tmp_path / "big.png", max_pixels=100)
    f = np.full((4, 4, 3), np.nan, np.float32)
    tifffile.imwrite(tmp_path / "nan.tif", f, photometric="rgb")
    with pytest.raises(ImageError, match="NaN"):
        load_image(tmp_path / "nan.tif")
    with pytest.raises(ImageError, match="no such file"):
        load_image(tmp_path / "missing.png")


def test_map16_round_trip_and_atomic_text(tmp_path):
    m = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    save_map16(tmp_path / "m.png", m)
    assert np.abs(load_map16(tmp_path / "m.png") - m).max() < 1e-4
    atomic_write_text(tmp_path / "t.txt", "hello")
    assert (tmp_path / "t.txt").read_text() == "hello"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_list_images_recursive_sorted(tmp_path):
    (tmp_path / "b").mkdir()
    for rel in ("b/z.JPG", "a.png", "b/c.webp", "notes.txt"):
        (tmp_path / rel).write_bytes(b"x")
    assert [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)] == [
        "a.png",
        "b/c.webp",
        "b/z.JPG",
    ]


def test_remove_stale_temps_deletes_only_what_a_killed_write_left(tmp_path):
    keep = [tmp_path / "a.png", tmp_path / ".hidden", tmp_path / "sub" / "b.tmp.png"]
    for p in keep:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    killed = [atomic_path(tmp_path / "sub" / "c.png"), atomic_path(tmp_path / "state.pt")]
    partial = [cm.__enter__() for cm in killed]  # never exited, as under SIGKILL
    assert all(p.is_file() for p in partial)
    assert remove_stale_temps(tmp_path) == 2
    assert not any(p.exists() for p in partial)
    assert all(p.is_file() for p in keep)
    assert remove_stale_temps(tmp_path) == 0
