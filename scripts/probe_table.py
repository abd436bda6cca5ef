"""Paired differences of evaluated runs against a baseline evaluation (``finpercep eval`` per_image.csv).

    python scripts/probe_table.py runs/p3/eval_base runs/p3/null/eval runs/p3/global/eval ...

Prints one markdown row per run: each metric's mean and its paired difference to the baseline with the
95 % t-interval over the crops (crops are matched by name, so all evaluations must use the same pairs).
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path

from scipy import stats

METRICS = ("psnr", "ssim", "artifact_frac", "niqe", "judge")


def read(path: Path) -> dict[str, dict[str, float]]:
    p = path / "per_image.csv" if path.is_dir() else path
    with p.open() as f:
        return {
            r["pair"]: {k: float(v) for k, v in r.items() if k != "pair" and v != ""}
            for r in csv.DictReader(f)
        }


def paired(
    a: dict[str, dict[str, float]], b: dict[str, dict[str, float]], key: str
) -> tuple[float, float, float]:
    d = [b[n][key] - a[n][key] for n in a if n in b and math.isfinite(a[n].get(key, math.nan))]
    d = [x for x in d if math.isfinite(x)]
    n = len(d)
    m = sum(d) / n
    sd = math.sqrt(sum((x - m) ** 2 for x in d) / (n - 1)) if n > 1 else math.nan
    h = stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n) if n > 1 else math.nan
    return m, m - h, m + h


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("baseline", type=Path)
    p.add_argument("runs", type=Path, nargs="+")
    ns = p.parse_args(argv)
    base = read(ns.baseline)
    head = "| run | " + " | ".join(f"{m} (Δ, 95 % CI)" for m in METRICS) + " |"
    lines = [head, "|---|" + "---:|" * len(METRICS)]
    mean0 = {m: sum(r[m] for r in base.values()) / len(base) for m in METRICS}
    lines.append("| baseline | " + " | ".join(f"{mean0[m]:.4g}" for m in METRICS) + " |")
    for run in ns.runs:
        cur = read(run)
        cells = []
        for m in METRICS:
            d, lo, hi = paired(base, cur, m)
            cells.append(f"{d:+.3g} [{lo:+.3g}, {hi:+.3g}]")
        lines.append(f"| {run} | " + " | ".join(cells) + " |")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
