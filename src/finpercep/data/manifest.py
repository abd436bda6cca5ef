"""The FGR dataset manifest: one JSON object per sample, one line each, sorted by ``id``.

Fields of a sample (paths are relative to the dataset folder):

``id``, ``group`` (one GT crop), ``role`` (``gt`` > ``small`` > ``large`` > ``sr``), ``rank`` (0 = best),
``image`` (8-bit RGB PNG), ``map`` (16-bit PNG, M_gt in [0,1]), ``mask`` (8-bit PNG soft mask or null),
``gt``, ``lr``, ``source_image``, ``crop`` ([y, x, h, w] in the photo), ``sr_model`` (null for ``gt``),
``mask_kind`` (``random``/``semantic``/``sam``/``full``/``none``), ``defect_area`` (mean of the soft mask),
``map_mean``, ``seed``.

A ranking chain is ``(group, sr_model)``: ``[gt, small, large, sr]``; the ``gt`` sample is shared by the
chains of its group.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ..errors import FinPercepError
from ..io import atomic_write_text

MANIFEST = "manifest.jsonl"
BUILD_CONFIG = "build_config.json"
ROLES = ("gt", "small", "large", "sr")


def write_manifest(path: str | Path, samples: Iterable[dict[str, Any]]) -> int:
    rows = sorted(samples, key=lambda s: s["id"])
    ids = [r["id"] for r in rows]
    if len(set(ids)) != len(ids):
        raise FinPercepError(f"{path}: duplicate sample ids in manifest")
    atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    return len(rows)


def read_manifest(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST
    if not path.is_file():
        raise FinPercepError(f"{path}: no manifest (run `finpercep data build` first)")
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise FinPercepError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
    return rows


def chains(samples: Sequence[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Ranking chains ``[gt, small, large, sr]`` (best first), one per (group, sr_model)."""
    gts = {s["group"]: s for s in samples if s["role"] == "gt"}
    by_chain: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for s in samples:
        if s["role"] != "gt":
            by_chain.setdefault((s["group"], s["sr_model"]), {})[s["role"]] = s
    out = []
    for (group, _model), members in sorted(by_chain.items()):
        if group in gts and all(r in members for r in ROLES[1:]):
            out.append([gts[group]] + [members[r] for r in ROLES[1:]])
    return out


def merge(sources: Sequence[str | Path], out: str | Path) -> int:
    """Join the manifests of several shard folders into ``out``, copying their files.

    All shards must come from the same build configuration (apart from the shard index); a sample id
    present in two shards is an error unless both rows are identical.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ref_cfg: dict[str, Any] | None = None
    merged: dict[str, dict[str, Any]] = {}
    for src in sources:
        src = Path(src)
        cfg_path = src / BUILD_CONFIG
        if not cfg_path.is_file():
            raise FinPercepError(f"{src}: not a dataset folder (no {BUILD_CONFIG})")
        cfg = json.loads(cfg_path.read_text())
        comparable = {k: v for k, v in cfg.items() if k not in ("shard_index", "workers", "out")}
        if ref_cfg is None:
            ref_cfg = comparable
            atomic_write_text(
                out / BUILD_CONFIG, json.dumps({**cfg, "shard_index": None}, indent=2, sort_keys=True)
            )
        elif comparable != ref_cfg:
            diff = sorted(k for k in set(comparable) | set(ref_cfg) if comparable.get(k) != ref_cfg.get(k))
            raise FinPercepError(
                f"{src}: built with a different configuration ({', '.join(diff)}) than {sources[0]}"
            )
        for row in read_manifest(src):
            prev = merged.get(row["id"])
            if prev is not None and prev != row:
                raise FinPercepError(f"{src}: sample {row['id']} differs from the one already merged")
            merged[row["id"]] = row
            for key in ("image", "map", "mask", "gt", "lr"):
                rel = row.get(key)
                if rel is None:
                    continue
                dst = out / rel
                if not dst.exists() and (src / rel).resolve() != dst.resolve():
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    tmp = dst.with_name(f".{dst.name}.tmp")
                    shutil.copyfile(src / rel, tmp)
                    tmp.replace(dst)
    return write_manifest(out / MANIFEST, merged.values())
