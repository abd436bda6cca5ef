"""Encoders: pyramid shapes, and each pretrained backbone's loading code on a tiny random config."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from finpercep.errors import FinPercepError
from finpercep.rm import RewardModel, RMConfig
from finpercep.rm.encoders import CLIPResNetEncoder, SmallCNN, infer_clip_resnet_arch, load_clip_resnet

X = torch.rand(2, 3, 70, 52, generator=torch.Generator().manual_seed(0))


def _ceil_div(n: int, s: int) -> int:
    return -(-n // s)


def test_small_cnn_pyramid() -> None:
    enc = SmallCNN((8, 16, 24), (1, 0, 2))
    feats = enc(X)
    assert [f.shape[1] for f in feats] == [8, 16, 24] and enc.strides == (2, 4, 8)
    for f, s in zip(feats, enc.strides, strict=True):
        assert f.shape[-2:] == (_ceil_div(70, s), _ceil_div(52, s))


# ---------------------------------------------------------------- CLIP ModifiedResNet


class _OpenAIStyleCLIP(nn.Module):
    """Mimics the layout of OpenAI's CLIP checkpoint: ``visual.*`` trunk + attnpool + a text part."""

    def __init__(self, visual: CLIPResNetEncoder) -> None:
        super().__init__()
        self.visual = visual
        self.visual.attnpool = nn.Linear(4, 4)  # stands in for the attention pool (ignored by the loader)
        self.token_embedding = nn.Embedding(10, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.visual(x)[-1]


def _tiny_clip_rn(seed: int = 0) -> CLIPResNetEncoder:
    torch.manual_seed(seed)
    enc = CLIPResNetEncoder(layers=(1, 2, 1, 1), width=8)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so a missed buffer would show
        for m in enc.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return enc.eval()


def test_clip_resnet_features_and_frozen_batchnorm() -> None:
    enc = _tiny_clip_rn()
    feats = enc(X)
    assert enc.channels == (32, 64, 128, 256) and enc.strides == (4, 8, 16, 32)
    assert [f.shape[1] for f in feats] == list(enc.channels)
    assert feats[0].shape[-2:] == (70 // 4, 52 // 4)
    enc.train()
    assert all(not m.training for m in enc.modules() if isinstance(m, nn.BatchNorm2d))
    torch.testing.assert_close(enc(X)[-1], feats[-1])  # batch statistics never used


@pytest.mark.parametrize("fmt", ["safetensors", "torch", "torchscript"])
def test_clip_resnet_loads_openai_style_checkpoints(tmp_path: Path, fmt: str) -> None:
    src = _tiny_clip_rn(seed=3)
    full = _OpenAIStyleCLIP(src).eval()
    sd = full.state_dict()
    assert "visual.layer2.0.downsample.0.weight" in sd and "visual.conv3.weight" in sd
    if fmt == "safetensors":
        path = tmp_path / "rn.safetensors"
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    elif fmt == "torch":
        path = tmp_path / "rn.pt"
        torch.save({"state_dict": sd}, path)
    else:
        path = tmp_path / "rn_jit.pt"
        torch.jit.trace(full, X[:1]).save(str(path))
    enc = load_clip_resnet(path)
    layers, width = infer_clip_resnet_arch(
        {k[len("visual.") :]: v for k, v in sd.items() if k.startswith("visual.")}
    )
    assert (layers, width) == ((1, 2, 1, 1), 8)
    assert enc.arch == {"layers": [1, 2, 1, 1], "width": 8}
    for a, b in zip(enc(X), src(X), strict=True):
        torch.testing.assert_close(a, b)


def test_clip_rn50_reward_model_round_trip_without_the_weights_file(tmp_path: Path) -> None:
    path = tmp_path / "rn.safetensors"
    save_file(
        {k: v.contiguous() for k, v in _OpenAIStyleCLIP(_tiny_clip_rn(5)).state_dict().items()}, str(path)
    )
    model = RewardModel(RMConfig(encoder="clip_rn50", encoder_weights=str(path), head_hidden=8)).eval()
    assert model.num_levels == 4 and model.stage == 4
    model.save_pretrained(tmp_path / "rm")
    path.unlink()
    loaded = RewardModel.from_pretrained(tmp_path / "rm")
    x = X[:, :, :64, :48]
    torch.testing.assert_close(loaded(x).score, model(x).score)


def test_clip_resnet_rejects_foreign_state_dicts(tmp_path: Path) -> None:
    path = tmp_path / "bad.safetensors"
    save_file({"foo.weight": torch.zeros(2)}, str(path))
    with pytest.raises(FinPercepError, match="not a CLIP ResNet"):
        load_clip_resnet(path)
    with pytest.raises(FinPercepError, match="not found"):
        load_clip_resnet(tmp_path / "missing.pt")


# ---------------------------------------------------------------- Hugging Face ViTs

transformers = pytest.importorskip("transformers", reason="transformers is needed for the ViT encoders")


def _tiny_hf(family: str, path: Path) -> nn.Module:
    torch.manual_seed(0)
    if family == "clip_vit":
        cfg = transformers.CLIPVisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=4,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        )
        model = transformers.CLIPVisionModel(cfg)
    elif family == "dinov2":
        cfg = transformers.Dinov2Config(
            hidden_size=32,
            num_hidden_layers=4,
            num_attention_heads=2,
            mlp_ratio=2,
            image_size=32,
            patch_size=8,
        )
        model = transformers.Dinov2Model(cfg)
    else:
        cfg = transformers.DINOv3ViTConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=4,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
            num_register_tokens=2,
        )
        model = transformers.DINOv3ViTModel(cfg)
    model.save_pretrained(str(path))
    return model.eval()


