"""RL building blocks: GRPO maths, Gaussian policy, LoRA, EMA, rewards, generators, data, config and CLI."""

from __future__ import annotations

import argparse
import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Normal, kl_divergence

from finpercep.errors import ConfigError, FinPercepError
from finpercep.io import save_png
from finpercep.rl import (
    EMA,
    GaussianPolicy,
    LoRAConv2d,
    RLConfig,
    RMScoreReward,
    StagedRMRewards,
    WeightedReward,
    apply_lora,
    build_adapter,
    build_generator,
    clipped_surrogate,
    export_generator,
    frozen_copy,
    gaussian_kl,
    gaussian_log_prob,
    group_advantages,
    grpo_loss,
    load_exported,
    merge_lora,
    parse_weighted_spec,
)
from finpercep.rl.cli import add_rl
from finpercep.rl.data import PairSource
from finpercep.rl.generators import srvgg_tiny
from finpercep.rl.rewards import check_reward
from finpercep.rl.toy import darker_reward, tiny_reward_model
from finpercep.rm.model import RewardModel

torch.set_num_threads(1)


def gens(seed: int, n: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed + i) for i in range(n)]


# ---------------------------------------------------------------- GRPO maths


def test_group_advantages_standardise_each_group() -> None:
    r = torch.randn(5, 8, generator=torch.Generator().manual_seed(0)) * torch.arange(1, 6)[:, None] + 3
    a = group_advantages(r)
    assert torch.allclose(a.mean(dim=1), torch.zeros(5), atol=1e-6)
    assert torch.allclose(a.std(dim=1, unbiased=False), torch.ones(5), atol=1e-4)
    assert torch.equal(group_advantages(torch.full((2, 4), 0.7)), torch.zeros(2, 4))
    # order within a group is preserved
    assert torch.equal(a.argsort(dim=1), r.argsort(dim=1))


def test_clipped_surrogate_is_unclipped_inside_the_band_and_pessimistic_outside() -> None:
    eps = 0.2
    ratio = torch.tensor([0.85, 1.0, 1.15, 1.5, 1.5, 0.5, 0.5])
    adv = torch.tensor([1.0, -2.0, 0.5, 1.0, -1.0, -1.0, 1.0])
    logp_old = torch.randn(7)
    s = clipped_surrogate(logp_old + ratio.log(), logp_old, adv, eps)
    assert torch.allclose(s[:3], ratio[:3] * adv[:3], atol=1e-6)
    assert torch.allclose(s[3:], torch.tensor([1.2 * 1.0, 1.5 * -1.0, 0.8 * -1.0, 0.5 * 1.0]), atol=1e-6)


def test_grpo_loss_gradient_at_ratio_one_is_minus_advantage() -> None:
    logp = torch.randn(3, 4, requires_grad=True)
    adv = torch.randn(3, 4)
    loss = grpo_loss(logp, logp.detach(), adv, torch.zeros(3), 0.2, 0.1)
    (g,) = torch.autograd.grad(loss, logp)
    assert torch.allclose(g, -adv / 12, atol=1e-7)


@pytest.mark.parametrize("per_channel", [False, True])
def test_gaussian_log_prob_matches_torch_normal(per_channel: bool) -> None:
    g = torch.Generator().manual_seed(1)
    mean, x = torch.rand(2, 3, 5, 6, generator=g), torch.rand(2, 3, 5, 6, generator=g)
    log_std = torch.tensor([-3.0, -2.0, -1.0]).view(3, 1, 1) if per_channel else torch.tensor(-2.5)
    ref = Normal(mean, log_std.exp().expand_as(mean)).log_prob(x).flatten(1).mean(1)
    assert torch.allclose(gaussian_log_prob(x, mean, log_std), ref, atol=1e-5)
    # with two batch dimensions (inputs x samples)
    ref2 = Normal(mean[:, None], log_std.exp()).log_prob(x[None]).flatten(2).mean(2)
    assert torch.allclose(
        gaussian_log_prob(x[None].expand(2, 2, 3, 5, 6), mean[:, None], log_std, 2), ref2, atol=1e-5
    )


def test_gaussian_kl_matches_torch_kl_divergence() -> None:
    g = torch.Generator().manual_seed(2)
    mp, mq = torch.rand(2, 3, 4, 4, generator=g), torch.rand(2, 3, 4, 4, generator=g)
    lp, lq = torch.tensor([-2.0, -1.5, -3.0]).view(3, 1, 1), torch.tensor(-2.2)
    ref = (
        kl_divergence(Normal(mp, lp.exp().expand_as(mp)), Normal(mq, lq.exp().expand_as(mq)))
        .flatten(1)
        .mean(1)
    )
    assert torch.allclose(gaussian_kl(mp, lp, mq, lq), ref, atol=1e-5)
    assert torch.allclose(gaussian_kl(mp, lp, mp, lp), torch.zeros(2), atol=1e-7)


