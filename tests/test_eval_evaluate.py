"""evaluate() on tiny generators and a tiny judge; deterministic pairs; files; pyiqa availability rules."""

from __future__ import annotations

import csv
import json
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from finpercep.cli import build_parser
from finpercep.config import add_arguments
from finpercep.data.photos import embedded_photos
from finpercep.errors import ConfigError, FinPercepError
from finpercep.eval import (
    EvalConfig,
    IQAScorer,
    available_iqa_metrics,
    degraded_pairs,
    evaluate,
    folder_pairs,
    run_eval,
)
from finpercep.eval.cli import add_eval
from finpercep.eval.pyiqa_metrics import offline_weights
from finpercep.io import save_png
from finpercep.rl.generators import export_generator, srvgg_tiny
from finpercep.rm.model import RewardModel, RMConfig

torch.set_num_threads(1)


class Bicubic(torch.nn.Module):
    """An identity-like x4 upscaler."""

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        return F.interpolate(lr, scale_factor=4, mode="bicubic", align_corners=False).clamp(0, 1)


class Noisy(Bicubic):
    """The same plus fixed-seed noise: worse fidelity, more artifacts."""

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        up = super().forward(lr)
        noise = torch.randn(up.shape, generator=torch.Generator().manual_seed(0))
        return (up + 0.15 * noise).clamp(0, 1)


def as8bit(x: torch.Tensor) -> torch.Tensor:
    """What evaluate() measures: the output rounded to 8-bit levels."""
    return torch.round(x.clamp(0, 1) * 255) / 255


@pytest.fixture(scope="module")
def pairs() -> list[Any]:
    return degraded_pairs(embedded_photos(["coffee", "chelsea"]), 4, 16, 4, seed=5, degradation="bicubic")


@pytest.fixture(scope="module")
def judge() -> RewardModel:
    return RewardModel(
        RMConfig(cnn_widths=(8, 16), cnn_blocks=(1, 1), head_hidden=8, stage=2, init_seed=3)
    ).eval()


def test_pairs_are_deterministic_balanced_and_sized(pairs: list[Any]) -> None:
    again = degraded_pairs(embedded_photos(["coffee", "chelsea"]), 4, 16, 4, seed=5, degradation="bicubic")
    assert [p.name for p in pairs] == [p.name for p in again]
    assert all(
        np.array_equal(a.lr, b.lr) and np.array_equal(a.hr, b.hr) for a, b in zip(pairs, again, strict=True)
    )
    assert [p.name.split("_")[1] for p in pairs] == ["coffee", "chelsea", "coffee", "chelsea"]
    assert all(p.lr.shape == (16, 16, 3) and p.hr.shape == (64, 64, 3) for p in pairs)
    other = degraded_pairs(embedded_photos(["coffee", "chelsea"]), 4, 16, 4, seed=6, degradation="realesrgan")
    assert not np.array_equal(other[0].hr, pairs[0].hr)


def test_identity_like_upscaler_beats_a_noisy_one(pairs: list[Any], judge: RewardModel) -> None:
    good = evaluate(Bicubic(), pairs, judge, tau=0.5)
    bad = evaluate(Noisy(), pairs, judge, tau=0.5)
    assert good.metrics["psnr"] > bad.metrics["psnr"] + 3
    assert good.metrics["ssim"] > bad.metrics["ssim"]
    assert good.metrics["artifact_frac"] < bad.metrics["artifact_frac"]
    assert good.metrics["artifact_mean"] < bad.metrics["artifact_mean"]
    for r in good.rows:
        assert 15 < r["psnr"] < 60 and 0 < r["ssim"] <= 1 and 0 <= r["artifact_frac"] <= 1
    assert good.metrics["judge_hr"] == bad.metrics["judge_hr"]  # the judge of the HR images does not move
    assert good.metrics["judge"] != bad.metrics["judge"]
    assert good.unavailable == {}


