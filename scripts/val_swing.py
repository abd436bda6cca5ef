"""How much a reward-model run's validation numbers move from one epoch to the next.

Reads ``history.jsonl`` of ``finpercep rm train`` runs and prints, per run and metric, the mean absolute
change between consecutive validation epochs from RM_1 on (RM_0 has no map), and the final values. A
difference between two runs smaller than this swing is not evidence that one recipe is better.

    python scripts/val_swing.py runs/rm_crop runs/rm_ema
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

METRICS = ("auroc", "cc", "triplet_acc", "srcc")


def swing(run: Path, metrics: tuple[str, ...] = METRICS) -> dict[str, dict[str, float]]:
    path = run / "history.jsonl"
    if not path.is_file():
        raise SystemExit(f"{path}: not found (is {run} a finpercep rm train folder?)")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    vals = [r["val"] for r in rows if r.get("stage", 0) >= 1 and "val" in r]
    if len(vals) < 2:
        raise SystemExit(f"{path}: fewer than two validated epochs after RM_0")
    out = {}
    for m in metrics:
        v = np.array([x[m] for x in vals], dtype=float)
        out[m] = {"mean_abs_step": float(np.abs(np.diff(v)).mean()), "final": float(v[-1])}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path, help="rm train output folders")
    a = p.parse_args(argv)
    result = {str(r): swing(r) for r in a.runs}
    for run, ms in result.items():
        cells = ", ".join(f"{m} {v['mean_abs_step']:.3f} (final {v['final']:.3f})" for m, v in ms.items())
        print(f"{run}: mean |change| per epoch: {cells}")
    json.dump(result, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
