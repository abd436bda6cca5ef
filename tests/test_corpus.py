"""The photo corpus: the committed list, reading .deb files, fetch (offline, from synthetic packages)."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile

import numpy as np
import pytest
from PIL import Image

from finpercep.cli import main as cli_main
from finpercep.data import corpus
from finpercep.data.corpus import (
    CorpusConfig,
    copy_factors,
    corpus_summary,
    fetch,
    load_corpus_list,
    read_deb_members,
)
from finpercep.data.photos import folder_photos
from finpercep.errors import ConfigError, FinPercepError


def test_committed_list_is_complete_and_split_by_photo():
    photos = load_corpus_list()
    assert len(photos) >= 40
    assert len({p.sha256 for p in photos}) == len(photos), "one copy per photo"
    assert all(len(p.sha256) == 64 and len(p.deb_sha256) == 64 for p in photos)
    counts = {s: sum(p.split == s for p in photos) for s in ("train", "val", "test")}
    assert counts["test"] >= 8 and counts["val"] >= 5 and counts["train"] >= 25
    assert all(p.license and "see the package" not in p.license for p in photos)
    # one version per package, so a fetch downloads each package once
    versions = {}
    for p in photos:
        assert versions.setdefault(p.package, (p.version, p.deb_sha256)) == (p.version, p.deb_sha256)
    # the split is the sha256 order, not a choice: test photos come first in it
    order = sorted(photos, key=lambda p: p.sha256)
    assert [p.split for p in order[: counts["test"]]] == ["test"] * counts["test"]


@pytest.mark.parametrize(
    "size, factors",
    [
        ((1600, 2560), [1, 2, 4]),  # 1600, 800, 400
        ((3391, 6028), [2, 4, 8]),  # 3391 is over max_side: only downscaled copies
        ((512, 773), [1]),  # 256 would be under min_side
        ((300, 400), [1]),  # already under min_side: kept as it is
        ((9000, 9000), [8, 16]),
    ],
)
def test_copy_factors(size, factors):
    assert copy_factors(size, 384, 2048) == factors


def test_copy_factors_when_no_power_of_two_fits_the_window():
    assert copy_factors((5000, 5000), 3000, 3500) == [2]  # 2500 < 3000: the first factor under max_side


def _ar(members: dict[str, bytes]) -> bytes:
    out = b"!<arch>\n"
    for name, data in members.items():
        header = f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode()
        assert len(header) == 60
        out += header + data + (b"\n" if len(data) % 2 else b"")
    return out


def _deb(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:xz") as tar:
        for path, data in files.items():
            info = tarfile.TarInfo(f"./{path}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return _ar({"debian-binary": b"2.0\n", "control.tar.xz": b"", "data.tar.xz": buf.getvalue()})


def _jpeg(h: int, w: int, seed: int, mode: str = "RGB") -> bytes:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).convert(mode).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def fake_corpus(tmp_path):
    """Two packages with three photos (one grayscale) in a folder of .debs, and the list naming them."""
    photos = {
        ("pkg-a", "1.0", "usr/share/a/big.jpg"): _jpeg(800, 1000, 0),
        ("pkg-a", "1.0", "usr/share/a/gray.jpg"): _jpeg(400, 500, 1, "L"),
        ("pkg-b", "2:3.4-1", "usr/share/b/small.jpg"): _jpeg(200, 300, 2),
    }
    debs = tmp_path / "debs"
    debs.mkdir()
    deb_sha = {}
    for pkg, ver in {(k[0], k[1]) for k in photos}:
        files = {k[2]: v for k, v in photos.items() if k[0] == pkg}
        files["usr/share/doc/readme"] = b"not a photo"
        data = _deb(files)
        (debs / f"{pkg}_{ver.replace(':', '%3a')}_all.deb").write_bytes(data)
        deb_sha[pkg] = _sha(data)
    rows = ["name\tsplit\tpackage\tversion\tdeb_sha256\tpath\tsha256\tlicense"]
    for (pkg, ver, path), data, name, split in zip(
        photos, photos.values(), ("big", "gray", "small"), ("train", "val", "test"), strict=True
    ):
        rows.append("\t".join([name, split, pkg, ver, deb_sha[pkg], path, _sha(data), "CC0-1.0"]))
    listing = tmp_path / "list.tsv"
    listing.write_text("\n".join(rows) + "\n")
    return {"debs": debs, "list": listing, "photos": photos}


def test_read_deb_members_returns_the_files_and_names_what_is_missing(fake_corpus):
    deb = next(fake_corpus["debs"].glob("pkg-a_*"))
    got = read_deb_members(deb, ["usr/share/a/big.jpg"])
    assert got["usr/share/a/big.jpg"] == fake_corpus["photos"][("pkg-a", "1.0", "usr/share/a/big.jpg")]
    with pytest.raises(FinPercepError, match="holds no usr/share/a/nope.jpg"):
        read_deb_members(deb, ["usr/share/a/big.jpg", "usr/share/a/nope.jpg"])
    bad = fake_corpus["debs"].parent / "bad.deb"
    bad.write_bytes(b"PK\x03\x04 a zip")
    with pytest.raises(FinPercepError, match="bad.deb: not a Debian package"):
        read_deb_members(bad, ["x"])


def test_fetch_writes_verified_downscaled_copies_per_split_and_resumes(fake_corpus, tmp_path):
    out = tmp_path / "corpus"
    cfg = CorpusConfig(
        out=str(out),
        debs=str(fake_corpus["debs"]),
        corpus_list=str(fake_corpus["list"]),
        min_side=150,
        max_side=500,
    )
    index = fetch(cfg, progress=False)
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    # big: 800 -> over max_side at 1, copies at 400 and 200; gray: 400, 200; small: 200 only
    assert files == [
        "test/small_d1.png",
        "train/big_d2.png",
        "train/big_d4.png",
        "val/gray_d1.png",
        "val/gray_d2.png",
    ]
    big = Image.open(io.BytesIO(fake_corpus["photos"][("pkg-a", "1.0", "usr/share/a/big.jpg")]))
    want = np.asarray(big.convert("RGB").resize((250, 200), Image.Resampling.LANCZOS))
    np.testing.assert_array_equal(np.asarray(Image.open(out / "train/big_d4.png")), want)
    gray = Image.open(out / "val/gray_d1.png")
    assert gray.mode == "RGB" and gray.size == (500, 400)
    data = json.loads(index.read_text())
    assert data["photos"]["big"]["license"] == "CC0-1.0"
    assert data["photos"]["small"]["copies"] == [
        {"file": "test/small_d1.png", "factor": 1, "size": [200, 300]}
    ]
    assert corpus_summary(index) == {
        "train": {"photos": 1, "copies": 2},
        "val": {"photos": 1, "copies": 2},
        "test": {"photos": 1, "copies": 1},
    }
    # resume: finished photos need neither the packages nor a rewrite
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    (out / "val/gray_d2.png").unlink()
    for d in fake_corpus["debs"].glob("pkg-b_*"):
        d.unlink()
    fetch(cfg, progress=False)
    assert (out / "val/gray_d2.png").is_file()
    # the photo with a missing copy is written again, the others are not touched
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items() if "gray" not in p.name)
    with pytest.raises(FinPercepError, match="other settings"):
        fetch(CorpusConfig(**{**cfg.__dict__, "min_side": 100}), progress=False)


def test_fetch_refuses_a_photo_or_package_whose_checksum_differs(fake_corpus, tmp_path):
    text = fake_corpus["list"].read_text()
    big_sha = _sha(fake_corpus["photos"][("pkg-a", "1.0", "usr/share/a/big.jpg")])
    bad_list = tmp_path / "bad.tsv"
    bad_list.write_text(text.replace(big_sha, "0" * 64))
    cfg = CorpusConfig(out=str(tmp_path / "o1"), debs=str(fake_corpus["debs"]), corpus_list=str(bad_list))
    with pytest.raises(FinPercepError, match=r"usr/share/a/big.jpg has sha256 .* the list says 0000"):
        fetch(cfg, progress=False)
    deb = next(fake_corpus["debs"].glob("pkg-b_*"))
    deb.write_bytes(deb.read_bytes() + b"\0\0")
    cfg = CorpusConfig(
        out=str(tmp_path / "o2"), debs=str(fake_corpus["debs"]), corpus_list=str(fake_corpus["list"])
    )
    with pytest.raises(FinPercepError, match="pkg-b_2%3a3.4-1_all.deb: sha256 .* differs from the list"):
        fetch(cfg, progress=False)
    deb.unlink()
    with pytest.raises(FinPercepError, match="no .deb of pkg-b 2:3.4-1"):
        fetch(cfg, progress=False)


def test_download_errors_name_the_package_and_the_fallback(monkeypatch, tmp_path):
    monkeypatch.setattr(corpus.shutil, "which", lambda name: None)
    with pytest.raises(FinPercepError, match="apt-get is not available to download pkg 1.0.*--hr DIR"):
        corpus.download_deb("pkg", "1.0", tmp_path, "auto", [])
    monkeypatch.setattr(corpus.shutil, "which", lambda name: "/usr/bin/" + name)
    calls = []

    def fake_apt(args, cwd):
        calls.append(args[0])
        return subprocess.CompletedProcess(args, 100, "", "E: Version '1.0' for 'pkg' was not found\n")

    monkeypatch.setattr(corpus, "_apt", fake_apt)
    with pytest.raises(
        FinPercepError,
        match="could not download pkg 1.0 .E: Version '1.0' for 'pkg' was not "
        "found.*finpercep data build --hr DIR",
    ):
        corpus.download_deb("pkg", "1.0", tmp_path, "auto", [])
    assert calls == ["download", "update", "download"]  # auto: one update, then one retry
    calls.clear()
    with pytest.raises(FinPercepError):
        corpus.download_deb("pkg", "1.0", tmp_path, "never", [])
    assert calls == ["download"]


def test_download_moves_the_deb_apt_writes(monkeypatch, tmp_path):
    monkeypatch.setattr(corpus.shutil, "which", lambda name: "/usr/bin/" + name)

    def fake_apt(args, cwd):
        if args[0] == "download":
            (cwd / "pkg_1.0_all.deb").write_bytes(b"deb")
        return subprocess.CompletedProcess(args, 0, "", "")

    monkeypatch.setattr(corpus, "_apt", fake_apt)
    got = corpus.download_deb("pkg", "1.0", tmp_path / "debs", "always", [])
    assert got == tmp_path / "debs" / "pkg_1.0_all.deb" and got.read_bytes() == b"deb"
    assert [p.name for p in (tmp_path / "debs").iterdir()] == ["pkg_1.0_all.deb"]


def test_cli_fetch_and_listing(fake_corpus, tmp_path, capsys):
    out = tmp_path / "c"
    cli_main(
        [
            "-q",
            "data",
            "photos",
            "fetch",
            "--out",
            str(out),
            "--debs",
            str(fake_corpus["debs"]),
            "--corpus-list",
            str(fake_corpus["list"]),
            "--splits",
            "train",
            "test",
        ]
    )
    text = capsys.readouterr().out
    assert f"{out / 'train'}: 1 photos, 2 copies" in text and "val" not in text.split("corpus.json")[0]
    assert not (out / "val").exists()
    cli_main(["data", "photos"])
    assert "astronaut" in capsys.readouterr().out
    with pytest.raises(ConfigError):
        CorpusConfig(min_side=600, max_side=500)


def test_several_hr_folders_name_photos_by_folder(tmp_path):
    for split in ("train", "val"):
        (tmp_path / split / "sub").mkdir(parents=True)
        Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / split / "sub" / "x.png")
    assert [p.name for p in folder_photos([tmp_path / "train"])] == ["sub/x.png"]
    names = [p.name for p in folder_photos([tmp_path / "train", tmp_path / "val"])]
    assert names == ["train/sub/x.png", "val/sub/x.png"]
    (tmp_path / "other" / "train").mkdir(parents=True)
    with pytest.raises(FinPercepError, match="different names"):
        folder_photos([tmp_path / "train", tmp_path / "other" / "train"])