def test_evaluation_is_deterministic_and_scores_extra_models(pairs: list[Any], judge: RewardModel) -> None:
    rm0 = RewardModel(
        RMConfig(cnn_widths=(8, 16), cnn_blocks=(1, 1), head_hidden=8, stage=0, init_seed=9)
    ).eval()
    a = evaluate(Bicubic(), pairs, judge, scorers={"RM_0": rm0}, batch_size=3, keep_outputs=2)
    again = evaluate(Bicubic(), pairs, judge, scorers={"RM_0": rm0}, batch_size=3)
    assert a.rows == again.rows
    # another batch size: oneDNN may pick other kernels (float rounding differs on some CPUs), same values
    b = evaluate(Bicubic(), pairs, judge, scorers={"RM_0": rm0}, batch_size=1)
    assert [r.keys() for r in a.rows] == [r.keys() for r in b.rows]
    for ra, rb in zip(a.rows, b.rows, strict=True):
        close = {k: v if isinstance(v, str) else pytest.approx(v, rel=1e-5, abs=1e-6) for k, v in rb.items()}
        assert ra == close
    with torch.no_grad():
        expected = rm0(as8bit(Bicubic()(torch.from_numpy(pairs[0].lr).permute(2, 0, 1)[None]))).score.item()
    assert a.rows[0]["score:RM_0"] == pytest.approx(expected, abs=1e-6)
    assert len(a.outputs) == 2 and a.outputs[0].shape == (64, 64, 3)
    assert a.metrics["score:RM_0"] == pytest.approx(np.mean([r["score:RM_0"] for r in a.rows]))


def test_outputs_are_measured_as_8_bit_images_and_the_mode_is_restored(pairs: list[Any]) -> None:
    net = srvgg_tiny(4).train()
    res = evaluate(net, pairs[:1], keep_outputs=1)
    assert net.training
    assert np.allclose(np.round(res.outputs[0] * 255), res.outputs[0] * 255, atol=1e-4)


def test_wrong_scale_is_a_clear_error(pairs: list[Any]) -> None:
    with pytest.raises(FinPercepError, match="wrong scale"):
        evaluate(lambda x: F.interpolate(x, scale_factor=2), pairs)


