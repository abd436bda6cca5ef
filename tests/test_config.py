import argparse
import dataclasses
import json
from dataclasses import dataclass
from typing import Literal

import pytest

from finpercep.config import (
    add_arguments,
    check,
    check_range,
    flatten,
    from_args,
    from_dict,
    option,
    option_names,
    run_main,
    to_dict,
)
from finpercep.errors import ConfigError, FinPercepError


@dataclass(frozen=True)
class Inner:
    """Inner config."""

    p: float = option(0.5, help="a probability")

    def __post_init__(self):
        check(0 <= self.p <= 1, f"p must be in [0,1], got {self.p}")


@dataclass(frozen=True)
class Cfg:
    """Test config."""

    n: int = option(3, help="count")
    mode: Literal["a", "b"] = option("a", help="mode")
    k: Literal[2, 4] = option(4, help="scale")
    rng: tuple[float, float] = option((0.1, 0.2), help="range")
    names: tuple[str, ...] = option(("x",), help="names")
    modes: tuple[Literal["a", "b"], ...] = option(("a",), help="per-stage modes")
    flag: bool = option(False, help="flag")
    path: str | None = option(None, help="path")

    def __post_init__(self):
        check_range("rng", self.rng, 0.0, 1.0)


def _parse(argv):
    p = argparse.ArgumentParser()
    add_arguments(p, Cfg)
    return from_args(Cfg, p.parse_args(argv))


def test_cli_generated_from_dataclass():
    assert _parse([]) == Cfg()
    cfg = _parse(
        [
            "--n",
            "7",
            "--mode",
            "b",
            "--k",
            "2",
            "--rng",
            "0.2",
            "0.3",
            "--names",
            "u",
            "v",
            "--modes",
            "b",
            "a",
            "--flag",
            "true",
            "--path",
            "/tmp/x",
        ]
    )
    assert cfg == Cfg(
        n=7, mode="b", k=2, rng=(0.2, 0.3), names=("u", "v"), modes=("b", "a"), flag=True, path="/tmp/x"
    )
    assert _parse(["--path", "none"]).path is None


def test_cli_rejects_bad_choice_and_validation_runs():
    with pytest.raises(SystemExit):
        _parse(["--mode", "c"])
    with pytest.raises(SystemExit):
        _parse(["--modes", "a", "c"])
    with pytest.raises(ConfigError, match="rng"):
        _parse(["--rng", "0.5", "0.1"])


def test_dict_round_trip_and_unknown_keys():
    cfg = Cfg(names=("a", "b"))
    assert from_dict(Cfg, to_dict(cfg)) == cfg
    with pytest.raises(ConfigError, match="unknown"):
        from_dict(Cfg, {"nope": 1})
    with pytest.raises(ConfigError):
        Inner(p=2.0)


@dataclass(frozen=True)
class Knobs:
    """Knobs nested in Outer."""

    lr: float = option(1e-5, help="learning rate")
    stages: tuple[int, ...] = option((), help="stage starts")
    inner: Inner = option(default_factory=Inner, help="deeper")


@dataclass(frozen=True)
class Outer:
    """A config holding others."""

    out: str = option("runs/x", help="output")
    knobs: Knobs = option(default_factory=lambda: Knobs(lr=1e-4, inner=Inner(p=0.25)), help="knobs")
    other: Inner = option(default_factory=Inner, help="with a prefix", prefix="other_")


def _parse_outer(argv):
    p = argparse.ArgumentParser()
    add_arguments(p, Outer)
    return p, from_args(Outer, p.parse_args(argv))


def test_nested_config_flags_keep_their_names_and_the_outer_defaults():
    p, cfg = _parse_outer([])
    assert cfg == Outer() and cfg.knobs.lr == 1e-4 and cfg.knobs.inner.p == 0.25
    flags = {a.option_strings[0] for a in p._actions if a.option_strings}
    assert flags == {"-h", "--out", "--lr", "--stages", "--p", "--other-p"}
    assert "(default: 0.0001)" in p.format_help()  # the outer default instance's value, not the class's
    _, cfg = _parse_outer(["--lr", "0.5", "--stages", "3", "7", "--other-p", "0.9"])
    assert cfg == Outer(knobs=Knobs(lr=0.5, stages=(3, 7), inner=Inner(p=0.25)), other=Inner(p=0.9))
    _, cfg = _parse_outer(["--p", "0.75"])  # two levels down; the rest stays the outer default
    assert cfg.knobs == Knobs(lr=1e-4, inner=Inner(p=0.75))
    with pytest.raises(ConfigError, match="p must be in"):
        _parse_outer(["--p", "2"])


