"""Multi-scale image encoders for the reward model.

Every encoder maps an image batch ``[B, 3, H, W]`` in ``[0, 1]`` to a list of feature maps
``f_1 ... f_N``, finest first, and describes them with ``channels`` and ``strides``. Each encoder does
its own input normalisation. Pretrained weights are only ever read from local paths; nothing here
downloads anything.

Registry (:data:`ENCODERS`):

* ``small_cnn`` -- the default: a small residual conv pyramid (strides 2, 4, 8, 16) that trains from
  scratch on a CPU.
* ``clip_rn50`` -- OpenAI CLIP's ModifiedResNet visual trunk (CLIP-IQA's backbone), state-dict keys as
  in OpenAI's ``visual.*`` so a local ``RN50.pt`` (TorchScript or plain) or ``.safetensors`` loads.
* ``clip_vit``, ``dinov2``, ``dinov3`` -- Hugging Face ``CLIPVisionModel`` / ``Dinov2Model`` /
  ``DINOv3ViTModel`` from a local ``save_pretrained`` folder, with a DPT-style reassembly of N hidden
  layers into a pyramid.
* ``timm`` -- any timm model created with ``features_only=True`` (needs timm installed).
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, FinPercepError

if TYPE_CHECKING:
    from .model import RMConfig

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class Encoder(nn.Module):
    """Base class: ``forward(x) -> [f_1, ..., f_N]`` (finest first) with known channels and strides."""

    channels: tuple[int, ...]
    strides: tuple[int, ...]

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer(
            "mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def extra_config(self) -> dict[str, Any]:
        """Anything beyond :class:`RMConfig` needed to rebuild this encoder without its weights file."""
        return {}

    def pretrained_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters that come from pretrained weights (what ``freeze_encoder`` freezes)."""
        for name in ("backbone", "body"):
            part = getattr(self, name, None)
            if isinstance(part, nn.Module):
                return part.parameters()
        return self.parameters()


# --------------------------------------------------------------------------------------------------
# small CNN (default)


def norm_layer(kind: str, c: int) -> nn.Module:
    """``batch``: BatchNorm (running statistics at inference); ``group``: GroupNorm with 8 groups."""
    if kind == "batch":
        return nn.BatchNorm2d(c)
    if kind == "group":
        return nn.GroupNorm(math.gcd(c, 8), c)
    if kind == "none":
        return nn.Identity()
    raise ConfigError(f"unknown norm {kind!r}; use 'batch', 'group' or 'none'")


class ResBlock(nn.Module):
    def __init__(self, c: int, norm: str = "none") -> None:
        super().__init__()
        self.norm1 = norm_layer(norm, c)
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.norm2 = norm_layer(norm, c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.gelu(self.norm2(self.conv1(F.gelu(self.norm1(x))))))


