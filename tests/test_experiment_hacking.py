"""The reward-hacking experiment machinery on a tiny generator and tiny reward models."""

from __future__ import annotations

import dataclasses
import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from finpercep.errors import ConfigError, FinPercepError
from finpercep.experiment import HackingConfig, run_hacking
from finpercep.experiment import hacking as H
from finpercep.experiment.cli import add_experiment
from finpercep.rl.toy import tiny_reward_model

torch.set_num_threads(1)


def tiny_config(root: Path, **kw: Any) -> HackingConfig:
    base: dict[str, Any] = dict(
        generator="srvgg-tiny",
        reward_model=str(root / "rm"),
        judge=str(root / "judge"),
        out=str(root / "exp"),
        steps=4,
        batch_size=2,
        group_size=2,
        lr=1e-3,
        lr_size=16,
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
        ev = json.loads((Path(cfg.out) / "rows" / row["row"] / "eval.json").read_text())
        for key in ("psnr", "ssim", "artifact_frac", "judge", "score:RM_0", "score:RM_2"):
            assert row["metrics"][key] == ev["metrics"][key]
    base = table["rows"][0]["metrics"]
    assert base["train_reward"] is None and table["rows"][1]["metrics"]["train_reward"] is not None
    assert set(table["unavailable"]) == {"lpips", "musiq", "maniqa", "clipiqa"}
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
    before = {p: p.stat().st_mtime_ns for p in rows.glob("*/eval.json")}
    table = (report.parent / "table.json").read_text()

    def no_training(*a: Any, **k: Any) -> None:
        raise AssertionError("a finished row was trained again")

    monkeypatch.setattr(sys.modules["finpercep.rl.train"], "train", no_training)
    assert run_hacking(dataclasses.replace(cfg, progress=True, report_crops=1)) == report
    assert {p: p.stat().st_mtime_ns for p in rows.glob("*/eval.json")} == before and len(before) == 4
    assert json.loads((report.parent / "table.json").read_text())["rows"] == json.loads(table)["rows"]
    with pytest.raises(FinPercepError, match="different settings.*steps"):
        run_hacking(dataclasses.replace(cfg, steps=6))
    saved_path = Path(cfg.out) / H.CONFIG_NAME
    saved = saved_path.read_text()
    old = json.loads(saved)
    del old["early_steps"]  # an experiment from before the option: its CCL rows split the run evenly
    saved_path.write_text(json.dumps(old))
    with pytest.raises(FinPercepError, match="different settings.*early_steps"):
        run_hacking(cfg)
    assert run_hacking(dataclasses.replace(cfg, early_steps=0)) == report
    saved_path.write_text(saved)


def test_an_interrupted_row_resumes_to_the_same_result(
    run: tuple[HackingConfig, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg, _ = run
    cfg2 = dataclasses.replace(cfg, out=str(tmp_path / "exp"), rows=("finpercep_ccl",), report_crops=0)
    real = H._Experiment.curve_eval

    def crash_at_step_2(self: Any, net: torch.nn.Module, step: int) -> dict[str, float]:
        out = real(self, net, step)
        if step == 2:
            raise KeyboardInterrupt
        return out

    monkeypatch.setattr(H._Experiment, "curve_eval", crash_at_step_2)
    with pytest.raises(KeyboardInterrupt):
        run_hacking(cfg2)
    monkeypatch.setattr(H._Experiment, "curve_eval", real)
    row = tmp_path / "exp" / "rows" / "finpercep_ccl"
    assert not (row / "eval.json").exists() and (row / "state.pt").is_file()
    run_hacking(cfg2)
    curve = json.loads((row / "curve.json").read_text())
    assert [p["step"] for p in curve] == [2, 4]
    full = Path(cfg.out) / "rows" / "finpercep_ccl"
    assert (
        json.loads((row / "eval.json").read_text())["metrics"]
        == json.loads((full / "eval.json").read_text())["metrics"]
    )
    assert curve == json.loads((full / "curve.json").read_text())


def test_findings_follow_the_measured_numbers() -> None:
    def row(name: str, per: list[dict[str, float]], **extra: float) -> dict[str, Any]:
        keys = per[0].keys()
        metrics = {k: sum(p[k] for p in per) / len(per) for k in keys} | extra
        return {
            "row": name,
            "label": name,
            "metrics": metrics,
            "per_image": [{"pair": str(i), **p} for i, p in enumerate(per)],
        }

    def pairs(psnr: float, art: float, judge: float, rm0: float) -> list[dict[str, float]]:
        return [
            {"psnr": psnr + d, "artifact_frac": art + d / 10, "judge": judge + d, "score:RM_0": rm0 + d}
            for d in (-0.01, 0.0, 0.01)
        ]

    base = row("baseline", pairs(25, 0.2, 0.1, 0.0))
    hacked = row("global", pairs(24, 0.3, 0.0, 0.5), reward_osc=0.1)
    full = row("finpercep", pairs(24.5, 0.25, 0.05, 0.2), reward_osc=0.3)
    ccl = row("finpercep_ccl", pairs(24.8, 0.21, 0.2, 0.3), reward_osc=0.1)
    data = {"rows": [base, hacked, full, ccl], "osc_from": 10, "n_stage": 3}
    got = {f["finding"]: f for f in H.findings(data)}
    assert got["global reward hacking"]["reproduced"] is True
    assert "0.0000 → 0.5000" in got["global reward hacking"]["text"]
    assert got["global reward hacking"]["clear"] is True  # constant paired differences: no noise
    assert got["FinPercep-RM without CCL oscillates"]["reproduced"] is True
    near = row("finpercep", pairs(24.5, 0.25, 0.05, 0.2), reward_osc=0.105)  # 5 % more: not a finding
    osc = {f["finding"]: f for f in H.findings({**data, "rows": [base, hacked, near, ccl]})}
    assert osc["FinPercep-RM without CCL oscillates"]["reproduced"] is False
    assert "no clear oscillation" in osc["FinPercep-RM without CCL oscillates"]["text"]
    best = got["FinPercep-RM + CCL best on judge and artifacts"]
    assert (
        best["reproduced"] is True and best["best_of_all_rows"] is False
    )  # the baseline has fewer artifacts
    noisy_per = [
        {"psnr": 25 - d, "artifact_frac": 0.2 + d, "judge": 0.1, "score:RM_0": d} for d in (-0.5, 0.6, 0.0)
    ]
    noisy = row("global", noisy_per, reward_osc=0.1)
    got = {f["finding"]: f for f in H.findings({**data, "rows": [base, noisy, full, ccl]})}
    hack = got["global reward hacking"]
    assert hack["reproduced"] is True and hack["clear"] is False
    assert "within the noise" in hack["text"]
    honest = row("global", pairs(25.5, 0.1, 0.3, -0.1), reward_osc=0.1)
    got = {f["finding"]: f for f in H.findings({**data, "rows": [base, honest, full, ccl]})}
    assert got["global reward hacking"]["reproduced"] is False
    assert "did not raise" in got["global reward hacking"]["text"]
    assert "within noise" not in got["global reward hacking"]["text"]  # the per-pair spread is tiny here
    assert got["FinPercep-RM + CCL best on judge and artifacts"]["reproduced"] is False


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
    ns = parser.parse_args(["experiment", "hacking", "--steps", "7", "--rows", "baseline", "global"])
    assert ns.steps == 7 and ns.rows == ["baseline", "global"] and callable(ns.func)
    assert H.rolling_std([1.0, 3.0, 5.0, 5.0], 2)[1:] == pytest.approx([2**0.5, 2**0.5, 0.0])


def test_a_missing_judge_is_built_with_the_reward_models_recipe(
    run: tuple[HackingConfig, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg, _ = run
    built: list[Any] = []

    def fake_build(judge_cfg: Any) -> Path:
        built.append(judge_cfg)
        return Path(cfg.judge)

    monkeypatch.setattr("finpercep.eval.judge.build_judge", fake_build)
    exp = H._Experiment(dataclasses.replace(cfg, judge=None, judge_seed=4, out=str(tmp_path / "exp")))
    (jc,) = built
    assert jc.out == str(tmp_path / "exp" / "judge") and jc.seed == 4
    assert jc.like is None  # the tiny reward model records no recipe
    assert exp.judge_dir == (Path(cfg.judge) / "stage_2").resolve()
    with pytest.raises(FinPercepError, match="is the training reward model"):
        H._Experiment(dataclasses.replace(cfg, judge=cfg.reward_model, out=str(tmp_path / "exp2")))
