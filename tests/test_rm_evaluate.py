"""Reward-model evaluation on its own: its small config, and ``rm eval`` without the trainer."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from finpercep.errors import ConfigError
from finpercep.rm import RewardModel
from finpercep.rm.dataset import load_split
from finpercep.rm.evaluate import RMEvalConfig, evaluate
from finpercep.rm.fakedata import write_fake_dataset


@pytest.fixture(scope="module")
def fake_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fake_dataset(tmp_path_factory.mktemp("fgr"), groups_per_source=1, size=64)


def test_eval_config_checks_its_values() -> None:
    assert RMEvalConfig() == RMEvalConfig(tau=0.1, batch=8)
    with pytest.raises(ConfigError, match="tau"):
        RMEvalConfig(tau=1.0)
    with pytest.raises(ConfigError, match="batch"):
        RMEvalConfig(batch=0)


def test_tau_sets_the_defect_pixels_and_batch_leaves_the_metrics(fake_data: Path) -> None:
    split = load_split(fake_data, ("tex_c",), 0.25)
    chains = [[s["id"] for s in c] for c in split.val_chains]
    model = RewardModel.from_pretrained(None, 1)
    dev = torch.device("cpu")
    low = evaluate(model, fake_data, split.val_samples, chains, RMEvalConfig(tau=0.1), dev)
    low_b1 = evaluate(model, fake_data, split.val_samples, chains, RMEvalConfig(tau=0.1, batch=1), dev)
    high = evaluate(model, fake_data, split.val_samples, chains, RMEvalConfig(tau=0.9), dev)
    for key in ("auroc", "srcc", "triplet_acc", "score_p01_p99"):
        assert low_b1[key] == pytest.approx(low[key], abs=1e-5)
    assert high["srcc"] == low["srcc"] and high["auroc"] != low["auroc"]


def test_rm_eval_command_does_not_load_the_trainer(fake_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval.json"
    argv = ["-q", "rm", "eval", "--data", str(fake_data), "--stage", "0", "--out", str(out)]
    code = (
        "import sys\n"
        "from finpercep.cli import main\n"
        f"rc = main({argv!r})\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('finpercep.rm.'))\n"
        "print(rc, ' '.join(loaded))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rc, loaded = proc.stdout.strip().splitlines()[-1].split(" ", 1)
    assert rc == "0" and "finpercep.rm.evaluate" in loaded.split()
    assert not {"finpercep.rm.train", "finpercep.rm.stage", "finpercep.rm.objective"} & set(loaded.split())
    assert json.loads(out.read_text())["stage"] == 0
