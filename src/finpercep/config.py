"""Frozen config dataclasses and the CLI generated from them.

Each concern (synthesis, degradation, reward model, RL, eval) has one frozen dataclass whose
``__post_init__`` validates it. :func:`add_arguments` turns such a dataclass into argparse options
(``--field-name``) and :func:`from_args` builds the dataclass back from the parsed namespace, so the
CLI never drifts from the Python API.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any, Literal, TypeVar, get_args, get_origin

from .errors import ConfigError, FinPercepError

T = TypeVar("T")


def option(default: Any = dataclasses.MISSING, help: str = "", **kwargs: Any) -> Any:
    """A dataclass field with a help text used by the generated CLI."""
    metadata = {"help": help}
    if isinstance(default, list | dict | set):
        raise TypeError("use a tuple for sequence defaults; configs are frozen")
    return dataclasses.field(default=default, metadata=metadata, **kwargs)


def check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def check_range(name: str, rng: tuple[float, float], lo: float, hi: float) -> None:
    check(
        len(rng) == 2 and lo <= rng[0] <= rng[1] <= hi,
        f"{name} must be a (low, high) pair with {lo} <= low <= high <= {hi}, got {rng}",
    )


def check_prob(name: str, p: float) -> None:
    check(0.0 <= p <= 1.0, f"{name} must be a probability in [0, 1], got {p}")


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _parse_bool(s: str) -> bool:
    low = s.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {s!r}")


def add_arguments(
    parser: argparse.ArgumentParser, cls: type, *, prefix: str = "", skip: tuple[str, ...] = ()
) -> None:
    """Add one ``--option`` per field of dataclass ``cls`` (defaults are left to the dataclass)."""
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(
        cls.__name__, (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else None
    )
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init:
            continue
        tp, optional = _strip_optional(hints[f.name])
        flag = "--" + (prefix + f.name).replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else None
        if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        helptext = f.metadata.get("help", "")
        helptext = f"{helptext} (default: {default})" if helptext else f"(default: {default})"
        kw: dict[str, Any] = {"dest": prefix + f.name, "default": argparse.SUPPRESS, "help": helptext}
        origin = get_origin(tp)
        if tp is bool:
            kw.update(type=_parse_bool, metavar="BOOL")
        elif origin is Literal:
            kw.update(choices=list(get_args(tp)), type=type(get_args(tp)[0]))
        elif origin is tuple:
            args = get_args(tp)
            if len(args) == 2 and args[1] is Ellipsis and get_origin(args[0]) is Literal:
                choices = get_args(args[0])
                kw.update(type=type(choices[0]), choices=list(choices), nargs="+")
            elif len(args) == 2 and args[1] is Ellipsis:
                kw.update(type=args[0], nargs="+")
            else:
                kw.update(type=args[0], nargs=len(args))
        elif tp in (int, float, str):
            kw.update(type=tp)
        else:
            kw.update(type=str)
        if optional:
            kw["help"] += " ('none' to unset)"
            inner = kw.get("type", str)
            kw["type"] = lambda s, _inner=inner: None if s.lower() == "none" else _inner(s)
        group.add_argument(flag, **kw)


def from_args(cls: type[T], ns: argparse.Namespace, *, prefix: str = "", **overrides: Any) -> T:
    """Build dataclass ``cls`` from a namespace filled by :func:`add_arguments`."""
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        key = prefix + f.name
        if hasattr(ns, key):
            value = getattr(ns, key)
            if isinstance(value, list):
                value = tuple(value)
            kwargs[f.name] = value
    kwargs.update(overrides)
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    """JSON-ready dict of a (possibly nested) config dataclass."""
    return dataclasses.asdict(cfg)


def from_dict(cls: type[T], d: dict[str, Any]) -> T:
    """Inverse of :func:`to_dict` (nested dataclass fields included); unknown keys are errors."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = set(d) - names
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} keys: {sorted(unknown)}")
    kwargs: dict[str, Any] = {}
    for k, v in d.items():
        tp, _ = _strip_optional(hints[k])
        if dataclasses.is_dataclass(tp) and isinstance(v, dict):
            v = from_dict(tp, v)  # type: ignore[arg-type]
        elif isinstance(v, list):
            v = tuple(v)
        kwargs[k] = v
    return cls(**kwargs)


def run_main(
    cls: type[T],
    fn: Callable[[T, argparse.Namespace], object],
    argv: Sequence[str] | None,
    *,
    prog: str,
    description: str,
    add_more: Callable[[argparse.ArgumentParser], None] | None = None,
) -> int:
    """The ``python -m`` entry point of a trainer, for ``torchrun`` / ``accelerate launch``.

    Options come from config dataclass ``cls`` (``add_more`` adds others, e.g. a second config's) plus
    ``--allocator``; it then runs ``fn(config, namespace)``. Every process logs warnings, the main one
    (``RANK`` 0) also INFO and prints what ``fn`` returned. A :class:`FinPercepError` is one line on stderr
    and exit status 2.
    """
    from .allocator import add_allocator_argument, configure_allocator

    parser = argparse.ArgumentParser(prog=prog, description=description)
    add_arguments(parser, cls)
    if add_more is not None:
        add_more(parser)
    add_allocator_argument(parser)
    ns = parser.parse_args(argv)
    configure_allocator(ns.allocator)
    main_rank = os.environ.get("RANK", "0") == "0"
    logging.basicConfig(
        level=logging.INFO if main_rank else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        result = fn(from_args(cls, ns), ns)
    except FinPercepError as exc:
        sys.stderr.write(f"finpercep: error: {exc}\n")
        return 2
    if main_rank:
        sys.stdout.write(f"{result}\n")
    return 0