@pytest.mark.parametrize("family", ["clip_vit", "dinov2", "dinov3"])
def test_hf_vit_encoders_load_local_weights_and_round_trip(tmp_path: Path, family: str) -> None:
    src = _tiny_hf(family, tmp_path / "hf")
    cfg = RMConfig(encoder=family, encoder_weights=str(tmp_path / "hf"), vit_channels=16, head_hidden=8)
    model = RewardModel(cfg).eval()
    enc = model.encoder
    for name, p in src.state_dict().items():  # the pretrained weights really were loaded
        torch.testing.assert_close(enc.backbone.state_dict()[name], p)
    x = X[:, :, :45, :52]  # not a multiple of the 8-pixel patch
    feats = enc(x)
    assert len(feats) == 4 and enc.layers == (1, 2, 3, 4)
    gh, gw = _ceil_div(45, 8), _ceil_div(52, 8)
    expected = [(4 * gh, 4 * gw), (2 * gh, 2 * gw), (gh, gw), (_ceil_div(gh, 2), _ceil_div(gw, 2))]
    assert [tuple(f.shape[-2:]) for f in feats] == expected
    assert all(f.shape[1] == 16 for f in feats)
    out = model(x)
    assert out.map.shape == (2, 1, 45, 52)
    model.save_pretrained(tmp_path / "rm")
    shutil.rmtree(tmp_path / "hf")  # reloading needs only the reward-model folder
    loaded = RewardModel.from_pretrained(tmp_path / "rm")
    torch.testing.assert_close(loaded(x).score, out.score)
    torch.testing.assert_close(loaded(x).map, out.map)


def test_hf_vit_needs_a_local_folder(tmp_path: Path) -> None:
    with pytest.raises(FinPercepError, match="nothing is downloaded"):
        RewardModel(RMConfig(encoder="dinov2"))
    with pytest.raises(FinPercepError, match="local save_pretrained folder"):
        RewardModel(RMConfig(encoder="dinov2", encoder_weights=str(tmp_path / "nope")))


def test_freeze_encoder_freezes_only_the_backbone(tmp_path: Path) -> None:
    _tiny_hf("dinov2", tmp_path / "hf")
    model = RewardModel(
        RMConfig(encoder="dinov2", encoder_weights=str(tmp_path / "hf"), vit_channels=8, freeze_encoder=True)
    )
    assert not any(p.requires_grad for p in model.encoder.backbone.parameters())
    assert all(p.requires_grad for p in model.encoder.reassemble.parameters())
    assert all(p.requires_grad for p in model.blocks.parameters())


# ---------------------------------------------------------------- timm


@pytest.mark.skipif(
    importlib.util.find_spec("timm") is None,
    reason="timm is not installed (it needs a full torch build); the adapter is untested here",
)
def test_timm_features_only_encoder(tmp_path: Path) -> None:
    import timm

    torch.manual_seed(0)
    ref = timm.create_model("resnet18", pretrained=False)
    path = tmp_path / "resnet18.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    model = RewardModel(RMConfig(encoder="timm", timm_name="resnet18", encoder_weights=str(path))).eval()
    assert model.encoder.strides == (2, 4, 8, 16, 32)
    torch.testing.assert_close(model.encoder.body.conv1.weight, ref.conv1.weight)
    x = X[:, :, :64, :64]
    out = model(x)
    assert out.map.shape == (2, 1, *x.shape[-2:])
    model.save_pretrained(tmp_path / "rm")
    torch.testing.assert_close(RewardModel.from_pretrained(tmp_path / "rm")(x).score, out.score)
