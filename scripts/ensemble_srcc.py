"""Would averaging several reward models' scores raise SRCC(score, -defect area)? Read-only analysis.

    finpercep rm eval --data runs/fgr_unseen --checkpoint runs/rm_a --per-sample runs/ps_a.jsonl
    finpercep rm eval --data runs/fgr_unseen --checkpoint runs/rm_b --per-sample runs/ps_b.jsonl
    python scripts/ensemble_srcc.py runs/ps_a.jsonl runs/ps_b.jsonl

Takes the ``--per-sample`` files of several checkpoints on one dataset and prints the SRCC of each and of
two ensembles: the mean of the raw scores and the mean of the scores standardised per model (so a model
whose scores spread more does not dominate); also the SRCC of each model's mean predicted map, negated
(does the map rank images better than the score?).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr


def load(path: Path) -> dict[str, dict]:
    return {row["id"]: row for row in map(json.loads, path.read_text().splitlines())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("per_sample", nargs="+", type=Path, help="rm eval --per-sample files, one per model")
    a = p.parse_args()
    runs = [load(f) for f in a.per_sample]
    ids = sorted(runs[0])
    if any(sorted(r) != ids for r in runs[1:]):
        raise SystemExit("the files do not cover the same samples (same --data and --sources?)")
    area = np.array([runs[0][i]["defect_area"] for i in ids])
    scores = [np.array([r[i]["score"] for i in ids]) for r in runs]

    def srcc(s: np.ndarray) -> float:
        return float(spearmanr(s, -area)[0])

    for path, s, run in zip(a.per_sample, scores, runs, strict=True):
        map_mean = np.array([run[i]["map_mean"] for i in ids])
        print(
            f"{str(path):48s} SRCC {srcc(s):.3f}  score std {s.std():.3f}  "
            f"SRCC of -map mean {srcc(-map_mean):.3f}"
        )
    print(f"{'mean of raw scores':48s} SRCC {srcc(np.mean(scores, axis=0)):.3f}")
    z = [(s - s.mean()) / s.std() for s in scores]
    print(f"{'mean of standardised scores':48s} SRCC {srcc(np.mean(z, axis=0)):.3f}")


if __name__ == "__main__":
    main()
