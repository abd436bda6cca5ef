"""RewardModel: shapes, stage growth, save/load, input checks, differentiability, pyiqa-style use."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from finpercep.errors import ConfigError, FinPercepError
from finpercep.io import save_png
from finpercep.rm import RewardModel, RMConfig, RMInputError, RMOutput
from finpercep.rm.model import default_checkpoint_dir, saved_rm_config
from finpercep.rm.score import Scorer, score_images

TINY = RMConfig(cnn_widths=(8, 12, 16), cnn_blocks=(1, 1, 1), head_hidden=8, decoder_widths=(4, 8, 8))


def _x(b: int = 2, h: int = 40, w: int = 56, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _perturb(model: RewardModel, seed: int = 0, scale: float = 0.05) -> None:
    """Move every parameter off its initial value (zero heads, zero gate) to test non-trivial states."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("size", [(32, 32), (33, 47), (64, 40)])
def test_output_shapes_and_ranges(size: tuple[int, int]) -> None:
    model = RewardModel(TINY).eval()
    with torch.no_grad():
        out = model(_x(3, *size))
    assert isinstance(out, RMOutput)
    assert out.score.shape == (3,)
    assert out.map.shape == (3, 1, *size)
    assert float(out.map.min()) >= 0.0 and float(out.map.max()) <= 1.0
    assert model.stage == model.num_levels == 3
    assert len(out.map_logits) == 1  # eval mode: the final logits only
    torch.testing.assert_close(torch.sigmoid(out.map_logits[0]), out.map)


@pytest.mark.parametrize("fusion", ["input", "finest"])
def test_every_block_logits_end_with_the_eval_logits(fusion: str) -> None:
    model = RewardModel(replace(TINY, map_fusion=fusion))
    _perturb(model, seed=3)
    x = _x(2, 40, 56)
    model.train()
    trained = model(x).map_logits
    model.eval()
    final = model(x).map_logits
    assert len(trained) == model.stage and len(final) == 1
    assert all(z.shape == (2, 1, 40, 56) for z in trained)
    torch.testing.assert_close(final[0], trained[-1])  # group norm: no train/eval difference
    assert not torch.allclose(trained[0], trained[-1])


def test_inference_kernels_give_the_autograd_forward() -> None:
    """No-grad scoring, a frozen reward's pass (shifts and stencil with their adjoints) and a training pass
    (oneDNN's depthwise convolution) agree on the outputs and on the gradient to the input."""
    model = RewardModel(replace(TINY, decoder_widths=(8, 16, 16), decoder_block="light")).eval()
    _perturb(model, seed=5)
    x = _x(2, 256, 192)  # large enough that every upsampling takes the stencil
    with torch.no_grad():
        fast = model(x)
    grads = []
    for frozen in (False, True):
        for p in model.parameters():
            p.requires_grad_(not frozen)
        xg = x.clone().requires_grad_(True)
        out = model(xg)
        torch.testing.assert_close(fast.score, out.score.detach(), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(fast.map, out.map.detach(), rtol=1e-5, atol=1e-5)
        (out.score.sum() + out.map.mean()).backward()
        grads.append(xg.grad)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-7)


def test_map_fusion_places_the_sum_of_the_block_logits() -> None:
    """finest sums the blocks' logits at the finest level and upsamples once; input upsamples each."""
    finest = RewardModel(replace(TINY, map_fusion="finest")).eval()
    _perturb(finest, seed=4)
    at_input = RewardModel(replace(TINY, map_fusion="input")).eval()
    at_input.load_state_dict(finest.state_dict())
    x = _x(2, 48, 48)
    with torch.no_grad():
        a, b = finest(x), at_input(x)
    torch.testing.assert_close(a.score, b.score, rtol=0, atol=0.05)  # the same model, resampled once less
    assert not torch.equal(a.map, b.map)
    assert saved_rm_config({"map_fusion": "finest"}).map_fusion == "finest"
    assert saved_rm_config({}).map_fusion == "input"  # checkpoints from before the option