# ---------------------------------------------------------------- Gaussian policy


def test_gaussian_policy_samples_are_exact_and_reproducible() -> None:
    policy = GaussianPolicy(srvgg_tiny(4), 4, std=0.1)
    ref = frozen_copy(policy)
    lr = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    ro = policy.rollout(lr, 3, gens(10, 2))
    assert ro.sr.shape == (6, 3, 32, 32) and ro.logp_old.shape == (2, 3)
    assert 0.0 <= float(ro.sr.min()) and float(ro.sr.max()) <= 1.0
    # the sample of input 1 does not depend on input 0 being in the batch
    solo = policy.rollout(lr[1:], 3, gens(11, 1))
    assert torch.equal(solo.action[0], ro.action[1])
    # log-probabilities under the same weights equal those at sampling time; KL to a copy is 0
    logp, kl = policy.evaluate(ro, ref)
    assert torch.allclose(logp, ro.logp_old, atol=1e-6)
    assert torch.allclose(kl, torch.zeros(2), atol=1e-8)
    expected = Normal(policy(lr)[:, None], 0.1).log_prob(ro.action).flatten(2).mean(2)
    assert torch.allclose(ro.logp_old, expected, atol=1e-5)
    # gradients reach the generator through the log-probability
    logp.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in policy.net.parameters())


def test_antithetic_groups_mirror_their_noise_and_iid_keeps_the_old_draws() -> None:
    policy = GaussianPolicy(srvgg_tiny(4), 4, std=0.1)
    lr = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    iid = policy.rollout(lr, 4, gens(10, 2))
    mean = policy(lr)[:, None]
    # iid: sample k of input b is the k-th draw of input b's generator, as before the option existed
    g = gens(10, 2)
    old = torch.stack([torch.randn((4, *mean.shape[2:]), generator=x) for x in g])
    assert torch.allclose(iid.action, mean + 0.1 * old, atol=1e-6)
    policy.exploration = "antithetic"
    anti = policy.rollout(lr, 4, gens(10, 2))
    eps = (anti.action - mean) / 0.1
    assert torch.allclose(eps[:, 2:], -eps[:, :2], atol=1e-5)
    assert torch.allclose(eps[:, :2], old[:, :2], atol=1e-5)
    with pytest.raises(ValueError, match="even"):
        policy.rollout(lr, 3, gens(10, 2))
    with pytest.raises(ConfigError, match="even group_size"):
        RLConfig(exploration="antithetic", group_size=3)


def test_later_ppo_epochs_re_evaluate_under_the_updated_weights() -> None:
    policy = GaussianPolicy(srvgg_tiny(4), 4, std=0.1)
    ref = frozen_copy(policy)
    lr = torch.rand(2, 3, 8, 8)
    ro = policy.rollout(lr, 2, gens(0, 2))
    first, _ = policy.evaluate(ro, ref)
    assert torch.allclose(first, ro.logp_old, atol=1e-6) and "mean" not in ro.state
    with torch.no_grad():
        policy.net.body[-1].bias.add_(0.01)
    second, kl = policy.evaluate(ro, ref)
    assert not torch.allclose(second, ro.logp_old, atol=1e-4)
    assert torch.all(kl > 0)


def test_srvgg_tiny_starts_as_nearest_upsampling() -> None:
    lr = torch.rand(1, 3, 8, 8)
    g = build_generator("srvgg-tiny")
    assert g.scale == 4
    assert torch.allclose(g.net(lr), F.interpolate(lr, scale_factor=4, mode="nearest"), atol=1e-6)
    assert build_generator("srvgg-tiny", 2).scale == 2


def test_unknown_generator_names_the_choices(tmp_path: Path) -> None:
    with pytest.raises(FinPercepError, match="realesrgan-x4plus"):
        build_generator("no-such-model")
    with pytest.raises(FinPercepError, match="no x3"):
        build_generator("srvgg-tiny", 3)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(FinPercepError, match="not a generator"):
        build_generator(str(tmp_path / "notes.txt"))


def test_adapters_from_a_module_function_and_from_an_exported_run(tmp_path: Path) -> None:
    adapter = build_adapter("finpercep.rl.toy:tiny_policy", 2)
    assert isinstance(adapter, GaussianPolicy) and adapter.scale == 2
    assert adapter.source == "finpercep.rl.toy:tiny_policy"
    with pytest.raises(FinPercepError, match="cannot import"):
        build_adapter("finpercep.rl.toy:no_such_policy")
    with torch.no_grad():
        adapter.network.body[-1].weight.normal_(0, 0.05)
    export_generator(adapter.network, tmp_path, {"source": "finpercep.rl.toy:tiny_policy", "scale": 2})
    again = build_adapter(str(tmp_path))
    x = torch.rand(1, 3, 8, 8)
    assert torch.allclose(again(x), adapter(x), atol=1e-6)
    assert again.source == str(tmp_path)


