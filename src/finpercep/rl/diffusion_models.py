"""Building :class:`~.diffusion.OneStepDiffusionSR`: from a local diffusers folder, or tiny and random.

``--generator osediff:DIR`` reads ``DIR/vae`` and ``DIR/unet`` (and ``DIR/scheduler``,
``DIR/text_encoder`` + ``DIR/tokenizer`` when present) with ``from_pretrained(..., local_files_only=True)``:
nothing is ever downloaded. ``osediff-tiny`` builds a few-channel AutoencoderKL and UNet2DConditionModel
from a fixed seed, for tests and CPU smoke runs.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from ..errors import FinPercepError
from .diffusion import DEFAULT_LORA_RANK, OneStepDiffusionSR, merge_lora_deltas
from .generators import AdapterOptions

TINY_SEED = 1234


def _diffusers() -> Any:
    try:
        import diffusers
        import peft  # noqa: F401
    except ImportError as exc:
        raise FinPercepError(
            f"osediff generators need diffusers and peft (pip install 'finpercep[diffusion]'): {exc}"
        ) from None
    return diffusers


def _build(
    vae: Any,
    unet: Any,
    scheduler: Any,
    scale: int | None,
    std: float,
    learn_std: bool,
    options: AdapterOptions,
    text_embedding: torch.Tensor | None = None,
    timestep: int = 999,
) -> OneStepDiffusionSR:
    alpha_bar = float(scheduler.alphas_cumprod[timestep])
    adapter = OneStepDiffusionSR(
        vae,
        unet,
        alpha_bar,
        scheduler.config.prediction_type,
        scale=scale or 4,
        timestep=timestep,
        text_embedding=text_embedding,
        lora_rank=options.lora_rank or DEFAULT_LORA_RANK,
        lora_alpha=options.lora_alpha,
        vae_lora=options.vae_lora,
        std=std,
        learn_std=learn_std,
        precision=options.precision,
        gradient_checkpointing=options.gradient_checkpointing,
        seed=options.seed,
    )
    if options.lora:
        merge_lora_deltas(adapter, read_lora_file(options.lora), options.lora)
    return adapter


def tiny_models(seed: int = TINY_SEED) -> tuple[Any, Any, Any]:
    """A 3-block AutoencoderKL (x4 latents, 4 channels), a 2-block UNet2DConditionModel (16/32 channels,
    attention only at half the latent resolution, cross-attention width 16) and a DDPM scheduler whose
    ``alpha_bar`` stays near 0.6 at t = 999, so the random model's one-step output stays in range."""
    d = _diffusers()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = d.AutoencoderKL(
            down_block_types=("DownEncoderBlock2D",) * 3,
            up_block_types=("UpDecoderBlock2D",) * 3,
            block_out_channels=(8, 16, 16),
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=4,
            sample_size=32,
            scaling_factor=1.0,
        )
        unet = d.UNet2DConditionModel(
            sample_size=16,
            in_channels=4,
            out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            block_out_channels=(16, 32),
            layers_per_block=1,
            cross_attention_dim=16,
            attention_head_dim=4,
            norm_num_groups=8,
        )
    scheduler = d.DDPMScheduler(beta_schedule="linear", beta_start=1e-4, beta_end=1e-3)
    return vae, unet, scheduler


def osediff_tiny(
    arg: str | None, scale: int | None, std: float, learn_std: bool, options: AdapterOptions
) -> OneStepDiffusionSR:
    """``--generator osediff-tiny``: :func:`tiny_models` as a one-step diffusion SR policy."""
    vae, unet, scheduler = tiny_models()
    adapter = _build(vae, unet, scheduler, scale, std, learn_std, options)
    adapter.arch = "OneStepDiffusionSR (tiny)"
    return adapter


