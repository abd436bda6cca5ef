"""Scoring with a reward model: checked inputs, image paths, test-time augmentation, image files.

:func:`score_images` (and :class:`Scorer`, the same as a module) is the inference entry: it checks the
values the model's own forward pass leaves alone (that needs the host), loads image paths, and averages
over flips when asked (``tta``). :class:`RMMetric` is its pyiqa-style view (scores only).

``finpercep score PATH... --out DIR [--checkpoint C] [--stage K]`` calls :func:`score_paths`: JSONL
scores, heatmap overlays and one HTML page.

Images up to ``tile`` pixels on each side are batched by size. Larger images are tiled with overlap:
the map is blended from the tiles with linear ramps, and the score is the score head applied to the
tile-averaged pooled vector ``mean([f_N, 1] * m)`` -- the same quantity the untiled model pools over
the whole image, up to the tiles' borders.
"""

from __future__ import annotations

import html
import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from torch import nn
from tqdm import tqdm

from ..errors import FinPercepError, ImageError
from ..io import atomic_write_text, list_images, load_image, save_png, to_uint8
from .model import MIN_SIZE, RewardModel, RMInputError, RMOutput, check_image_shape

logger = logging.getLogger(__name__)

Images = torch.Tensor | str | Path | Sequence[str | Path]
TTAMode = Literal["none", "hflip", "flips"]
TTA_FLIPS: dict[str, tuple[tuple[int, ...], ...]] = {
    "none": ((),),
    "hflip": ((), (-1,)),
    "flips": ((), (-1,), (-2,), (-2, -1)),
}
"""Test-time augmentation: the flips (tensor dims) a pass averages over. ``flips`` is the group of
horizontal and vertical flips, so its outputs are flip-invariant (score) and flip-equivariant (map)."""


def check_tta(mode: str) -> TTAMode:
    if mode not in TTA_FLIPS:
        raise FinPercepError(f"tta must be one of {', '.join(TTA_FLIPS)}, got {mode!r}")
    return mode  # type: ignore[return-value]


def check_image_batch(x: Any) -> torch.Tensor:
    """Validate a reward-model input: float tensor [B, 3, H, W], H, W >= 32, finite, in [0, 1] (the
    value checks wait for the device)."""
    check_image_shape(x)
    with torch.no_grad():
        lo, hi = torch.aminmax(x.detach())
        lo_f, hi_f = float(lo), float(hi)
    if not (torch.isfinite(lo) and torch.isfinite(hi)):
        raise RMInputError("input contains NaN or infinite values")
    if lo_f < -1e-3 or hi_f > 1 + 1e-3:
        hint = " (was it normalised to [-1, 1] or left in [0, 255]?)" if lo_f < -0.5 or hi_f > 2 else ""
        raise RMInputError(f"expected values in [0, 1], got range [{lo_f:.4g}, {hi_f:.4g}]{hint}")
    return x


def load_batch(x: Images) -> Any:
    """Image path(s) of one size as a batch [B, 3, H, W] in [0, 1]; anything else as it is."""
    if isinstance(x, str | Path):
        x = [x]
    if isinstance(x, list | tuple) and x and all(isinstance(p, str | Path) for p in x):
        imgs = [load_image(p, min_size=MIN_SIZE) for p in x]
        shapes = {im.shape for im in imgs}
        if len(shapes) > 1:
            raise RMInputError(
                f"images of different sizes {sorted(shapes)} cannot form one batch; "
                "pass them one at a time or use finpercep.rm.score_paths"
            )
        return torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).contiguous()
    return x


def tta_parts(
    model: RewardModel, x: torch.Tensor, tta: str = "none", *, every_block: bool = False
) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]]:
    """:meth:`RewardModel.forward_parts` averaged over the flips of ``tta``: the flipped copies run as one
    batch; the pooled vectors are averaged before the score head, the maps after flipping them back."""
    flips = TTA_FLIPS[check_tta(tta)]
    if len(flips) == 1:
        return model.forward_parts(x, every_block=every_block)
    n, b = len(flips), x.shape[0]
    pooled, m, logits = model.forward_parts(
        torch.cat([x.flip(d) if d else x for d in flips]), every_block=every_block
    )

    def unflip_mean(t: torch.Tensor) -> torch.Tensor:
        parts = t.split(b)
        return torch.stack([p.flip(d) if d else p for p, d in zip(parts, flips, strict=True)]).mean(0)

    return pooled.view(n, b, -1).mean(0), unflip_mean(m), tuple(unflip_mean(z) for z in logits)


