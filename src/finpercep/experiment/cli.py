"""``finpercep experiment ...``; :func:`add_experiment` plugs it into the main parser (``cli.ADDERS``)."""

from __future__ import annotations

import argparse
import sys

from ..config import add_arguments, from_args


def add_experiment(sub: argparse._SubParsersAction) -> None:
    """Register ``experiment hacking`` under the top-level ``finpercep`` parser."""
    from .config import HackingConfig

    p = sub.add_parser("experiment", help="reproduce the paper's experiments")
    esub = p.add_subparsers(dest="experiment_cmd", required=True)
    h = esub.add_parser(
        "hacking",
        help="baseline vs RL with RM_0, FinPercep-RM w/o and with CCL (resumable)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_arguments(h, HackingConfig)
    h.set_defaults(func=_cmd_hacking)


def _cmd_hacking(ns: argparse.Namespace) -> None:
    from .config import HackingConfig
    from .hacking import run_hacking

    overrides = {"progress": False} if getattr(ns, "quiet", False) else {}
    sys.stdout.write(f"{run_hacking(from_args(HackingConfig, ns, **overrides))}\n")