def test_rm0_is_a_global_model_with_a_constant_map() -> None:
    model = RewardModel(replace(TINY, stage=0)).eval()
    out = model(_x())
    assert model.stage == 0 and model.gate is None and len(model.blocks) == 0
    assert torch.equal(out.map, torch.ones_like(out.map))
    assert out.map_logits == ()


@pytest.mark.parametrize(
    ("norm", "body"), [("group", "res"), ("batch", "res"), ("none", "res"), ("group", "light")]
)
def test_growth_keeps_parameters_and_outputs(norm: str, body: str) -> None:
    """RM_k == RM_{k-1} at growth: scores for k = 1 (zero gate), scores and maps for k >= 2 (zero heads)."""
    model = RewardModel(replace(TINY, stage=0, norm=norm, decoder_block=body)).eval()
    x = _x()
    for k in range(1, model.num_levels + 1):
        _perturb(model, seed=k)  # a trained-looking RM_{k-1}
        before = model(x)
        old_state = {n: t.clone() for n, t in model.state_dict().items()}
        model.grow()
        after = model(x)
        assert model.stage == k and model.config.stage == k
        torch.testing.assert_close(after.score, before.score, rtol=0, atol=1e-6)
        if k >= 2:
            torch.testing.assert_close(after.map, before.map, rtol=0, atol=1e-6)
        new_state = model.state_dict()
        for n, t in old_state.items():
            assert torch.equal(new_state[n], t), f"{n} changed during growth"
        added = set(new_state) - set(old_state)
        assert added and all(n.startswith(f"blocks.{k - 1}.") or n == "gate" for n in added)
        assert set(model.new_parameter_names()) == added & {n for n, _ in model.named_parameters()}
        assert all(m.training is False for m in model.modules())  # the new block follows the model's mode
    with pytest.raises(FinPercepError, match="already the full model"):
        model.grow()


