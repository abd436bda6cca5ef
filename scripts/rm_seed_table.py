"""Markdown table of `finpercep rm eval --out` results: every seed, mean ± std, the targets, the baseline.

Question it answers: does a recipe meet the reward-model targets for every seed on every test set?

    python scripts/rm_seed_table.py "corpus test" runs/ev_s0_ct.json runs/ev_s1_ct.json runs/ev_s2_ct.json \
        -- "set 3" runs/ev_s0_3.json runs/ev_s1_3.json runs/ev_s2_3.json

Each group is a label then its JSON files; ``--`` separates groups. Rows are labelled by file name.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

COLUMNS = (
    ("pixel AUROC", "auroc", 0.88),
    ("triplet acc.", "triplet_acc", 0.93),
    ("SRCC", "srcc", 0.80),
    ("clean-map MSE", "mse_clean", None),
    ("gt>small", "role_separation.gt>small", None),
    ("x4plus triplet", "sr_outputs_by_model.realesrgan-x4plus.triplet_acc", None),
)


def _get(d: dict, key: str) -> float:
    for part in key.split("."):
        if not isinstance(d, dict) or part not in d:
            return float("nan")
        d = d[part]
    return float(d)


def _fmt(values: list[float]) -> str:
    ok = [v for v in values if v == v]
    if not ok:
        return "–"
    if len(ok) == 1:
        return f"{ok[0]:.3f}"
    return f"{statistics.mean(ok):.3f} ± {statistics.stdev(ok):.3f}"


def table(groups: list[tuple[str, list[Path]]]) -> str:
    head = ["test set", "model", *(c[0] for c in COLUMNS)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 2 + "---:|" * len(COLUMNS)]
    for label, files in groups:
        results = [json.loads(f.read_text()) for f in files]
        for f, r in zip(files, results, strict=True):
            cells = []
            for _, key, target in COLUMNS:
                v = _get(r["model"], key)
                base = _get(r["baseline"]["best"], key) if key == "mse_clean" else None
                met = (target is not None and v >= target) or (base is not None and v < base)
                cells.append("–" if v != v else f"**{v:.3f}**" if met else f"{v:.3f}")
            lines.append(f"| {label} | {f.stem} | " + " | ".join(cells) + " |")
        means = [_fmt([_get(r["model"], key) for r in results]) for _, key, _ in COLUMNS]
        lines.append(f"| {label} | mean ± std ({len(results)}) | " + " | ".join(means) + " |")
        base = [
            _fmt([_get(r["baseline"]["best"], key) for r in results[:1]]) if key == "mse_clean" else "–"
            for _, key, _ in COLUMNS
        ]
        lines.append(f"| {label} | HF-energy baseline | " + " | ".join(base) + " |")
    targets = " | ".join(f"≥ {t}" if t is not None else "–" for _, _, t in COLUMNS)
    lines.append(f"| target | | {targets} |")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    groups, cur = [], []
    for a in [*argv, "--"]:
        if a == "--":
            if cur:
                groups.append((cur[0], [Path(p) for p in cur[1:]]))
            cur = []
        else:
            cur.append(a)
    print(table(groups))


if __name__ == "__main__":
    main(sys.argv[1:])