@pytest.mark.skipif(importlib.util.find_spec("spandrel") is not None, reason="spandrel is installed")
def test_spandrel_missing_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "model.pth"
    torch.save(srvgg_tiny(4).state_dict(), path)
    with pytest.raises(FinPercepError, match="spandrel"):
        build_generator(str(path))


@pytest.mark.skipif(
    importlib.util.find_spec("spandrel") is None, reason="spandrel (needs torchvision) is not installed"
)
def test_spandrel_loads_a_trainable_compact_model(tmp_path: Path) -> None:
    net = srvgg_tiny(4)
    with torch.no_grad():
        net.body[-1].weight.normal_(0, 0.01)
    path = tmp_path / "compact.pth"
    torch.save(net.state_dict(), path)
    g = build_generator(str(path))
    lr = torch.rand(1, 3, 8, 8)
    assert g.scale == 4
    assert torch.allclose(g.net(lr), net(lr), atol=1e-5)
    assert all(p.requires_grad for p in g.net.parameters())


# ---------------------------------------------------------------- LoRA and EMA


def test_lora_starts_as_identity_trains_only_the_branch_and_merges() -> None:
    net = srvgg_tiny(4)
    with torch.no_grad():
        net.body[-1].weight.normal_(0, 0.05)
    x = torch.rand(2, 3, 8, 8)
    before = net(x)
    apply_lora(net, rank=2, seed=0)
    assert torch.equal(net(x), before)
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trainable and all(".down." in n or ".up." in n for n in trainable)
    assert sum(isinstance(m, LoRAConv2d) for m in net.modules()) == 4
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, LoRAConv2d):
                m.up.weight.normal_(0, 0.1)
    adapted = net(x)
    assert not torch.allclose(adapted, before, atol=1e-4)
    merged = merge_lora(net)
    assert not any(isinstance(m, LoRAConv2d) for m in merged.modules())
    assert torch.allclose(merged(x), adapted, atol=1e-5)


def test_ema_tracks_the_average_of_trainable_weights() -> None:
    lin = torch.nn.Linear(2, 2)
    lin.bias.requires_grad_(False)
    w0 = lin.weight.detach().clone()
    ema = EMA(lin, decay=0.9)
    assert set(ema.shadow) == {"weight"}
    with torch.no_grad():
        lin.weight.add_(1.0)
    ema.update(lin)
    ema.update(lin)
    expected = w0 + 1.0 * (1 - 0.9**2)
    assert torch.allclose(ema.shadow["weight"], expected, atol=1e-6)
    ema.copy_to(lin)
    assert torch.allclose(lin.weight, expected)


def test_export_merges_lora_and_reloads(tmp_path: Path) -> None:
    net = srvgg_tiny(4)
    apply_lora(net, rank=2)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, LoRAConv2d):
                m.up.weight.normal_(0, 0.1)
    export_generator(net, tmp_path, {"source": "srvgg-tiny", "scale": 4})
    loaded = load_exported(tmp_path)
    x = torch.rand(1, 3, 8, 8)
    assert torch.allclose(loaded.net(x), net(x), atol=1e-5)
    assert build_generator(str(tmp_path)).scale == 4


# ---------------------------------------------------------------- rewards


@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_reward_model(tmp_path_factory.mktemp("rm"), stages=2)


def test_rm_score_reward_and_map_penalty(rm_dir: Path) -> None:
    rm = RewardModel.from_pretrained(rm_dir, stage=2)
    x = torch.rand(2, 3, 32, 32)
    out = rm(x)
    assert torch.allclose(RMScoreReward(rm)(x, x[:, :, :8, :8]), out.score)
    penalised = RMScoreReward(rm, map_penalty=0.5)(x, x)
    assert torch.allclose(penalised, out.score - 0.5 * out.map.mean(dim=(1, 2, 3)), atol=1e-6)
    # differentiable in sr (ReFL needs it), with the RM itself frozen
    sr = x.clone().requires_grad_(True)
    RMScoreReward(rm)(sr, x).sum().backward()
    assert sr.grad is not None and sr.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in rm.parameters())


def test_staged_rewards_load_each_stage(rm_dir: Path) -> None:
    staged = StagedRMRewards(rm_dir)
    assert staged.stages == (0, 1, 2)
    x = torch.rand(2, 3, 32, 32)
    scores = [staged[k](x, x) for k in staged.stages]
    assert not torch.allclose(scores[0], scores[2])
    assert torch.allclose(scores[2], RewardModel.from_pretrained(rm_dir / "stage_2")(x).score)
    with pytest.raises(FinPercepError, match="RM_5"):
        staged[5]
    single = StagedRMRewards(rm_dir / "stage_1")
    assert single.stages == (1,)


