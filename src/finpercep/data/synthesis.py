"""FGR data synthesis: HR photos -> LR -> real SR outputs -> region swaps -> M_gt and ranking chains.

For every GT crop (a *group*), every configured SR source gives one ranking chain
``GT > small swap > large swap > full SR``. The large swap's mask contains the small one, so the
swapped content strictly grows along the chain. See :mod:`finpercep.data.manifest` for the format.

The build is deterministic (each group draws from ``np.random.default_rng([seed, group_index])``),
resumable (a group's files are written atomically, then its record as a completion marker; a re-run
skips finished groups) and shardable (group ``i`` belongs to shard ``i % num_shards``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import multiprocessing as mp
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from tqdm import tqdm

from ..config import check, check_prob, from_dict, option, to_dict
from ..errors import FinPercepError, ImageError
from ..io import atomic_write_json, load_image, remove_stale_temps, save_map16, save_png, to_uint8
from .degradation import DegradationConfig, degrade
from .gtmap import GTMapConfig, gt_degradation_maps
from .manifest import BUILD_CONFIG, MANIFEST, read_manifest, write_manifest
from .masks import MaskConfig, feather, random_mask, semantic_mask
from .photos import EMBEDDED_PHOTOS, Photo, embedded_photos, folder_photos, random_crop_box, usable_photos

log = logging.getLogger(__name__)

DEFAULT_SR_MODELS = ("realesrgan-x4plus", "realsr-df2k", "realesrgan-animevideov3", "bicubic")
ROLE_RANK = {"gt": 0, "small": 1, "large": 2, "sr": 3}


@dataclass(frozen=True)
class SynthesisConfig:
    """FGR data synthesis (``finpercep data build``)."""

    out: str = option("runs/fgr", help="output dataset folder")
    hr: tuple[str, ...] = option(
        (),
        help="HR photo folders (recursive; with several, photo names start with the folder's name); empty: "
        "the embedded photos",
    )
    photos: tuple[str, ...] = option(
        (),
        help="embedded photos (see `finpercep data photos`), used beside the hr folders; empty: the colour "
        "ones when hr is empty, none otherwise; all: every one",
    )
    num: int = option(
        200, help="number of GT crops (groups); each yields 1 + 3 x (number of SR sources) samples"
    )
    hr_size: int = option(256, help="HR crop size in pixels")
    scale: Literal[2, 4] = option(4, help="SR scale factor")
    sr_models: tuple[str, ...] = option(DEFAULT_SR_MODELS, help="SR sources (see `finpercep data models`)")
    sr_folders: tuple[str, ...] = option(
        (), help="precomputed SR outputs as NAME=DIR (matched to HR files by stem)"
    )
    sr_threads: int = option(1, help="threads per ncnn model")
    sr_tile: int = option(128, help="ncnn tile size in LR pixels (0: whole image)")
    semantic_prob: float = option(
        0.5, help="probability that a chain uses a semantic mask instead of a random one"
    )
    features: str = option(
        "filterbank", help="feature extractor for Diff_feat: filterbank, dinov2, dinov3, hf"
    )
    features_path: str | None = option(None, help="local weights folder for a pretrained feature extractor")
    seed: int = option(0, help="random seed; the same seed gives byte-identical outputs")
    workers: int = option(1, help="parallel worker processes")
    shard_index: int = option(0, help="which shard this machine builds")
    num_shards: int = option(1, help="how many shards the build is split into")
    degradation: DegradationConfig = dataclasses.field(default_factory=DegradationConfig)
    mask: MaskConfig = dataclasses.field(default_factory=MaskConfig)
    gtmap: GTMapConfig = dataclasses.field(default_factory=GTMapConfig)

    def __post_init__(self) -> None:
        check(self.num >= 1, f"num must be >= 1, got {self.num}")
        check(
            self.hr_size >= 32 and self.hr_size % self.scale == 0,
            f"hr_size must be >= 32 and divisible by scale {self.scale}, got {self.hr_size}",
        )
        check(self.scale in (2, 4), f"scale must be 2 or 4, got {self.scale}")
        check(
            self.degradation.scale == self.scale,
            f"degradation.scale ({self.degradation.scale}) must equal scale ({self.scale})",
        )
        check(len(self.sr_models) + len(self.sr_folders) >= 1, "at least one SR source is needed")
        named = () if self.photos == ("all",) else self.photos
        unknown = sorted(set(named) - set(EMBEDDED_PHOTOS))
        check(not unknown, f"unknown embedded photos {unknown}; available: {sorted(EMBEDDED_PHOTOS)}")
        check(len(set(self.sr_models)) == len(self.sr_models), f"duplicate SR sources in {self.sr_models}")
        for spec in self.sr_folders:
            check("=" in spec and all(spec.split("=", 1)), f"sr_folders entries are NAME=DIR, got {spec!r}")
        check_prob("semantic_prob", self.semantic_prob)
        check(self.workers >= 1 and self.sr_threads >= 1, "workers and sr_threads must be >= 1")
        check(
            0 <= self.shard_index < self.num_shards,
            f"shard_index must be in [0, num_shards), got {self.shard_index} of {self.num_shards}",
        )


def config_to_json(cfg: SynthesisConfig) -> dict[str, Any]:
    return to_dict(cfg)


def config_from_json(d: dict[str, Any]) -> SynthesisConfig:
    return from_dict(SynthesisConfig, d)


def _sr_sources(cfg: SynthesisConfig) -> list[Any]:
    from ..sr import FolderSR, get_sr_source

    sources = [
        get_sr_source(n, scale=cfg.scale, threads=cfg.sr_threads, tile_size=cfg.sr_tile)
        for n in cfg.sr_models
    ]
    for spec in cfg.sr_folders:
        name, root = spec.split("=", 1)
        sources.append(FolderSR(root, name=name, scale=cfg.scale))
    return sources


def _photos(cfg: SynthesisConfig) -> list[Photo]:
    photos = embedded_photos(cfg.photos) if cfg.photos or not cfg.hr else []
    if cfg.hr:
        photos += folder_photos(cfg.hr)
    return usable_photos(photos, cfg.hr_size)


class _Worker:
    """Per-process state: SR models, feature extractor and a small photo cache."""

    def __init__(self, cfg: SynthesisConfig, out: Path) -> None:
        import cv2
        import torch

        from .features import get_feature_extractor

        torch.set_num_threads(1)
        cv2.setNumThreads(1)
        self.cfg = cfg
        self.out = out
        self.sources = _sr_sources(cfg)
        self.extractor = get_feature_extractor(cfg.features, cfg.features_path)
        self.segmenter = None
        if cfg.mask.semantic_method == "sam":
            from .masks import SamSegmenter

            assert cfg.mask.sam_path is not None  # MaskConfig checks it
            self.segmenter = SamSegmenter.from_pretrained(
                cfg.mask.sam_path,
                points_per_side=cfg.mask.sam_points_per_side,
                iou_thresh=cfg.mask.sam_iou_thresh,
            )
        self._photo_cache: dict[str, np.ndarray] = {}

    def photo(self, p: Photo) -> np.ndarray:
        """The photo as uint8 (crops are quantised to 8 bits anyway); the last 16 are kept."""
        if p.name not in self._photo_cache:
            if len(self._photo_cache) >= 16:
                self._photo_cache.pop(next(iter(self._photo_cache)))
            self._photo_cache[p.name] = to_uint8(p.load())
        return self._photo_cache[p.name]

    def super_resolve(
        self, source: Any, lr8: np.ndarray, photo: Photo, box: tuple[int, int, int, int]
    ) -> np.ndarray:
        """SR output as uint8, computed once per (LR content, model) and cached on disk."""
        key = hashlib.sha1(
            lr8.tobytes() + f"{source.name}|{self.cfg.scale}|{photo.name}|{box}".encode()
        ).hexdigest()[:20]
        path = self.out / "cache" / "sr" / source.name / f"{key}.png"
        if path.is_file():
            try:
                return to_uint8(load_image(path))
            except ImageError:
                log.warning("re-computing corrupt cache entry %s", path)
        sr = source(lr8.astype(np.float32) / 255.0, hr_path=str(photo.path) if photo.path else None, box=box)
        want = (lr8.shape[0] * self.cfg.scale, lr8.shape[1] * self.cfg.scale, 3)
        if sr.shape != want:
            raise FinPercepError(f"SR source {source.name} returned shape {sr.shape}, expected {want}")
        sr8 = to_uint8(sr)
        save_png(path, sr8)
        return sr8

    def mask_pair(
        self, kind: str, img: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """Hard (small, large) masks of one kind; the large one grows around (contains) the small one."""
        mcfg = self.cfg.mask
        h, w = img.shape[:2]
        if kind == "random":
            kw: dict[str, Any] = {"shapes": mcfg.random_shapes, "max_tries": mcfg.max_tries}
            small = random_mask(h, w, mcfg.small_area, rng, **kw)
            return small, random_mask(h, w, mcfg.large_area, rng, include=small, **kw)
        kw = {
            "method": mcfg.semantic_method,
            "segmenter": self.segmenter,
            "n_segments": mcfg.n_segments,
            "max_tries": mcfg.max_tries,
        }
        small = semantic_mask(img, mcfg.small_area, rng, **kw)
        return small, semantic_mask(img, mcfg.large_area, rng, include=small, **kw)

    def run(self, index: int, photo: Photo) -> list[dict[str, Any]]:
        cfg = self.cfg
        gid = f"c{index:06d}"
        sample_seed = int(np.random.SeedSequence([cfg.seed, index]).generate_state(1)[0])
        rng = np.random.default_rng([cfg.seed, index])
        box = random_crop_box(photo.size, cfg.hr_size, rng)
        y, x, ch, cw = box
        full = self.photo(photo)
        if full.shape[:2] != photo.size:
            raise ImageError(
                photo.path or photo.name, f"size changed since the scan: {full.shape[:2]} vs {photo.size}"
            )
        gt8 = np.ascontiguousarray(full[y : y + ch, x : x + cw])
        gt = gt8.astype(np.float32) / 255.0
        lr8 = to_uint8(degrade(gt, cfg.degradation, rng))
        base: dict[str, Any] = {
            "group": gid,
            "source_image": photo.name,
            "crop": list(box),
            "seed": sample_seed,
            "gt": f"images/{gid}/gt.png",
            "lr": f"lr/{gid}.png",
        }
        save_png(self.out / base["lr"], lr8)
        save_png(self.out / base["gt"], gt8)

        syns: list[np.ndarray] = []
        rows: list[dict[str, Any]] = []
        soft_masks: list[np.ndarray | None] = []
        for source in self.sources:
            sr = self.super_resolve(source, lr8, photo, box).astype(np.float32) / 255.0
            kind = "semantic" if rng.random() < cfg.semantic_prob else "random"
            if kind == "semantic" and cfg.mask.semantic_method == "sam":
                kind = "sam"
            small, large = self.mask_pair(kind, gt, rng)
            for role, hard in (("small", small), ("large", large), ("sr", None)):
                if hard is None:
                    m = np.ones(gt.shape[:2], np.float32)
                    syn8 = to_uint8(sr)
                else:
                    m = feather(hard, cfg.mask.feather_px)
                    syn8 = to_uint8(m[..., None] * sr + (1.0 - m[..., None]) * gt)
                sid = f"{source.name}_{role}"
                rows.append(
                    {
                        **base,
                        "id": f"{gid}_{sid}",
                        "role": role,
                        "rank": ROLE_RANK[role],
                        "sr_model": source.name,
                        "image": f"images/{gid}/{sid}.png",
                        "map": f"maps/{gid}/{sid}.png",
                        "mask": None if hard is None else f"masks/{gid}/{sid}.png",
                        "mask_kind": "full" if hard is None else kind,
                        "defect_area": float(m.mean()),
                    }
                )
                syns.append(syn8.astype(np.float32) / 255.0)
                soft_masks.append(None if hard is None else m)
        maps = gt_degradation_maps(
            np.stack(syns), np.broadcast_to(gt, (len(syns), *gt.shape)), self.extractor, cfg.gtmap
        )
        for row, syn, m, mgt in zip(rows, syns, soft_masks, maps, strict=True):
            save_png(self.out / row["image"], syn)
            save_map16(self.out / row["map"], mgt)
            if m is not None:
                save_png(self.out / row["mask"], to_uint8(m))
            row["map_mean"] = float(np.round(mgt, 6).mean())
        gt_row = {
            **base,
            "id": f"{gid}_gt",
            "role": "gt",
            "rank": 0,
            "sr_model": None,
            "image": base["gt"],
            "map": f"maps/{gid}/gt.png",
            "mask": None,
            "mask_kind": "none",
            "defect_area": 0.0,
            "map_mean": 0.0,
        }
        save_map16(self.out / gt_row["map"], np.zeros(gt.shape[:2], np.float32))
        return [gt_row, *rows]


_WORKER: _Worker | None = None


def _init_worker(cfg_json: dict[str, Any], out: str) -> None:
    global _WORKER
    _WORKER = _Worker(config_from_json(cfg_json), Path(out))


def _thread_counts() -> tuple[int, int]:
    import cv2
    import torch

    return torch.get_num_threads(), cv2.getNumThreads()


def _set_thread_counts(torch_threads: int, cv2_threads: int) -> None:
    """Undo :class:`_Worker`'s thread settings after an in-process build: the caller's later steps (a
    reward model trained in the same process) must not run, and round, with however many threads the
    synthesis left them."""
    import cv2
    import torch

    torch.set_num_threads(torch_threads)
    cv2.setNumThreads(cv2_threads)


def _run_group(task: tuple[int, Photo]) -> tuple[int, list[dict[str, Any]] | None, str | None]:
    index, photo = task
    assert _WORKER is not None
    record = _WORKER.out / "records" / f"c{index:06d}.json"
    try:
        rows = _WORKER.run(index, photo)
    except ImageError as exc:
        atomic_write_json(record, {"group": f"c{index:06d}", "error": str(exc)})
        return index, None, str(exc)
    atomic_write_json(record, {"group": f"c{index:06d}", "samples": rows})
    return index, rows, None


def _check_or_write_config(cfg: SynthesisConfig, out: Path) -> None:
    current = json.loads(json.dumps(config_to_json(cfg)))
    path = out / BUILD_CONFIG
    if path.is_file():
        saved = {"photos": [], **json.loads(path.read_text())}  # builds from before the option had none
        ignore = ("workers", "out", "sr_threads", "num")
        diff = sorted(
            k for k in set(saved) | set(current) if k not in ignore and saved.get(k) != current.get(k)
        )
        if diff:
            raise FinPercepError(
                f"{out} holds a build with a different configuration ({', '.join(diff)}); "
                "use another --out folder or delete it"
            )
    atomic_write_json(path, current)


def _check_photo_order(cfg: SynthesisConfig, out: Path, photos: list[Photo]) -> None:
    """Groups already built must come from the photo their index maps to now.

    Group ``i`` uses ``photos[i % len(photos)]``; a photo added to an HR folder (or to the embedded set,
    for ``--photos all``) since the first run would otherwise mix two mappings in one dataset.
    """
    for index in _shard_indices(cfg):
        path = out / "records" / f"c{index:06d}.json"
        if not path.is_file():
            continue
        rows = json.loads(path.read_text()).get("samples") or []
        want = photos[index % len(photos)].name
        if rows and rows[0]["source_image"] != want:
            raise FinPercepError(
                f"{out}: group c{index:06d} was built from {rows[0]['source_image']!r}, but the photo list "
                f"now maps it to {want!r} (photos were added or removed since the build started); "
                "use another --out folder"
            )


def _pending(cfg: SynthesisConfig, out: Path, photos: list[Photo]) -> Iterator[tuple[int, Photo]]:
    for index in _shard_indices(cfg):
        if not (out / "records" / f"c{index:06d}.json").is_file():
            yield index, photos[index % len(photos)]


def _shard_indices(cfg: SynthesisConfig) -> range:
    return range(cfg.shard_index, cfg.num, cfg.num_shards)


def collect_records(cfg: SynthesisConfig, out: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Samples and bad-input errors of this shard's finished groups (indices below ``num`` only)."""
    samples: list[dict[str, Any]] = []
    errors: list[str] = []
    for index in _shard_indices(cfg):
        rec = out / "records" / f"c{index:06d}.json"
        if not rec.is_file():
            continue
        data = json.loads(rec.read_text())
        if "error" in data:
            errors.append(data["error"])
        else:
            samples.extend(data["samples"])
    return samples, errors