def test_nested_dict_round_trip_and_the_flat_layout_of_older_files():
    cfg = Outer(out="y", knobs=Knobs(lr=0.3, stages=(5,), inner=Inner(p=0.1)), other=Inner(p=0.6))
    d = json.loads(json.dumps(to_dict(cfg)))
    assert d == {"out": "y", "knobs": {"lr": 0.3, "stages": [5], "inner": {"p": 0.1}}, "other": {"p": 0.6}}
    assert from_dict(Outer, d) == cfg
    flat = flatten(Outer, d)
    assert flat == {"out": "y", "lr": 0.3, "stages": [5], "p": 0.1, "other_p": 0.6}
    assert flatten(Outer, flat) == flat and option_names(Outer) == list(flat)
    assert from_dict(Outer, flat) == cfg  # a file written before the nesting loads as it is
    # keys left out take the field's default instance, not the nested class's defaults
    assert from_dict(Outer, {"stages": [1]}) == Outer(knobs=Knobs(lr=1e-4, stages=(1,), inner=Inner(p=0.25)))
    with pytest.raises(ConfigError, match="unknown Outer keys"):
        from_dict(Outer, {"nope": 1})
    with pytest.raises(ConfigError, match="set twice"):
        flatten(Outer, {"lr": 0.1, "knobs": {"lr": 0.2}})


@dataclass(frozen=True)
class Sched:
    """A config whose field ``kind`` has the option ``--sched`` (the name of the field holding it)."""

    kind: Literal["a", "b"] = option("a", help="which", flag="sched")
    width: int = option(2, help="width")


@dataclass(frozen=True)
class Run:
    """Holds Sched under the name of its first option, and another Sched with a prefix."""

    sched: Sched = option(default_factory=Sched, help="schedule")
    spare: Sched = option(default_factory=lambda: Sched(width=5), help="spare", prefix="spare_")
    steps: int = option(1, help="steps", flag="num_steps")


def test_flag_names_an_option_apart_from_its_field():
    p = argparse.ArgumentParser()
    add_arguments(p, Run)
    flags = {a.option_strings[0] for a in p._actions if a.option_strings}
    assert flags == {"-h", "--sched", "--width", "--spare-sched", "--spare-width", "--num-steps"}
    cfg = from_args(Run, p.parse_args("--sched b --spare-sched b --num-steps 4".split()))
    assert cfg == Run(sched=Sched(kind="b"), spare=Sched(kind="b", width=5), steps=4)
    assert from_args(Run, p.parse_args([])) == Run()
    assert option_names(Run) == ["sched", "width", "spare_sched", "spare_width", "num_steps"]
    d = json.loads(json.dumps(to_dict(cfg)))
    assert d == {"sched": {"kind": "b", "width": 2}, "spare": {"kind": "b", "width": 5}, "steps": 4}
    flat = {"sched": "b", "width": 2, "spare_sched": "b", "spare_width": 5, "num_steps": 4}
    assert flatten(Run, d) == flat and flatten(Run, flat) == flat
    # the flat layout, where "sched" is the option, not the nested config of the same name
    assert from_dict(Run, d) == from_dict(Run, flat) == cfg
    assert from_dict(Run, {"sched": "b", "steps": 4}) == dataclasses.replace(cfg, spare=Run().spare)
    assert from_dict(Sched, {"sched": "b"}) == from_dict(Sched, {"kind": "b"}) == Sched(kind="b")
    with pytest.raises(ConfigError, match="set twice"):
        from_dict(Sched, {"sched": "b", "kind": "a"})
    with pytest.raises(ConfigError, match="set twice"):
        flatten(Run, {"steps": 1, "num_steps": 2})


def test_run_main_builds_the_config_runs_and_prints_the_result(capsys, monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    seen = {}

    def fn(cfg, ns):
        seen["cfg"], seen["extra"] = cfg, ns.extra
        return "runs/out"

    def more(parser):
        parser.add_argument("--extra", type=int, default=1)

    argv = ["--n", "5", "--names", "u", "v", "--extra", "9", "--allocator", "system"]
    assert run_main(Cfg, fn, argv, prog="t", description="d", add_more=more) == 0
    assert seen == {"cfg": Cfg(n=5, names=("u", "v")), "extra": 9}
    assert capsys.readouterr().out == "runs/out\n"
    monkeypatch.setenv("RANK", "1")  # another process of a distributed run: nothing printed
    assert run_main(Cfg, fn, ["--allocator", "system"], prog="t", description="d", add_more=more) == 0
    assert capsys.readouterr().out == ""


def test_run_main_reports_errors_in_one_line_with_status_2(capsys, monkeypatch):
    monkeypatch.delenv("RANK", raising=False)

    def fail(cfg, ns):
        raise FinPercepError("no such data")

    assert run_main(Cfg, fail, ["--allocator", "system"], prog="t", description="d") == 2
    assert capsys.readouterr().err == "finpercep: error: no such data\n"
    # an invalid configuration is one line too, not a traceback
    bad = ["--rng", "0.5", "0.1", "--allocator", "system"]
    assert run_main(Cfg, fail, bad, prog="t", description="d") == 2
    assert "finpercep: error: rng must be" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run_main(Cfg, fail, ["--mode", "c"], prog="t", description="d")
