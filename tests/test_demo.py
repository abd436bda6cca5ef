"""The end-to-end demo at toy scale (the ``quick`` preset): every step writes what the report needs."""

from __future__ import annotations

import json
import math

import pytest

from finpercep.demo import PRESETS, DemoConfig, run_demo
from finpercep.errors import ConfigError
from finpercep.rm.model import RewardModel


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("demo")
    report = run_demo(DemoConfig(out=str(out), preset="quick", workers=1), progress=False)
    return out, report


def test_quick_demo_produces_report_from_its_own_files(demo_out) -> None:
    out, report = demo_out
    assert report == out / "experiment" / "report" / "report.html"
    page = report.read_text()
    table = json.loads((report.parent / "table.json").read_text())
    labels = [r["label"] for r in table["rows"]]
    assert len(labels) == len(PRESETS["quick"].rl_rows)
    for row in table["rows"]:
        for key in ("psnr", "artifact_frac", "judge", "niqe"):  # 256 px outputs: NIQE is measured
            assert math.isfinite(row["all_metrics"][key]), (row["label"], key)
    evals = {
        json.loads(p.read_text())["label"]: json.loads(p.read_text())["metrics"]
        for p in (out / "experiment" / "rows").glob("**/eval.json")
    }
    for row in table["rows"]:  # the table's numbers are the ones each row's evaluation wrote
        assert evals[row["label"]]["psnr"] == pytest.approx(row["all_metrics"]["psnr"])
        assert row["label"] in page
    # the reward model grew RM_0 ... RM_2 and the judge copied its recipe on other photos
    stages = sorted(p.name for p in (out / "rm").glob("stage_*"))
    assert stages == ["stage_0", "stage_1", "stage_2"]
    rm_split = json.loads((out / "rm" / "split.json").read_text())
    judge_split = json.loads((out / "judge" / "rm" / "split.json").read_text())
    assert not set(rm_split["train_sources"]) & set(judge_split["train_sources"])
    judge_cfg = json.loads((out / "judge" / "rm" / "train_config.json").read_text())
    rm_cfg = json.loads((out / "rm" / "train_config.json").read_text())
    assert judge_cfg["seed"] != rm_cfg["seed"] and judge_cfg["crop"] == rm_cfg["crop"]
    assert RewardModel.from_pretrained(out / "rm").stage == 2


def test_quick_demo_rerun_resumes_without_redoing_work(demo_out) -> None:
    out, report = demo_out
    weights = out / "rm" / "stage_2" / "model.safetensors"
    row_eval = out / "experiment" / "rows" / "finpercep_ccl" / "seed_0" / "eval.json"
    before = (weights.stat().st_mtime_ns, row_eval.stat().st_mtime_ns, row_eval.read_bytes())
    again = run_demo(DemoConfig(out=str(out), preset="quick", workers=1), progress=False)
    assert again == report
    assert (weights.stat().st_mtime_ns, row_eval.stat().st_mtime_ns, row_eval.read_bytes()) == before


def test_quick_demo_table_is_byte_identical_in_another_folder(
    demo_out, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same seed, same table: another output folder (a relative path this time), two synthesis processes
    instead of one and another caller thread count change no byte of table.md or table.json (neither holds
    a path or a time; report.html names the folders and is not compared)."""
    import torch

    out, report = demo_out
    monkeypatch.chdir(tmp_path)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        again = run_demo(DemoConfig(out="again", preset="quick", workers=2), progress=False)
        assert torch.get_num_threads() == 1  # the demo pins its own count and gives the caller's back
    finally:
        torch.set_num_threads(before)
    first, second = out, tmp_path / "again"
    assert again.resolve() == (second / "experiment" / "report" / "report.html").resolve()
    # where they part, for the message: the data, the reward models, the RL weights, the evaluations
    steps = [
        "data/manifest.jsonl",
        "rm/stage_0/model.safetensors",
        "rm/stage_2/model.safetensors",
        "judge/rm/stage_2/model.safetensors",
        "experiment/rows/baseline/eval.json",
        "experiment/rows/global/seed_0/generator.safetensors",
        "experiment/rows/finpercep_ccl/seed_0/eval.json",
    ]
    parted = next((f for f in steps if (first / f).read_bytes() != (second / f).read_bytes()), None)
    for name in ("table.md", "table.json"):
        a = (first / "experiment" / "report" / name).read_bytes()
        b = (second / "experiment" / "report" / name).read_bytes()
        assert a == b, f"{name} differs between two runs with the same seed; first different file: {parted}"


def test_demo_cli_presets() -> None:
    from finpercep.cli import build_parser
    from finpercep.config import from_args

    parse = build_parser().parse_args
    assert from_args(DemoConfig, parse(["demo", "--out", "x"])).preset == "full"
    assert from_args(DemoConfig, parse(["demo", "--quick"])).preset == "quick"
    assert from_args(DemoConfig, parse(["demo", "--preset", "quick"])).preset == "quick"


def test_demo_config_is_validated() -> None:
    with pytest.raises(ConfigError):
        DemoConfig(workers=0)
    with pytest.raises(ConfigError):
        DemoConfig(out="")
