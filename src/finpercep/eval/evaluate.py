"""Evaluate an SR generator on LR/HR pairs: fidelity, the GT-based artifact measure, a held-out judge.

``finpercep eval --generator NAME_OR_DIR --judge DIR --out DIR`` and ``run_eval(EvalConfig(...))`` run the
same code. Pairs are either cut from held-out HR photos and degraded with a fixed seed (deterministic:
pair ``i`` depends only on ``(seed, i)``) or read whole from paired LR/HR folders.

Per pair (means in ``eval.json``, every pair in ``per_image.csv``):

* ``psnr``, ``ssim`` (RGB) and ``psnr_y``, ``ssim_y`` (BT.601 luma), ``crop_border`` = scale by default;
* ``artifact_frac`` / ``artifact_mean``: share of pixels with ``M_gt(output, HR) > tau`` and the mean of
  ``M_gt`` (:mod:`finpercep.data.gtmap`), a GT-based measure of local artifacts;
* ``judge``: the score of a *held-out judge* reward model -- one trained on other photos with another
  seed and never used as a training reward, so it cannot have been hacked directly; ``judge_hr`` is its
  score of the HR images, for scale;
* ``score:<name>``: scores of further reward models (e.g. the training rewards RM_0 and RM_N);
* ``lpips``, ``musiq``, ``maniqa``, ``clipiqa`` via :mod:`.pyiqa_metrics` when their weights are local;
  otherwise ``eval.json`` lists them under ``unavailable`` with the reason;
* ``niqe`` (no-reference, lower is better; :mod:`.niqe`, the MATLAB release's model) of the 8-bit output
  with the same border crop, when every output keeps at least 96x96 pixels after it; otherwise it is
  listed under ``unavailable``.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from ..config import check, option, to_dict
from ..data.degradation import DegradationConfig, degrade, simple_degrade
from ..data.gtmap import GTMapConfig
from ..data.photos import Photo, embedded_photos, folder_photos, random_crop_box, usable_photos
from ..errors import FinPercepError, ImageError
from ..io import atomic_write_json, atomic_write_text, list_images, load_image, save_png
from ..rm.model import RewardModel
from .metrics import artifact_maps, artifact_stats, psnr, ssim
from .niqe import BLOCK_SIZE as NIQE_BLOCK
from .niqe import niqe as niqe_score
from .pyiqa_metrics import IQA_NAMES, IQAScorer

logger = logging.getLogger(__name__)

EVAL_PHOTOS: tuple[str, ...] = ("coffee", "motorcycle_left")
"""Embedded photos held out for evaluation (the reward model validates on them; RL never trains on them)."""
EVAL_JSON = "eval.json"
PER_IMAGE_CSV = "per_image.csv"
BASE_METRICS = ("psnr", "psnr_y", "ssim", "ssim_y", "artifact_frac", "artifact_mean")
LOWER_BETTER = {"artifact_frac", "artifact_mean", "lpips", "niqe"}

Generator = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class EvalConfig:
    """Evaluation of an SR generator (``finpercep eval``)."""

    generator: str = option(
        "realesrgan-animevideov3", help="registered name, exported run folder or .pth/.safetensors"
    )
    scale: int | None = option(None, help="upscale factor; none = the generator's default")
    judge: str | None = option(None, help="held-out judge reward model (folder); none = no judge score")
    judge_stage: int | None = option(None, help="judge stage RM_k; none = its highest stage")
    photos: tuple[str, ...] = option(EVAL_PHOTOS, help="embedded photos the evaluation pairs are cut from")
    hr_folders: tuple[str, ...] = option(
        (), help="HR photo folders to cut pairs from instead of embedded photos"
    )
    paired_lr: str | None = option(None, help="folder of LR images (whole-image pairs with paired_hr)")
    paired_hr: str | None = option(None, help="folder of HR images named like those in paired_lr")
    num_pairs: int = option(16, help="number of crops cut from the photos")
    lr_size: int = option(64, help="LR crop size (the HR crop is scale times larger)")
    degradation: Literal["realesrgan", "bicubic"] = option("realesrgan", help="how LR crops are made")
    seed: int = option(2024, help="seed of the crops and their degradation")
    tau: float = option(0.8, help="artifact threshold on M_gt(output, HR)")
    crop_border: int | None = option(None, help="border pixels ignored by PSNR/SSIM; none = the scale")
    iqa: tuple[str, ...] = option(IQA_NAMES, help="pyiqa metrics to compute when their weights are local")
    iqa_weights: str | None = option(None, help="folder with the pyiqa weight files (nothing is downloaded)")
    niqe: bool = option(True, help="NIQE of every output (needs 96x96 pixels after the border crop)")
    batch_size: int = option(4, help="pairs per forward pass")
    save_outputs: int = option(4, help="write this many outputs (with LR and HR) as PNG")
    out: str = option("runs/eval", help="output folder")
    threads: int = option(0, help="torch threads (0 = default)")

    def __post_init__(self) -> None:
        check(self.scale is None or self.scale in (2, 4), f"scale must be 2, 4 or none, got {self.scale}")
        check(
            (self.paired_lr is None) == (self.paired_hr is None),
            "give both paired_lr and paired_hr, or neither",
        )
        check(not (self.paired_lr and self.hr_folders), "use either hr_folders or paired folders, not both")
        check(self.num_pairs >= 1, "num_pairs must be >= 1")
        check(self.lr_size >= 8, "lr_size must be >= 8")
        check(self.degradation in ("realesrgan", "bicubic"), "degradation must be realesrgan or bicubic")
        check(0.0 <= self.tau < 1.0, f"tau must lie in [0, 1), got {self.tau}")
        check(self.crop_border is None or self.crop_border >= 0, "crop_border must be >= 0")
        check(self.batch_size >= 1, "batch_size must be >= 1")
        check(self.save_outputs >= 0 and self.threads >= 0, "save_outputs and threads must be >= 0")
        for name in self.iqa:
            check(name in IQA_NAMES, f"unknown IQA metric {name!r}; available: {', '.join(IQA_NAMES)}")


# --------------------------------------------------------------------------------------------------
# pairs


@dataclass(frozen=True)
class EvalPair:
    """One LR input and its HR ground truth (float32 ``(h, w, 3)`` and ``(s*h, s*w, 3)``)."""

    name: str
    lr: np.ndarray = field(repr=False)
    hr: np.ndarray = field(repr=False)


def degraded_pairs(
    photos: Sequence[Photo],
    num: int,
    lr_size: int,
    scale: int,
    seed: int,
    degradation: Literal["realesrgan", "bicubic"] = "realesrgan",
) -> list[EvalPair]:
    """``num`` crops taken in turn from ``photos``; crop ``i`` and its degradation depend on ``(seed, i)``."""
    if not photos:
        raise FinPercepError("no photos to cut evaluation pairs from")
    hr_size = lr_size * scale
    photos = usable_photos(photos, hr_size)
    load = functools.lru_cache(maxsize=len(photos))(Photo.load)
    deg_cfg = DegradationConfig(scale=scale)
    pairs = []
    for i in range(num):
        photo = photos[i % len(photos)]
        rng = np.random.default_rng([seed, i])
        img = load(photo)
        y, x, h, w = random_crop_box(img.shape[:2], hr_size, rng)
        hr = np.ascontiguousarray(img[y : y + h, x : x + w])
        lr = simple_degrade(hr, scale) if degradation == "bicubic" else degrade(hr, deg_cfg, rng)
        pairs.append(EvalPair(f"{i:03d}_{Path(photo.name).stem}_y{y}_x{x}", lr, hr))
    return pairs


def folder_pairs(lr_root: str | Path, hr_root: str | Path, scale: int) -> list[EvalPair]:
    """Whole-image pairs: every LR image below ``lr_root`` with the same-named HR image below ``hr_root``."""
    lr_root, hr_root = Path(lr_root), Path(hr_root)
    hr_by_key = {p.relative_to(hr_root).with_suffix("").as_posix(): p for p in list_images(hr_root)}
    pairs = []
    for lr_path in list_images(lr_root):
        key = lr_path.relative_to(lr_root).with_suffix("").as_posix()
        if key not in hr_by_key:
            logger.warning("skipping %s: no HR image named %s below %s", lr_path, key, hr_root)
            continue
        lr, hr = load_image(lr_path), load_image(hr_by_key[key])
        if hr.shape[:2] != (lr.shape[0] * scale, lr.shape[1] * scale):
            raise ImageError(
                hr_by_key[key],
                f"is {hr.shape[1]}x{hr.shape[0]}, expected x{scale} of {lr_path} "
                f"({lr.shape[1] * scale}x{lr.shape[0] * scale})",
            )
        pairs.append(EvalPair(key.replace("/", "_"), lr, hr))
    if not pairs:
        raise FinPercepError(
            f"no LR/HR pairs: nothing below {lr_root} has a same-named image below {hr_root}"
        )
    return pairs


def make_pairs(cfg: EvalConfig, scale: int) -> list[EvalPair]:
    """The evaluation pairs ``cfg`` describes, for a generator of the given scale."""
    if cfg.paired_lr is not None and cfg.paired_hr is not None:
        return folder_pairs(cfg.paired_lr, cfg.paired_hr, scale)
    photos = folder_photos(cfg.hr_folders) if cfg.hr_folders else embedded_photos(cfg.photos)
    return degraded_pairs(photos, cfg.num_pairs, cfg.lr_size, scale, cfg.seed, cfg.degradation)


# --------------------------------------------------------------------------------------------------
# evaluation


@dataclass
class EvalResult:
    """Means over pairs (``metrics``), one row per pair (``rows``), the IQA metrics that could not run and
    why (``unavailable``), and the first outputs as images (``outputs``, not serialised)."""

    metrics: dict[str, float]
    rows: list[dict[str, Any]]
    unavailable: dict[str, str]
    outputs: list[np.ndarray] = field(default_factory=list, repr=False)
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        stderr = {k: standard_error([r[k] for r in self.rows]) for k in self.metrics}
        return {
            "metrics": self.metrics,
            "stderr": stderr,
            "unavailable": self.unavailable,
            "num_pairs": len(self.rows),
            **self.info,
        }


def standard_error(values: Sequence[float]) -> float:
    v = np.asarray([x for x in values if math.isfinite(x)], dtype=np.float64)
    return float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else math.nan


def _to_batch(images: Sequence[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous().float()


def _to_images(x: torch.Tensor) -> list[np.ndarray]:
    return list(x.detach().float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy())


def _size_groups(pairs: Sequence[EvalPair], batch: int) -> list[list[int]]:
    """Indices in order, cut into batches of equal-size pairs."""
    groups: list[list[int]] = []
    for i, p in enumerate(pairs):
        if groups and len(groups[-1]) < batch and pairs[groups[-1][0]].lr.shape == p.lr.shape:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


@torch.no_grad()
def evaluate(
    generator: Generator,
    pairs: Sequence[EvalPair],
    judge: RewardModel | None = None,
    *,
    scorers: Mapping[str, RewardModel] | None = None,
    iqa: IQAScorer | None = None,
    tau: float = 0.8,
    crop_border: int | None = None,
    gtmap: GTMapConfig | None = None,
    batch_size: int = 4,
    keep_outputs: int = 0,
    niqe: bool = False,
) -> EvalResult:
    """Run ``generator`` (``[B, 3, h, w] -> [B, 3, s*h, s*w]``) on every pair and measure its outputs.

    ``judge`` gives ``judge`` (and ``judge_hr``); each of ``scorers`` gives ``score:<name>``; ``niqe`` adds
    ``niqe`` when every output is large enough (else ``unavailable['niqe']`` says why). The result is
    deterministic for a deterministic generator.
    """
    if not pairs:
        raise FinPercepError("no evaluation pairs")
    scorers = dict(scorers or {})
    niqe_why = _niqe_too_small(pairs, crop_border) if niqe else ""
    use_niqe = niqe and not niqe_why
    was_training = isinstance(generator, torch.nn.Module) and generator.training
    if isinstance(generator, torch.nn.Module):
        generator.eval()
    try:
        rows, outputs = _measure(generator, pairs, judge, scorers, iqa, tau, crop_border, gtmap, batch_size,
                                 keep_outputs, use_niqe)
    finally:
        if was_training:
            generator.train()  # type: ignore[union-attr]
    keys = [k for k in rows[0] if k != "pair"]
    metrics = {k: float(np.mean([r[k] for r in rows])) for k in keys}
    unavailable = {n: s.reason for n, s in iqa.status.items() if not s.available} if iqa is not None else {}
    if niqe_why:
        unavailable["niqe"] = niqe_why
    logger.info("%s", ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
    return EvalResult(metrics, rows, unavailable, outputs, {"tau": tau})


def _measure(
    generator: Generator,
    pairs: Sequence[EvalPair],
    judge: RewardModel | None,
    scorers: Mapping[str, RewardModel],
    iqa: IQAScorer | None,
    tau: float,
    crop_border: int | None,
    gtmap: GTMapConfig | None,
    batch_size: int,
    keep_outputs: int,
    use_niqe: bool = False,
) -> tuple[list[dict[str, Any]], list[np.ndarray]]:
    rows: list[dict[str, Any]] = []
    outputs: list[np.ndarray] = []
    t0 = time.perf_counter()
    for idx in _size_groups(pairs, batch_size):
        group = [pairs[i] for i in idx]
        lr, hr = _to_batch([p.lr for p in group]), _to_batch([p.hr for p in group])
        sr = generator(lr.to(_device(generator))).float().clamp(0, 1).cpu()
        sr = torch.round(sr * 255.0) / 255.0  # measure the 8-bit image a user would save
        if sr.shape != hr.shape:
            raise FinPercepError(
                f"the generator turned LR {tuple(lr.shape)} into {tuple(sr.shape)}, "
                f"but the HR images are {tuple(hr.shape)} (wrong scale?)"
            )
        scale = hr.shape[-1] // lr.shape[-1]
        border = scale if crop_border is None else crop_border
        sr_np, hr_np = _to_images(sr), [p.hr for p in group]
        stats = artifact_stats(artifact_maps(np.stack(sr_np), np.stack(hr_np), gtmap=gtmap), tau)
        extra: dict[str, torch.Tensor] = {}
        if judge is not None:
            extra["judge"] = _score(judge, sr)
            extra["judge_hr"] = _score(judge, hr)
        for name, rm in scorers.items():
            extra[f"score:{name}"] = _score(rm, sr)
        if iqa is not None:
            extra.update(iqa(sr, hr))
        for j, p in enumerate(group):
            row: dict[str, Any] = {"pair": p.name}
            row["psnr"] = psnr(sr_np[j], hr_np[j], crop_border=border)
            row["psnr_y"] = psnr(sr_np[j], hr_np[j], crop_border=border, y_channel=True)
            row["ssim"] = ssim(sr_np[j], hr_np[j], crop_border=border)
            row["ssim_y"] = ssim(sr_np[j], hr_np[j], crop_border=border, y_channel=True)
            row["artifact_frac"], row["artifact_mean"] = stats[j].fraction, stats[j].mean
            if use_niqe:
                row["niqe"] = _niqe_or_nan(sr_np[j], border, p.name)
            for k, v in extra.items():
                row[k] = float(v[j])
            rows.append(row)
            if len(outputs) < keep_outputs:
                outputs.append(sr_np[j])
    logger.info("evaluated %d pairs in %.1fs", len(rows), time.perf_counter() - t0)
    return rows, outputs


def _niqe_too_small(pairs: Sequence[EvalPair], crop_border: int | None) -> str:
    """Why NIQE cannot measure every output (outputs have the HR size), or ``""`` when it can."""
    for p in pairs:
        border = p.hr.shape[0] // p.lr.shape[0] if crop_border is None else crop_border
        h, w = (max(n - 2 * border, 0) for n in p.hr.shape[:2])
        if min(h, w) < NIQE_BLOCK:
            return (
                f"NIQE needs {NIQE_BLOCK}x{NIQE_BLOCK} pixels after the {border} px border crop, but output "
                f"{p.name} leaves {w}x{h}"
            )
    return ""


def _niqe_or_nan(img: np.ndarray, border: int, name: str) -> float:
    try:
        return niqe_score(img, crop_border=border)
    except FinPercepError as exc:  # e.g. a flat output: NIQE is undefined, the other metrics still count
        logger.warning("NIQE of %s: %s", name, exc)
        return math.nan


def _device(generator: Generator) -> torch.device:
    if isinstance(generator, torch.nn.Module):
        p = next(generator.parameters(), None)
        if p is not None:
            return p.device
    return torch.device("cpu")


def _score(rm: RewardModel, x: torch.Tensor) -> torch.Tensor:
    ref = next(rm.parameters())
    return rm(x.to(device=ref.device, dtype=ref.dtype)).score.float().cpu()


# --------------------------------------------------------------------------------------------------
# files


def rows_to_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """Per-pair rows as CSV text (numbers with 8 significant digits)."""
    if not rows:
        return ""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.8g}" if isinstance(v, float) else v) for k, v in r.items()})
    return buf.getvalue()


def write_result(
    result: EvalResult,
    out: str | Path,
    extra: Mapping[str, Any] | None = None,
    pairs: Sequence[EvalPair] = (),
) -> Path:
    """Write ``eval.json`` and ``per_image.csv`` (and the kept outputs with their LR/HR) into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / PER_IMAGE_CSV, rows_to_csv(result.rows))
    for i, img in enumerate(result.outputs):
        save_png(out / "images" / f"{result.rows[i]['pair']}_sr.png", img)
        if i < len(pairs):
            save_png(out / "images" / f"{pairs[i].name}_lr.png", pairs[i].lr)
            save_png(out / "images" / f"{pairs[i].name}_hr.png", pairs[i].hr)
    path = out / EVAL_JSON
    atomic_write_json(path, json_safe({**result.to_dict(), **(extra or {})}))
    return path


