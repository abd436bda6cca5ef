"""The reward-hacking experiment machinery on a tiny generator and tiny reward models."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from finpercep.config import flatten, from_args, from_dict, to_dict
from finpercep.errors import ConfigError, FinPercepError
from finpercep.experiment import HackingConfig, RLSettings, run_hacking
from finpercep.experiment import collect as C
from finpercep.experiment import config as K
from finpercep.experiment import hacking as H
from finpercep.experiment import stats as S
from finpercep.experiment.cli import add_experiment
from finpercep.experiment.findings import findings
from finpercep.rl.toy import tiny_reward_model

torch.set_num_threads(1)


def tiny_config(root: Path, **kw: Any) -> HackingConfig:
    base: dict[str, Any] = dict(
        generator="srvgg-tiny",
        reward_model=str(root / "rm"),
        judge=str(root / "judge"),
        out=str(root / "exp"),
        rl=RLSettings(steps=4, batch_size=2, group_size=2, lr=1e-3, lr_size=16),
        eval_every=2,
        curve_pairs=2,
        num_pairs=4,
        eval_lr_size=16,
        degradation="bicubic",
        rolling_window=2,
        report_crops=2,
        progress=False,
    )
    base.update(kw)
    return HackingConfig(**base)


def with_rl(cfg: HackingConfig, **kw: Any) -> HackingConfig:
    """``cfg`` with other RL settings."""
    return dataclasses.replace(cfg, rl=dataclasses.replace(cfg.rl, **kw))


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[HackingConfig, Path]:
    root = tmp_path_factory.mktemp("hacking")
    tiny_reward_model(root / "rm", stages=2, seed=0)
    tiny_reward_model(root / "judge", stages=2, seed=7)
    cfg = tiny_config(root)
    return cfg, run_hacking(cfg)


def test_every_report_file_is_written_and_the_html_is_self_contained(run: tuple[HackingConfig, Path]) -> None:
    cfg, report = run
    rep = report.parent
    assert report.name == "report.html" and rep == Path(cfg.out) / "report"
    for name in ("table.md", "table.json", "curves.png", "curves.json"):
        assert (rep / name).stat().st_size > 0
    page = report.read_text()
    srcs = re.findall(r"src='([^']+)'|src=\"([^\"]+)\"", page)
    files = [a or b for a, b in srcs]
    assert "curves.png" in files
    crops = [f for f in files if f.startswith("crops/")]
    # 2 pairs x (LR, HR, 4 rows) images + (HR, 4 rows) heatmaps
    assert len(crops) == 2 * (6 + 5) and all((rep / f).is_file() for f in crops)
    assert not any(f.startswith(("/", "http")) for f in files)
    for label in (
        "baseline (no RL)",
        "RL + global IQA reward (RM_0)",
        "RL + FinPercep-RM w/o CCL",
        "RL + FinPercep-RM + CCL",
    ):
        assert label in page
    assert "Findings" in page and "unavailable: pyiqa cannot be imported" in page


def test_table_numbers_equal_the_json_and_the_rows_eval_files(run: tuple[HackingConfig, Path]) -> None:
    cfg, report = run
    table = json.loads((report.parent / "table.json").read_text())
    cols = table["columns"]
    lines = [ln for ln in (report.parent / "table.md").read_text().splitlines() if ln.startswith("| ")]
    assert len(lines) == 1 + 4  # header + rows
    for line, row in zip(lines[1:], table["rows"], strict=True):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[0] == row["label"]
        for cell, col in zip(cells[1:], cols, strict=True):
            value = row["metrics"][col["key"]]
            assert cell == ("–" if value is None else f"{value:.{col['decimals']}f}")
        folder = Path(cfg.out) / "rows" / row["row"]
        ev = json.loads((folder / ("seed_0" if row["row"] != "baseline" else "") / "eval.json").read_text())
        for key in ("psnr", "ssim", "artifact_frac", "judge", "score:RM_0", "score:RM_2"):
            assert row["metrics"][key] == ev["metrics"][key] == row["per_seed"][key][0]
        assert row["interval"]["psnr"] is None and row["seeds"] == ([] if row["row"] == "baseline" else [0])
    base = table["rows"][0]["metrics"]
    assert base["train_reward"] is None and table["rows"][1]["metrics"]["train_reward"] is not None
    assert set(table["unavailable"]) == {"lpips", "musiq", "maniqa", "clipiqa", "niqe"}
    # 16 px LR crops x4 = 64 px outputs: too small for NIQE's 96x96 blocks, so "–" and the reason
    assert "niqe" in [c["key"] for c in cols] and all(r["metrics"]["niqe"] is None for r in table["rows"])
    assert "96x96" in table["unavailable"]["niqe"] and "leaves 56x56" in table["unavailable"]["niqe"]
    assert "- niqe: unavailable: NIQE needs 96x96" in (report.parent / "table.md").read_text()
    assert [f["finding"] for f in table["findings"]][:3] == [
        "global reward hacking",
        "FinPercep-RM without CCL oscillates",
        "FinPercep-RM + CCL best on judge and artifacts",
    ]


def test_curves_hold_every_checkpoint_and_the_training_log(run: tuple[HackingConfig, Path]) -> None:
    cfg, report = run
    curves = json.loads((report.parent / "curves.json").read_text())
    assert [p["step"] for p in curves["baseline"]["eval"]] == [0]
    for name in ("global", "finpercep", "finpercep_ccl"):
        assert [p["step"] for p in curves[name]["eval"]] == [0, 2, 4]
        assert curves[name]["eval"][0] == curves["baseline"]["eval"][0]
        train = curves[name]["train"]
        assert train["steps"] == [1, 2, 3, 4] and len(train["rolling_std"]) == 4
        assert train["rolling_std"][0] is None  # NaN: one value has no spread
        assert train["gain"][0] == pytest.approx(0.0, abs=1e-6)  # step 1: policy == pretrained
        assert any(abs(g) > 1e-6 for g in train["gain"][1:])
    assert curves["finpercep_ccl"]["train"]["stage"] == [0, 1, 1, 2]
    assert curves["global"]["train"]["stage"] == [0] * 4 and curves["finpercep"]["train"]["stage"] == [2] * 4
    assert curves["global"]["eval"][1] != curves["global"]["eval"][2]  # the checkpoints differ


def test_rerun_skips_finished_rows(run: tuple[HackingConfig, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    cfg, report = run
    rows = Path(cfg.out) / "rows"
    before = {p: p.stat().st_mtime_ns for p in rows.glob("**/eval.json")}
    table = (report.parent / "table.json").read_text()

    def no_training(*a: Any, **k: Any) -> None:
        raise AssertionError("a finished row was trained again")

    monkeypatch.setattr(sys.modules["finpercep.rl.train"], "train", no_training)
    assert run_hacking(dataclasses.replace(cfg, progress=True, report_crops=1)) == report
    assert {p: p.stat().st_mtime_ns for p in rows.glob("**/eval.json")} == before and len(before) == 4
    assert json.loads((report.parent / "table.json").read_text())["rows"] == json.loads(table)["rows"]
    with pytest.raises(FinPercepError, match="different settings.*steps"):
        run_hacking(with_rl(cfg, steps=6))
    saved_path = Path(cfg.out) / K.CONFIG_NAME
    saved = saved_path.read_text()
    old = json.loads(saved)
    del old["rl"]["early_steps"]  # an experiment from before the option: its CCL rows split the run evenly
    saved_path.write_text(json.dumps(old))
    with pytest.raises(FinPercepError, match="different settings.*early_steps"):
        run_hacking(cfg)
    assert run_hacking(with_rl(cfg, early_steps=0)) == report
    saved_path.write_text(saved)


def test_an_interrupted_row_resumes_to_the_same_result(
    run: tuple[HackingConfig, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg, _ = run
    cfg2 = dataclasses.replace(cfg, out=str(tmp_path / "exp"), rows=("finpercep_ccl",), report_crops=0)
    real = H.Experiment.curve_eval

    def crash_at_step_2(self: Any, net: torch.nn.Module, step: int) -> dict[str, float]:
        out = real(self, net, step)
        if step == 2:
            raise KeyboardInterrupt
        return out

    monkeypatch.setattr(H.Experiment, "curve_eval", crash_at_step_2)
    with pytest.raises(KeyboardInterrupt):
        run_hacking(cfg2)
    monkeypatch.setattr(H.Experiment, "curve_eval", real)
    row = tmp_path / "exp" / "rows" / "finpercep_ccl" / "seed_0"
    assert not (row / "eval.json").exists() and (row / "state.pt").is_file()
    run_hacking(cfg2)
    curve = json.loads((row / "curve.json").read_text())
    assert [p["step"] for p in curve] == [2, 4]
    full = Path(cfg.out) / "rows" / "finpercep_ccl" / "seed_0"
    assert (
        json.loads((row / "eval.json").read_text())["metrics"]
        == json.loads((full / "eval.json").read_text())["metrics"]
    )
    assert curve == json.loads((full / "curve.json").read_text())


def fake_row(name: str, runs: dict[int | None, dict[str, float]], per_image: list[Any] | None = None) -> dict:
    """A row as :func:`C.collect` makes it: one run per seed (the baseline: seed None)."""
    recs = [{"seed": s, "metrics": m, "per_image": per_image or []} for s, m in runs.items()]
    return {"row": name, "label": name, "runs": recs, "metrics": S.seed_means(recs)}


def seeded(**columns: tuple[float, ...]) -> dict[int | None, dict[str, float]]:
    """Per-seed metrics from one tuple of values (seed 0, 1, ...) per column."""
    n = len(next(iter(columns.values())))
    return {s: {k: v[s] for k, v in columns.items()} for s in range(n)}


def test_t_interval_matches_hand_computed_values() -> None:
    # [1, 2, 3]: mean 2, sd 1, t_{0.975, 2} = 4.302653 (tables) -> half = 4.302653 / sqrt(3) = 2.484138
    iv = S.t_interval([1.0, 2.0, 3.0])
    assert (iv.mean, iv.n) == (2.0, 3) and iv.half == pytest.approx(2.484138, rel=1e-6)
    assert (iv.lo, iv.hi) == pytest.approx((2.0 - 2.484138, 2.0 + 2.484138), rel=1e-6)
    # [0.1, 0.3]: mean 0.2, sd 0.1 * sqrt(2), t_{0.975, 1} = 12.706205 -> half = 12.706205 * 0.1 = 1.2706205
    assert S.t_interval([0.1, 0.3]).half == pytest.approx(1.2706205, rel=1e-6)
    assert S.t_quantile(4) == pytest.approx(3.182446, rel=1e-6)
    one = S.t_interval([0.7])  # N = 1: just the value, no interval
    assert one.mean == 0.7 and math.isnan(one.half) and not one.excludes_zero()
    assert S.t_interval([1.0, None, math.nan, 3.0]).n == 2  # missing values are left out
    assert (
        S.cell([0.7], 4) == "0.7000"
        and S.cell([1.0, 2.0, 3.0], 2) == "2.00 ± 2.48"
        and S.cell([None], 2) == "–"
    )
    # differences paired by seed; the unseeded baseline is the same for every seed
    a = fake_row("a", seeded(x=(1.0, 2.0, 4.0)))
    b = fake_row("b", seeded(x=(0.0, 0.5, 1.0)))
    base = fake_row("baseline", {None: {"x": 1.0}})
    assert S.paired_seed_diffs(a, b, "x") == [1.0, 1.5, 3.0]
    assert S.paired_seed_diffs(a, base, "x") == [0.0, 1.0, 3.0]
    iv = S.diff_interval(a, b, "x")
    assert iv.unit == "seeds" and iv.mean == pytest.approx(11 / 6)
    assert iv.half == pytest.approx(
        4.302653 * float(np.std([1.0, 1.5, 3.0], ddof=1)) / math.sqrt(3), rel=1e-6
    )
    # one seed: paired over the evaluation crops instead
    crops = [{"pair": "p0", "x": 1.0}, {"pair": "p1", "x": 3.0}]
    c1 = fake_row("c", {0: {"x": 2.0}}, crops)
    b1 = fake_row("b", {0: {"x": 1.0}}, [{"pair": "p0", "x": 0.5}, {"pair": "p1", "x": 1.5}])
    assert S.diff_interval(c1, b1, "x").unit == "crops" and S.diff_interval(c1, b1, "x").n == 2


def test_a_finding_is_stated_only_when_its_interval_excludes_zero() -> None:
    assert S.verdict(S.t_interval([0.9, 1.0, 1.1]), 1) == "yes"
    assert S.verdict(S.t_interval([0.9, 1.0, 1.1]), -1) == "no"
    assert S.verdict(S.t_interval([-0.5, 1.0, 0.6]), 1) == "spread"  # mean > 0 but the interval holds zero
    assert S.verdict(S.t_interval([1.0]), 1) == "spread"  # one value: no interval, nothing is stated
    e = (-0.01, 0.0, 0.01)
    base = fake_row("baseline", {None: {"psnr": 25.0, "artifact_frac": 0.2, "judge": 0.1, "score:RM_0": 0.0}})

    def rl(name: str, psnr: float, art: float, judge: float, rm0: float, osc: float) -> dict[str, Any]:
        return fake_row(
            name,
            seeded(
                psnr=tuple(psnr - d for d in e),
                artifact_frac=tuple(art + d / 10 for d in e),
                judge=tuple(judge + d for d in e),
                **{"score:RM_0": tuple(rm0 + d for d in e)},
                reward_osc=tuple(osc + d / 100 for d in e),
            ),
        )

    hacked, ccl = rl("global", 24, 0.3, 0.0, 0.5, 0.1), rl("finpercep_ccl", 24.8, 0.21, 0.2, 0.3, 0.1)
    full = rl("finpercep", 24.5, 0.25, 0.05, 0.2, 0.3)
    data = {"rows": [base, hacked, full, ccl], "osc_from": 10, "n_stage": 3, "n_seeds": 3}
    got = {f["finding"]: f for f in findings(data)}
    hack = got["global reward hacking"]
    assert hack["reproduced"] is True and "the global reward is hacked" in hack["text"]
    assert "0.0000 → 0.5000" in hack["text"] and "over 3 seeds" in hack["text"]
    assert hack["intervals"]["score:RM_0"]["unit"] == "seeds" and hack["intervals"]["score:RM_0"]["lo"] > 0
    assert got["FinPercep-RM without CCL oscillates"]["reproduced"] is True
    best = got["FinPercep-RM + CCL best on judge and artifacts"]
    assert best["reproduced"] is True and "CCL has fewer artifacts than the global reward" in best["text"]
    assert best["best_of_all_rows"] is False  # the baseline has fewer artifacts
    assert "3 RL seeds" in got["note"]["text"]
    # the same means, but the seeds disagree: the intervals hold zero, so nothing is stated
    noisy = fake_row(
        "global",
        seeded(
            psnr=(23.0, 26.0, 23.0),
            artifact_frac=(0.5, 0.0, 0.4),
            judge=(0.0, 0.0, 0.0),
            reward_osc=(0.1, 0.1, 0.1),
            **{"score:RM_0": (0.9, -0.3, 0.9)},
        ),
    )
    got = {f["finding"]: f for f in findings({**data, "rows": [base, noisy, full, ccl]})}
    hack = got["global reward hacking"]
    assert hack["reproduced"] is None and "hacked" not in hack["text"]
    assert "within the seed-to-seed spread (Δ +0.5 ± " in hack["text"]
    ccl_noisy = fake_row("finpercep_ccl", seeded(judge=(0.3, -0.2, 0.2), artifact_frac=(0.1, 0.5, 0.3)))
    got = {f["finding"]: f for f in findings({**data, "rows": [base, hacked, ccl_noisy]})}
    best = got["FinPercep-RM + CCL best on judge and artifacts"]
    assert best["reproduced"] is None and "fewer artifacts" not in best["text"]
    assert "Artifact fraction: the difference is within the seed-to-seed spread" in best["text"]
    # the opposite beyond the spread is a refutation; 5 % more fluctuation is not oscillation
    honest = rl("global", 25.5, 0.1, 0.3, -0.1, 0.1)
    near = rl("finpercep", 24.5, 0.25, 0.05, 0.2, 0.105)
    got = {f["finding"]: f for f in findings({**data, "rows": [base, honest, near, ccl]})}
    assert got["global reward hacking"]["reproduced"] is False
    assert "did not raise" in got["global reward hacking"]["text"]
    assert got["FinPercep-RM without CCL oscillates"]["reproduced"] is False
    assert "no clear oscillation" in got["FinPercep-RM without CCL oscillates"]["text"]
    assert got["FinPercep-RM + CCL best on judge and artifacts"]["reproduced"] is False


def test_one_seed_findings_use_the_crops_and_leave_oscillation_open() -> None:
    def pairs(
        psnr: float, art: float, judge: float, rm0: float, spread: float = 0.01
    ) -> list[dict[str, Any]]:
        return [
            {
                "pair": str(i),
                "psnr": psnr + d,
                "artifact_frac": art + d / 10,
                "judge": judge + d,
                "score:RM_0": rm0 + d,
            }
            for i, d in enumerate((-spread, 0.0, spread))
        ]

    def one(name: str, per: list[dict[str, Any]], osc: float) -> dict[str, Any]:
        m = {k: float(np.mean([p[k] for p in per])) for k in per[0] if k != "pair"} | {"reward_osc": osc}
        return fake_row(name, {None if name == "baseline" else 0: m}, per)

    base = one("baseline", pairs(25, 0.2, 0.1, 0.0), math.nan)
    data = {
        "osc_from": 10,
        "n_stage": 3,
        "n_seeds": 1,
        "rows": [
            base,
            one("global", pairs(24, 0.3, 0.0, 0.5), 0.1),
            one("finpercep", pairs(24.5, 0.25, 0.05, 0.2), 0.3),
            one("finpercep_ccl", pairs(24.8, 0.21, 0.2, 0.3), 0.1),
        ],
    }
    got = {f["finding"]: f for f in findings(data)}
    hack = got["global reward hacking"]
    assert hack["reproduced"] is True and hack["intervals"]["psnr"]["unit"] == "crops"
    assert "over 3 crops" in hack["text"] and "evaluation noise" in got["note"]["text"]
    osc = got["FinPercep-RM without CCL oscillates"]
    assert osc["reproduced"] is None and "--seeds 2 or more" in osc["text"]
    data["rows"][1] = one("global", pairs(24, 0.3, 0.0, 0.5, spread=2.0), 0.1)
    hack = {f["finding"]: f for f in findings(data)}["global reward hacking"]
    assert hack["reproduced"] is None and "crop-to-crop spread of this one-seed evaluation" in hack["text"]


def test_config_checks_and_cli(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="overlap"):
        HackingConfig(train_photos=("coffee", "astronaut"))
    with pytest.raises(ConfigError, match="unknown row"):
        HackingConfig(rows=("baseline", "magic"))
    tiny_reward_model(tmp_path / "rm1", stages=0)
    with pytest.raises(FinPercepError, match="at least one grown stage"):
        run_hacking(tiny_config(tmp_path, reward_model=str(tmp_path / "rm1")))
    import argparse

    parser = argparse.ArgumentParser()
    add_experiment(parser.add_subparsers(dest="cmd"))
    ns = parser.parse_args(
        ["experiment", "hacking", "--steps", "7", "--rows", "baseline", "global", "--seeds", "3"]
    )
    assert ns.steps == 7 and ns.rows == ["baseline", "global"] and ns.seeds == 3 and callable(ns.func)
    assert from_args(HackingConfig, ns).rl == RLSettings(steps=7)
    with pytest.raises(ConfigError, match="seeds"):
        HackingConfig(seeds=0)
    assert HackingConfig(seed=5, seeds=3).rl_seeds() == [5, 6, 7] and HackingConfig().seeds == 1
    assert C.rolling_std([1.0, 3.0, 5.0, 5.0], 2)[1:] == pytest.approx([2**0.5, 2**0.5, 0.0])


def test_a_missing_judge_is_built_with_the_reward_models_recipe(
    run: tuple[HackingConfig, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg, _ = run
    built: list[Any] = []

    def fake_build(judge_cfg: Any) -> Path:
        built.append(judge_cfg)
        return Path(cfg.judge)

    monkeypatch.setattr("finpercep.eval.judge.build_judge", fake_build)
    exp = H.Experiment(dataclasses.replace(cfg, judge=None, judge_seed=4, out=str(tmp_path / "exp")))
    (jc,) = built
    assert jc.out == str(tmp_path / "exp" / "judge") and jc.seed == 4
    assert jc.like is None  # the tiny reward model records no recipe
    assert exp.judge_dir == (Path(cfg.judge) / "stage_2").resolve()
    with pytest.raises(FinPercepError, match="is the training reward model"):
        H.Experiment(dataclasses.replace(cfg, judge=cfg.reward_model, out=str(tmp_path / "exp2")))


@pytest.fixture(scope="module")
def run2(
    run: tuple[HackingConfig, Path], tmp_path_factory: pytest.TempPathFactory
) -> tuple[HackingConfig, Path]:
    """Two RL seeds, two RL rows; 26 px LR crops x4 = 104 px outputs: 96x96 after the 4 px border, enough
    for NIQE."""
    cfg, _ = run
    out = tmp_path_factory.mktemp("hacking_seeds") / "exp"
    cfg2 = dataclasses.replace(
        cfg, out=str(out), seeds=2, rows=("baseline", "global", "finpercep_ccl"), eval_lr_size=26
    )
    return cfg2, run_hacking(cfg2)


def test_two_seeds_give_every_seeds_values_and_a_mean_and_interval_per_column(
    run2: tuple[HackingConfig, Path],
) -> None:
    cfg, report = run2
    table = json.loads((report.parent / "table.json").read_text())
    md = [ln for ln in (report.parent / "table.md").read_text().splitlines() if ln.startswith("| ")]
    assert table["seeds"] == [0, 1] and len(md) == 1 + 3
    keys = [c["key"] for c in table["columns"]]
    assert "niqe" in keys
    niqe_why = table["unavailable"].get("niqe")
    for line, row in zip(md[1:], table["rows"], strict=True):
        cells = dict(zip(["method", *keys], [c.strip() for c in line.strip("|").split("|")], strict=True))
        if row["row"] == "baseline":
            assert row["seeds"] == [] and all(len(v) == 1 for v in row["per_seed"].values())
            assert " ± " not in line
            continue
        assert row["seeds"] == [0, 1]
        evals = [
            json.loads((Path(cfg.out) / "rows" / row["row"] / f"seed_{s}" / "eval.json").read_text())[
                "metrics"
            ]
            for s in (0, 1)
        ]
        for key in keys:
            values = row["per_seed"][key]
            assert len(values) == 2
            if key in evals[0]:
                assert values == [ev[key] for ev in evals]
            if key == "niqe" and niqe_why is not None:
                assert values == [None, None] and cells[key] == "–"
                continue
            assert all(v is not None and math.isfinite(v) for v in values), (row["row"], key)
            mean = (values[0] + values[1]) / 2
            half = (
                12.706205 * abs(values[0] - values[1]) / 2
            )  # t_{0.975,1} * sd / sqrt(2), sd = |a-b| / sqrt(2)
            assert row["metrics"][key] == pytest.approx(mean)
            assert row["interval"][key] == pytest.approx(half, rel=1e-6)
            dec = next(c["decimals"] for c in table["columns"] if c["key"] == key)
            assert cells[key] == f"{mean:.{dec}f} ± {half:.{dec}f}"
        assert [r["seed"] for r in row["runs"]] == [0, 1]
    assert niqe_why is None  # 104 px outputs: NIQE is measured
    ccl = next(f for f in table["findings"] if f["finding"].startswith("FinPercep-RM + CCL"))
    assert ccl["intervals"]["judge"]["unit"] == "seeds" and ccl["intervals"]["judge"]["n"] == 2
    if ccl["reproduced"] is None:
        assert "within the seed-to-seed spread" in ccl["text"]
    text = (report.parent / "table.md").read_text()
    assert "- RL rows: mean ± 95 % t-interval half-width over 2 RL seeds (0, 1)" in text
    curves = json.loads((report.parent / "curves.json").read_text())
    assert curves["global"]["seed"] == 0 and list(curves["global"]["other_seeds"]) == ["1"]
    assert curves["global"]["train"]["reward"] != curves["global"]["other_seeds"]["1"]["train"]["reward"]
    ref = json.loads((Path(cfg.out) / C.REFERENCE_NAME).read_text())
    assert {k.split(":")[0] for k in ref} == {"0", "1"}


def test_a_rerun_skips_finished_seeds_and_reads_a_seedless_run_as_its_seed(
    run2: tuple[HackingConfig, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg, report = run2
    out = tmp_path / "exp"
    shutil.copytree(cfg.out, out)
    rows = out / "rows"
    # global's seed 0 as an experiment from before seeds wrote it: the run in rows/global, no NIQE yet,
    # reference rewards keyed stage:step
    legacy = rows / "global"
    for p in (legacy / "seed_0").iterdir():
        p.rename(legacy / p.name)
    (legacy / "seed_0").rmdir()
    ev = json.loads((legacy / "eval.json").read_text())
    niqe0 = ev["metrics"].pop("niqe")
    (legacy / "eval.json").write_text(json.dumps(ev))
    ref_path = out / C.REFERENCE_NAME
    ref = json.loads(ref_path.read_text())
    ref_path.write_text(json.dumps({k[2:]: v for k, v in ref.items() if k.startswith("0:")}))
    before = {p: p.stat().st_mtime_ns for p in rows.glob("**/eval.json") if p.parent != legacy}
    real_train = sys.modules["finpercep.rl.train"].train
    trained: list[int] = []

    def counting_train(rl_cfg: Any, **kw: Any) -> Any:
        trained.append(rl_cfg.seed)
        return real_train(rl_cfg, **kw)

    monkeypatch.setattr(sys.modules["finpercep.rl.train"], "train", counting_train)
    cfg3 = dataclasses.replace(cfg, out=str(out), seeds=3, rows=("baseline", "global"), report_crops=0)
    run_hacking(cfg3)
    assert trained == [2]  # seeds 0 (legacy folder) and 1 were finished; only the new seed trains
    assert {p: p.stat().st_mtime_ns for p in before} == before  # finished runs are not evaluated again
    assert not (legacy / "seed_0").exists() and (legacy / "seed_2" / "eval.json").is_file()
    again = json.loads((legacy / "eval.json").read_text())["metrics"]
    assert again["niqe"] == pytest.approx(niqe0) and again["psnr"] == ev["metrics"]["psnr"]  # re-evaluated
    table = json.loads((out / "report" / "table.json").read_text())
    glob = next(r for r in table["rows"] if r["row"] == "global")
    first = json.loads((Path(cfg.out) / "report" / "table.json").read_text())
    glob_first = next(r for r in first["rows"] if r["row"] == "global")
    assert glob["seeds"] == [0, 1, 2]
    assert glob["per_seed"]["psnr"][:2] == glob_first["per_seed"]["psnr"]
    assert glob["per_seed"]["train_gain"][:2] == pytest.approx(glob_first["per_seed"]["train_gain"])
    keys = json.loads(ref_path.read_text())
    assert {k.split(":")[0] for k in keys} == {"0", "1", "2"} and all(k.count(":") == 2 for k in keys)
    trained.clear()
    run_hacking(cfg3)
    assert trained == []


TODAY_DEFAULTS: dict[str, Any] = {
    "generator": "realesrgan-animevideov3", "reward_model": None, "judge": None, "judge_stage": None,
    "judge_seed": 1, "judge_num": 36, "out": "runs/hacking",
    "rows": ["baseline", "global", "finpercep", "finpercep_ccl"], "algorithm": "grpo", "steps": 300,
    "batch_size": 4, "group_size": 4, "exploration": "antithetic", "lr": 0.0001, "kl_coef": 0.01,
    "policy_std": 0.05, "fidelity_weight": 1.0, "lora_rank": 0, "map_penalty": 0.5, "schedule": "fixed",
    "stage_steps": [], "early_steps": 20, "lr_size": 32,
    "train_photos": ["astronaut", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "retina"],
    "hr_folders": [], "degradation": "realesrgan", "seed": 0, "seeds": 1, "eval_every": 25, "curve_pairs": 8,
    "eval_photos": ["coffee", "motorcycle_left"], "num_pairs": 16, "eval_lr_size": 64, "eval_seed": 2024,
    "tau": 0.8, "iqa": ["lpips", "musiq", "maniqa", "clipiqa"], "iqa_weights": None, "report_crops": 3,
    "rolling_window": 10, "threads": 0, "progress": True,
}  # fmt: skip
"""``hacking_config.json`` of ``HackingConfig()`` as the code before the nested RL settings wrote it (plus
``exploration``, added later)."""


def test_the_nested_rl_settings_keep_the_flags_and_defaults_of_the_flat_config() -> None:
    import argparse

    assert flatten(HackingConfig, to_dict(HackingConfig())) == {
        k: tuple(v) if isinstance(v, list) else v for k, v in TODAY_DEFAULTS.items()
    }
    assert from_dict(HackingConfig, TODAY_DEFAULTS) == HackingConfig()  # a flat file loads as it is
    parser = argparse.ArgumentParser()
    add_experiment(parser.add_subparsers(dest="cmd"))
    hacking = parser._subparsers._group_actions[0].choices["experiment"]  # type: ignore[union-attr]
    sub = hacking._subparsers._group_actions[0].choices["hacking"]  # type: ignore[union-attr]
    flags = {a.option_strings[0] for a in sub._actions if a.option_strings} - {"-h"}
    assert flags == {"--" + k.replace("_", "-") for k in TODAY_DEFAULTS}
    argv = "experiment hacking --lr 3e-4 --kl-coef 0.02 --early-steps 0 --map-penalty 0 --lr-size 16 --seed 2"
    cfg = from_args(HackingConfig, parser.parse_args(argv.split()))
    assert cfg.rl == RLSettings(lr=3e-4, kl_coef=0.02, early_steps=0, map_penalty=0.0, lr_size=16)
    assert cfg.seed == 2 and cfg.rl.steps == 300 and cfg.rl.batch_size == 4
    rl = cfg.rl_config(K.row_spec("finpercep_ccl"), Path("o"), ("hr",), seed=5)
    cur = rl.curriculum
    assert (rl.lr, rl.kl_coef, cur.early_steps, rl.map_penalty, rl.lr_size) == (3e-4, 0.02, 0, 0.0, 16)
    assert (cur.kind, rl.seed, rl.save_every, rl.steps, rl.hr_folders) == ("ccl", 5, 25, 300, ("hr",))


def test_an_experiment_folder_with_the_flat_config_resumes(
    run: tuple[HackingConfig, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg, report = run
    saved_path = Path(cfg.out) / K.CONFIG_NAME
    saved = json.loads(saved_path.read_text())
    flat = {**{k: v for k, v in saved.items() if k != "rl"}, **saved["rl"]}
    assert set(flat) == set(TODAY_DEFAULTS)
    saved_path.write_text(json.dumps(flat, indent=2))

    def no_training(*a: Any, **k: Any) -> None:
        raise AssertionError("a finished row was trained again")

    monkeypatch.setattr(sys.modules["finpercep.rl.train"], "train", no_training)
    again = dataclasses.replace(cfg, report_crops=1)
    assert run_hacking(again) == report
    now = json.loads(saved_path.read_text())
    assert now == json.loads(json.dumps(to_dict(again))) and "rl" in now  # accepted; written nested
    saved_path.write_text(json.dumps({**flat, "kl_coef": 0.5}))
    with pytest.raises(FinPercepError, match=r"different settings \(kl_coef\)"):
        run_hacking(cfg)
    saved_path.write_text(json.dumps(saved))