class GlobalContext(nn.Module):
    """Adds an image-level summary to every position, so a region can be judged against the whole image."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(2 * c, c)
        self.fc2 = nn.Linear(c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stats = torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3), unbiased=False)], dim=1)
        return x + self.fc2(F.gelu(self.fc1(stats)))[:, :, None, None]


class SmallCNN(Encoder):
    """Residual conv pyramid; level i halves the resolution (strides 2, 4, 8, ...)."""

    def __init__(self, widths: Sequence[int], blocks: Sequence[int], norm: str = "none") -> None:
        super().__init__(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
        if len(widths) != len(blocks) or not widths:
            raise ConfigError(
                f"cnn_widths {tuple(widths)} and cnn_blocks {tuple(blocks)} must have the same length"
            )
        levels = []
        cin = 3
        for w, n in zip(widths, blocks, strict=True):
            layers: list[nn.Module] = [nn.Conv2d(cin, w, 3, stride=2, padding=1)]
            layers += [ResBlock(w, norm) for _ in range(n)]
            levels.append(nn.Sequential(*layers))
            cin = w
        self.levels = nn.ModuleList(levels)
        self.context = GlobalContext(widths[-1])
        self.channels = tuple(widths)
        self.strides = tuple(2 ** (i + 1) for i in range(len(widths)))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = self.normalize(x)
        feats = []
        for level in self.levels:
            h = level(h)
            feats.append(h)
        feats[-1] = self.context(feats[-1])
        return [F.gelu(f) for f in feats]


# --------------------------------------------------------------------------------------------------
# OpenAI CLIP ModifiedResNet (RN50 family)


class _FrozenBNMixin:
    """Keeps BatchNorm layers in eval mode: pretrained statistics, batch-size independent scores."""

    def train(self, mode: bool = True):  # type: ignore[no-untyped-def]
        super().train(mode)  # type: ignore[misc]
        for m in self.modules():  # type: ignore[attr-defined]
            if isinstance(m, nn.BatchNorm2d):
                m.eval()
        return self


class CLIPBottleneck(nn.Module):
    """OpenAI CLIP's anti-aliased bottleneck: stride is an avg-pool after conv2 (and before the shortcut)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.downsample: nn.Sequential | None = None
        if stride > 1 or inplanes != planes * self.expansion:
            self.downsample = nn.Sequential(
                OrderedDict(
                    [
                        ("-1", nn.AvgPool2d(stride)),
                        ("0", nn.Conv2d(inplanes, planes * self.expansion, 1, stride=1, bias=False)),
                        ("1", nn.BatchNorm2d(planes * self.expansion)),
                    ]
                )
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(self.avgpool(out)))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class CLIPResNetEncoder(_FrozenBNMixin, Encoder):
    """ModifiedResNet trunk (3-conv stem, anti-aliased bottlenecks); features of layer1..layer4.

    The attention pool is not built: the reward model only needs the feature maps. Parameter names
    match OpenAI's ``visual.*`` keys with the prefix removed.
    """

    def __init__(self, layers: Sequence[int] = (3, 4, 6, 3), width: int = 64) -> None:
        super().__init__(mean=CLIP_MEAN, std=CLIP_STD)
        if len(layers) != 4:
            raise ConfigError(f"rn50_layers must have 4 entries, got {tuple(layers)}")
        self.conv1 = nn.Conv2d(3, width // 2, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width // 2)
        self.conv2 = nn.Conv2d(width // 2, width // 2, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width // 2)
        self.conv3 = nn.Conv2d(width // 2, width, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.avgpool = nn.AvgPool2d(2)
        self._inplanes = width
        self.layer1 = self._make_layer(width, layers[0])
        self.layer2 = self._make_layer(width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(width * 8, layers[3], stride=2)
        self.channels = tuple(width * m * CLIPBottleneck.expansion for m in (1, 2, 4, 8))
        self.strides = (4, 8, 16, 32)
        self.arch = {"layers": [int(n) for n in layers], "width": int(width)}
        self.train()

    def extra_config(self) -> dict[str, Any]:
        return {"clip_resnet": dict(self.arch)}

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        layers = [CLIPBottleneck(self._inplanes, planes, stride)]
        self._inplanes = planes * CLIPBottleneck.expansion
        layers += [CLIPBottleneck(self._inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = self.normalize(x)
        h = F.relu(self.bn1(self.conv1(h)))
        h = F.relu(self.bn2(self.conv2(h)))
        h = F.relu(self.bn3(self.conv3(h)))
        h = self.avgpool(h)
        feats = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            h = layer(h)
            feats.append(h)
        return feats


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors``, a TorchScript archive (OpenAI's ``RN50.pt``) or a torch pickle."""
    if not path.is_file():
        raise FinPercepError(f"encoder weights not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        return dict(torch.jit.load(str(path), map_location="cpu").state_dict())
    except (RuntimeError, ValueError):
        pass
    obj = torch.load(str(path), map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise FinPercepError(f"{path}: expected a state dict, got {type(obj).__name__}")
    return obj


def clip_resnet_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keep the visual trunk of an OpenAI CLIP state dict, ``visual.`` prefix removed, attnpool dropped."""
    if any(k.startswith("visual.") for k in sd):
        sd = {k[len("visual.") :]: v for k, v in sd.items() if k.startswith("visual.")}
    return {k: v for k, v in sd.items() if not k.startswith("attnpool.") and k not in ("mean", "std")}


def infer_clip_resnet_arch(sd: dict[str, torch.Tensor]) -> tuple[tuple[int, ...], int]:
    """(layers, width) of a ModifiedResNet from its state dict (RN50, RN101, RN50x4, ... all load)."""
    if "conv1.weight" not in sd:
        raise FinPercepError("not a CLIP ResNet state dict: no visual.conv1.weight")
    width = int(sd["conv1.weight"].shape[0]) * 2
    layers = tuple(len({k.split(".")[1] for k in sd if k.startswith(f"layer{i}.")}) for i in (1, 2, 3, 4))
    return layers, width


def load_clip_resnet(path: str | Path) -> CLIPResNetEncoder:
    """Build a :class:`CLIPResNetEncoder` sized after the local checkpoint at ``path`` and load it."""
    sd = clip_resnet_state_dict(_read_state_dict(Path(path)))
    layers, width = infer_clip_resnet_arch(sd)
    enc = CLIPResNetEncoder(layers, width)
    missing, unexpected = enc.load_state_dict({k: v.float() for k, v in sd.items()}, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise FinPercepError(
            f"{path}: CLIP ResNet keys do not match (missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    logger.info("loaded CLIP ModifiedResNet layers=%s width=%d from %s", layers, width, path)
    return enc


# --------------------------------------------------------------------------------------------------
# Hugging Face ViTs (CLIP ViT, DINOv2, DINOv3)


@dataclass(frozen=True)
class HFViTFamily:
    """How to build and read one Hugging Face ViT family."""

    name: str
    model_class: str
    config_class: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    forward_kwargs: tuple[tuple[str, Any], ...] = ()


HF_VIT_FAMILIES: dict[str, HFViTFamily] = {
    f.name: f
    for f in [
        HFViTFamily(
            "clip_vit",
            "CLIPVisionModel",
            "CLIPVisionConfig",
            CLIP_MEAN,
            CLIP_STD,
            (("interpolate_pos_encoding", True),),
        ),
        HFViTFamily("dinov2", "Dinov2Model", "Dinov2Config", IMAGENET_MEAN, IMAGENET_STD),
        HFViTFamily("dinov3", "DINOv3ViTModel", "DINOv3ViTConfig", IMAGENET_MEAN, IMAGENET_STD),
    ]
}


def _pyramid_resampler(cin: int, cout: int, factor: float) -> nn.Module:
    if factor > 1:
        f = int(factor)
        return nn.Sequential(nn.Conv2d(cin, cout, 1), nn.ConvTranspose2d(cout, cout, f, stride=f))
    if factor == 1:
        return nn.Conv2d(cin, cout, 1)
    s = int(round(1 / factor))
    return nn.Sequential(nn.Conv2d(cin, cout, 1), nn.Conv2d(cout, cout, 3, stride=s, padding=1))


class HFViTEncoder(Encoder):
    """N hidden layers of a Hugging Face ViT, reassembled DPT-style into strides p/4, p/2, p, 2p, ...

    The input is padded (reflect) to a multiple of the patch size; prefix tokens (CLS and registers)
    are dropped. The reassembly convolutions are new parameters trained with the reward model.
    """

    def __init__(self, family: str, backbone: nn.Module, layers: Sequence[int], out_channels: int) -> None:
        fam = HF_VIT_FAMILIES[family]
        super().__init__(mean=fam.mean, std=fam.std)
        self.family = family
        self.backbone = backbone
        cfg = backbone.config
        patch = cfg.patch_size if isinstance(cfg.patch_size, int) else int(cfg.patch_size[0])
        self.patch = int(patch)
        self.num_prefix = 1 + int(getattr(cfg, "num_register_tokens", 0) or 0)
        n_layers = int(cfg.num_hidden_layers)
        if not layers:
            n = min(4, n_layers)
            layers = [round(n_layers * (i + 1) / n) for i in range(n)]
        if any(not 1 <= i <= n_layers for i in layers):
            raise ConfigError(f"vit_layers must be within 1..{n_layers}, got {tuple(layers)}")
        self.layers = tuple(int(i) for i in layers)
        n = len(self.layers)
        factors = [2.0 ** (n - 2 - i) for i in range(n)]
        hidden = int(cfg.hidden_size)
        self.reassemble = nn.ModuleList(_pyramid_resampler(hidden, out_channels, f) for f in factors)
        self.channels = (out_channels,) * n
        self.strides = tuple(max(1, int(round(self.patch / f))) for f in factors)
        self._forward_kwargs = dict(fam.forward_kwargs)

    def extra_config(self) -> dict[str, Any]:
        return {"hf_config": self.backbone.config.to_dict()}

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h, w = x.shape[-2:]
        ph, pw = (-h) % self.patch, (-w) % self.patch
        z = self.normalize(x)
        if ph or pw:
            z = F.pad(z, (0, pw, 0, ph), mode="replicate")
        gh, gw = z.shape[-2] // self.patch, z.shape[-1] // self.patch
        out = self.backbone(pixel_values=z, output_hidden_states=True, **self._forward_kwargs)
        feats = []
        for layer, resample in zip(self.layers, self.reassemble, strict=True):
            tokens = out.hidden_states[layer][:, self.num_prefix :]
            grid = tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], gh, gw)
            feats.append(resample(grid))
        return feats


def _hf_classes(family: str) -> tuple[Any, Any]:
    try:
        import transformers
    except ImportError as exc:  # pragma: no cover - transformers is a dev dependency
        raise FinPercepError(f"encoder {family!r} needs transformers: pip install 'finpercep[hf]'") from exc
    fam = HF_VIT_FAMILIES[family]
    return getattr(transformers, fam.model_class), getattr(transformers, fam.config_class)


def build_hf_vit(
    family: str,
    weights: str | None,
    layers: Sequence[int],
    out_channels: int,
    hf_config: dict[str, Any] | None = None,
) -> HFViTEncoder:
    """From a local ``save_pretrained`` folder (``weights``), or from a config dict when reloading an RM."""
    model_cls, config_cls = _hf_classes(family)
    if hf_config is not None:
        cfg = dict(hf_config)
        cfg.pop("model_type", None)
        cfg.pop("transformers_version", None)
        backbone = model_cls(config_cls(**cfg))
    elif weights is not None:
        if not Path(weights).is_dir():
            raise FinPercepError(f"{family} weights must be a local save_pretrained folder, got {weights}")
        backbone = model_cls.from_pretrained(str(weights), local_files_only=True)
    else:
        raise ConfigError(f"encoder {family!r} needs encoder_weights (a local folder): nothing is downloaded")
    return HFViTEncoder(family, backbone, layers, out_channels)


# --------------------------------------------------------------------------------------------------
# timm features_only


class TimmEncoder(Encoder):
    """Any timm model with ``features_only=True``; channels and strides from its ``feature_info``."""

    def __init__(self, name: str, weights: str | None) -> None:
        try:
            import timm
        except ImportError as exc:
            raise FinPercepError("encoder 'timm' needs timm installed (pip install timm)") from exc
        kwargs: dict[str, Any] = {"features_only": True}
        if weights:
            kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": str(weights)})
        else:
            kwargs.update(pretrained=False)
        body = timm.create_model(name, **kwargs)
        cfg = getattr(body, "pretrained_cfg", None) or {}
        super().__init__(mean=tuple(cfg.get("mean", IMAGENET_MEAN)), std=tuple(cfg.get("std", IMAGENET_STD)))
        self.body = body
        self.name = name
        self.nhwc = str(getattr(body, "output_fmt", "NCHW")).endswith("NHWC")
        self.channels = tuple(int(c) for c in body.feature_info.channels())
        self.strides = tuple(int(r) for r in body.feature_info.reduction())

    def extra_config(self) -> dict[str, Any]:
        return {"timm": {"name": self.name}}

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = self.body(self.normalize(x))
        return [f.permute(0, 3, 1, 2) if self.nhwc else f for f in feats]


# --------------------------------------------------------------------------------------------------
# registry


@dataclass(frozen=True)
class EncoderSpec:
    name: str
    description: str
    build: Callable[[RMConfig, dict[str, Any]], Encoder]
    needs_weights: bool


def _build_small_cnn(cfg: RMConfig, extra: dict[str, Any]) -> Encoder:
    return SmallCNN(cfg.cnn_widths, cfg.cnn_blocks, cfg.norm)


def _build_clip_rn50(cfg: RMConfig, extra: dict[str, Any]) -> Encoder:
    if cfg.encoder_weights and not extra:
        return load_clip_resnet(cfg.encoder_weights)
    arch = extra.get("clip_resnet", {"layers": cfg.rn50_layers, "width": cfg.rn50_width})
    return CLIPResNetEncoder(tuple(arch["layers"]), int(arch["width"]))


def _hf_builder(family: str) -> Callable[[RMConfig, dict[str, Any]], Encoder]:
    def build(cfg: RMConfig, extra: dict[str, Any]) -> Encoder:
        return build_hf_vit(
            family, cfg.encoder_weights, cfg.vit_layers, cfg.vit_channels, extra.get("hf_config")
        )

    return build


def _build_timm(cfg: RMConfig, extra: dict[str, Any]) -> Encoder:
    return TimmEncoder(cfg.timm_name, None if "timm" in extra else cfg.encoder_weights)


ENCODERS: dict[str, EncoderSpec] = {
    s.name: s
    for s in [
        EncoderSpec(
            "small_cnn", "residual conv pyramid trained from scratch (default)", _build_small_cnn, False
        ),
        EncoderSpec(
            "clip_rn50", "OpenAI CLIP ModifiedResNet trunk (CLIP-IQA backbone)", _build_clip_rn50, False
        ),
        EncoderSpec("clip_vit", "Hugging Face CLIPVisionModel", _hf_builder("clip_vit"), True),
        EncoderSpec("dinov2", "Hugging Face Dinov2Model", _hf_builder("dinov2"), True),
        EncoderSpec("dinov3", "Hugging Face DINOv3ViTModel", _hf_builder("dinov3"), True),
        EncoderSpec("timm", "timm model with features_only=True", _build_timm, False),
    ]
}


def build_encoder(cfg: RMConfig, extra: dict[str, Any] | None = None) -> Encoder:
    """Build the encoder named by ``cfg.encoder``; ``extra`` is what a saved model stored to rebuild it."""
    if cfg.encoder not in ENCODERS:
        raise ConfigError(f"unknown encoder {cfg.encoder!r}; choose one of {sorted(ENCODERS)}")
    return ENCODERS[cfg.encoder].build(cfg, extra or {})