def score_images(model: RewardModel, images: Images, tta: str = "none") -> RMOutput:
    """``model(images)`` for checked tensors or image paths, averaged over the flips of ``tta`` (``none``;
    ``hflip``: 2 passes; ``flips``: 4 passes, horizontal, vertical, both). Differentiable."""
    ref = next(model.score_head.parameters())
    x = check_image_batch(load_batch(images)).to(device=ref.device, dtype=ref.dtype)
    pooled, m, logits = tta_parts(model, x, tta, every_block=model.training)
    return RMOutput(score=model.score_head(pooled), map=m, map_logits=logits)


class Scorer(nn.Module):
    """:func:`score_images` as a module: ``Scorer(model, tta)(images) -> RMOutput``. Test-time augmentation
    is an inference option of the scorer, not saved with the model's weights."""

    def __init__(self, model: RewardModel, tta: str = "none") -> None:
        super().__init__()
        self.model = model
        self.tta: TTAMode = check_tta(tta)

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path | None = None,
        stage: int | None = None,
        *,
        device: str | torch.device = "cpu",
        tta: str = "none",
    ) -> Scorer:
        """:meth:`RewardModel.from_pretrained` wrapped with test-time augmentation ``tta``."""
        check_tta(tta)
        return cls(RewardModel.from_pretrained(path, stage, device=device), tta)

    @property
    def stage(self) -> int:
        return self.model.stage

    def forward(self, images: Images) -> RMOutput:
        return score_images(self.model, images, self.tta)


class RMMetric(nn.Module):
    """pyiqa-style wrapper: ``metric(x)`` -> scores [B] of tensors or image paths; ``as_loss=True``:
    ``-loss_weight * mean(score)``."""

    metric_mode = "NR"

    def __init__(self, model: RewardModel, as_loss: bool = False, loss_weight: float = 1.0) -> None:
        super().__init__()
        self.model = model
        self.as_loss = as_loss
        self.loss_weight = loss_weight
        self.lower_better = model.lower_better

    @property
    def score_range(self) -> str:
        return self.model.score_range

    def forward(self, images: Images) -> torch.Tensor:
        s = score_images(self.model, images).score
        return -self.loss_weight * s.mean() if self.as_loss else s


def expand_paths(paths: Sequence[str | Path]) -> list[Path]:
    """Files as given and the images inside folders (recursive, sorted), without duplicates."""
    files: list[Path] = []
    seen: set[Path] = set()
    for p in paths:
        for f in list_images(p):
            r = f.resolve()
            if r not in seen:
                seen.add(r)
                files.append(f)
    if not files:
        raise FinPercepError(f"no images found in {', '.join(map(str, paths))}")
    return files


def _tile_starts(n: int, tile: int, overlap: int) -> list[int]:
    if n <= tile:
        return [0]
    step = max(1, tile - overlap)
    starts = list(range(0, n - tile, step))
    return starts + [n - tile]