def test_score_depends_on_the_map_once_the_gate_opens() -> None:
    model = RewardModel(replace(TINY, stage=1)).eval()
    x = _x()
    pooled, m, _ = model.forward_parts(x)
    with torch.no_grad():
        model.gate.fill_(1.0)
    f_top = model.encoder(x)[-1]
    pooled_lit = model.pool(f_top, torch.ones_like(m))
    torch.testing.assert_close(pooled_lit, pooled)  # M == 1 recovers the ungated RM_0 pooling
    lit_left = torch.zeros_like(m)
    lit_left[..., : m.shape[-1] // 2] = 1.0
    with torch.no_grad():
        s_left = model.score_head(model.pool(f_top, lit_left))
        s_right = model.score_head(model.pool(f_top, 1.0 - lit_left))
        s_lit = model.score_head(pooled_lit)
    assert not torch.allclose(s_left, s_right) and not torch.allclose(s_left, s_lit)


def test_gate_is_a_bounded_buffer() -> None:
    model = RewardModel(replace(TINY, stage=1))
    assert float(model.gate) == 0.0 and "gate" in model.state_dict()
    assert all(p is not model.gate for p in model.parameters())
    model.set_gate(0.25)
    assert float(model.gate) == 0.25
    with pytest.raises(FinPercepError, match=r"\[0, 1\]"):
        model.set_gate(1.5)
    with pytest.raises(FinPercepError, match="no gate"):
        RewardModel(replace(TINY, stage=0)).set_gate(1.0)


def test_direct_construction_equals_sequential_growth() -> None:
    a = RewardModel(TINY)
    b = RewardModel(replace(TINY, stage=0))
    while b.stage < b.num_levels:
        b.grow()
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    c = RewardModel(replace(TINY, init_seed=1))
    assert not torch.equal(c.state_dict()["score_head.fc1.weight"], sa["score_head.fc1.weight"])


@pytest.mark.parametrize("body", ["res", "light"])
def test_save_load_round_trip(tmp_path: Path, body: str) -> None:
    model = RewardModel(replace(TINY, stage=2, score_range=(-0.5, 0.7), decoder_block=body)).eval()
    _perturb(model)
    model.save_pretrained(tmp_path / "rm")
    meta = json.loads((tmp_path / "rm" / "config.json").read_text())
    assert meta["stage"] == 2 and meta["format"] == "finpercep-rm"
    loaded = RewardModel.from_pretrained(tmp_path / "rm")
    assert loaded.stage == 2 and not loaded.training
    assert loaded.score_range == "~-0.5, ~0.7" and loaded.config.decoder_block == body
    x = _x()
    a, b = model(x), loaded(x)
    assert torch.equal(a.score, b.score) and torch.equal(a.map, b.map)
    assert RewardModel.from_pretrained(tmp_path / "rm" / "model.safetensors").stage == 2


def test_from_pretrained_picks_stages_in_a_run_folder(tmp_path: Path) -> None:
    model = RewardModel(replace(TINY, stage=0))
    for k in range(3):
        if k:
            model.grow()
        model.save_pretrained(tmp_path / f"stage_{k}")
    assert RewardModel.from_pretrained(tmp_path).stage == 2
    assert RewardModel.from_pretrained(tmp_path, stage=1).stage == 1
    assert RewardModel.from_pretrained(tmp_path / "stage_2", stage=0).stage == 0  # sibling stage folder
    with pytest.raises(FinPercepError, match="available stages"):
        RewardModel.from_pretrained(tmp_path, stage=3)
    with pytest.raises(FinPercepError, match="not found"):
        RewardModel.from_pretrained(tmp_path / "nope")


def test_from_pretrained_default() -> None:
    if not (default_checkpoint_dir()).exists():
        with pytest.raises(FinPercepError, match="no packaged default"):
            RewardModel.from_pretrained()
        return
    model = RewardModel.from_pretrained()
    assert model.stage == model.num_levels
    out = model(_x(1, 64, 64))
    assert out.map.shape == (1, 1, 64, 64) and torch.isfinite(out.score).all()
    assert RewardModel.from_pretrained(stage=0).stage == 0


@pytest.mark.parametrize(
    ("x", "match"),
    [
        (np.zeros((1, 3, 64, 64), np.float32), "torch.Tensor"),
        (torch.zeros(1, 3, 64, 64, dtype=torch.uint8), r"x.float\(\) / 255"),
        (torch.zeros(3, 64, 64), r"batch dimension"),
        (torch.zeros(1, 64, 64, 3), "channels last"),
        (torch.zeros(1, 3, 31, 64), "at least 32x32"),
        (torch.full((1, 3, 64, 64), 255.0), r"range \[255, 255\]"),
        (torch.full((1, 3, 64, 64), -1.0), r"\[-1, 1\]"),
        (torch.full((1, 3, 64, 64), float("nan")), "NaN"),
        (torch.zeros(0, 3, 64, 64), "empty batch"),
    ],
)
def test_bad_inputs_raise_clear_errors(x: object, match: str) -> None:
    model = RewardModel(TINY)
    with pytest.raises(RMInputError, match=match):
        Scorer(model)(x)


@pytest.mark.parametrize(
    ("x", "match"),
    [
        (np.zeros((1, 3, 64, 64), np.float32), "torch.Tensor"),
        (torch.zeros(1, 3, 64, 64, dtype=torch.uint8), r"x.float\(\) / 255"),
        (torch.zeros(1, 64, 64, 3), "channels last"),
        (torch.zeros(1, 3, 31, 64), "at least 32x32"),
        (torch.zeros(0, 3, 64, 64), "empty batch"),
    ],
)
def test_forward_checks_what_the_shapes_tell(x: object, match: str) -> None:
    with pytest.raises(RMInputError, match=match):
        RewardModel(TINY)(x)


def test_forward_leaves_the_values_to_the_scorer() -> None:
    """The value checks need the host, so the tensor forward pass skips them."""
    model = RewardModel(TINY).eval()
    x = torch.full((1, 3, 64, 64), 255.0)
    assert model(x).score.shape == (1,)
    with pytest.raises(RMInputError, match="range"):
        score_images(model, x)


def test_other_float_dtypes_are_accepted() -> None:
    model = RewardModel(TINY).eval()
    x = _x()
    ref = model(x).score
    torch.testing.assert_close(model(x.double()).score, ref)
    assert model(x.half()).score.dtype == torch.float32


def test_gradcheck_wrt_input() -> None:
    """Finite differences agree with autograd along random input directions (float64, tiny model)."""
    model = RewardModel(TINY).double().eval()
    _perturb(model, scale=0.1)
    with torch.no_grad():
        model.gate.fill_(0.7)
    g = torch.Generator().manual_seed(0)
    x0 = 0.25 + 0.5 * torch.rand(1, 3, 32, 32, generator=g, dtype=torch.float64)
    dirs = 0.05 * torch.randn(4, 1, 3, 32, 32, generator=g, dtype=torch.float64)
    proj = torch.randn(1, 1, 32, 32, generator=g, dtype=torch.float64)

    def f(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x0 + (a.view(4, 1, 1, 1, 1) * dirs).sum(0)
        out = model(x)
        return out.score, (out.map * proj).sum().view(1)

    a = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(f, (a,), eps=1e-6, atol=1e-6, rtol=1e-4)
    x = x0.clone().requires_grad_(True)
    model(x).score.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_pyiqa_style_attributes_and_paths(tmp_path: Path) -> None:
    model = RewardModel(TINY).eval()
    assert model.lower_better is False and model.metric_mode == "NR" and model.score_range.startswith("~")
    imgs = _x(2, 48, 48)
    paths = []
    for i in range(2):
        p = tmp_path / f"im{i}.png"
        save_png(p, imgs[i].permute(1, 2, 0).numpy())
        paths.append(p)
    from_files = Scorer(model)(paths)
    from_tensor = model(torch.from_numpy(np.stack([np.asarray(_load(p)) for p in paths])).permute(0, 3, 1, 2))
    torch.testing.assert_close(from_files.score, from_tensor.score)
    assert Scorer(model)(str(paths[0])).score.shape == (1,)
    metric = model.as_metric()
    torch.testing.assert_close(metric(paths), from_files.score)
    assert metric.lower_better is False
    loss = model.as_metric(as_loss=True, loss_weight=2.0)(paths)
    torch.testing.assert_close(loss, -2.0 * from_files.score.mean())
    other = tmp_path / "big.png"
    save_png(other, _x(1, 64, 64)[0].permute(1, 2, 0).numpy())
    with pytest.raises(RMInputError, match="different sizes"):
        Scorer(model)([paths[0], other])


def _load(p: Path) -> np.ndarray:
    from finpercep.io import load_image

    return load_image(p)


@pytest.mark.parametrize("pool", ["normalized", "product"])
def test_score_pool_with_a_dark_map(pool: str) -> None:
    """With the map dark everywhere the product pool forgets the image; the normalized one does not."""
    model = RewardModel(replace(TINY, score_pool=pool, stage=1)).eval()
    model.set_gate(1.0)
    f_a = torch.randn(2, 16, 4, 4, generator=torch.Generator().manual_seed(1))
    f_b = torch.randn(2, 16, 4, 4, generator=torch.Generator().manual_seed(2))
    dark = torch.zeros(2, 1, 32, 32)
    pa, pb = model.pool(f_a, dark), model.pool(f_b, dark)
    assert torch.equal(pa[:, -1], torch.zeros(2))  # the defect area
    if pool == "product":
        assert torch.equal(pa, pb)
    else:
        assert not torch.allclose(pa, pb)
        # all-dark or all-bright map: the plain mean of f_N, as in RM_0
        for m in (dark, torch.ones(2, 1, 32, 32)):
            torch.testing.assert_close(model.pool(f_a, m)[:, :-1], f_a.mean(dim=(2, 3)))
        # a map lit on one half pools mostly that half's features
        half = torch.zeros(2, 1, 32, 32)
        half[..., :16] = 1.0
        left = model.pool(f_a, half)[:, :-1]
        weighted_sum = (f_a[..., :2] * 1.05).sum(dim=(2, 3)) + (f_a[..., 2:] * 0.05).sum(dim=(2, 3))
        torch.testing.assert_close(left, weighted_sum / 16 / 0.55)


def test_checkpoints_without_score_pool_load_as_product(tmp_path: Path) -> None:
    model = RewardModel(replace(TINY, score_pool="product", stage=1))
    model.save_pretrained(tmp_path / "rm")
    cfg_path = tmp_path / "rm" / "config.json"
    meta = json.loads(cfg_path.read_text())
    del meta["rm_config"]["score_pool"]  # as written before the options existed
    del meta["rm_config"]["decoder_block"]
    cfg_path.write_text(json.dumps(meta))
    old = RewardModel.from_pretrained(tmp_path / "rm").config
    assert old.score_pool == "product" and old.decoder_block == "res"
    assert RewardModel.from_pretrained(None).config.score_pool == "normalized"  # the packaged default


@pytest.mark.parametrize(
    ("field", "value"), [("decoder_block", "unet"), ("score_pool", "max"), ("norm", "layer")]
)
def test_config_rejects_unknown_choices(field: str, value: str) -> None:
    with pytest.raises(ConfigError, match=field):
        replace(TINY, **{field: value})


def test_flips_tta_makes_the_model_flip_invariant_and_stays_differentiable() -> None:
    """Averaging over the flip group: the score is the same for a flipped image and the map flips with it,
    which the plain model does not do; hflip averages the plain outputs of x and its mirror image."""
    model = RewardModel(TINY).eval()
    _perturb(model, seed=3)
    with torch.no_grad():
        model.gate.fill_(1.0)
    x = _x(2, 48, 64, seed=4)
    with torch.no_grad():
        plain, mirrored = model(x), model(x.flip(-1))
        assert not torch.allclose(plain.score, mirrored.score, atol=1e-4)
        h = Scorer(model, "hflip")(x)
        torch.testing.assert_close(h.map, (plain.map + mirrored.map.flip(-1)) / 2)
        flips = Scorer(model, "flips")
        for dims in ((-1,), (-2,), (-2, -1)):
            a, b = flips(x), flips(x.flip(dims))
            torch.testing.assert_close(b.score, a.score, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(b.map, a.map.flip(dims), rtol=1e-5, atol=1e-6)
    xg = x.clone().requires_grad_(True)
    flips(xg).score.sum().backward()
    assert xg.grad is not None and xg.grad.abs().sum() > 0
    with pytest.raises(FinPercepError, match="tta must be one of none, hflip, flips"):
        Scorer(model, "rot90")


def test_tta_is_an_inference_option_of_the_scorer(tmp_path: Path) -> None:
    from finpercep.cli import TTA_CHOICES
    from finpercep.rm.score import TTA_FLIPS

    assert tuple(TTA_FLIPS) == TTA_CHOICES
    RewardModel(TINY).save_pretrained(tmp_path / "m")
    assert Scorer.from_pretrained(tmp_path / "m").tta == "none"
    loaded = Scorer.from_pretrained(tmp_path / "m", tta="flips")
    assert loaded.tta == "flips" and loaded.stage == 3
    loaded.model.save_pretrained(tmp_path / "again")
    assert Scorer.from_pretrained(tmp_path / "again").tta == "none"  # not saved with the weights
    with pytest.raises(FinPercepError, match="tta must be one of"):
        Scorer.from_pretrained(tmp_path / "m", tta="yes")
    old_style = RewardModel.from_pretrained(tmp_path / "m", tta="hflip")  # deprecated: a Scorer
    assert isinstance(old_style, Scorer) and old_style.tta == "hflip"


# Outputs of the implementation before forward() became tensor-only (set_tta, paths into forward), for
# _golden_model() on _golden_images(): score, map mean, map[:, 0, 5, 7] per image.
OLD_OUTPUTS = {
    "paths": ([0.231236, 0.261499], [0.459752, 0.459119], [0.46069, 0.478125]),  # rm([png, png])
    "none": ([0.231238, 0.26136], [0.459739, 0.459121], [0.460854, 0.47811]),  # rm(x)
    "hflip": ([0.244008, 0.250225], [0.459247, 0.463891], [0.457254, 0.460311]),  # set_tta("hflip"); rm(x)
    "flips": ([0.242385, 0.255209], [0.460408, 0.460941], [0.456271, 0.46986]),  # set_tta("flips"); rm(x)
}


def _golden_model() -> RewardModel:
    model = RewardModel(TINY).eval()
    _perturb(model, seed=3)
    with torch.no_grad():
        model.gate.fill_(1.0)
    return model


def _golden_images(tmp_path: Path) -> tuple[torch.Tensor, list[Path]]:
    x = torch.rand(2, 3, 48, 64, generator=torch.Generator().manual_seed(23))
    paths = [tmp_path / f"im{i}.png" for i in range(2)]
    for p, im in zip(paths, x, strict=True):
        save_png(p, im.permute(1, 2, 0).numpy())
    return x, paths


def _assert_old(out: RMOutput, key: str) -> None:
    score, map_mean, pixel = OLD_OUTPUTS[key]
    kw = {"rtol": 0, "atol": 2e-6}
    torch.testing.assert_close(out.score, torch.tensor(score), **kw)
    torch.testing.assert_close(out.map.mean(dim=(1, 2, 3)), torch.tensor(map_mean), **kw)
    torch.testing.assert_close(out.map[:, 0, 5, 7], torch.tensor(pixel), **kw)


def test_tensor_forward_and_scorer_give_the_old_outputs(tmp_path: Path) -> None:
    """forward() on the loaded images equals the old forward on their paths; the scorer's TTA equals the
    old set_tta; the tensor forward of x is the old one."""
    model = _golden_model()
    x, paths = _golden_images(tmp_path)
    loaded = torch.from_numpy(np.stack([_load(p) for p in paths])).permute(0, 3, 1, 2)
    with torch.no_grad():
        _assert_old(model(loaded), "paths")
        _assert_old(Scorer(model)(paths), "paths")
        _assert_old(model(x), "none")
        for tta in ("none", "hflip", "flips"):
            _assert_old(Scorer(model, tta)(x), tta)
            _assert_old(score_images(model, x, tta), tta)


def test_forward_compiles_as_one_graph() -> None:
    """No host syncs or graph breaks in the forward pass (a cheap backend: tracing is what is tested)."""
    dynamo = pytest.importorskip("torch._dynamo", reason="torch.compile is unavailable")
    if not hasattr(torch, "compile") or not dynamo.is_dynamo_supported():
        pytest.skip("torch.compile is unavailable on this Python / platform")
    model = RewardModel(replace(TINY, decoder_widths=(8, 16, 16), decoder_block="light")).eval()
    _perturb(model, seed=5)
    model.requires_grad_(False)
    x = _x(1, 128, 128)  # large enough for the CPU stencil kernels, which compiled code leaves out
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    xc, xe = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    out, ref = compiled(xc), model(xe)
    assert isinstance(out, RMOutput)
    torch.testing.assert_close(out.score, ref.score, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.map, ref.map, rtol=1e-5, atol=1e-6)
    out.score.sum().backward()
    ref.score.sum().backward()
    torch.testing.assert_close(xc.grad, xe.grad, rtol=1e-4, atol=1e-7)
