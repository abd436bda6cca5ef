"""The photo corpus: real photographs shipped in Debian packages, rebuilt into train / val / test folders.

The committed list (``assets/photo_corpus.tsv``) names, for every photo, the package and version it comes
from, its path inside the ``.deb``, the sha256 of the package and of the photo, its licence (from the
package's copyright file) and its split. :func:`fetch` downloads the packages with ``apt-get download`` (or
takes them from a folder), reads the photos straight out of the ``.deb`` (no install, no ``dpkg``),
verifies every checksum and writes downscaled copies, since a 256-pixel crop of a 4-5 K photo holds little
structure::

    OUT/train/NAME_d1.png, NAME_d2.png, ...   # NAME downscaled by 1, 2, 4, ... (Lanczos)
    OUT/val/...  OUT/test/...
    OUT/corpus.json                            # every copy: photo, split, factor, size, package, licence
    OUT/debs/                                  # the downloaded packages (kept for resuming)

Copies are made at the factors 2**k whose shorter side lies in ``[min_side, max_side]`` (the largest
factor that brings it under ``max_side`` when none does; factor 1 alone for photos already smaller than
``min_side``). Every file is written atomically and a photo whose copies all exist is skipped, so a killed
fetch resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from ..config import check, option
from ..errors import FinPercepError
from ..io import atomic_write_bytes, atomic_write_json, encode_png

log = logging.getLogger(__name__)

CORPUS_LIST = Path(__file__).resolve().parent.parent / "assets" / "photo_corpus.tsv"
SPLITS: tuple[str, ...] = ("train", "val", "test")
FALLBACK = (
    "without the packages, build from your own photos instead: finpercep data build --hr DIR "
    "(e.g. DIV2K_train_HR or LSDIR)"
)
_COLUMNS = ("name", "split", "package", "version", "deb_sha256", "path", "sha256", "license")


@dataclass(frozen=True)
class CorpusPhoto:
    """One photo of the committed list."""

    name: str
    split: Literal["train", "val", "test"]
    package: str
    version: str
    deb_sha256: str
    path: str
    sha256: str
    license: str


def load_corpus_list(path: str | Path = CORPUS_LIST) -> list[CorpusPhoto]:
    """The photos of a corpus list (TSV with the header ``name split package version deb_sha256 path
    sha256 license``)."""
    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines or tuple(lines[0].split("\t")) != _COLUMNS:
        raise FinPercepError(f"{path}: not a corpus list (header must be {' '.join(_COLUMNS)})")
    photos = []
    for i, line in enumerate(lines[1:], start=2):
        cells = line.split("\t")
        if len(cells) != len(_COLUMNS) or cells[1] not in SPLITS:
            raise FinPercepError(
                f"{path}:{i}: expected {len(_COLUMNS)} tab-separated cells, split in {SPLITS}"
            )
        photos.append(CorpusPhoto(*cells))  # type: ignore[arg-type]
    names = [p.name for p in photos]
    if len(set(names)) != len(names):
        raise FinPercepError(f"{path}: duplicate photo names")
    return photos


@dataclass(frozen=True)
class CorpusConfig:
    """Photo corpus from Debian packages (``finpercep data photos fetch``)."""

    out: str = option("runs/photos", help="output folder (train/, val/, test/, corpus.json, debs/)")
    debs: str | None = option(
        None, help="folder that already holds the .deb files (no download); default: apt-get download"
    )
    min_side: int = option(384, help="smallest shorter side of a downscaled copy in pixels")
    max_side: int = option(
        2048, help="largest shorter side of a copy; larger photos are only kept downscaled"
    )
    apt_update: Literal["auto", "always", "never"] = option(
        "auto", help="run apt-get update: auto = once, when a download fails; always = before downloading"
    )
    splits: tuple[str, ...] = option(SPLITS, help="which splits to write")
    corpus_list: str = option(str(CORPUS_LIST), help="the list of photos (TSV)")

    def __post_init__(self) -> None:
        check(
            32 <= self.min_side <= self.max_side,
            f"need 32 <= min_side <= max_side, got {self.min_side}, {self.max_side}",
        )
        check(set(self.splits) <= set(SPLITS) and self.splits, f"splits must be among {SPLITS}")


def copy_factors(size: tuple[int, int], min_side: int, max_side: int) -> list[int]:
    """Downscale factors 2**k of a photo of ``size`` (h, w) whose shorter side is in [min_side, max_side]."""
    short = min(size)
    factors = [f for f in (2**k for k in range(12)) if min_side <= short // f <= max_side]
    if factors:
        return factors
    if short < min_side:
        return [1]
    f = 1
    while short // f > max_side:
        f *= 2
    return [f]


# --- reading .deb files -----------------------------------------------------------------------


def _ar_members(data: bytes, deb: Path) -> dict[str, bytes]:
    if not data.startswith(b"!<arch>\n"):
        raise FinPercepError(f"{deb}: not a Debian package (no ar header)")
    out, pos = {}, 8
    while pos + 60 <= len(data):
        header = data[pos : pos + 60]
        name = header[:16].decode("ascii", "replace").strip().rstrip("/")
        try:
            size = int(header[48:58].decode("ascii").strip())
        except ValueError:
            raise FinPercepError(f"{deb}: corrupt ar member header at byte {pos}") from None
        out[name] = data[pos + 60 : pos + 60 + size]
        pos += 60 + size + (size & 1)
    return out


def _data_tar(deb: Path) -> tarfile.TarFile:
    members = _ar_members(deb.read_bytes(), deb)
    name = next((n for n in members if n.startswith("data.tar")), None)
    if name is None:
        raise FinPercepError(f"{deb}: no data.tar member")
    payload = members[name]
    if name.endswith(".zst"):
        if shutil.which("dpkg-deb") is None:
            raise FinPercepError(f"{deb}: zstd-compressed data and no dpkg-deb to read it")
        payload = subprocess.run(
            ["dpkg-deb", "--fsys-tarfile", str(deb)], check=True, capture_output=True
        ).stdout
        return tarfile.open(fileobj=io.BytesIO(payload), mode="r:")
    return tarfile.open(fileobj=io.BytesIO(payload), mode="r:*")


def read_deb_members(deb: str | Path, paths: Iterable[str]) -> dict[str, bytes]:
    """The bytes of the given files (paths as installed, without the leading slash) inside a ``.deb``."""
    deb = Path(deb)
    wanted = set(paths)
    found: dict[str, bytes] = {}
    try:
        with _data_tar(deb) as tar:
            for member in tar:
                path = member.name.removeprefix("./")
                if path in wanted and member.isfile():
                    f = tar.extractfile(member)
                    assert f is not None
                    found[path] = f.read()
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise FinPercepError(f"{deb}: unreadable package data ({exc})") from None
    missing = sorted(wanted - set(found))
    if missing:
        raise FinPercepError(f"{deb}: the package holds no {', '.join(missing)}")
    return found


# --- downloading ----------------------------------------------------------------------------------


def _apt(args: Sequence[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["apt-get", *args], cwd=cwd, capture_output=True, text=True)


def _last_error(proc: subprocess.CompletedProcess[str]) -> str:
    lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.startswith("E:")]
    return lines[-1] if lines else (proc.stderr.strip().splitlines() or ["no message"])[-1]


def download_deb(package: str, version: str, dest: Path, apt_update: str, updated: list[bool]) -> Path:
    """``apt-get download package=version`` into ``dest`` (atomically); ``updated`` records an update."""
    if shutil.which("apt-get") is None:
        raise FinPercepError(f"apt-get is not available to download {package} {version}; {FALLBACK}")
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest, prefix=".download-") as tmp:
        tmp_dir = Path(tmp)
        if apt_update == "always" and not updated:
            _apt(["update"], tmp_dir)
            updated.append(True)
        proc = _apt(["download", f"{package}={version}"], tmp_dir)
        if proc.returncode != 0 and apt_update == "auto" and not updated:
            log.info("apt-get download %s=%s failed; running apt-get update once", package, version)
            _apt(["update"], tmp_dir)
            updated.append(True)
            proc = _apt(["download", f"{package}={version}"], tmp_dir)
        debs = sorted(tmp_dir.glob("*.deb"))
        if proc.returncode != 0 or len(debs) != 1:
            raise FinPercepError(
                f"apt-get could not download {package} {version} ({_last_error(proc)}); the corpus needs "
                f"exactly this version; {FALLBACK}"
            )
        target = dest / debs[0].name
        debs[0].replace(target)
    return target


def find_deb(folder: Path, package: str, version: str) -> Path | None:
    """The ``.deb`` of ``package`` ``version`` in ``folder`` as apt names it (``PKG_VERSION_ARCH.deb``)."""
    hits = sorted(folder.glob(f"{package}_{version.replace(':', '%3a')}_*.deb"))
    return hits[0] if hits else None


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- the corpus --------------------------------------------------------------------------------


def copy_name(photo: CorpusPhoto, factor: int) -> str:
    return f"{photo.split}/{photo.name}_d{factor}.png"


def _decode(data: bytes, photo: CorpusPhoto) -> Image.Image:
    try:
        im = Image.open(io.BytesIO(data))
        im.load()
    except Exception as exc:
        raise FinPercepError(f"{photo.package}:{photo.path}: not a readable image ({exc})") from None
    return im.convert("RGB")


def _copies(im: Image.Image, factors: Sequence[int]) -> list[tuple[int, np.ndarray]]:
    w, h = im.size
    out = []
    for f in factors:
        scaled = im if f == 1 else im.resize((w // f, h // f), Image.Resampling.LANCZOS)
        out.append((f, np.asarray(scaled)))
    return out


def _photo_done(out: Path, photo: CorpusPhoto, index: dict[str, Any]) -> bool:
    entry = index.get(photo.name)
    return bool(entry) and all((out / c["file"]).is_file() for c in entry["copies"])


def _get_deb(cfg: CorpusConfig, photo: CorpusPhoto, out: Path, updated: list[bool]) -> Path:
    if cfg.debs is not None:
        deb = find_deb(Path(cfg.debs), photo.package, photo.version)
        if deb is None:
            raise FinPercepError(
                f"{cfg.debs}: no .deb of {photo.package} {photo.version}, which the corpus needs"
            )
    else:
        deb = find_deb(out / "debs", photo.package, photo.version)
        if deb is None:
            log.info("downloading %s %s", photo.package, photo.version)
            deb = download_deb(photo.package, photo.version, out / "debs", cfg.apt_update, updated)
    sha = _sha256(deb.read_bytes())
    if sha != photo.deb_sha256:
        raise FinPercepError(
            f"{deb}: sha256 {sha} differs from the list's {photo.deb_sha256} (another build of "
            f"{photo.package} {photo.version}?); delete it to download again; {FALLBACK}"
        )
    return deb


def fetch(cfg: CorpusConfig, *, progress: bool = True) -> Path:
    """Rebuild the corpus folder ``cfg.out`` from the packages; returns the path of ``corpus.json``."""
    from tqdm.auto import tqdm

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    index_path = out / "corpus.json"
    settings = {"min_side": cfg.min_side, "max_side": cfg.max_side, "resample": "lanczos"}
    saved = json.loads(index_path.read_text()) if index_path.is_file() else {}
    if saved and saved.get("settings") != settings:
        raise FinPercepError(
            f"{out}: made with other settings ({saved.get('settings')}); use another --out or those options"
        )
    index: dict[str, Any] = dict(saved.get("photos", {}))
    photos = [p for p in load_corpus_list(cfg.corpus_list) if p.split in cfg.splits]
    todo = [p for p in photos if not _photo_done(out, p, index)]
    log.info(
        "%d of %d photos to write to %s; copies downscaled by 2**k (Lanczos) to a shorter side in [%d, %d]",
        len(todo),
        len(photos),
        out,
        cfg.min_side,
        cfg.max_side,
    )
    updated: list[bool] = []
    by_deb: dict[tuple[str, str], list[CorpusPhoto]] = {}
    for p in todo:
        by_deb.setdefault((p.package, p.version), []).append(p)
    bar = tqdm(total=len(todo), desc="photos", unit="photo", disable=not progress)
    for group in by_deb.values():
        deb = _get_deb(cfg, group[0], out, updated)
        members = read_deb_members(deb, [p.path for p in group])
        for p in group:
            data = members[p.path]
            if _sha256(data) != p.sha256:
                raise FinPercepError(f"{deb}: {p.path} has sha256 {_sha256(data)}, the list says {p.sha256}")
            im = _decode(data, p)
            copies = []
            for f, arr in _copies(im, copy_factors((im.height, im.width), cfg.min_side, cfg.max_side)):
                rel = copy_name(p, f)
                atomic_write_bytes(out / rel, encode_png(arr))
                copies.append({"file": rel, "factor": f, "size": [int(arr.shape[0]), int(arr.shape[1])]})
            index[p.name] = {
                "split": p.split,
                "package": p.package,
                "version": p.version,
                "path": p.path,
                "sha256": p.sha256,
                "license": p.license,
                "original_size": [im.height, im.width],
                "copies": copies,
            }
            atomic_write_json(index_path, {"settings": settings, "photos": index})
            bar.update(1)
    bar.close()
    atomic_write_json(index_path, {"settings": settings, "photos": index})
    return index_path


def corpus_summary(index_path: str | Path) -> dict[str, dict[str, int]]:
    """Photos and copies per split of a fetched corpus."""
    photos = json.loads(Path(index_path).read_text())["photos"]
    summary: dict[str, dict[str, int]] = {}
    for entry in photos.values():
        s = summary.setdefault(entry["split"], {"photos": 0, "copies": 0})
        s["photos"] += 1
        s["copies"] += len(entry["copies"])
    return summary