def _ramp(n: int, overlap: int, at_start: bool, at_end: bool) -> torch.Tensor:
    w = torch.ones(n)
    r = min(overlap, n // 2)
    if r > 0:
        ramp = (torch.arange(r, dtype=torch.float32) + 1) / (r + 1)
        if not at_start:
            w[:r] = ramp
        if not at_end:
            w[n - r :] = ramp.flip(0)
    return w


@torch.no_grad()
def score_tiled(
    model: RewardModel, x: torch.Tensor, tile: int = 512, overlap: int = 64, *, tta: str = "none"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(score [1], map [1,1,H,W]) of one large image ``x`` [1,3,H,W] from overlapping tiles, each averaged
    over the flips of ``tta``."""
    _, _, h, w = x.shape
    tile_h, tile_w = min(tile, h), min(tile, w)
    acc = torch.zeros(1, 1, h, w, device=x.device)
    wsum = torch.zeros(1, 1, h, w, device=x.device)
    pooled_sum: torch.Tensor | None = None
    count = 0
    ys, xs = _tile_starts(h, tile_h, overlap), _tile_starts(w, tile_w, overlap)
    for y in ys:
        for x0 in xs:
            t = x[:, :, y : y + tile_h, x0 : x0 + tile_w]
            pooled, m, _ = tta_parts(model, t, tta)
            wy = _ramp(tile_h, overlap, y == 0, y == ys[-1]).to(x.device)
            wx = _ramp(tile_w, overlap, x0 == 0, x0 == xs[-1]).to(x.device)
            wt = (wy[:, None] * wx[None, :])[None, None]
            acc[:, :, y : y + tile_h, x0 : x0 + tile_w] += m * wt
            wsum[:, :, y : y + tile_h, x0 : x0 + tile_w] += wt
            pooled_sum = pooled if pooled_sum is None else pooled_sum + pooled
            count += 1
    assert pooled_sum is not None
    return model.score_head(pooled_sum / count), acc / wsum.clamp_min(1e-8)


def heat_colors(m: np.ndarray) -> np.ndarray:
    """The map (H,W) in [0,1] as an 'inferno' RGB image (H,W,3): black = clean, yellow = degraded."""
    import matplotlib

    cmap = matplotlib.colormaps["inferno"]
    return cmap(np.clip(m, 0.0, 1.0))[..., :3].astype(np.float32)


def heat_overlay(img: np.ndarray, m: np.ndarray, alpha: float = 0.8) -> np.ndarray:
    """Image (H,W,3) with the map (H,W) in [0,1] blended on top as an 'inferno' heatmap.

    Each pixel's opacity is ``alpha * m``: the photo shows unchanged where the map is 0 and the heat
    colour covers it most where the map is 1, so clean regions stay readable.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    a = alpha * np.clip(m, 0.0, 1.0)[..., None].astype(np.float32)
    return (1 - a) * img + a * heat_colors(m)


def _thumb(img: np.ndarray, max_side: int) -> np.ndarray:
    h, w = img.shape[:2]
    if max(h, w) <= max_side:
        return img
    s = max_side / max(h, w)
    pil = Image.fromarray(to_uint8(img)).resize(
        (max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.LANCZOS
    )
    return np.asarray(pil).astype(np.float32) / 255.0


def _safe_name(i: int, path: Path) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", path.stem)[:60] or "image"
    return f"{i:05d}_{stem}"


def _write_html(path: Path, rows: list[dict[str, Any]], title: str) -> None:
    cells = []
    for r in rows:
        if "error" in r:
            cells.append(f"<tr><td colspan=4>{html.escape(r['path'])}: {html.escape(r['error'])}</td></tr>")
            continue
        cells.append(
            "<tr>"
            f'<td><img src="{html.escape(r["thumbnail"])}" loading=lazy></td>'
            f'<td><img src="{html.escape(r["overlay"])}" loading=lazy></td>'
            f'<td><img src="{html.escape(r["map"])}" loading=lazy></td>'
            f"<td><b>{r['score']:.4f}</b><br>map mean {r['map_mean']:.3f}<br>"
            f"{r['width']}x{r['height']}{' (tiled)' if r['tiles'] > 1 else ''}<br>"
            f"<small>{html.escape(r['path'])}</small></td></tr>"
        )
    page = (
        "<!doctype html><html><head><meta charset=utf-8>"
        f"<title>{html.escape(title)}</title><style>body{{font-family:sans-serif}}"
        "img{max-width:384px;max-height:384px}td{vertical-align:top;padding:4px}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p>Higher score = better image; brighter heatmap = more degraded. "
        'Map value: 0 <img src="colorbar.png" style="height:12px;width:256px;vertical-align:middle"> 1; '
        "the overlay covers each pixel in proportion to its map value.</p>"
        "<table><tr><th>image</th><th>overlay</th><th>degradation map</th><th>score</th></tr>"
        + "\n".join(cells)
        + "</table></body></html>\n"
    )
    atomic_write_text(path, page)


def score_paths(
    paths: Sequence[str | Path],
    out_dir: str | Path,
    checkpoint: str | Path | None = None,
    stage: int | None = None,
    *,
    batch_size: int = 8,
    tile: int = 512,
    overlap: int = 64,
    device: str = "cpu",
    thumbnail: int = 512,
    progress: bool = True,
    tta: str = "none",
) -> Path:
    """Score images/folders ``paths``; writes ``scores.jsonl``, ``overlays/``, ``maps/``, ``thumbs/`` and
    ``index.html``.

    Returns the JSONL path. Unreadable images are reported in the JSONL (``error``) and skipped. ``tta``:
    test-time augmentation (:func:`score_images`).
    """
    if batch_size < 1 or tile < MIN_SIZE or not 0 <= overlap < tile:
        raise FinPercepError(f"need batch_size >= 1, tile >= {MIN_SIZE} and 0 <= overlap < tile")
    out = Path(out_dir)
    files = expand_paths(paths)
    check_tta(tta)
    model = RewardModel.from_pretrained(checkpoint, stage, device=device)
    out.mkdir(parents=True, exist_ok=True)
    save_png(out / "colorbar.png", heat_colors(np.tile(np.linspace(0.0, 1.0, 256, dtype=np.float32), (8, 1))))
    rows: list[dict[str, Any] | None] = [None] * len(files)
    small: dict[tuple[int, int], list[tuple[int, np.ndarray]]] = {}

    def finish(i: int, img: np.ndarray, score: float, m: np.ndarray, tiles: int) -> None:
        name = _safe_name(i, files[i])
        save_png(out / "thumbs" / f"{name}.png", _thumb(img, thumbnail))
        save_png(out / "overlays" / f"{name}.png", _thumb(heat_overlay(img, m), thumbnail))
        save_png(out / "maps" / f"{name}.png", _thumb(heat_colors(m), thumbnail))
        rows[i] = {
            "path": str(files[i]),
            "score": score,
            "map_mean": float(m.mean()),
            "map_max": float(m.max()),
            "defect_fraction": float((m > 0.5).mean()),
            "height": int(img.shape[0]),
            "width": int(img.shape[1]),
            "tiles": tiles,
            "stage": model.stage,
            "tta": tta,
            "thumbnail": f"thumbs/{name}.png",
            "overlay": f"overlays/{name}.png",
            "map": f"maps/{name}.png",
        }

    def run_batch(items: list[tuple[int, np.ndarray]]) -> None:
        x = torch.from_numpy(np.stack([im for _, im in items])).permute(0, 3, 1, 2).to(device)
        with torch.no_grad():
            res = score_images(model, x, tta)
        for j, (i, im) in enumerate(items):
            finish(i, im, float(res.score[j]), res.map[j, 0].float().cpu().numpy(), 1)

    bar = tqdm(total=len(files), desc="scoring", unit="img", disable=not progress)
    for i, f in enumerate(files):
        try:
            img = load_image(f, min_size=MIN_SIZE)
        except ImageError as exc:
            logger.warning("skipping %s", exc)
            rows[i] = {"path": str(f), "error": exc.problem}
            bar.update(1)
            continue
        h, w = img.shape[:2]
        if h > tile or w > tile:
            x = torch.from_numpy(img).permute(2, 0, 1)[None].to(device)
            s, m = score_tiled(model, x, tile, overlap, tta=tta)
            n_tiles = len(_tile_starts(h, tile, overlap)) * len(_tile_starts(w, tile, overlap))
            finish(i, img, float(s[0]), m[0, 0].float().cpu().numpy(), n_tiles)
            bar.update(1)
            continue
        group = small.setdefault((h, w), [])
        group.append((i, img))
        if len(group) == batch_size:
            run_batch(group)
            bar.update(len(group))
            small[(h, w)] = []
    for group in small.values():
        if group:
            run_batch(group)
            bar.update(len(group))
    bar.close()
    done = [r for r in rows if r is not None]
    jsonl = out / "scores.jsonl"
    atomic_write_text(jsonl, "".join(json.dumps(r, sort_keys=True) + "\n" for r in done))
    _write_html(out / "index.html", done, f"FinPercep-RM scores (RM_{model.stage}, {len(done)} images)")
    logger.info("scored %d images -> %s", len(done), jsonl)
    return jsonl