def build(cfg: SynthesisConfig, *, progress: bool = True) -> Path:
    """Build (or resume) an FGR dataset; returns the manifest path."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    _check_or_write_config(cfg, out)
    if stale := remove_stale_temps(out):
        log.info("removed %d partial file(s) that a killed build left in %s", stale, out)
    photos = _photos(cfg)
    _check_photo_order(cfg, out, photos)
    tasks = list(_pending(cfg, out, photos))
    total = len(_shard_indices(cfg))
    log.info("%d of %d groups to build in %s (%d photos)", len(tasks), total, out, len(photos))
    bar = tqdm(total=total, initial=total - len(tasks), desc="synthesis", unit="group", disable=not progress)
    cfg_json = config_to_json(cfg)
    pool = None
    restore_threads = None
    try:
        if cfg.workers == 1 or len(tasks) <= 1:
            if tasks:
                restore_threads = _thread_counts()
                _init_worker(cfg_json, str(out))  # pins torch and OpenCV to 1 thread, in this process
            results: Iterator[Any] = map(_run_group, tasks)
        else:
            workers = min(cfg.workers, len(tasks))
            pool = mp.get_context("spawn").Pool(
                workers, initializer=_init_worker, initargs=(cfg_json, str(out))
            )
            results = pool.imap_unordered(_run_group, tasks)
        for _index, _rows, err in results:
            if err:
                log.warning("skipped group: %s", err)
            bar.update(1)
        if pool is not None:
            pool.close()
            pool.join()
    finally:
        if pool is not None:
            pool.terminate()
        if restore_threads is not None:
            _set_thread_counts(*restore_threads)
        bar.close()
    samples, errors = collect_records(cfg, out)
    n = write_manifest(out / MANIFEST, samples)
    log.info("wrote %s: %d samples, %d groups skipped for bad input", out / MANIFEST, n, len(errors))
    return out / MANIFEST


def dataset_summary(path: str | Path) -> dict[str, Any]:
    rows = read_manifest(path)
    by_role: dict[str, list[float]] = {}
    for r in rows:
        by_role.setdefault(r["role"], []).append(r["map_mean"])
    return {
        "samples": len(rows),
        "groups": len({r["group"] for r in rows}),
        "sr_models": sorted({r["sr_model"] for r in rows if r["sr_model"]}),
        "mean_map_by_role": {k: float(np.mean(v)) for k, v in sorted(by_role.items())},
    }
