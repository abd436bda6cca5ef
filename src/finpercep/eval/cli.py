"""``finpercep eval``; :func:`add_eval` plugs it into the main parser (``finpercep.cli.ADDERS``)."""

from __future__ import annotations

import argparse
import sys

from ..config import add_arguments, from_args


def add_eval(sub: argparse._SubParsersAction) -> None:
    """Register ``eval`` under the top-level ``finpercep`` parser."""
    from .evaluate import EvalConfig

    p = sub.add_parser(
        "eval",
        help="PSNR/SSIM, artifact measure, held-out judge and IQA metrics of a generator",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_arguments(p, EvalConfig)
    p.set_defaults(func=_cmd_eval)


def _cmd_eval(ns: argparse.Namespace) -> None:
    from .evaluate import EvalConfig, run_eval

    sys.stdout.write(f"{run_eval(from_args(EvalConfig, ns))}\n")
