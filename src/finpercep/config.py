"""Frozen config dataclasses and the CLI generated from them.

Each concern (synthesis, degradation, reward model, RL, eval) has one frozen dataclass whose
``__post_init__`` validates it. :func:`add_arguments` turns such a dataclass into argparse options
(``--field-name``) and :func:`from_args` builds the dataclass back from the parsed namespace, so the
CLI never drifts from the Python API. A config may hold another (a field typed as a config dataclass): its
fields become options too, and :func:`to_dict` / :func:`from_dict` nest it; :func:`flatten` gives the one
key per option layout that files written before a config was nested have, and :func:`from_dict` reads it.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, TypeVar, get_args, get_origin

from .errors import ConfigError, FinPercepError

T = TypeVar("T")


def option(
    default: Any = dataclasses.MISSING, help: str = "", *, prefix: str = "", flag: str = "", **kwargs: Any
) -> Any:
    """A dataclass field with a help text used by the generated CLI.

    ``prefix`` applies to a field that holds a nested config: its options are named ``--PREFIX-FIELD``
    (none by default: the nested config's own option names). ``flag`` names the option of a plain field
    (``--FLAG`` and the key of :func:`flatten`; the field's name by default).
    """
    metadata = {"help": help, "prefix": prefix, "flag": flag}
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


def _option_name(f: dataclasses.Field) -> str:
    """The option name of plain field ``f`` (before any prefix): its ``flag``, else its name."""
    return f.metadata.get("flag") or f.name


def _nested_type(tp: Any) -> type | None:
    """The config dataclass a field of type ``tp`` holds (not an optional one), else None."""
    return tp if isinstance(tp, type) and dataclasses.is_dataclass(tp) else None


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def _argument(tp: Any, dest: str, default: Any, helptext: str) -> dict[str, Any]:
    """``add_argument`` keywords of an option of type ``tp``."""
    tp, optional = _strip_optional(tp)
    helptext = f"{helptext} (default: {default})" if helptext else f"(default: {default})"
    kw: dict[str, Any] = {"dest": dest, "default": argparse.SUPPRESS, "help": helptext}
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
    return kw


def add_arguments(
    parser: argparse.ArgumentParser,
    cls: type,
    *,
    prefix: str = "",
    skip: tuple[str, ...] = (),
    defaults: Any = None,
) -> None:
    """Add one ``--option`` per field of dataclass ``cls`` (defaults are left to the dataclass).

    A field whose type is itself a config dataclass adds that config's options instead, in a group of its
    own, named as its fields with the field's ``prefix`` (:func:`option`; none by default), their defaults
    those of the field's default instance. ``skip`` names fields of ``cls`` to leave out; ``defaults`` is
    the instance whose values the help shows (the class defaults when None).
    """
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(
        cls.__name__, (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else None
    )
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init:
            continue
        default = getattr(defaults, f.name) if defaults is not None else _field_default(f)
        inner = _nested_type(hints[f.name])
        if inner is not None:
            add_arguments(parser, inner, prefix=prefix + f.metadata.get("prefix", ""), defaults=default)
            continue
        dest = prefix + _option_name(f)
        kw = _argument(hints[f.name], dest, default, f.metadata.get("help", ""))
        group.add_argument("--" + dest.replace("_", "-"), **kw)


def _given(cls: type, ns: argparse.Namespace, prefix: str, base: Any) -> dict[str, Any]:
    """The fields of ``cls`` set in ``ns``; a nested config set in part is ``base``'s with those parts."""
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        inner = _nested_type(hints[f.name])
        if inner is not None:
            inner_base = getattr(base, f.name) if base is not None else _field_default(f)
            sub = _given(inner, ns, prefix + f.metadata.get("prefix", ""), inner_base)
            if sub:
                kwargs[f.name] = (
                    inner(**sub) if inner_base is None else dataclasses.replace(inner_base, **sub)
                )
        elif hasattr(ns, prefix + _option_name(f)):
            value = getattr(ns, prefix + _option_name(f))
            kwargs[f.name] = tuple(value) if isinstance(value, list) else value
    return kwargs


def from_args(cls: type[T], ns: argparse.Namespace, *, prefix: str = "", **overrides: Any) -> T:
    """Build dataclass ``cls`` from a namespace filled by :func:`add_arguments` (nested configs included)."""
    kwargs = _given(cls, ns, prefix, None)
    kwargs.update(overrides)
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    """JSON-ready dict of a (possibly nested) config dataclass."""
    return dataclasses.asdict(cfg)


def _nested_fields(cls: type) -> list[tuple[str, type, str]]:
    """``(name, config class, option prefix)`` of every nested config field of ``cls``."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        inner = _nested_type(hints[f.name])
        if inner is not None:
            out.append((f.name, inner, f.metadata.get("prefix", "")))
    return out


def option_names(cls: type) -> list[str]:
    """The option names (``dest``) :func:`add_arguments` gives the fields of ``cls``, nested ones included."""
    nested = {name: (inner, prefix) for name, inner, prefix in _nested_fields(cls)}
    names: list[str] = []
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name in nested:
            inner, prefix = nested[f.name]
            names += [prefix + n for n in option_names(inner)]
        else:
            names.append(_option_name(f))
    return names


def flatten(cls: type, d: Mapping[str, Any]) -> dict[str, Any]:
    """``d`` (a :func:`to_dict` of ``cls``, or a dict from before its nested configs were nested) with
    every nested config's keys lifted to the top, named as their options (prefix included): one key per
    CLI option, whatever the nesting. A key that names a nested config but holds no dict is an option
    (a flat file's, where an option may share the name of a later nested config)."""
    nested = {name: (inner, prefix) for name, inner, prefix in _nested_fields(cls)}
    renamed = {f.name: _option_name(f) for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    out: dict[str, Any] = {}
    for k, v in d.items():
        if k in nested and isinstance(v, Mapping):
            inner, prefix = nested[k]
            items = {prefix + kk: vv for kk, vv in flatten(inner, v).items()}
        else:
            items = {renamed.get(k, k): v}
        for kk, vv in items.items():
            if kk in out:
                raise ConfigError(f"{cls.__name__}: {kk!r} is set twice (flat and nested)")
            out[kk] = vv
    return out


def _nest(cls: type, d: Mapping[str, Any]) -> dict[str, Any]:
    """``d`` keyed by the fields of ``cls``: options named by their ``flag`` renamed, and the keys of nested
    configs written flat (as :func:`flatten` writes them) moved into them."""
    nested = {name for name, _, _ in _nested_fields(cls)}
    plain = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name not in nested:
            plain[f.name] = plain[_option_name(f)] = f.name
    out: dict[str, Any] = {}
    rest: dict[str, Any] = {}
    for k, v in d.items():
        name = k if k in nested and isinstance(v, Mapping) else plain.get(k)
        if name is None:
            rest[k] = v
        elif name in out:
            raise ConfigError(f"{cls.__name__}: {name!r} is set twice (as {k!r} and under its other name)")
        else:
            out[name] = v
    for name, inner, prefix in _nested_fields(cls):
        leaves = {prefix + n for n in option_names(inner)}
        mine = {k[len(prefix) :]: rest.pop(k) for k in list(rest) if k in leaves}
        if mine:
            given = dict(out.get(name) or {})
            if twice := sorted(set(mine) & set(given)):
                raise ConfigError(f"{cls.__name__}: {twice} set twice (flat and nested)")
            out[name] = {**given, **mine}
    if rest:
        raise ConfigError(f"unknown {cls.__name__} keys: {sorted(rest)}")
    return out


def from_dict(cls: type[T], d: dict[str, Any], *, base: Any = None) -> T:
    """Inverse of :func:`to_dict` (nested dataclass fields included); unknown keys are errors.

    A nested config's keys may also come flat (:func:`flatten`), as a config from before the nesting has
    them; keys left out take ``base``'s values (the field defaults when None; a nested config's: those of
    the field's default instance).
    """
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for k, v in _nest(cls, d).items():
        tp, _ = _strip_optional(hints[k])
        if dataclasses.is_dataclass(tp) and isinstance(v, dict):
            inner_base = getattr(base, k) if base is not None else _field_default(fields[k])
            v = from_dict(tp, v, base=inner_base)  # type: ignore[arg-type]
        elif isinstance(v, list):
            v = tuple(v)
        kwargs[k] = v
    return dataclasses.replace(base, **kwargs) if base is not None else cls(**kwargs)


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
