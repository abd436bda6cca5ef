"""One-step latent-diffusion SR (OSEDiff-like) as an RL policy, built on diffusers and peft.

``forward(lr)``: bicubic upsampling to the output size -> VAE encode (the latent mode, times the VAE's
scaling factor) -> one UNet step at a fixed timestep (default 999) from that latent, conditioned on a fixed
text embedding -> the predicted clean latent ``x0`` (from the epsilon / v / sample prediction and the
scheduler's ``alpha_bar_t``) -> VAE decode -> ``[0, 1]``.

Policy (GRPO): a Gaussian on the predicted latent, ``a ~ N(x0_theta(lr), sigma^2)`` per latent element
(``--policy-std`` in latent units, ``--learn-std`` per latent channel); every sample is decoded by the
frozen VAE decoder for the reward. Log-probabilities and the KL to the reference are exact and need no
decoder pass, so the policy gradient flows through the UNet (and the VAE encoder's LoRA) only. ReFL
back-propagates the reward through the decoder into the same ``x0``.

LoRA (peft) sits on the UNet's attention, feed-forward and convolution projections (and with ``vae_lora``
on the VAE encoder); ``B = 0`` at the start, so the policy starts as the base model, and only the LoRA
weights (and a learned std) train. The reference is the same modules with the LoRA switched off
(:meth:`OneStepDiffusionSR.reference`), not a copy. Exports hold only the LoRA, as merged deltas
(``<module>.lora_A.weight`` and ``lora_B.weight`` with the LoRA scaling folded into ``B``), which
:meth:`~OneStepDiffusionSR.load_export_state` merges into the base weights of a rebuilt model.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import FinPercepError
from .generators import GeneratorAdapter, Rollout
from .losses import gaussian_kl, gaussian_log_prob, group_noise

ADAPTER = "default"
DEFAULT_LORA_RANK = 4
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# OSEDiff's LoRA targets
UNET_LORA_TARGETS = (
    "to_k",
    "to_q",
    "to_v",
    "to_out.0",
    "conv",
    "conv1",
    "conv2",
    "conv_shortcut",
    "conv_out",
    "proj_in",
    "proj_out",
    "ff.net.2",
    "ff.net.0.proj",
)
VAE_ENCODER_LORA_TARGETS = (
    "conv1",
    "conv2",
    "conv_in",
    "conv_shortcut",
    "conv",
    "conv_out",
    "to_k",
    "to_q",
    "to_v",
    "to_out.0",
)


def inject_lora(module: nn.Module, rank: int, alpha: float | None, targets: Sequence[str], seed: int) -> None:
    """peft LoRA on ``targets`` of ``module`` (in place): A seeded by ``seed``, B = 0; all else frozen."""
    from peft import LoraConfig, inject_adapter_in_model

    for p in module.parameters():
        p.requires_grad_(False)
    config = LoraConfig(
        r=rank, lora_alpha=alpha or rank, target_modules=list(targets), init_lora_weights=True
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        inject_adapter_in_model(config, module, adapter_name=ADAPTER)


def lora_layers(module: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    from peft.tuners.lora import LoraLayer

    for name, m in module.named_modules():
        if isinstance(m, LoraLayer) and ADAPTER in m.lora_A:
            yield name, m


def merge_lora_deltas(root: nn.Module, state: dict[str, torch.Tensor], where: str) -> int:
    """Add ``B @ A`` of every ``<path>.lora_A.weight`` / ``<path>.lora_B.weight`` pair in ``state`` to the
    base weight of ``root.get_submodule(path)`` (the scaling must be folded into ``B``); returns the count."""
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        path, dot, kind = key.rpartition(".lora_")
        if not dot or kind not in ("A.weight", "B.weight"):
            raise FinPercepError(f"{where}: {key!r} is not a LoRA weight (<module>.lora_A/B.weight)")
        pairs.setdefault(path, {})[kind[0]] = value
    for path, ab in pairs.items():
        if set(ab) != {"A", "B"}:
            raise FinPercepError(f"{where}: {path} has lora_{''.join(ab)} without its partner")
        try:
            module = root.get_submodule(path)
        except AttributeError:
            raise FinPercepError(f"{where}: the model has no module {path!r} for its LoRA") from None
        base = getattr(module, "base_layer", module)
        a, b = ab["A"].to(base.weight).float(), ab["B"].to(base.weight).float()
        if isinstance(base, nn.Linear):
            delta = b @ a
        elif isinstance(base, nn.Conv2d):
            delta = torch.einsum("or,rikl->oikl", b.flatten(1), a)
        else:
            raise FinPercepError(f"{where}: cannot merge a LoRA into {path} ({type(base).__name__})")
        if delta.shape != base.weight.shape:
            shapes = f"{tuple(delta.shape)}, not {tuple(base.weight.shape)}"
            raise FinPercepError(f"{where}: the LoRA of {path} is {shapes}")
        with torch.no_grad():
            base.weight.copy_((base.weight.float() + delta).to(base.weight.dtype))
    return len(pairs)


class OneStepDiffusionSR(GeneratorAdapter):
    """VAE encoder -> one UNet step -> VAE decoder, with peft LoRA; a Gaussian policy on the latent."""

    owns_lora = True

    def __init__(
        self,
        vae: nn.Module,
        unet: nn.Module,
        alpha_bar: float,
        prediction_type: str = "epsilon",
        *,
        scale: int = 4,
        timestep: int = 999,
        text_embedding: torch.Tensor | None = None,
        lora_rank: int = DEFAULT_LORA_RANK,
        lora_alpha: float | None = None,
        vae_lora: bool = False,
        std: float = 0.05,
        learn_std: bool = False,
        precision: str = "fp32",
        gradient_checkpointing: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__()
        problems = [
            f"policy std must be positive, got {std}" if std <= 0 else "",
            f"scale must be >= 1, got {scale}" if scale < 1 else "",
            f"unsupported prediction type {prediction_type!r}"
            if prediction_type not in ("epsilon", "v_prediction", "sample")
            else "",
            f"precision must be fp32, bf16 or fp16, got {precision!r}" if precision not in PRECISIONS else "",
        ]
        if any(problems):
            raise FinPercepError("; ".join(p for p in problems if p))
        self.vae, self.unet, self.scale, self.timestep = vae, unet, scale, timestep
        self.precision, self.prediction_type, self.decode_chunk = precision, prediction_type, 4
        self.sqrt_ab, self.sqrt_1mab = math.sqrt(alpha_bar), math.sqrt(1.0 - alpha_bar)
        self.scaling = float(vae.config.scaling_factor)
        self.shift = float(getattr(vae.config, "shift_factor", None) or 0.0)
        if text_embedding is None:  # zero keys and values: cross-attention adds only its output bias
            text_embedding = torch.zeros(1, 1, unet.config.cross_attention_dim)
        self.register_buffer("text_embedding", text_embedding.detach().float().clone())
        self.vae.requires_grad_(False)
        inject_lora(self.unet, lora_rank, lora_alpha, UNET_LORA_TARGETS, seed)
        if vae_lora:
            inject_lora(self.vae.encoder, lora_rank, lora_alpha, VAE_ENCODER_LORA_TARGETS, seed + 1)
        if gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
            self.vae.enable_gradient_checkpointing()
        channels = int(unet.config.in_channels)
        init = torch.full((channels, 1, 1) if learn_std else (), math.log(std))
        self.log_std = nn.Parameter(init, requires_grad=learn_std)
        factor = 2 ** (len(vae.config.block_out_channels) - 1 + len(unet.config.down_block_types) - 1)
        self.multiple_of = factor // math.gcd(factor, scale)
        self.arch = "OneStepDiffusionSR"

    @property
    def network(self) -> nn.Module:
        return self.unet

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        dtype = PRECISIONS[self.precision]
        dev = self.text_embedding.device.type
        return torch.autocast(dev, dtype=dtype) if dtype is not None else contextlib.nullcontext()

    @contextlib.contextmanager
    def lora_disabled(self) -> Iterator[None]:
        """Run the body as the base model (LoRA off), keeping every ``requires_grad`` flag."""
        flags = [(p, p.requires_grad) for p in self.parameters()]
        layers = [m for _, m in lora_layers(self)]
        for m in layers:
            m.enable_adapters(False)
        try:
            yield
        finally:
            for m in layers:
                m.enable_adapters(True)
            for p, flag in flags:
                p.requires_grad_(flag)

    def latent_mean(self, lr: torch.Tensor) -> torch.Tensor:
        """The predicted clean latent ``x0_theta(lr)`` (float32), the mean of the policy."""
        up = F.interpolate(lr, scale_factor=self.scale, mode="bicubic", align_corners=False).clamp(0, 1)
        cond = self.text_embedding.expand(lr.shape[0], -1, -1)
        with self._autocast():
            z = (self.vae.encode(up * 2.0 - 1.0).latent_dist.mode() - self.shift) * self.scaling
            pred = self.unet(z, self.timestep, encoder_hidden_states=cond).sample
        z, pred = z.float(), pred.float()
        if self.prediction_type == "epsilon":
            return (z - self.sqrt_1mab * pred) / self.sqrt_ab
        if self.prediction_type == "v_prediction":
            return self.sqrt_ab * z - self.sqrt_1mab * pred
        return pred

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Latents -> images in [0, 1]."""
        with self._autocast():
            img = self.vae.decode(latent / self.scaling + self.shift).sample
        return ((img.float() + 1.0) / 2.0).clamp(0.0, 1.0)

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        return self.decode(self.latent_mean(lr))

    def reference(self) -> GeneratorAdapter:
        return LoRAOffReference(self)

    def rollout(self, lr: torch.Tensor, n: int, generators: Sequence[torch.Generator]) -> Rollout:
        if len(generators) != lr.shape[0]:
            raise ValueError(f"need one torch.Generator per input ({lr.shape[0]}), got {len(generators)}")
        mean = self.latent_mean(lr)
        mu = mean.detach()
        eps = group_noise(mu.shape[1:], n, generators, self.exploration, mu.device, mu.dtype)
        action = mu[:, None] + torch.exp(self.log_std.detach()) * eps
        logp_old = gaussian_log_prob(action, mu[:, None], self.log_std.detach(), batch_dims=2)
        flat = action.flatten(0, 1)
        with torch.no_grad():
            sr = torch.cat([self.decode(c) for c in flat.split(self.decode_chunk)])
        return Rollout(lr=lr, sr=sr, action=action, logp_old=logp_old, n=n, state={"mean": mean})

    def evaluate(self, rollout: Rollout, ref: GeneratorAdapter) -> tuple[torch.Tensor, torch.Tensor]:
        if not hasattr(ref, "latent_mean"):
            raise TypeError("the reference of a OneStepDiffusionSR must have latent_mean (see reference())")
        mean = rollout.state.pop("mean", None)
        if mean is None:
            mean = self.latent_mean(rollout.lr)
        if "ref_mean" not in rollout.state:
            with torch.no_grad():
                rollout.state["ref_mean"] = ref.latent_mean(rollout.lr)  # type: ignore[operator]
        ref_log_std = ref.log_std.detach()  # type: ignore[union-attr]
        logp = gaussian_log_prob(rollout.action, mean[:, None], self.log_std, batch_dims=2)
        return logp, gaussian_kl(mean, self.log_std, rollout.state["ref_mean"], ref_log_std)

    def output_kl(self, out: torch.Tensor, ref_out: torch.Tensor) -> torch.Tensor:
        """ReFL's logged drift: ``MSE / (2 sigma^2)`` between the images (sigma: the mean policy std)."""
        log_std = self.log_std.detach().exp().mean().log()
        return gaussian_kl(out, log_std, ref_out, log_std)

    def _trainable_names(self) -> set[str]:
        return {n for n, p in self.named_parameters() if p.requires_grad} | {"log_std"}

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Only the LoRA weights and ``log_std``: the base model is rebuilt from its folder on resume."""
        names = self._trainable_names()
        return {k: v for k, v in self.state_dict().items() if k in names}

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        missing = self._trainable_names() - set(state)
        unexpected = set(state) - self._trainable_names()
        hint = "was it made with another --lora-rank or --vae-lora?"
        if missing or unexpected:
            raise FinPercepError(
                f"checkpoint does not fit this LoRA (missing {sorted(missing)[:3]}, "
                f"unexpected {sorted(unexpected)[:3]}): {hint}"
            )
        try:
            self.load_state_dict(state, strict=False)
        except RuntimeError as exc:  # same names, other shapes
            raise FinPercepError(f"checkpoint does not fit this LoRA: {hint} {str(exc)[:300]}") from None

    def export_state(self) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for name, m in lora_layers(self):
            out[f"{name}.lora_A.weight"] = m.lora_A[ADAPTER].weight.detach().clone()
            out[f"{name}.lora_B.weight"] = m.lora_B[ADAPTER].weight.detach() * m.scaling[ADAPTER]
        return out

    def load_export_state(self, state: dict[str, torch.Tensor], where: str) -> None:
        """Merge exported LoRA deltas into the base weights; the live LoRA (still zero) stays trainable."""
        merge_lora_deltas(self, state, where)


class LoRAOffReference(GeneratorAdapter):
    """The frozen reference of a :class:`OneStepDiffusionSR`: the same modules with the LoRA off.

    It holds the policy without registering it (no parameters of its own, nothing copied), and keeps the
    policy's initial ``log_std``.
    """

    def __init__(self, policy: OneStepDiffusionSR) -> None:
        super().__init__()
        self._policy = [policy]
        self.scale, self.multiple_of, self.minimum = policy.scale, policy.multiple_of, policy.minimum
        self.source, self.arch = policy.source, f"{policy.arch} (LoRA off)"
        self.register_buffer("log_std", policy.log_std.detach().clone())

    @property
    def network(self) -> nn.Module:
        return self._policy[0].unet

    def latent_mean(self, lr: torch.Tensor) -> torch.Tensor:
        with self._policy[0].lora_disabled():
            return self._policy[0].latent_mean(lr)

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        with self._policy[0].lora_disabled():
            return self._policy[0](lr)