def test_run_eval_writes_json_and_csv_that_agree(tmp_path: Path, judge: RewardModel) -> None:
    export_generator(srvgg_tiny(4), tmp_path / "gen", {"source": "srvgg-tiny", "scale": 4})
    judge.save_pretrained(tmp_path / "judge")
    cfg = EvalConfig(
        generator=str(tmp_path / "gen"),
        judge=str(tmp_path / "judge"),
        photos=("coffee",),
        num_pairs=3,
        lr_size=16,
        degradation="bicubic",
        save_outputs=1,
        out=str(tmp_path / "ev"),
    )
    path = run_eval(cfg)
    res = json.loads(path.read_text())
    with open(tmp_path / "ev" / "per_image.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert res["num_pairs"] == len(rows) == 3
    for key in ("psnr", "ssim_y", "artifact_frac", "judge"):
        assert res["metrics"][key] == pytest.approx(np.mean([float(r[key]) for r in rows]), rel=1e-6)
    assert set(res["unavailable"]) == {"lpips", "musiq", "maniqa", "clipiqa", "niqe"}  # 64x64 outputs
    assert "96x96" in res["unavailable"]["niqe"] and "niqe" not in rows[0]
    assert (tmp_path / "ev" / "images" / f"{rows[0]['pair']}_sr.png").is_file()
    assert res["config"]["judge"] == str(tmp_path / "judge")
    assert json.loads(run_eval(cfg).read_text())["metrics"] == res["metrics"]  # deterministic


def test_folder_pairs_match_by_name_and_check_the_scale(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    save_png(tmp_path / "lr" / "a.png", rng.random((8, 10, 3)).astype(np.float32))
    save_png(tmp_path / "hr" / "a.png", rng.random((32, 40, 3)).astype(np.float32))
    save_png(tmp_path / "lr" / "orphan.png", rng.random((8, 8, 3)).astype(np.float32))
    got = folder_pairs(tmp_path / "lr", tmp_path / "hr", 4)
    assert [p.name for p in got] == ["a"] and got[0].hr.shape == (32, 40, 3)
    with pytest.raises(FinPercepError, match="expected x2"):
        folder_pairs(tmp_path / "lr", tmp_path / "hr", 2)


def test_config_validation_and_cli_hook() -> None:
    with pytest.raises(ConfigError, match="paired"):
        EvalConfig(paired_lr="x")
    with pytest.raises(FinPercepError, match="unknown IQA metric"):
        EvalConfig(iqa=("fid",))
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    if "eval" not in sub.choices:
        add_eval(sub)
    ns = parser.parse_args(["eval", "--generator", "g", "--judge", "j", "--num-pairs", "5", "--tau", "0.3"])
    assert (ns.generator, ns.judge, ns.num_pairs, ns.tau) == ("g", "j", 5, 0.3)
    assert callable(ns.func)
    import argparse

    p = argparse.ArgumentParser()
    add_arguments(p, EvalConfig)
    assert p.parse_args(["--iqa", "lpips", "musiq"]).iqa == ["lpips", "musiq"]


# --------------------------------------------------------------------------------------------------
# pyiqa


def test_iqa_unavailable_without_pyiqa(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "pyiqa", None)  # import pyiqa -> ImportError, whatever is installed
    status = available_iqa_metrics(tmp_path)
    assert set(status) == {"lpips", "musiq", "maniqa", "clipiqa"}
    for s in status.values():
        assert (
            not s.available
            and "pyiqa cannot be imported" in s.reason
            and s.describe().startswith("unavailable: ")
        )
    scorer = IQAScorer(tmp_path, ("musiq",))
    assert scorer.names == () and not scorer.status["musiq"].available


def _fake_pyiqa(calls: list[dict[str, Any]]) -> types.ModuleType:
    mod = types.ModuleType("pyiqa")

    def create_metric(name: str, **kw: Any) -> Any:
        calls.append({"name": name, "hub": torch.hub.get_dir(), **kw})
        if name == "maniqa":
            torch.hub.download_url_to_file("https://example.invalid/vit.pth", "/tmp/never")
        return lambda sr, hr=None: sr.mean(dim=(1, 2, 3)) * (2.0 if hr is None else -1.0)

    mod.create_metric = create_metric  # type: ignore[attr-defined]
    return mod


def test_iqa_uses_only_local_weights_and_refuses_downloads(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    calls: list[dict[str, Any]] = []
    monkeypatch.setitem(sys.modules, "pyiqa", _fake_pyiqa(calls))
    weights = tmp_path / "w"
    for name in ("LPIPS_v0.1_alex-df73285e.pth", "alexnet-owt-7be5be79.pth", "ckpt_koniq10k.pt"):
        (weights / "sub").mkdir(parents=True, exist_ok=True)
        (weights / "sub" / name).write_bytes(b"w")
    status = available_iqa_metrics(weights)
    assert status["lpips"].available and status["maniqa"].available
    assert not status["musiq"].available and "musiq_koniq_ckpt-e95806b9.pth" in status["musiq"].reason
    assert not status["clipiqa"].available and "RN50.pt" in status["clipiqa"].reason
    assert "no weights folder" in available_iqa_metrics(None)["lpips"].reason

    hub_before, download_before = torch.hub.get_dir(), torch.hub.download_url_to_file
    scorer = IQAScorer(weights)
    assert scorer.names == ("lpips",)
    lp = next(c for c in calls if c["name"] == "lpips")
    assert lp["pretrained_model_path"] == str(weights / "sub" / "LPIPS_v0.1_alex-df73285e.pth")
    assert lp["hub"] != hub_before
    assert not scorer.status["maniqa"].available and "would download" in scorer.status["maniqa"].reason
    assert torch.hub.get_dir() == hub_before and torch.hub.download_url_to_file is download_before

    sr, hr = torch.full((2, 3, 8, 8), 0.25), torch.zeros(2, 3, 8, 8)
    assert torch.allclose(scorer(sr, hr)["lpips"], torch.full((2,), -0.25))  # full-reference: gets hr


def test_offline_weights_links_files_for_torchvision_and_pyiqa(tmp_path: Path) -> None:
    f = tmp_path / "RN50.pt"
    f.write_bytes(b"clip")
    with offline_weights({"RN50.pt": f}) as hub:
        assert (hub / "checkpoints" / "RN50.pt").read_bytes() == b"clip"
        assert (hub / "pyiqa" / "RN50.pt").read_bytes() == b"clip"
        with pytest.raises(FinPercepError, match="never downloads"):
            torch.hub.load_state_dict_from_url("https://example.invalid/other.pth")
    assert not hub.exists()


def test_evaluate_reports_iqa_values_and_unavailable_reasons(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, pairs: list[Any]
) -> None:
    monkeypatch.setitem(sys.modules, "pyiqa", _fake_pyiqa([]))
    (tmp_path / "musiq_koniq_ckpt-e95806b9.pth").write_bytes(b"w")
    res = evaluate(Bicubic(), pairs[:2], iqa=IQAScorer(tmp_path))
    out = as8bit(Bicubic()(torch.from_numpy(pairs[0].lr).permute(2, 0, 1)[None]))
    assert res.rows[0]["musiq"] == pytest.approx(2 * float(out.mean()), rel=1e-5)
    assert set(res.unavailable) == {"lpips", "maniqa", "clipiqa"}
