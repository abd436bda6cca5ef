"""FinPercep-RM: a reward model that scores an SR output and maps where it fails.

Architecture (``N`` = number of encoder feature maps, ``f_1`` finest ... ``f_N`` coarsest)::

    f_1..f_N = encoder(x)
    d_1, dz_1 = Block_1(f_N)                       # map logits at the coarsest stride
    d_k, dz_k = Block_k(f_{N-k+1}, up(d_{k-1}))    # k = 2..stage: finer levels, U-Net-like skips
    M = sigmoid(sum_k up_HxW(dz_k))                # degradation map in [0, 1] at input resolution
    m = (1 - g) + g * avgpool_to(f_N)(M)           # g: map gate, 0 when RM_1 is grown, 1 once trained
    S = MLP([sum_hw(f_N * (m + e)) / sum_hw(m + e), mean_hw(m)])   # higher = better (score_pool="normalized")
    S = MLP(mean_hw([f_N * m, m]))                 # score_pool="product" (checkpoints before it existed)

Stages (what RM_k contains, see :meth:`RewardModel.grow`):

* ``RM_0``: encoder + score MLP. No decoder, ``M == 1``; ``S = MLP([mean(f_N), 1])``: a global IQA model.
* ``RM_1``: + decoder block 1 (1x1 lateral on ``f_N``, residual conv block, 1x1 logit head at the
  coarsest stride) + the gate ``g`` (a buffer, not learned). ``g`` starts at 0, so the *score* of RM_1
  equals RM_0's at the moment of growth; the map is new (it was identically 1 before, which no decoder
  can reproduce). Training opens the gate on a schedule (``RMTrainConfig.gate_ramp``) to ``g = 1``,
  where the score is exactly the map-weighted pool of the formula above. (A learned gate
  barely moves: L_align holds the scores and nothing else asks for the map, so the coupling is imposed.)
* ``RM_k`` (k >= 2): + decoder block k (1x1 projection of ``d_{k-1}``, 1x1 lateral on ``f_{N-k+1}``,
  residual conv block, logit head at stride ``s_{N-k+1}``). The head starts at zero, so the map logits
  and therefore map *and* score of RM_k equal RM_{k-1}'s at growth; training then refines the map at
  the finer resolution.
* ``RM_N`` is the full model. Growing never re-initialises existing parameters.

``rm(x)`` is tensor-only and traceable (no host syncs, ``torch.compile(fullgraph=True)`` captures it
whole); :mod:`finpercep.rm.score` adds the value checks, image paths and test-time augmentation.

The residual body of each block is two 3x3 convs (``decoder_block="res"``) or a depthwise 3x3 and a 1x1
(``"light"``, :class:`LightBlock`), which roughly halves the decoder's run time on the small CNN.

The pooled vector carries the map's mean (the defect area), which couples the score to the map directly,
and the features where the map says the image is degraded. The product pool of the paper's formula goes to
a constant when the map is dark everywhere, which a young decoder's map is: scores then collapse and
training diverges (seen on a 32-crop dataset), hence the normalized pool by default.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..config import check, from_dict, option, to_dict
from ..errors import FinPercepError
from ..io import atomic_path, atomic_write_json
from .encoders import ENCODERS, Encoder, ResBlock, build_encoder, norm_layer
from .kernels import DepthwiseConv3x3, PointwiseConv2d, resize_bilinear
from .stages import CONFIG_NAME as CONFIG_NAME
from .stages import default_checkpoint_dir as default_checkpoint_dir
from .stages import resolve_checkpoint as resolve_checkpoint
from .stages import stage_dirs as stage_dirs

if TYPE_CHECKING:
    from .score import RMMetric, Scorer

logger = logging.getLogger(__name__)

FORMAT_NAME = "finpercep-rm"
FORMAT_VERSION = 1
WEIGHTS_NAME = "model.safetensors"
MIN_SIZE = 32

POOL_EPS = 0.05
"""Uniform floor of the normalized pool's weights: an all-dark map pools to mean(f_N), not to zero."""

