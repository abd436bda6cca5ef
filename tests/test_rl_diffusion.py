"""The one-step latent-diffusion SR adapter (osediff): shapes, LoRA identity, GRPO/ReFL, resume, folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

pytest.importorskip("diffusers")
pytest.importorskip("peft")

import finpercep.cli  # noqa: E402
from finpercep import dist as D  # noqa: E402
from finpercep.errors import FinPercepError  # noqa: E402
from finpercep.rl import AdapterOptions, RLConfig, build_adapter, build_generator, read_log, train  # noqa: E402
from finpercep.rl.diffusion import OneStepDiffusionSR  # noqa: E402
from finpercep.rl.diffusion_models import tiny_models  # noqa: E402
from finpercep.rl.toy import darker_reward, tiny_reward_model  # noqa: E402
from finpercep.rl.train import grpo_step, refl_step  # noqa: E402

torch.set_num_threads(1)


def images(n: int = 2, size: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def gens(seed: int, n: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed + i) for i in range(n)]


def tiny(**options: object) -> OneStepDiffusionSR:
    adapter = build_adapter("osediff-tiny", options=AdapterOptions(**options))  # type: ignore[arg-type]
    assert isinstance(adapter, OneStepDiffusionSR)
    return adapter


@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_reward_model(tmp_path_factory.mktemp("rm"), stages=1)


def test_output_shape_range_and_rollout() -> None:
    policy = tiny()
    assert (policy.scale, policy.multiple_of, policy.source) == (4, 2, "osediff-tiny")
    lr = images(2, 8)
    with torch.no_grad():
        out = policy(lr)
    assert out.shape == (2, 3, 32, 32) and out.dtype == torch.float32
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0 and 0.1 < float(out.mean()) < 0.9
    assert build_adapter("osediff-tiny", 2)(lr).shape == (2, 3, 16, 16)
    ro = policy.rollout(lr, 3, gens(5, 2))
    assert ro.sr.shape == (6, 3, 32, 32) and ro.action.shape == (2, 3, 4, 8, 8)
    assert ro.logp_old.shape == (2, 3) and 0.0 <= float(ro.sr.min()) and float(ro.sr.max()) <= 1.0
    # input 1's samples do not depend on input 0 being in the batch (up to batched-kernel rounding)
    assert torch.allclose(policy.rollout(lr[1:], 3, gens(6, 1)).action[0], ro.action[1], atol=1e-5)
    logp, kl = policy.evaluate(ro, policy.reference())
    assert torch.allclose(logp, ro.logp_old, atol=1e-6) and torch.equal(kl, torch.zeros(2))


def test_lora_starts_as_identity_and_only_lora_trains() -> None:
    policy = tiny()
    ref = policy.reference()
    lr = images(2, 8)
    out = policy(lr)
    assert torch.equal(out, ref(lr))
    # the base diffusers models, without peft, give the same image
    vae, unet, scheduler = tiny_models()
    up = torch.nn.functional.interpolate(lr, scale_factor=4, mode="bicubic").clamp(0, 1)
    z = vae.encode(up * 2 - 1).latent_dist.mode()
    eps = unet(z, 999, encoder_hidden_states=torch.zeros(2, 1, 16)).sample
    a = float(scheduler.alphas_cumprod[999])
    base = (vae.decode((z - (1 - a) ** 0.5 * eps) / a**0.5).sample + 1) / 2
    assert torch.allclose(out, base.clamp(0, 1), atol=1e-6)
    trainable = [n for n, p in policy.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert all(n.startswith("unet.") for n in trainable)
    assert list(ref.parameters()) == []  # the reference shares the policy's modules, copies nothing
    with torch.no_grad():
        for n, p in policy.named_parameters():
            if ".lora_B." in n:
                p.normal_(0, 0.05)
    assert not torch.allclose(policy(lr), out, atol=1e-4)
    assert torch.equal(ref(lr), out)  # LoRA off
    assert [n for n, p in policy.named_parameters() if p.requires_grad] == trainable  # flags restored
    with_vae = tiny(vae_lora=True, lora_rank=2)
    names = [n for n, p in with_vae.named_parameters() if p.requires_grad]
    assert any(n.startswith("vae.encoder.") for n in names) and not any("decoder" in n for n in names)
    assert torch.equal(with_vae(lr), out)


def _step_and_compare(algorithm: str, lr_rate: float) -> tuple[list[float], dict[str, bool]]:
    d = D.Dist(0, 1, torch.device("cpu"), False)
    cfg = RLConfig(algorithm=algorithm, group_size=4, lr=lr_rate, kl_coef=0.0, fidelity_weight=0.0)
    policy = tiny()
    ref = policy.reference()
    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    params = [p for p in policy.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr)
    lr = images(2, 8)
    rewards = []
    for step in range(4):
        with torch.no_grad():
            rewards.append(float(darker_reward(policy(lr), lr).mean()))
        if algorithm == "grpo":
            grpo_step(d, cfg, policy, ref, darker_reward, opt, params, lr, None, gens(100 * step, 2))
        else:
            refl_step(d, cfg, policy, ref, darker_reward, opt, params, lr, None)
    with torch.no_grad():
        rewards.append(float(darker_reward(policy(lr), lr).mean()))
    changed = {n: not torch.equal(p, before[n]) for n, p in policy.named_parameters()}
    return rewards, changed


@pytest.mark.parametrize("algorithm", ["grpo", "refl"])
def test_grpo_and_refl_steps_move_the_lora_only_and_the_reward(algorithm: str) -> None:
    rewards, changed = _step_and_compare(algorithm, 1e-2 if algorithm == "grpo" else 1e-3)
    assert any(v for n, v in changed.items() if ".lora_B." in n)
    assert not any(v for n, v in changed.items() if ".lora_" not in n)
    assert rewards[-1] > rewards[0] + 1e-3, rewards


def config(root: Path, rm: Path, name: str, **kw: object) -> RLConfig:
    base: dict[str, object] = dict(
        generator="osediff-tiny",
        reward_model=str(rm),
        steps=3,
        batch_size=1,
        group_size=2,
        lr=1e-2,
        lr_size=8,
        degradation="bicubic",
        save_every=1,
        out=str(root / name),
        progress=False,
        tensorboard=False,
        preview=0,
        seed=3,
    )
    base.update(kw)
    return RLConfig(**base)  # type: ignore[arg-type]


def test_resume_export_and_reload_round_trip(tmp_path: Path, rm_dir: Path) -> None:
    kw: dict[str, object] = dict(ema_decay=0.5, lora_rank=2, algorithm="refl")
    whole = train(config(tmp_path, rm_dir, "whole", **kw))

    class Killed(Exception):
        pass

    def kill_at_2(step: int, row: dict[str, float]) -> None:
        if step == 2:
            raise Killed

    cfg = config(tmp_path, rm_dir, "killed", **kw)
    with pytest.raises(Killed):
        train(cfg, on_step=kill_at_2)
    resumed = train(cfg)
    for name in ("generator.safetensors", "generator_ema.safetensors"):
        a, b = load_file(str(whole / name)), load_file(str(resumed / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
        assert all(".lora_A." in k or ".lora_B." in k for k in a)  # only the LoRA is exported
    state = torch.load(whole / "state.pt", weights_only=False)["policy"]
    assert set(state) - {"log_std"} and all(k == "log_std" or ".lora_" in k for k in state)
    # the exported LoRA rebuilds the trained policy (merged into the base weights)
    trained = tiny(lora_rank=2)
    trained.load_trainable_state(state)
    rebuilt = build_adapter(str(whole))
    lr = images(1, 8, seed=4)
    with torch.no_grad():
        assert torch.allclose(rebuilt(lr), trained(lr), atol=1e-5)
        assert not torch.allclose(rebuilt(lr), tiny()(lr), atol=1e-4)
        # a rebuilt policy starts (LoRA zero) at the loaded weights: its reference equals it
        assert torch.equal(rebuilt.reference()(lr), rebuilt(lr))
        # --lora FILE merges the same deltas into the base model
        merged = tiny(lora=str(whole / "generator.safetensors"))
        assert torch.allclose(merged(lr), trained(lr), atol=1e-5)
        # ... and so does a peft folder of the same LoRA (prefixed keys, adapter name, alpha / r = 2)
        peft_dir = tmp_path / "peft"
        peft_dir.mkdir()
        (peft_dir / "adapter_config.json").write_text(json.dumps({"r": 2, "lora_alpha": 4}))
        exported = load_file(str(whole / "generator.safetensors"))
        peft_state = {
            f"base_model.model.{k.removeprefix('unet.').replace('.weight', '.x.weight')}": v / 2
            if ".lora_B." in k
            else v
            for k, v in exported.items()
        }
        save_file(peft_state, str(peft_dir / "adapter_model.safetensors"))
        assert torch.allclose(tiny(lora=str(peft_dir))(lr), trained(lr), atol=1e-5)
    with pytest.raises(FinPercepError, match="build_adapter"):
        build_generator(str(whole))
    with pytest.raises(FinPercepError, match="another --lora-rank"):
        tiny(lora_rank=3).load_trainable_state(state)


def test_gradient_checkpointing_and_reduced_precision(rm_dir: Path) -> None:
    lr = images(1, 8)
    grads = []
    for checkpointing in (False, True):
        policy = tiny(gradient_checkpointing=checkpointing)
        policy.train()
        policy(lr).mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in policy.parameters() if p.grad is not None]))
    assert grads[0].abs().sum() > 0 and torch.allclose(grads[0], grads[1], atol=1e-6)
    with torch.no_grad():
        full = tiny()(lr)
    for precision in ("bf16", "fp16"):
        with torch.no_grad():
            out = tiny(precision=precision)(lr)
        assert out.dtype == torch.float32 and float((out - full).abs().mean()) < 0.05, precision
    with pytest.raises(FinPercepError, match="osediff generators only"):
        build_adapter("srvgg-tiny", options=AdapterOptions(precision="bf16"))


def _save_tiny_folder(root: Path, text_encoder: bool) -> None:
    vae, unet, scheduler = tiny_models()
    vae.save_pretrained(root / "vae")
    unet.save_pretrained(root / "unet")
    scheduler.save_pretrained(root / "scheduler")
    if text_encoder:
        from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

        (root / "tokenizer").mkdir()
        vocab, merges = root / "tokenizer" / "vocab.json", root / "tokenizer" / "merges.txt"
        vocab.write_text(json.dumps({"<|startoftext|>": 0, "<|endoftext|>": 1, "a</w>": 2, "a": 3}))
        merges.write_text("#version: 0.2\n")
        tokenizer = CLIPTokenizer(str(vocab), str(merges), model_max_length=8, pad_token="<|endoftext|>")
        tokenizer.save_pretrained(str(root / "tokenizer"))
        te = CLIPTextConfig(
            vocab_size=4, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
            max_position_embeddings=8, bos_token_id=0, eos_token_id=1, pad_token_id=1,
        )  # fmt: skip
        torch.manual_seed(0)
        CLIPTextModel(te).save_pretrained(str(root / "text_encoder"))


def test_local_folder_loads_and_bad_folders_fail_clearly(tmp_path: Path) -> None:
    root = tmp_path / "sd"
    _save_tiny_folder(root, text_encoder=False)
    lr = images(1, 8)
    from_folder = build_adapter(f"osediff:{root}")
    assert from_folder.source == f"osediff:{root}"
    assert torch.equal(from_folder(lr), tiny()(lr))
    with_text = tmp_path / "sd_text"
    _save_tiny_folder(with_text, text_encoder=True)
    conditioned = build_adapter(f"osediff:{with_text}")
    assert conditioned.text_embedding.shape == (1, 8, 16) and conditioned.text_embedding.abs().sum() > 0
    assert not torch.allclose(conditioned(lr), from_folder(lr), atol=1e-6)

    with pytest.raises(FinPercepError, match=r"nowhere is not a folder"):
        build_adapter(f"osediff:{tmp_path / 'nowhere'}")
    (tmp_path / "half" / "vae").mkdir(parents=True)
    (tmp_path / "half" / "vae" / "config.json").write_text((root / "vae" / "config.json").read_text())
    with pytest.raises(FinPercepError, match=r"has no unet/ sub-folder"):
        build_adapter(f"osediff:{tmp_path / 'half'}")
    (tmp_path / "half" / "unet").mkdir()
    (tmp_path / "half" / "unet" / "config.json").write_text((root / "unet" / "config.json").read_text())
    with pytest.raises(FinPercepError, match=r"cannot load .*vae"):  # configs without weights
        build_adapter(f"osediff:{tmp_path / 'half'}")
    with pytest.raises(FinPercepError, match="not a .safetensors file"):
        tiny(lora=str(tmp_path / "missing.safetensors"))
    with pytest.raises(FinPercepError, match="policy adapter"):
        build_generator("osediff-tiny")


def test_cli_smoke_run(tmp_path: Path, rm_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    argv = ["rl", "train", "--generator", "osediff-tiny", "--steps", "2", "--out", str(out)]
    small = ["--reward-model", str(rm_dir), "--lr-size", "8", "--batch-size", "1", "--group-size", "2"]
    quiet = ["--progress", "false", "--tensorboard", "false", "--preview", "1", "--threads", "1"]
    assert finpercep.cli.main([*argv, *small, *quiet]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    rows = read_log(out)
    assert [int(r["step"]) for r in rows] == [1, 2] and rows[0]["kl"] == 0.0
    assert all(torch.isfinite(torch.tensor([r["reward"], r["loss"]])).all() for r in rows)
    meta = json.loads((out / "generator.json").read_text())
    assert meta["source"] == "osediff-tiny" and meta["arch"].startswith("OneStepDiffusionSR")
    assert (out / "preview.png").stat().st_size > 0