def osediff_from_folder(
    arg: str | None, scale: int | None, std: float, learn_std: bool, options: AdapterOptions
) -> OneStepDiffusionSR:
    """``--generator osediff:DIR``: an SD-Turbo / SD 2.x folder in the diffusers layout, read locally."""
    d = _diffusers()
    root = Path(arg or "")
    if not arg or not root.is_dir():
        raise FinPercepError(f"osediff: {root} is not a folder (expected a diffusers model folder)")
    for sub in ("vae", "unet"):
        if not (root / sub / "config.json").is_file():
            raise FinPercepError(f"osediff: {root} has no {sub}/ sub-folder with a config.json")
    vae = _from_pretrained(d.AutoencoderKL, root, "vae")
    unet = _from_pretrained(d.UNet2DConditionModel, root, "unet")
    if (root / "scheduler" / "scheduler_config.json").is_file():
        config = json.loads((root / "scheduler" / "scheduler_config.json").read_text())
        scheduler = d.DDPMScheduler.from_config(config)
    else:  # Stable Diffusion's training schedule
        scheduler = d.DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    embedding = text_embedding(root, "")
    adapter = _build(vae, unet, scheduler, scale, std, learn_std, options, embedding)
    adapter.source = f"osediff:{root}"
    return adapter


def _from_pretrained(cls: Any, root: Path, sub: str) -> Any:
    errors = []
    for variant in (None, "fp16"):  # some downloads hold only the fp16 variant of the weights
        try:
            model = cls.from_pretrained(
                str(root), subfolder=sub, local_files_only=True, variant=variant, torch_dtype=torch.float32
            )
            return model.float()
        except (OSError, ValueError) as exc:
            errors.append(str(exc).splitlines()[0])
    raise FinPercepError(f"osediff: cannot load {root / sub}: {'; '.join(errors)}")


def text_embedding(root: Path, prompt: str) -> torch.Tensor | None:
    """The text encoder's last hidden state for ``prompt`` (``[1, 77, D]``) if ``root`` has
    ``text_encoder/`` and ``tokenizer/``, else ``None`` (the adapter then uses zeros)."""
    if not ((root / "text_encoder").is_dir() and (root / "tokenizer").is_dir()):
        return None
    try:
        from transformers import AutoTokenizer, CLIPTextModel
    except ImportError as exc:
        raise FinPercepError(f"osediff: {root}/text_encoder needs transformers: {exc}") from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(root / "tokenizer"), local_files_only=True)
        encoder = CLIPTextModel.from_pretrained(str(root / "text_encoder"), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise FinPercepError(f"osediff: cannot load the text encoder of {root}: {exc}") from None
    ids = tokenizer(
        [prompt],
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids
    with torch.no_grad():
        return encoder.float().eval()(ids)[0].float()


def read_lora_file(path: str | Path) -> dict[str, torch.Tensor]:
    """LoRA deltas from a ``.safetensors`` file or a peft folder (``adapter_model.safetensors`` and
    ``adapter_config.json``, whose ``lora_alpha / r`` scales B).

    Returns ``<module>.lora_A/B.weight`` with the scaling folded into B, keys rooted at the adapter
    (``unet.…``, ``vae.encoder.…``): keys without ``unet.``/``vae.`` are taken as the UNet's, and peft's
    ``base_model.model.`` prefix and adapter names are dropped.
    """
    from safetensors.torch import load_file

    path = Path(path)
    file = path / "adapter_model.safetensors" if path.is_dir() else path
    if not file.is_file() or file.suffix != ".safetensors":
        raise FinPercepError(
            f"--lora {path}: not a .safetensors file or a folder with adapter_model.safetensors"
        )
    scaling = 1.0
    config = file.parent / "adapter_config.json"
    if config.is_file():
        cfg = json.loads(config.read_text())
        scaling = float(cfg.get("lora_alpha", cfg["r"])) / float(cfg["r"])
    out = {}
    for key, value in load_file(str(file)).items():
        key = re.sub(
            r"\.lora_([AB])\.[^.]+\.weight$", r".lora_\1.weight", key.removeprefix("base_model.model.")
        )
        if not key.startswith(("unet.", "vae.")):
            key = f"unet.{key}"
        out[key] = value * scaling if ".lora_B." in key else value
    return out