EncoderName = Literal["small_cnn", "clip_rn50", "clip_vit", "dinov2", "dinov3", "timm"]


class RMInputError(FinPercepError, ValueError):
    """An input the reward model cannot score (wrong type, shape, dtype, size or range)."""


@dataclass(frozen=True)
class RMConfig:
    """Reward-model architecture: encoder, decoder widths, score head, stage."""

    encoder: EncoderName = option("small_cnn", help="feature encoder")
    encoder_weights: str | None = option(
        None,
        help="local pretrained weights: a .pt/.safetensors file (clip_rn50, timm) or a "
        "save_pretrained folder (clip_vit, dinov2, dinov3); nothing is downloaded",
    )
    freeze_encoder: bool = option(False, help="keep pretrained backbone weights fixed while training")
    cnn_widths: tuple[int, ...] = option(
        (16, 32, 64, 128), help="small_cnn channels of f_1..f_N (strides 2, 4, ...)"
    )
    cnn_blocks: tuple[int, ...] = option((1, 1, 1, 1), help="small_cnn residual blocks per level")
    norm: Literal["none", "batch", "group"] = option("group", help="normalisation in small_cnn and decoder")
    rn50_layers: tuple[int, ...] = option(
        (3, 4, 6, 3), help="clip_rn50 bottlenecks per layer (random init only)"
    )
    rn50_width: int = option(64, help="clip_rn50 stem width (random init only)")
    vit_layers: tuple[int, ...] = option(
        (), help="ViT layers (1-based) tapped for f_1..f_N; empty = 4 evenly spaced"
    )
    vit_channels: int = option(256, help="channels of the reassembled ViT pyramid")
    timm_name: str = option("resnet50", help="timm model name (encoder=timm)")
    decoder_widths: tuple[int, ...] = option(
        (), help="decoder channels per level, finest first; empty = 16, 32, 64, 96, 96, ..."
    )
    decoder_block: Literal["res", "light"] = option(
        "res",
        help="decoder block body: res = two 3x3 convs (a mirror of small_cnn's levels); "
        "light = one depthwise 3x3 and a 1x1 (about half the decoder's CPU time)",
    )
    map_fusion: Literal["input", "finest"] = option(
        "input",
        help="where the decoder blocks' map logits are summed: input = each upsampled to the input size; "
        "finest = at the finest decoder level, then one upsample (fewer full-size passes; no CPU speed-up "
        "measurable here)",
    )
    head_hidden: int = option(128, help="hidden units of the score MLP")
    score_pool: Literal["normalized", "product"] = option(
        "normalized",
        help="score pool of f_N and the map m: product = [mean(f*m), mean(m)] (collapses to a constant when "
        "m -> 0 everywhere); normalized = [sum(f*(m+e)) / sum(m+e), mean(m)], the map-weighted average",
    )
    stage: int | None = option(None, help="RM_k: decoder depth k (0 = global IQA model); none = full model")
    init_seed: int = option(0, help="seed of the parameter initialisation (and of each growth step)")
    score_range: tuple[float, float] = option(
        (-1.0, 1.0), help="typical score range on the training data (informational, pyiqa score_range)"
    )

    def __post_init__(self) -> None:
        check(self.encoder in ENCODERS, f"encoder must be one of {sorted(ENCODERS)}, got {self.encoder!r}")
        check(
            all(w > 0 for w in self.cnn_widths) and len(self.cnn_widths) >= 1, "cnn_widths must be positive"
        )
        check(
            len(self.cnn_widths) == len(self.cnn_blocks),
            "cnn_widths and cnn_blocks must have the same length",
        )
        check(all(b >= 0 for b in self.cnn_blocks), "cnn_blocks must be >= 0")
        check(all(w > 0 for w in self.decoder_widths), "decoder_widths must be positive")
        check(self.head_hidden > 0, "head_hidden must be positive")
        check(
            self.norm in ("none", "batch", "group"), f"norm must be none, batch or group, got {self.norm!r}"
        )
        check(
            self.decoder_block in ("res", "light"),
            f"decoder_block must be res or light, got {self.decoder_block!r}",
        )
        check(
            self.map_fusion in ("input", "finest"),
            f"map_fusion must be input or finest, got {self.map_fusion!r}",
        )
        check(
            self.score_pool in ("normalized", "product"),
            f"score_pool must be normalized or product, got {self.score_pool!r}",
        )
        check(self.stage is None or self.stage >= 0, f"stage must be >= 0 or none, got {self.stage}")
        check(self.vit_channels > 0, "vit_channels must be positive")
        check(self.score_range[0] <= self.score_range[1], "score_range must be (low, high)")


