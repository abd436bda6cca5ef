"""Write the evaluation pairs of ``finpercep eval`` to LR/HR folders (for ``--paired-lr/--paired-hr``).

Question it answered: how to run the same evaluation where the photo folders cannot travel (the
device machine takes 64 MiB): the crops are cut and degraded here, saved as PNG, and every evaluation
then reads the same pairs.

    python scripts/export_eval_pairs.py --out .dev/pairs/test --hr-folders runs/photos/test --num-pairs 32
    python scripts/export_eval_pairs.py --out .dev/pairs/emb --num-pairs 32      # embedded coffee, motorcycle
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from finpercep.config import add_arguments, from_args
from finpercep.eval.evaluate import EvalConfig, make_pairs
from finpercep.io import save_png


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(p, EvalConfig)
    ns = p.parse_args(argv)
    cfg = from_args(EvalConfig, ns)
    out = Path(cfg.out)
    for pair in make_pairs(cfg, cfg.scale or 4):
        save_png(out / "lr" / f"{pair.name}.png", pair.lr)
        save_png(out / "hr" / f"{pair.name}.png", pair.hr)
    sys.stdout.write(f"{out}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
