"""Where SRCC(score, -defect area) is lost: the SRCC if one role were perfectly separated. Read-only analysis.

    finpercep rm eval --data runs/fgr_unseen --per-sample runs/ps_unseen.jsonl
    python scripts/srcc_ceiling.py runs/ps_unseen.jsonl

For an ``rm eval --per-sample`` file, prints the SRCC of the scores and what it would be if the model ranked
every GT crop above every other sample (``gt_on_top``), every whole SR output below every other sample
(``sr_at_bottom``), both, and every role in its place (GT > small > large > SR) with the order inside each
role left as it is (``roles_in_place``). Each row keeps the other samples' scores, so the gap to the first row
is what that confusion costs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

ROLE_OFFSET = {"gt": 3.0, "small": 2.0, "large": 1.0, "sr": 0.0}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("per_sample", nargs="+", type=Path, help="rm eval --per-sample files")
    a = p.parse_args()
    for path in a.per_sample:
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        score = np.array([r["score"] for r in rows])
        area = np.array([r["defect_area"] for r in rows])
        role = np.array([r["role"] for r in rows])
        # far enough apart that an offset role never overlaps another's range
        big = 10.0 * (float(score.max() - score.min()) + 1.0)
        shifted = {
            "score": score,
            "gt_on_top": score + big * (role == "gt"),
            "sr_at_bottom": score - big * (role == "sr"),
            "both": score + big * (role == "gt") - big * (role == "sr"),
            "roles_in_place": score + big * np.array([ROLE_OFFSET[r] for r in role]),
        }
        srcc = {k: float(spearmanr(v, -area)[0]) for k, v in shifted.items()}
        print(f"{path}  n={len(rows)}  " + "  ".join(f"{k} {v:.3f}" for k, v in srcc.items()))


if __name__ == "__main__":
    main()