def saved_rm_config(d: dict[str, Any]) -> RMConfig:
    """An :class:`RMConfig` from its saved dict; files from before ``score_pool`` existed used the product
    pool, so a missing key means ``product``, not today's default (and a missing ``decoder_block``,
    ``res``; a missing ``map_fusion``, ``input``)."""
    return from_dict(RMConfig, {"score_pool": "product", "decoder_block": "res", "map_fusion": "input", **d})


@dataclass
class RMOutput:
    """``score``: [B], higher = better. ``map``: [B, 1, H, W] in [0, 1], higher = more degraded.

    ``map_logits`` holds the cumulative map logits at input resolution: in training mode one per decoder
    block (RM_1..RM_k views of the same forward pass, for deep supervision), in eval mode only the last;
    empty for RM_0.
    """

    score: torch.Tensor
    map: torch.Tensor
    map_logits: tuple[torch.Tensor, ...] = ()


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Parameter initialisation from ``seed`` without touching the caller's global RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def check_image_shape(x: Any) -> torch.Tensor:
    """Check what a reward-model input's metadata can tell: a float tensor [B, 3, H, W], B >= 1,
    H, W >= 32. No host sync; :func:`~finpercep.rm.score.check_image_batch` also checks the values."""
    if not isinstance(x, torch.Tensor):
        raise RMInputError(
            f"expected a torch.Tensor [B, 3, H, W] in [0, 1] (or image paths, through "
            f"finpercep.rm.score.Scorer), got {type(x).__name__}"
        )
    if not x.is_floating_point():
        hint = " (for 8-bit images use x.float() / 255)" if x.dtype == torch.uint8 else ""
        raise RMInputError(
            f"expected a floating-point tensor with values in [0, 1], got dtype {x.dtype}{hint}"
        )
    if x.ndim != 4 or x.shape[1] != 3:
        hint = ""
        if x.ndim == 3 and x.shape[0] == 3:
            hint = " (add a batch dimension: x[None])"
        elif x.ndim == 4 and x.shape[-1] == 3:
            hint = " (channels last? use x.permute(0, 3, 1, 2))"
        raise RMInputError(f"expected shape [B, 3, H, W], got {tuple(x.shape)}{hint}")
    b, _, h, w = x.shape
    if b == 0:
        raise RMInputError("empty batch")
    if h < MIN_SIZE or w < MIN_SIZE:
        raise RMInputError(f"images must be at least {MIN_SIZE}x{MIN_SIZE}, got {h}x{w}")
    return x