def json_safe(obj: Any) -> Any:
    """NaN / inf as None, so the file is strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj


def read_result(path: str | Path) -> dict[str, Any]:
    """An ``eval.json`` (or the folder holding one) as a dict."""
    p = Path(path)
    if p.is_dir():
        p = p / EVAL_JSON
    if not p.is_file():
        raise FinPercepError(f"no evaluation result at {p}")
    return json.loads(p.read_text())


def load_judge(path: str | Path | None, stage: int | None = None) -> RewardModel | None:
    if path is None:
        return None
    return RewardModel.from_pretrained(path, stage)


def run_eval(cfg: EvalConfig) -> Path:
    """Evaluate ``cfg.generator`` and write ``eval.json`` + ``per_image.csv`` into ``cfg.out``."""
    from ..rl.generators import build_generator

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    loaded = build_generator(cfg.generator, cfg.scale)
    pairs = make_pairs(cfg, loaded.scale)
    judge = load_judge(cfg.judge, cfg.judge_stage)
    iqa = IQAScorer(cfg.iqa_weights, cfg.iqa) if cfg.iqa else None
    result = evaluate(
        loaded.net,
        pairs,
        judge,
        iqa=iqa,
        tau=cfg.tau,
        crop_border=cfg.crop_border,
        batch_size=cfg.batch_size,
        keep_outputs=cfg.save_outputs,
        niqe=cfg.niqe,
    )
    extra = {"generator": loaded.source, "scale": loaded.scale, "config": to_dict(cfg)}
    return write_result(result, cfg.out, extra, pairs)
