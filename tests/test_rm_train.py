"""Reward-model data split, chain augmentation, staged training, resume, NaN reporting and 2-process DDP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from finpercep.cli import main as cli_main
from finpercep.dist import fingerprint as weights_fingerprint
from finpercep.errors import ConfigError, FinPercepError
from finpercep.io import atomic_path
from finpercep.rm import RewardModel, RMConfig, objective, validate
from finpercep.rm import stage as stage_mod
from finpercep.rm.dataset import ChainDataset, SampleDataset, load_split, split_sources
from finpercep.rm.evaluate import RMEvalConfig, evaluate, evaluate_checkpoint
from finpercep.rm.export import export_stages
from finpercep.rm.fakedata import write_fake_dataset
from finpercep.rm.metrics import misorder, spearman
from finpercep.rm.objective import map_loss
from finpercep.rm.prepare import init_stages, model_config_or_none
from finpercep.rm.stage import lr_at
from finpercep.rm.train import RMTrainConfig, train
from finpercep.rm.train_data import anchor_scores, chain_weights, epoch_order, pick_anchors
from finpercep.rm.validate import selection_score

TINY = RMConfig(cnn_widths=(8, 12, 16), cnn_blocks=(1, 1, 1), head_hidden=8, decoder_widths=(4, 8, 8))


@pytest.fixture(scope="module")
def fake_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fake_dataset(tmp_path_factory.mktemp("fgr"), groups_per_source=2, size=64)


def _cfg(data: Path, out: Path, **kw: object) -> RMTrainConfig:
    base = dict(
        data=str(data),
        out=str(out),
        stages=2,
        epochs=(1,),
        batch_chains=2,
        crop=48,
        anchors=4,
        anchor_batch=2,
        val_sources=("tex_c",),
        max_steps_per_epoch=2,
        threads=1,
        progress=False,
    )
    base.update(kw)
    return RMTrainConfig(**base)  # type: ignore[arg-type]


def _eval_cfg(cfg: RMTrainConfig) -> RMEvalConfig:
    return RMEvalConfig(tau=cfg.tau, batch=cfg.val_batch)


# ---------------------------------------------------------------- data


def test_split_sources_rules() -> None:
    srcs = ["astronaut", "coffee", "motorcycle_left", "motorcycle_right", "rocket"]
    train_s, val_s = split_sources(srcs, ("coffee", "motorcycle_*"), 0.25)
    assert val_s == ["coffee", "motorcycle_left", "motorcycle_right"] and train_s == ["astronaut", "rocket"]
    mine = [f"photos/img{i:02d}.jpg" for i in range(40)]
    t2, v2 = split_sources(mine, ("coffee",), 0.25)  # no pattern matches: stable hash rule
    assert 0 < len(v2) < 40 and set(t2).isdisjoint(v2) and set(t2) | set(v2) == set(mine)
    assert split_sources(mine, ("coffee",), 0.25) == (t2, v2)
    with pytest.raises(FinPercepError, match="nothing left to train"):
        split_sources(["a", "b"], ("*",), 0.25)
    with pytest.raises(FinPercepError, match="at least 2"):
        split_sources(["a", "a"], (), 0.25)


def test_load_split_never_trains_on_held_out_photos(fake_data: Path) -> None:
    split = load_split(fake_data, ("tex_c",), 0.25)
    assert split.val_sources == ("tex_c",)
    assert all(s["source_image"] != "tex_c" for c in split.train_chains for s in c)
    assert {s["source_image"] for s in split.val_samples} == {"tex_c"}
    assert all([s["role"] for s in c] == ["gt", "small", "large", "sr"] for c in split.train_chains)
    assert len(split.train_chains) == 8 and len(split.val_chains) == 4 and len(split.val_samples) == 2 * 7


def test_load_split_can_train_on_some_sr_models_and_validate_on_all(fake_data: Path) -> None:
    full = load_split(fake_data, ("tex_c",), 0.25)
    split = load_split(fake_data, ("tex_c",), 0.25, train_sr_models=("blur-a",))
    assert {c[-1]["sr_model"] for c in full.train_chains} == {"blur-a", "blur-b"}
    assert {c[-1]["sr_model"] for c in split.train_chains} == {"blur-a"}
    assert len(split.train_chains) == len(full.train_chains) // 2
    assert split.val_chains == full.val_chains and split.val_samples == full.val_samples
    with pytest.raises(FinPercepError, match=r"match none of the SR sources \['blur-a', 'blur-b'\]"):
        load_split(fake_data, ("tex_c",), 0.25, train_sr_models=("realsr*",))


@pytest.mark.parametrize("color", [0.0, 1.0])
def test_chain_augmentation_is_shared_by_the_chain_and_seeded(fake_data: Path, color: float) -> None:
    split = load_split(fake_data, ("tex_c",), 0.25)
    ds = ChainDataset(fake_data, split.train_chains, crop=40, seed=3, color=color)
    item = ds[1]
    imgs, maps = item["images"], item["maps"]
    assert imgs.shape == (4, 3, 40, 40) and maps.shape == (4, 1, 40, 40)
    assert float(maps[0].abs().max()) == 0.0  # the GT has no defects
    clean = maps[1, 0] == 0  # outside the small swap the swapped image is the GT itself
    assert clean.any() and torch.equal(imgs[1][:, clean], imgs[0][:, clean])
    assert torch.equal(ds[1]["images"], imgs)
    plain = ChainDataset(fake_data, split.train_chains, crop=40, seed=3)[1]["images"]
    assert torch.equal(imgs, plain) == (color == 0.0)  # same crop and flips; colours changed when asked
    assert float(imgs.min()) >= 0.0 and float(imgs.max()) <= 1.0
    ds.set_epoch(1)
    assert not torch.equal(ds[1]["images"], imgs)


def test_chain_areas_are_the_defect_areas_inside_the_crop(fake_data: Path) -> None:
    split = load_split(fake_data, ("tex_c",), 0.25)
    whole = ChainDataset(fake_data, split.train_chains, crop=0, crop_areas=True)
    manifest = [[s["defect_area"] for s in c] for c in split.train_chains]
    for i in range(len(whole)):
        torch.testing.assert_close(whole[i]["areas"], torch.tensor(manifest[i]), atol=1 / 255, rtol=0)
    cropped = ChainDataset(fake_data, split.train_chains, crop=32, seed=1, crop_areas=True)
    plain = ChainDataset(fake_data, split.train_chains, crop=32, seed=1)
    assert torch.equal(plain[0]["areas"], torch.tensor(manifest[0]))  # without the option: the manifest's
    missed = 0
    for epoch in range(4):
        cropped.set_epoch(epoch)
        for i in range(len(cropped)):
            item = cropped[i]
            a, imgs = item["areas"], item["images"]
            assert float(a[0]) == 0.0 and float(a[3]) == 1.0
            for j in (1, 2):  # no swapped pixel in the crop <=> the crop equals its GT
                assert (float(a[j]) == 0.0) == torch.equal(imgs[j], imgs[0])
            missed += int(float(a[1]) == 0.0)
    assert missed > 0  # the crop is small enough to miss a small swap sometimes


def test_chain_with_a_mask_of_the_wrong_size_names_the_file(fake_data: Path, tmp_path: Path) -> None:
    import shutil

    from finpercep.io import save_png

    data = tmp_path / "data"
    shutil.copytree(fake_data, data)
    split = load_split(data, ("tex_c",), 0.25)
    mask = split.train_chains[0][1]["mask"]
    save_png(data / mask, np.zeros((20, 20), np.float32))
    with pytest.raises(FinPercepError, match=r"mask is \(20, 20\)") as err:
        ChainDataset(data, split.train_chains, crop=32, crop_areas=True)[0]
    assert mask in str(err.value)


# ---------------------------------------------------------------- training


def final_val(run: Path) -> dict:
    return json.loads((run / "stage_2" / "metrics.json").read_text())["val"]


def test_staged_training_saves_every_stage(fake_data: Path, tmp_path: Path) -> None:
    last = train(_cfg(fake_data, tmp_path / "run", export=str(tmp_path / "exp")), TINY)
    run = tmp_path / "run"
    assert last == run / "stage_2"
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    for k in range(3):  # the export holds every stage with float16 weights, loading back to float32
        exported = RewardModel.from_pretrained(tmp_path / "exp", stage=k)
        assert exported.stage == k and next(exported.parameters()).dtype == torch.float32
        weights = load_file(str(tmp_path / "exp" / f"stage_{k}" / "model.safetensors"))
        assert all(t.dtype == torch.float16 for t in weights.values() if t.is_floating_point())
        with torch.no_grad():
            ref = RewardModel.from_pretrained(run, stage=k)(x)
            torch.testing.assert_close(exported(x).score, ref.score, atol=2e-3, rtol=1e-2)
    # `rm export` afterwards writes the same files as --export during training
    assert cli_main(["-q", "rm", "export", str(run), "--out", str(tmp_path / "exp2")]) == 0
    for k in range(3):
        name = f"stage_{k}/model.safetensors"
        assert (tmp_path / "exp2" / name).read_bytes() == (tmp_path / "exp" / name).read_bytes()
    prov = json.loads((tmp_path / "exp2" / "provenance.json").read_text())
    assert prov["val_sources"] == json.loads((run / "split.json").read_text())["val_sources"]
    assert prov["stages"]["stage_2"]["val"] == final_val(run)
    with pytest.raises(FinPercepError, match="not a reward-model run"):
        export_stages(tmp_path / "exp", tmp_path / "exp3")
    held_out = evaluate_checkpoint(fake_data, run, sources=("tex_c",))  # the run's own validation, re-done
    final = json.loads((run / "stage_2" / "metrics.json").read_text())
    assert held_out["stage"] == 2 and held_out["samples"] == 14 and held_out["chains"] == 4
    assert held_out["tta"] == "none"
    for key in ("auroc", "cc", "kld", "triplet_acc", "srcc", "mse_clean"):
        assert held_out["model"][key] == pytest.approx(final["val"][key], abs=1e-6)
    assert held_out["baseline"]["best"] == pytest.approx(final["baseline"]["best"])
    assert set(held_out["targets_met"]) == {"auroc", "triplet_acc", "srcc"}
    by_model = held_out["model"]["sr_outputs_by_model"]
    models = {s["sr_model"] for s in map(json.loads, (fake_data / "manifest.jsonl").read_text().splitlines())}
    assert set(by_model) == models - {None}
    assert all(0.0 <= v["map"] <= 1.0 and 0.0 <= v["gt_map"] <= 1.0 for v in by_model.values())
    assert all(-1.0 <= v["srcc_without"] <= 1.0 for v in by_model.values())
    assert all(0.0 <= v["area_order"] <= 1.0 for v in by_model.values())
    sep = held_out["model"]["role_separation"]
    assert set(sep) == {"gt>small", "small>large", "large>sr"} and all(0.0 <= v <= 1.0 for v in sep.values())
    assert (
        cli_main(
            [
                "-q",
                "rm",
                "eval",
                "--data",
                str(fake_data),
                "--checkpoint",
                str(run),
                "--sources",
                "tex_c",
                "--out",
                str(tmp_path / "eval.json"),
                "--per-sample",
                str(tmp_path / "samples.jsonl"),
                "--misranked",
                str(tmp_path / "misranked.png"),
                "--misranked-count",
                "3",
            ]
        )
        == 0
    )
    records = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert len(records) == held_out["samples"]
    by_role = {r["role"]: r for r in records}
    assert by_role["gt"]["defect_area"] == 0.0 and by_role["sr"]["defect_area"] == 1.0
    assert spearman([r["score"] for r in records], [-r["defect_area"] for r in records]) == pytest.approx(
        held_out["model"]["srcc"]
    )
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert saved["model"]["srcc"] == pytest.approx(held_out["model"]["srcc"])
    # the three samples most misordered against SRCC, as recomputed from the per-sample file, are drawn
    bad = misorder([r["score"] for r in records], [r["defect_area"] for r in records])
    assert [m["id"] for m in saved["misranked"]] == [
        records[i]["id"] for i in np.argsort(-bad, kind="stable")[:3]
    ]
    assert [m["misorder"] for m in saved["misranked"]] == pytest.approx(sorted(bad, reverse=True)[:3])
    share = saved["misorder_share"]
    assert sum(share.values()) == pytest.approx(1.0) and "gt" in share
    sr_kind = [i for i, r in enumerate(records) if r["role"] == "sr"]
    assert share[f"sr/{records[sr_kind[0]]['sr_model']}"] == pytest.approx(
        sum(bad[i] for i in sr_kind if records[i]["sr_model"] == records[sr_kind[0]]["sr_model"]) / bad.sum()
    )
    with Image.open(tmp_path / "misranked.png") as im:
        assert im.height > im.width / 4 * 2  # three rows of four panels
    with pytest.raises(FinPercepError, match="misranked_count"):
        evaluate_checkpoint(fake_data, run, sources=("tex_c",), misranked_count=-1)
    prov = json.loads((tmp_path / "exp" / "provenance.json").read_text())
    assert prov["val_sources"] == ["tex_c"] and set(prov["stages"]) == {"stage_0", "stage_1", "stage_2"}
    for k in range(3):
        m = RewardModel.from_pretrained(run, stage=k)
        assert m.stage == k
        metrics = json.loads((run / f"stage_{k}" / "metrics.json").read_text())
        assert metrics["stage"] == k and set(metrics["val"]) >= {
            "auroc",
            "cc",
            "kld",
            "sim",
            "nss",
            "auc_judd",
            "mse_clean",
            "triplet_acc",
            "srcc",
        }
        assert set(metrics["beats_baseline"]) == {"auroc", "cc", "kld", "sim", "nss", "auc_judd", "mse_clean"}
    assert RewardModel.from_pretrained(run, stage=0).gate is None
    assert float(RewardModel.from_pretrained(run, stage=1).gate) == 1.0  # opened during RM_1's training
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert [(h["stage"], h["epoch"]) for h in history] == [(0, 1), (1, 1), (2, 1)]
    assert all(np.isfinite(h["train"]["loss"]) for h in history)
    assert history[0]["train"]["l_map"] == 0.0 and history[1]["train"]["l_map"] > 0.0
    assert history[0]["train"]["l_align"] == 0.0 and history[2]["train"]["l_align"] >= 0.0
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((run / "split.json").read_text())["val_sources"] == ["tex_c"]


def _anchor_images(data: Path, crop: int = 48) -> torch.Tensor:
    ds = SampleDataset(data, pick_anchors(load_split(data, ("tex_c",), 0.25), 4, 0), crop=crop)
    return torch.stack([ds[i]["image"] for i in range(len(ds))])


def test_growth_inside_training_keeps_the_anchor_scores(fake_data: Path, tmp_path: Path) -> None:
    """L_align's reference for RM_k is RM_{k-1}'s anchor scores: the stage-0 model reproduces them."""
    train(_cfg(fake_data, tmp_path / "run", stages=1, curves="off"), TINY)
    state = torch.load(tmp_path / "run" / "state.pt", weights_only=False)
    rm0 = RewardModel.from_pretrained(tmp_path / "run", stage=0)
    x = _anchor_images(fake_data)
    torch.testing.assert_close(anchor_scores(rm0, x, 8), state["anchor_ref"], rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("ema", "kill", "sampling", "keep"),
    [
        (0.0, "state", "uniform", "last"),
        (0.8, "state", "uniform", "last"),
        (0.8, "stage_saved", "uniform", "last"),
        (0.0, "state", "hard", "last"),
        (0.8, "state", "uniform", "best"),
        (0.0, "stage_saved", "uniform", "best"),
    ],
)
def test_resume_after_a_kill_matches_an_uninterrupted_run(
    fake_data: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    ema: float,
    kill: str,
    sampling: str,
    keep: str,
) -> None:
    cfg_a = _cfg(
        fake_data,
        tmp_path / "a",
        stages=1,
        epochs=(2,),
        curves="stage",
        ema=ema,
        chain_sampling=sampling,
        keep=(keep,),
    )
    if keep == "best":  # a score that only falls: every stage keeps its first epoch, not the one it ends on
        falling = iter(range(100, 0, -1))
        monkeypatch.setattr(validate, "selection_score", lambda val: float(next(falling)))
    train(cfg_a, TINY)
    real_save, real_plot = stage_mod.save_state, stage_mod.plot_curves
    calls = {"n": 0}
    # hard sampling: killed after RM_1's first epoch, whose map errors steer the second
    kill_at = 3 if sampling == "hard" else 2

    def save_then_die(path: Path, state: dict) -> None:
        real_save(path, state)
        calls["n"] += 1
        if calls["n"] == kill_at:  # killed right after this checkpoint (2nd: stage 0 trained, not yet saved)
            raise KeyboardInterrupt

    def die_after_stage_0(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt  # killed right after RM_0 was saved, before RM_1 starts

    if kill == "state":
        monkeypatch.setattr(stage_mod, "save_state", save_then_die)
    else:
        monkeypatch.setattr(stage_mod, "plot_curves", die_after_stage_0)
    cfg_b = replace(cfg_a, out=str(tmp_path / "b"))
    with pytest.raises(KeyboardInterrupt):
        train(cfg_b, TINY)
    assert not (tmp_path / "b" / "stage_1").exists()
    assert (tmp_path / "b" / "stage_0").exists() == (kill == "stage_saved" or kill_at == 3)
    if sampling == "hard":
        hard = torch.load(tmp_path / "b" / "state.pt", weights_only=False)["hardness"]
        assert np.isfinite(hard).sum() >= 2 and np.nanmax(hard) > 0
    partial = atomic_path(tmp_path / "b" / "state.pt")  # never exited: a SIGKILL mid-write
    partial.__enter__().write_bytes(b"half a checkpoint")
    monkeypatch.setattr(stage_mod, "save_state", real_save)
    monkeypatch.setattr(stage_mod, "plot_curves", real_plot)
    train(cfg_b, TINY)
    assert not list((tmp_path / "b").rglob(".*.tmp*"))  # the partial file was removed on resume
    hist = [json.loads(line) for line in (tmp_path / "b" / "history.jsonl").read_text().splitlines()]
    assert [(h["stage"], h["epoch"]) for h in hist] == [(0, 1), (0, 2), (1, 1), (1, 2)]  # nothing repeated
    for k in (0, 1):
        a = RewardModel.from_pretrained(tmp_path / "a", stage=k)
        b = RewardModel.from_pretrained(tmp_path / "b", stage=k)
        assert weights_fingerprint(a) == weights_fingerprint(b)
    with pytest.raises(FinPercepError, match="different settings"):
        train(replace(cfg_b, lr=1e-2), TINY)


def test_non_finite_loss_names_the_batch(
    fake_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = objective.rank_loss
    calls = {"n": 0}

    def flaky(*args: object, **kw: object) -> torch.Tensor:
        calls["n"] += 1
        out = real(*args, **kw)  # type: ignore[arg-type]
        return out * float("nan") if calls["n"] == 2 else out

    monkeypatch.setattr(objective, "rank_loss", flaky)
    with pytest.raises(FinPercepError) as err:
        train(_cfg(fake_data, tmp_path / "nan"), TINY)
    msg = str(err.value)
    assert "non-finite loss at stage 0, epoch 1, step 2" in msg and "L_rank=nan" in msg
    ids = msg.split("batch samples: ")[1]
    assert ids.count("_gt'") == 2 and ids.count("_sr'") == 2  # the two chains of that batch


def test_two_process_ddp_training(fake_data: Path, tmp_path: Path) -> None:
    """torchrun with 2 CPU processes (gloo): replicas end identical and the losses are finite.

    With hard chain sampling, whose second RM_1 epoch is drawn from map errors gathered from both processes,
    and ``--keep best``, whose choice of epoch the main process makes for both.
    """
    out = tmp_path / "ddp"
    args = (
        f"--data {fake_data} --out {out} --stages 1 --epochs 1 2 --batch-chains 2 --crop 48 --anchors 4 "
        "--anchor-batch 2 --val-sources tex_c --threads 1 --progress false --curves off --device cpu "
        "--model-cnn-widths 8 12 16 --model-cnn-blocks 1 1 1 --model-decoder-widths 4 8 8 "
        "--model-head-hidden 8 --chain-sampling hard --keep best"
    ).split()
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd = [*launcher, "-m", "finpercep.rm.train", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for k in (0, 1):
        metrics = json.loads((out / f"stage_{k}" / "metrics.json").read_text())
        assert metrics["world_size"] == 2
        fps = metrics["rank_fingerprints"]
        assert len(fps) == 2 and fps[0] == fps[1]
        assert weights_fingerprint(RewardModel.from_pretrained(out, stage=k)) == fps[0]
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert len(history) == 3 and all(np.isfinite(h["train"]["loss"]) for h in history)
    rm1 = [h["val"] for h in history if h["stage"] == 1]
    best = max(range(2), key=lambda i: (selection_score(rm1[i]), -i))
    assert json.loads((out / "stage_1" / "metrics.json").read_text())["epoch"] == best + 1
    # 8 training chains shared by 2 processes with 2 chains per step: 2 steps per epoch, not 4
    assert (
        "RM training on 8 train chains" in proc.stderr
        and "2 process(es) on cpu, 2 steps per epoch" in proc.stderr
    )


def test_lr_schedule_warms_up_decays_and_scales_refinement_stages() -> None:
    cfg = RMTrainConfig(lr=1e-3, refine_lr=0.5, warmup_steps=10)
    assert lr_at(cfg, 0, 100, stage=1) == pytest.approx(1e-4)
    assert lr_at(cfg, 9, 100, stage=1) == pytest.approx(1e-3)  # peak at the end of warm-up
    assert lr_at(cfg, 99, 100, stage=1) == pytest.approx(1e-4, rel=0.01)  # 10 % at the end
    for it in (0, 9, 50, 99):  # RM_2 ... RM_N start from a trained model: refine_lr times the rate
        assert lr_at(cfg, it, 100, stage=3) == pytest.approx(0.5 * lr_at(cfg, it, 100, 1))
    assert lr_at(cfg, 9, 100, stage=0) == lr_at(cfg, 9, 100, stage=1)


def test_map_loss_adds_the_area_term_with_its_weight() -> None:
    g = torch.Generator().manual_seed(3)
    target = (torch.rand(3, 1, 8, 8, generator=g) > 0.6).float() * 0.8
    logits = torch.randn(3, 1, 8, 8, generator=g)
    plain = RMTrainConfig(map_area=0.0)
    with_area = RMTrainConfig(map_area=2.0)
    extra = map_loss(with_area, [logits], target) - map_loss(plain, [logits], target)
    expected = 2.0 * (torch.sigmoid(logits).mean(dim=(1, 2, 3)) - target.mean(dim=(1, 2, 3))).abs().mean()
    assert extra.item() == pytest.approx(expected.item(), rel=1e-5) and expected.item() > 0.01
    with pytest.raises(ConfigError, match="loss weights"):
        RMTrainConfig(map_area=-1.0)


def test_rank_pairs_crop_area_changes_what_training_ranks(fake_data: Path, tmp_path: Path) -> None:
    kw = dict(stages=0, crop=32, batch_chains=4, max_steps_per_epoch=4, curves="off", lambda_align=0.0)
    train(_cfg(fake_data, tmp_path / "chain", **kw), TINY)
    train(_cfg(fake_data, tmp_path / "area", rank_pairs="crop_area", **kw), TINY)
    a = RewardModel.from_pretrained(tmp_path / "chain", stage=0)
    b = RewardModel.from_pretrained(tmp_path / "area", stage=0)
    assert weights_fingerprint(a) != weights_fingerprint(b)
    with pytest.raises(ConfigError, match="rank_pairs"):
        RMTrainConfig(rank_pairs="area")  # type: ignore[arg-type]


def test_lambda_level_sets_the_score_level_by_the_amount_of_damage(fake_data: Path, tmp_path: Path) -> None:
    kw = dict(stages=0, crop=32, batch_chains=4, max_steps_per_epoch=4, curves="off", lambda_align=0.0)
    train(_cfg(fake_data, tmp_path / "off", epochs=(2,), **kw), TINY)
    off = [json.loads(x) for x in (tmp_path / "off" / "history.jsonl").read_text().splitlines()]
    assert all(h["train"]["l_level"] == 0.0 for h in off)
    # ranking off, L_level alone: it is the only thing training, so it must fall
    train(
        _cfg(fake_data, tmp_path / "on", epochs=(6,), lambda_rank=0.0, lambda_level=1.0, lr=5e-3, **kw), TINY
    )
    on = [json.loads(x) for x in (tmp_path / "on" / "history.jsonl").read_text().splitlines()]
    first, last = on[0]["train"]["l_level"], on[-1]["train"]["l_level"]
    assert last < 0.75 * first, (first, last)
    with pytest.raises(ConfigError, match="loss weights"):
        RMTrainConfig(lambda_level=-1.0)


def test_ema_swaps_the_averages_in_for_validation_and_back() -> None:
    from finpercep.ema import EMA

    model = torch.nn.Linear(3, 2)
    avg = EMA(model, decay=0.75)
    w0 = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(4.0)
    avg.update(model)
    with avg.swapped_in(model):
        torch.testing.assert_close(model.weight, w0 + 1.0)  # 0.75 * w0 + 0.25 * (w0 + 4)
    torch.testing.assert_close(model.weight, w0 + 4.0)  # the trained weights are back
    with pytest.raises(ConfigError, match="ema"):
        RMTrainConfig(ema=1.0)


def test_validation_with_a_weight_average_describes_the_saved_model(fake_data: Path, tmp_path: Path) -> None:
    cfg = _cfg(fake_data, tmp_path / "run", stages=1, curves="off", ema=0.5, max_steps_per_epoch=3)
    train(cfg, TINY)
    plain = _cfg(fake_data, tmp_path / "plain", stages=1, curves="off", max_steps_per_epoch=3)
    train(plain, TINY)
    for k in (0, 1):
        saved = json.loads((tmp_path / "run" / f"stage_{k}" / "metrics.json").read_text())["val"]
        model = RewardModel.from_pretrained(tmp_path / "run", stage=k)
        split = load_split(fake_data, ("tex_c",), 0.25)
        chain_ids = [[s["id"] for s in c] for c in split.val_chains]
        again = evaluate(model, fake_data, split.val_samples, chain_ids, _eval_cfg(cfg), torch.device("cpu"))
        assert again["srcc"] == pytest.approx(saved["srcc"], abs=1e-6)
        assert again["auroc"] == pytest.approx(saved["auroc"], abs=1e-6)
        other = RewardModel.from_pretrained(tmp_path / "plain", stage=k)
        assert weights_fingerprint(model) != weights_fingerprint(other)


def test_selection_score_is_the_mean_of_the_targets_it_can_measure() -> None:
    assert selection_score({"auroc": 0.9, "triplet_acc": 0.6, "srcc": 0.3}) == pytest.approx(0.6)
    assert selection_score({"auroc": 0.9, "triplet_acc": float("nan"), "srcc": 0.5}) == 0.7
    assert selection_score({"srcc": float("nan")}) == float("-inf")


def test_keep_best_saves_and_grows_from_the_best_validated_epoch(
    fake_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # rank the epochs by a score that only falls, so each stage keeps its first of three epochs
    falling = iter(range(100, 0, -1))
    monkeypatch.setattr(validate, "selection_score", lambda val: float(next(falling)))
    cfg = _cfg(fake_data, tmp_path / "run", stages=1, epochs=(3,), curves="off", keep=("best",))
    train(cfg, TINY)
    hist = [json.loads(line) for line in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    split = load_split(fake_data, ("tex_c",), 0.25)
    chain_ids = [[s["id"] for s in c] for c in split.val_chains]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())["stages"]
    for k in (0, 1):
        metrics = json.loads((tmp_path / "run" / f"stage_{k}" / "metrics.json").read_text())
        first, last = (h["val"] for h in hist if h["stage"] == k and h["epoch"] in (1, 3))
        assert metrics["epoch"] == 1 and metrics["val"] == first == summary[f"stage_{k}"]
        assert first["score_p01_p99"] != last["score_p01_p99"]  # the epochs differ, so the choice matters
        model = RewardModel.from_pretrained(tmp_path / "run", stage=k)
        again = evaluate(model, fake_data, split.val_samples, chain_ids, _eval_cfg(cfg), torch.device("cpu"))
        assert again["score_p01_p99"] == pytest.approx(first["score_p01_p99"], abs=1e-5)
    # RM_1 grew from the kept RM_0: its anchor reference is the saved RM_0's anchor scores
    rm0 = RewardModel.from_pretrained(tmp_path / "run", stage=0)
    ds = SampleDataset(fake_data, pick_anchors(split, 4, 0), crop=48)
    x = torch.stack([ds[i]["image"] for i in range(len(ds))])
    state = torch.load(tmp_path / "run" / "state.pt", weights_only=False)
    assert state["stage"] == 1
    # the state keeps RM_1's first epoch; its anchors came from RM_0's first epoch at growth
    torch.testing.assert_close(anchor_scores(rm0, x, 8), state["anchor_ref"], rtol=0, atol=1e-6)
    # per stage: early-stop RM_0 only
    train(replace(cfg, out=str(tmp_path / "mixed"), keep=("best", "last")), TINY)
    metrics = [json.loads((tmp_path / "mixed" / f"stage_{k}" / "metrics.json").read_text()) for k in (0, 1)]
    assert [m["epoch"] for m in metrics] == [1, 3]


def test_old_runs_resume_with_the_default_of_a_newer_option(fake_data: Path, tmp_path: Path) -> None:
    cfg = _cfg(fake_data, tmp_path / "run", stages=0, curves="off")
    train(cfg, TINY)
    path = tmp_path / "run" / "train_config.json"
    saved = json.loads(path.read_text())
    del saved["ema"], saved["rank_pairs"]  # as written before those options existed
    path.write_text(json.dumps(saved))
    train(cfg, TINY)  # finished run, same settings: nothing to do, no error
    with pytest.raises(FinPercepError, match=r"different settings \(ema\)"):
        train(replace(cfg, ema=0.9), TINY)


# train_config.json of an RM run as the trainer of the 1132-line rm/train.py wrote it (data and out filled in)
OLD_TRAIN_CONFIG = {
    "anchor_batch": 2, "anchors": 4, "batch_chains": 2, "chain_sampling": "uniform", "chain_weights": [],
    "color_jitter": 0.5, "crop": 48, "cross_rank": 1.0, "curves": "off", "deep_supervision": 0.5,
    "device": "auto", "ema": 0.0, "epochs": [1], "export": None, "gate_ramp": 0.5, "grad_clip": 1.0,
    "init": None, "keep": ["last"], "lambda_align": 1.0, "lambda_level": 0.0, "lambda_map": 1.0,
    "lambda_rank": 1.0, "lr": 0.002, "map_area": 0.0, "map_balance": 0.5, "map_bce": 1.0,
    "margins": [0.1, 0.1, 0.1], "max_steps_per_epoch": 2, "max_val_samples": 0, "num_workers": 0,
    "progress": False, "rank_pairs": "chain", "refine_lr": 1.0, "seed": 0, "stages": 1, "tau": 0.1,
    "threads": 1, "train_sr_models": [], "val_batch": 8, "val_fraction": 0.25, "val_sources": ["tex_c"],
    "warmup_steps": 20, "weight_decay": 0.0001,
}  # fmt: skip
OLD_STATE_KEYS = {
    "stage", "epoch", "model", "optimizer", "ema", "anchor_ref", "kept", "hardness", "history", "baseline"
}  # fmt: skip


def test_a_run_folder_in_the_old_layout_resumes_like_an_uninterrupted_run(
    fake_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = _cfg(fake_data, tmp_path / "run", stages=1, curves="off")
    train(replace(cfg, out=str(tmp_path / "ref")), TINY)
    real_save = stage_mod.save_state

    def save_then_die(path: Path, state: dict) -> None:
        real_save(path, state)
        raise KeyboardInterrupt  # killed after RM_0's only epoch, before RM_0 was saved

    monkeypatch.setattr(stage_mod, "save_state", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, TINY)
    monkeypatch.setattr(stage_mod, "save_state", real_save)
    run = tmp_path / "run"
    assert set(torch.load(run / "state.pt", weights_only=False)) == OLD_STATE_KEYS
    old = {**OLD_TRAIN_CONFIG, "data": str(fake_data), "out": str(run)}
    del old["lambda_level"], old["chain_weights"]  # as written before those options existed
    (run / "train_config.json").write_text(json.dumps(old, indent=2, sort_keys=True) + "\n")
    train(cfg, TINY)
    for k in (0, 1):
        a = RewardModel.from_pretrained(run, stage=k)
        b = RewardModel.from_pretrained(tmp_path / "ref", stage=k)
        assert weights_fingerprint(a) == weights_fingerprint(b)
    assert (run / "history.jsonl").read_text() == (tmp_path / "ref" / "history.jsonl").read_text()
    with pytest.raises(FinPercepError, match=r"different settings \(lambda_level\)"):
        train(replace(cfg, lambda_level=0.5), TINY)


def test_rm_resume_ignores_settings_that_do_not_change_the_run(fake_data: Path, tmp_path: Path) -> None:
    cfg = _cfg(fake_data, tmp_path / "run", stages=0, curves="off")
    train(cfg, TINY)
    before = (tmp_path / "run" / "history.jsonl").read_text()
    train(replace(cfg, val_batch=3, num_workers=1, curves="stage", device="cpu", progress=True), TINY)
    assert (tmp_path / "run" / "history.jsonl").read_text() == before  # finished: nothing retrained
    with pytest.raises(FinPercepError, match=r"different model configuration"):
        train(cfg, replace(TINY, head_hidden=16))


def test_epoch_order_uniform_is_the_permutation_and_hard_favours_high_error_chains() -> None:
    n = 400
    uniform = epoch_order("uniform", np.full(n, np.nan), np.random.default_rng([0, 1, 2]))
    assert np.array_equal(uniform, np.random.default_rng([0, 1, 2]).permutation(n))  # as before the option
    unseen = epoch_order("hard", np.full(n, np.nan), np.random.default_rng(0))
    assert len(unseen) == n and len(set(unseen.tolist())) == n  # repeats are distinct indices
    counts = np.bincount(unseen % n, minlength=n)
    assert (counts == 0).mean() > 0.2  # draws with replacement, uniform weights
    for k in range(1, counts.max()):
        assert set((unseen[unseen >= k * n] % n).tolist()) == set(np.flatnonzero(counts > k).tolist())
    hardness = np.zeros(n)
    hardness[:10] = 1.0
    hardness[10:20] = np.nan  # unmeasured: the mean, 10 / 400
    order = epoch_order("hard", hardness, np.random.default_rng(1)) % n
    # expected draws: chains 0-9 get n * (0.5 / n + 0.5 * 1 / 10.25) each, the others 0.5 (+ 0.024 if unseen)
    assert 150 < np.isin(order, np.arange(10)).sum() < 250
    assert np.isin(order, np.arange(20, n)).sum() < 0.6 * n


def test_chain_weights_draw_matching_sr_sources_more_often(fake_data: Path) -> None:
    split = load_split(fake_data, ("tex_c",), 0.25)
    models = [c[-1]["sr_model"] for c in split.train_chains]
    target = models[0]
    w = chain_weights(split.train_chains, [f"{target}=4", "*=0.5"])
    assert w is not None and w.tolist() == [4.0 if m == target else 0.5 for m in models]  # first match wins
    assert chain_weights(split.train_chains, []) is None
    n = 2000
    weights = np.where(np.arange(n) < 100, 5.0, 1.0)  # 100 chains weighted 5: 500 / 2400 of the weight
    # expected draws of those 100: uniform 2000 * 500 / 2400 = 417 (sd 18); hard with nothing measured yet,
    # half that share and half the uniform hardness share: 208 + 50 = 258
    for mode, lo, hi in (("uniform", 360, 475), ("hard", 200, 320)):
        order = epoch_order(mode, np.full(n, np.nan), np.random.default_rng(0), weights)
        assert len(order) == n and len(set(order.tolist())) == n
        assert lo < (order % n < 100).sum() < hi
    for bad in (["x4plus"], ["x4plus=0"], ["=2"], ["x4plus=two"], ["x4plus=nan"]):
        with pytest.raises(ConfigError, match="PATTERN=W"):
            RMTrainConfig(chain_weights=tuple(bad))


def test_chain_repeats_get_their_own_crop(fake_data: Path) -> None:
    split = load_split(fake_data, ("tex_c",), 0.25)
    ds = ChainDataset(fake_data, split.train_chains, crop=32, augment=True, color=0.5)
    n = len(ds)
    a, b = ds[1], ds[1 + n]
    assert a["ids"] == b["ids"] and not torch.equal(a["images"], b["images"])
    assert torch.equal(ds[1]["images"], a["images"])


def test_init_fine_tunes_the_stages_of_a_trained_model(fake_data: Path, tmp_path: Path) -> None:
    train(_cfg(fake_data, tmp_path / "a", stages=1, curves="off"), TINY)
    # every stage of "a" copied (0 epochs), then RM_2 grown from a's RM_1 and trained
    init = str(tmp_path / "a")
    grown = _cfg(fake_data, tmp_path / "b", stages=2, epochs=(0, 0, 1), curves="off", init=init)
    train(grown, None)
    for k in (0, 1):
        a_k = RewardModel.from_pretrained(tmp_path / "a", stage=k)
        b_k = RewardModel.from_pretrained(tmp_path / "b", stage=k)
        assert weights_fingerprint(a_k) == weights_fingerprint(b_k)
        assert b_k.config.score_range == a_k.config.score_range
    a1 = RewardModel.from_pretrained(tmp_path / "a", stage=1)
    x = _anchor_images(fake_data)
    ref = torch.load(tmp_path / "b" / "state.pt", weights_only=False)["anchor_ref"]
    torch.testing.assert_close(anchor_scores(a1, x, 8), ref, rtol=0, atol=1e-6)
    assert json.loads((tmp_path / "b" / "model_config.json").read_text()) == json.loads(
        (tmp_path / "a" / "model_config.json").read_text()
    )
    # a stage the checkpoint has starts from it: L_align holds the fine-tuned model to its scores
    tuned = _cfg(fake_data, tmp_path / "c", stages=1, epochs=(0, 1), curves="off", init=init)
    train(tuned, None)
    c1 = RewardModel.from_pretrained(tmp_path / "c", stage=1)
    assert weights_fingerprint(c1) != weights_fingerprint(a1)
    ref = torch.load(tmp_path / "c" / "state.pt", weights_only=False)["anchor_ref"]
    torch.testing.assert_close(anchor_scores(a1, x, 8), ref, rtol=0, atol=1e-6)


def test_init_refuses_another_architecture_and_a_missing_checkpoint(fake_data: Path, tmp_path: Path) -> None:
    train(_cfg(fake_data, tmp_path / "a", stages=0, curves="off"), TINY)
    cfg = _cfg(fake_data, tmp_path / "b", stages=0, curves="off", init=str(tmp_path / "a"))
    with pytest.raises(FinPercepError, match="another architecture"):
        train(cfg, replace(TINY, head_hidden=16))
    with pytest.raises(FinPercepError, match="drop the --model-"):
        model_config_or_none(cfg, replace(RMConfig(), head_hidden=16))
    assert model_config_or_none(cfg, RMConfig()) is None
    assert model_config_or_none(replace(cfg, init=None), TINY) is TINY
    with pytest.raises(FinPercepError, match="not found"):
        train(replace(cfg, init=str(tmp_path / "missing")), None)
    assert init_stages("default").keys() == {0, 1, 2, 3, 4}  # the packaged checkpoint