class LightBlock(nn.Module):
    """Residual depthwise-separable block: norm, depthwise 3x3, GELU, pointwise 1x1."""

    def __init__(self, c: int, norm: str = "none") -> None:
        super().__init__()
        self.norm = norm_layer(norm, c)
        self.dw = DepthwiseConv3x3(c)
        self.pw = PointwiseConv2d(c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pw(F.gelu(self.dw(self.norm(x))))


class DecoderBlock(nn.Module):
    """Decoder block k: fuse one encoder level with the previous block, emit a map-logit residual."""

    def __init__(
        self, c_skip: int, c_out: int, c_prev: int | None, norm: str = "none", body: str = "res"
    ) -> None:
        super().__init__()
        self.lateral = PointwiseConv2d(c_skip, c_out)
        self.proj = PointwiseConv2d(c_prev, c_out) if c_prev is not None else None
        self.block: nn.Module = ResBlock(c_out, norm) if body == "res" else LightBlock(c_out, norm)
        self.head = PointwiseConv2d(c_out, 1)

    def forward(self, skip: torch.Tensor, prev: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.lateral(skip)
        if self.proj is not None and prev is not None:
            h = h + resize_bilinear(self.proj(prev), skip.shape[-2:])
        h = self.block(h)
        return h, self.head(F.gelu(h))


class ScoreHead(nn.Module):
    def __init__(self, c_in: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(c_in, hidden)
        self.fc2 = nn.Linear(hidden, 1)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(pooled))).squeeze(1)


def default_decoder_widths(n: int) -> tuple[int, ...]:
    return tuple(min(16 * 2**i, 96) for i in range(n))


class RewardModel(nn.Module):
    """FinPercep-RM at stage k (RM_k). ``rm(x) -> RMOutput(score=[B], map=[B, 1, H, W])``.

    ``x`` is a float tensor; :class:`~finpercep.rm.score.Scorer` takes image paths and adds test-time
    augmentation. pyiqa-style attributes: ``lower_better``, ``score_range``, ``metric_mode``;
    :meth:`as_metric` returns a module that returns scores only.
    """

    lower_better = False
    metric_mode = "NR"

    def __init__(
        self, config: RMConfig | None = None, *, encoder_extra: dict[str, Any] | None = None
    ) -> None:
        super().__init__()
        config = config or RMConfig()
        with seeded(config.init_seed):
            self.encoder: Encoder = build_encoder(config, encoder_extra)
            if config.freeze_encoder:
                for p in self.encoder.pretrained_parameters():
                    p.requires_grad_(False)
            self.score_head = ScoreHead(self.encoder.channels[-1] + 1, config.head_hidden)
        n = len(self.encoder.channels)
        widths = config.decoder_widths or default_decoder_widths(n)
        if len(widths) != n:
            raise FinPercepError(f"decoder_widths has {len(widths)} entries but the encoder has {n} levels")
        self.decoder_widths = tuple(widths)
        self.blocks = nn.ModuleList()
        self.gate: torch.Tensor | None
        self.register_buffer("gate", None)
        target = n if config.stage is None else config.stage
        if target > n:
            raise FinPercepError(f"stage {target} exceeds the decoder depth N={n} of this encoder")
        self.config = dataclasses.replace(config, stage=0)
        for _ in range(target):
            self.grow()

    # ------------------------------------------------------------------ structure

    @property
    def num_levels(self) -> int:
        """N: number of encoder feature maps, i.e. the stage of the full model."""
        return len(self.encoder.channels)

    @property
    def stage(self) -> int:
        return len(self.blocks)

    @property
    def score_range(self) -> str:
        lo, hi = self.config.score_range
        return f"~{lo:g}, ~{hi:g}"

    def grow(self) -> None:
        """RM_{k-1} -> RM_k: add decoder block k (and the gate buffer when k = 1); keep everything else.

        Block k >= 2 gets a zero logit head, so outputs are unchanged at growth. Block 1 starts with the
        gate at 0, so the score is unchanged (the map goes from the constant 1 to the new block's map).
        """
        k = self.stage + 1
        n = self.num_levels
        if k > n:
            raise FinPercepError(f"RM_{self.stage} is already the full model (N={n})")
        level = n - k
        ref = next(self.score_head.parameters())
        with seeded(self.config.init_seed + 1009 * k):
            block = DecoderBlock(
                self.encoder.channels[level],
                self.decoder_widths[level],
                self.decoder_widths[level + 1] if k > 1 else None,
                self.config.norm,
                self.config.decoder_block,
            )
        if k == 1:
            self.gate = torch.zeros((), dtype=ref.dtype, device=ref.device)
        else:
            nn.init.zeros_(block.head.weight)
            nn.init.zeros_(block.head.bias)
        self.blocks.append(block.to(device=ref.device, dtype=ref.dtype).train(self.training))
        self.config = dataclasses.replace(self.config, stage=k)

    def set_gate(self, value: float) -> None:
        """Set the map gate ``g`` in [0, 1] (RM_1 and later): how much the map modulates the score pool."""
        if self.gate is None:
            raise FinPercepError("RM_0 has no map and no gate")
        if not 0.0 <= value <= 1.0:
            raise FinPercepError(f"gate must be in [0, 1], got {value}")
        self.gate.fill_(value)

    def new_parameter_names(self) -> list[str]:
        """Names of the parameters the last :meth:`grow` added (those of decoder block k)."""
        k = self.stage
        if k == 0:
            return []
        return [f"blocks.{k - 1}.{n}" for n, _ in self.blocks[k - 1].named_parameters()]

    # ------------------------------------------------------------------ forward

    def map_logits(
        self, feats: Sequence[torch.Tensor], size: tuple[int, int], *, every_block: bool = True
    ) -> tuple[torch.Tensor, ...]:
        """Cumulative map logits at ``size`` after each decoder block (only the last unless ``every_block``;
        empty for RM_0)."""
        at = tuple(size) if self.config.map_fusion == "input" else tuple(feats[0].shape[-2:])
        out: list[torch.Tensor] = []
        z: torch.Tensor | None = None
        d: torch.Tensor | None = None
        n = len(feats)
        for k, block in enumerate(self.blocks, start=1):
            d, dz = block(feats[n - k], d)
            if tuple(dz.shape[-2:]) != at:
                dz = resize_bilinear(dz, at)
            z = dz if z is None else z + dz
            if every_block or k == len(self.blocks):
                out.append(z)
        if at != tuple(size):
            out = [resize_bilinear(t, size) for t in out]
        return tuple(out)

    def pool(self, f_top: torch.Tensor, m: torch.Tensor | None) -> torch.Tensor:
        """``[pool(f_N, mod), mean(mod)]`` -> [B, C_N + 1]; ``m`` is the map (None for RM_0: mod = 1)."""
        if m is None or self.gate is None:
            mod = torch.ones_like(f_top[:, :1])
        else:
            small = F.adaptive_avg_pool2d(m, f_top.shape[-2:])
            mod = 1.0 + self.gate * (small - 1.0)
        area = mod.mean(dim=(2, 3))
        if self.config.score_pool == "normalized":
            w = mod + POOL_EPS
            weighted = (f_top * w).mean(dim=(2, 3)) / w.mean(dim=(2, 3))
        else:
            weighted = (f_top * mod).mean(dim=(2, 3))
        return torch.cat([weighted, area], dim=1)

    def forward(self, x: torch.Tensor) -> RMOutput:
        """Score and map ``x``, a float tensor [B, 3, H, W] in [0, 1] (H, W >= 32), on the model's device
        and dtype. Checks shapes only: no host syncs and no branches on values, so it traces whole
        (``torch.compile(model, fullgraph=True)``); :class:`~finpercep.rm.score.Scorer` checks the values,
        loads image paths and adds test-time augmentation."""
        ref = next(self.score_head.parameters())
        x = check_image_shape(x).to(device=ref.device, dtype=ref.dtype)
        pooled, m, logits = self.forward_parts(x, every_block=self.training)
        return RMOutput(score=self.score_head(pooled), map=m, map_logits=logits)

    def forward_parts(
        self, x: torch.Tensor, *, every_block: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]]:
        """(pooled [B, C_N + 1], map [B, 1, H, W], cumulative logits) of a checked batch.

        ``score = score_head(pooled)``; tiled scoring and test-time augmentation average ``pooled`` over
        tiles or flips before the head.
        """
        feats = self.encoder(x)
        logits = self.map_logits(feats, (x.shape[-2], x.shape[-1]), every_block=every_block)
        m = torch.sigmoid(logits[-1]) if logits else None
        pooled = self.pool(feats[-1], m)
        if m is None:
            m = torch.ones_like(x[:, :1])
        return pooled, m, logits

    def as_metric(self, as_loss: bool = False, loss_weight: float = 1.0) -> RMMetric:
        """A pyiqa-style module: ``metric(x)`` returns scores [B] (as a loss: ``-weight * mean(score)``)."""
        from .score import RMMetric

        return RMMetric(self, as_loss=as_loss, loss_weight=loss_weight)

    # ------------------------------------------------------------------ persistence

    def save_pretrained(self, directory: str | Path, *, dtype: torch.dtype | None = None) -> Path:
        """Write ``config.json`` and ``model.safetensors`` (atomically) into ``directory``.

        ``dtype`` (e.g. ``torch.float16``) stores floating-point tensors in that type to save space;
        :meth:`from_pretrained` loads them back into the model's float32 parameters.
        """
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {}
        for k, v in self.state_dict().items():
            v = v.detach().to("cpu")
            if dtype is not None and v.is_floating_point():
                v = v.to(dtype)
            state[k] = v.contiguous()
        with atomic_path(directory / WEIGHTS_NAME) as tmp:
            save_file(state, str(tmp), metadata={"format": FORMAT_NAME})
        # resolved values, so later changes of the defaults cannot change what this file describes
        cfg = dataclasses.replace(self.config, encoder_weights=None, decoder_widths=self.decoder_widths)
        meta = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "stage": self.stage,
            "num_levels": self.num_levels,
            "rm_config": to_dict(cfg),
            "encoder_extra": self.encoder.extra_config(),
            "encoder_source": self.config.encoder_weights,
        }
        atomic_write_json(directory / CONFIG_NAME, meta)
        return directory

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path | None = None,
        stage: int | None = None,
        *,
        device: str | torch.device = "cpu",
        tta: str | None = None,
    ) -> RewardModel:
        """Load a saved reward model (in eval mode). ``path=None``: the packaged default checkpoint.

        ``path`` is a model folder (``config.json`` + ``model.safetensors``) or a training/run folder
        with ``stage_<k>`` sub-folders; ``stage`` picks RM_k (default: the highest stage present).
        ``tta`` (deprecated, for callers from before :class:`~finpercep.rm.score.Scorer`): given, the
        model comes back wrapped in ``Scorer(model, tta)``.
        """
        directory = resolve_checkpoint(path, stage)
        meta = json.loads((directory / CONFIG_NAME).read_text())
        if meta.get("format") != FORMAT_NAME:
            raise FinPercepError(
                f"{directory}: not a FinPercep reward model (config.json format={meta.get('format')!r})"
            )
        model = cls(saved_rm_config(meta["rm_config"]), encoder_extra=meta.get("encoder_extra") or {})
        from safetensors.torch import load_file

        state = load_file(str(directory / WEIGHTS_NAME))
        try:
            missing, unexpected = model.load_state_dict(state, strict=False)
        except RuntimeError as exc:  # shape mismatches
            raise FinPercepError(f"{directory}: weights do not match the config: {exc}") from None
        if missing or unexpected:
            raise FinPercepError(
                f"{directory}: weights do not match the config "
                f"(missing {missing[:5]}, unexpected {unexpected[:5]})"
            )
        model = model.eval().to(device)
        return model if tta is None else _scorer(model, tta)  # type: ignore[return-value]


def _scorer(model: RewardModel, tta: str) -> Scorer:
    from .score import Scorer

    return Scorer(model, tta)