def test_weighted_rewards_and_specs() -> None:
    sr, lr = torch.rand(3, 3, 8, 8), torch.rand(3, 3, 2, 2)
    w, fn = parse_weighted_spec("0.5*finpercep.rl.toy:darker_reward")
    assert w == 0.5 and fn is darker_reward
    total = WeightedReward([(2.0, darker_reward), (w, fn)])(sr, lr)
    assert torch.allclose(total, 2.5 * darker_reward(sr, lr))
    assert parse_weighted_spec("finpercep.rl.toy:redder_reward")[0] == 1.0
    with pytest.raises(FinPercepError, match="cannot import"):
        parse_weighted_spec("1*finpercep.rl.toy:nope")
    with pytest.raises(FinPercepError, match="not a weight"):
        parse_weighted_spec("x*finpercep.rl.toy:darker_reward")
    with pytest.raises(FinPercepError, match="shape"):
        check_reward(torch.zeros(3, 1), 3, "bad")
    with pytest.raises(FinPercepError, match="NaN"):
        WeightedReward([(1.0, lambda sr, lr, hr=None: torch.full((sr.shape[0],), math.nan))])(sr, lr)


# ---------------------------------------------------------------- data, config, CLI


def test_pairs_are_a_function_of_seed_step_and_index() -> None:
    src = PairSource(4, 16, seed=3, degradation="realesrgan")
    lr, hr = src.sample(5, 1)
    assert lr.shape == (16, 16, 3) and hr.shape == (64, 64, 3)
    again_lr, again_hr = PairSource(4, 16, seed=3).sample(5, 1)
    assert np.array_equal(lr, again_lr) and np.array_equal(hr, again_hr)
    assert not np.array_equal(src.sample(6, 1)[1], hr)
    bl, bh = src.batch(5, [0, 1])
    assert bl.shape == (2, 3, 16, 16) and torch.equal(bh[1], torch.from_numpy(hr).permute(2, 0, 1))


def test_paired_folders(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        lr = rng.random((10, 12, 3)).astype(np.float32)
        save_png(tmp_path / "lr" / f"{name}.png", lr)
        save_png(tmp_path / "hr" / f"{name}.png", lr.repeat(4, axis=0).repeat(4, axis=1))
    src = PairSource(4, 8, seed=0, paired_lr=str(tmp_path / "lr"), paired_hr=str(tmp_path / "hr"))
    lr, hr = src.sample(0, 0)
    assert lr.shape == (8, 8, 3) and hr.shape == (32, 32, 3)
    assert np.allclose(hr[::4, ::4], lr, atol=1 / 255)  # aligned crops
    with pytest.raises(FinPercepError, match="no LR/HR pairs"):
        PairSource(4, 8, seed=0, paired_lr=str(tmp_path / "lr"), paired_hr=str(tmp_path))


def test_config_validation() -> None:
    with pytest.raises(ConfigError, match="divisible"):
        RLConfig(batch_size=3, num_processes=2)
    with pytest.raises(ConfigError, match="group_size"):
        RLConfig(group_size=1)
    with pytest.raises(ConfigError, match="paired"):
        RLConfig(paired_lr="x")
    with pytest.raises(ConfigError, match="curriculum"):
        RLConfig(curriculum="sometimes")  # type: ignore[arg-type]
    assert RLConfig(algorithm="refl", group_size=1).group_size == 1


def test_cli_builds_the_config() -> None:
    parser = argparse.ArgumentParser()
    add_rl(parser.add_subparsers(dest="cmd"))
    ns = parser.parse_args(
        "rl train --generator realesrgan-x4plus --reward-model runs/rm --curriculum ccl --out runs/x "
        "--schedule adaptive --lora-rank 4 --ema-decay 0.99 --extra-rewards 0.5*pyiqa:musiq".split()
    )
    from finpercep.config import from_args

    cfg = from_args(RLConfig, ns)
    assert (cfg.generator, cfg.reward_model, cfg.curriculum.kind, cfg.out) == (
        "realesrgan-x4plus",
        "runs/rm",
        "ccl",
        "runs/x",
    )
    assert cfg.curriculum.schedule == "adaptive" and cfg.lora_rank == 4 and cfg.ema_decay == 0.99
    assert cfg.extra_rewards == ("0.5*pyiqa:musiq",)
    assert ns.func.__name__ == "_cmd_train"


def test_no_reward_model_path_means_every_stage_of_the_packaged_default() -> None:
    from finpercep.rm.model import default_checkpoint_dir
    from finpercep.rm.stages import stage_dirs

    stages = stage_dirs(None)
    assert list(stages) == [0, 1, 2, 3, 4]  # ccl needs RM_0 ... RM_N, not only the highest stage
    assert all(p.parent == default_checkpoint_dir() for p in stages.values())
