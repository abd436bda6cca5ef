"""``finpercep rl ...`` subcommands; :func:`add_rl` plugs them into the main parser (``cli.ADDERS``)."""

from __future__ import annotations

import argparse
import sys

from ..config import add_arguments, from_args


def add_rl(sub: argparse._SubParsersAction) -> None:
    """Register ``rl train`` and ``rl generators`` under the top-level ``finpercep`` parser."""
    from .train import RLConfig

    p = sub.add_parser("rl", help="RL fine-tuning of SR generators with the co-evolutionary curriculum")
    rsub = p.add_subparsers(dest="rl_cmd", required=True)
    t = rsub.add_parser(
        "train",
        help="fine-tune a generator against the reward model (resumes if --out exists)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_arguments(t, RLConfig)
    t.set_defaults(func=_cmd_train)
    g = rsub.add_parser("generators", help="list the registered generators")
    g.set_defaults(func=_cmd_generators)


def _cmd_train(ns: argparse.Namespace) -> None:
    from .train import RLConfig, train

    overrides = {"progress": False} if getattr(ns, "quiet", False) else {}
    sys.stdout.write(f"{train(from_args(RLConfig, ns, **overrides))}\n")


def _cmd_generators(ns: argparse.Namespace) -> None:
    from ..gen.registry import ADAPTER_ENTRIES, TRAINABLE

    for e in (*TRAINABLE, *ADAPTER_ENTRIES):
        sys.stdout.write(f"{e.name:28s} x{e.scale}  {e.description}\n")
