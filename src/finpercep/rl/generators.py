"""Generators as RL policies: the adapter interface, the Gaussian policy over CNN outputs, and loaders.

The trainer only talks to a :class:`GeneratorAdapter`:

* ``adapter(lr)`` -- the deterministic output ``[B, 3, sH, sW]`` (differentiable; ReFL, previews, export);
* ``adapter.rollout(lr, n, generators)`` -- ``n`` stochastic samples per input plus whatever is needed
  to re-evaluate them (:class:`Rollout`); the sample log-probabilities under the current weights
  (``logp_old``) come with it;
* ``adapter.evaluate(rollout, ref)`` -- differentiable log-probabilities ``[B, n]`` of the rollout's
  actions under the current weights and the KL ``[B]`` to the frozen reference adapter ``ref``;
* ``adapter.output_kl(out, ref_out)`` -- the same KL between deterministic outputs (logged by ReFL);
* ``adapter.network`` -- the SR network whose weights are exported;
* ``adapter.reference()`` -- the frozen KL / fidelity reference (default: a frozen deep copy);
* ``adapter.trainable_state()`` / ``load_trainable_state`` -- what ``state.pt`` keeps (default: everything);
* ``adapter.export_state()`` / ``load_export_state`` -- what ``generator.safetensors`` holds (default:
  ``network``'s weights with any LoRA merged).

:class:`GaussianPolicy` implements it for any deterministic SR network (SRVGGNetCompact, RRDBNet, anything
spandrel loads): the action is the output image, ``a ~ N(net(lr), sigma^2 I)`` with a fixed or learned
(scalar or per-channel) ``log sigma``, and log-probabilities are exact (normalised per element, see
:mod:`.losses`). The reward sees ``clamp(a, 0, 1)``.

Other generator families plug in without touching the trainer: ``--generator package.module:function``
makes :func:`build_adapter` call ``function(scale)``, which returns any :class:`GeneratorAdapter`. For a
one-step diffusion SR model (OSEDiff, GDPO-SR), ``rollout``
encodes the LR image, draws the injected noise ``z`` from the given generators, runs the one-step
denoiser to the latent mean ``mu_theta(z, lr)``, samples the latent action ``x0 = mu + sigma_t * eps``
(the stochastic last step of Flow-GRPO/DanceGRPO), decodes ``x0`` with the frozen VAE for ``sr`` and
stores ``z`` and ``x0`` in ``Rollout.state``/``action``; ``evaluate`` recomputes ``mu_theta(z, lr)`` and
returns :func:`~.losses.gaussian_log_prob` of ``x0`` and :func:`~.losses.gaussian_kl` to the reference
denoiser's mean; ``forward`` is the noise-free (or fixed-noise) one-step output; ``network`` is the
denoiser (with its LoRA). See ``README.md`` in this folder. :mod:`.diffusion` is such an adapter
(``--generator osediff:DIR`` / ``osediff-tiny``, registered in
:data:`~finpercep.gen.registry.ADAPTER_ENTRIES`); it owns its LoRA
(``owns_lora``) and reads its settings from :class:`AdapterOptions`.
"""

from __future__ import annotations

import copy
import importlib
import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import FinPercepError
from ..gen.arch import srvgg_tiny as srvgg_tiny
from ..gen.registry import (
    TRAINABLE,
    build_network,
    find_adapter,
    generator_names,
    get_generator_spec,
)
from ..io import atomic_path, atomic_write_json
from .lora import has_lora, merge_lora
from .losses import Exploration, gaussian_kl, gaussian_log_prob, group_noise

logger = logging.getLogger(__name__)

EXPORT_WEIGHTS = "generator.safetensors"
EXPORT_META = "generator.json"
SPANDREL_SUFFIXES = (".pth", ".pt", ".safetensors", ".ckpt", ".bin")


# --------------------------------------------------------------------------------------------------
# the adapter interface


@dataclass
class Rollout:
    """``n`` samples for each of ``B`` LR inputs.

    ``sr``: ``[B * n, 3, H, W]`` in [0, 1], what the reward sees (sample ``g`` of input ``b`` is row
    ``b * n + g``).
    ``action``: the sampled variable whose density the policy defines (detached).
    ``logp_old``: ``[B, n]`` log-probabilities at sampling time (detached).
    ``state``: adapter-private tensors (cached forward passes, injected noise).
    """

    lr: torch.Tensor
    sr: torch.Tensor
    action: torch.Tensor
    logp_old: torch.Tensor
    n: int
    state: dict[str, torch.Tensor] = field(default_factory=dict)


class GeneratorAdapter(nn.Module):
    """A trainable SR generator seen as a stochastic policy (see the module docstring).

    ``scale`` is the upscale factor; LR crops must be multiples of ``multiple_of`` and at least
    ``minimum`` pixels; ``source``/``arch`` describe the generator in logs and exports.
    """

    scale: int
    multiple_of: int = 1
    minimum: int = 1
    source: str = ""
    arch: str = ""
    owns_lora: bool = False  # True: the adapter builds its own LoRA, the trainer's ``apply_lora`` is skipped
    exploration: Exploration = "iid"  # how rollout() draws its group noise (see losses.group_noise)

    @property
    def network(self) -> nn.Module:
        raise NotImplementedError

    def reference(self) -> GeneratorAdapter:
        """The frozen reference policy of the KL / fidelity terms, equal to this adapter as built."""
        return frozen_copy(self)

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The state a checkpoint must keep to resume (everything the adapter cannot rebuild)."""
        return self.state_dict()

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        self.load_state_dict(state)

    def export_state(self) -> dict[str, torch.Tensor]:
        """The exported weights: ``network``'s, with any :class:`~.lora.LoRAConv2d` merged."""
        net = merge_lora(copy.deepcopy(self.network)) if has_lora(self.network) else self.network
        return net.state_dict()

    def load_export_state(self, state: dict[str, torch.Tensor], where: str) -> None:
        try:
            self.network.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise FinPercepError(f"{where}: weights do not fit {self.source!r}: {exc}") from None

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def rollout(self, lr: torch.Tensor, n: int, generators: Sequence[torch.Generator]) -> Rollout:
        raise NotImplementedError

    def evaluate(self, rollout: Rollout, ref: GeneratorAdapter) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def output_kl(self, out: torch.Tensor, ref_out: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class GaussianPolicy(GeneratorAdapter):
    """``a ~ N(net(lr), sigma^2)`` per output element; ``sigma`` scalar or per channel, fixed or learned."""

    def __init__(
        self,
        net: nn.Module,
        scale: int,
        std: float = 0.05,
        learn_std: bool = False,
        per_channel: bool = False,
    ) -> None:
        super().__init__()
        if std <= 0:
            raise FinPercepError(f"policy std must be positive, got {std}")
        self.net = net
        self.scale = scale
        shape = (3, 1, 1) if per_channel else ()
        ref = next(net.parameters())
        init = torch.full(shape, math.log(std), dtype=ref.dtype, device=ref.device)
        self.log_std = nn.Parameter(init, requires_grad=learn_std)

    @property
    def network(self) -> nn.Module:
        return self.net

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        return self.net(lr)

    def rollout(self, lr: torch.Tensor, n: int, generators: Sequence[torch.Generator]) -> Rollout:
        if len(generators) != lr.shape[0]:
            raise ValueError(f"need one torch.Generator per input ({lr.shape[0]}), got {len(generators)}")
        mean = self.net(lr)
        mu = mean.detach()
        std = torch.exp(self.log_std.detach())
        eps = group_noise(mu.shape[1:], n, generators, self.exploration, mu.device, mu.dtype)
        action = mu[:, None] + std * eps
        logp_old = gaussian_log_prob(action, mu[:, None], self.log_std.detach(), batch_dims=2)
        sr = action.clamp(0.0, 1.0).flatten(0, 1)
        return Rollout(lr=lr, sr=sr, action=action, logp_old=logp_old, n=n, state={"mean": mean})

    def evaluate(self, rollout: Rollout, ref: GeneratorAdapter) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(ref, GaussianPolicy):
            raise TypeError("the reference of a GaussianPolicy must be a GaussianPolicy")
        mean = rollout.state.pop("mean", None)
        if mean is None:
            mean = self.net(rollout.lr)
        if "ref_mean" not in rollout.state:
            with torch.no_grad():
                rollout.state["ref_mean"] = ref.net(rollout.lr)
        logp = gaussian_log_prob(rollout.action, mean[:, None], self.log_std, batch_dims=2)
        kl = gaussian_kl(mean, self.log_std, rollout.state["ref_mean"], ref.log_std.detach())
        return logp, kl

    def output_kl(self, out: torch.Tensor, ref_out: torch.Tensor) -> torch.Tensor:
        return gaussian_kl(out, self.log_std, ref_out, self.log_std.detach())


def frozen_copy(adapter: GeneratorAdapter) -> GeneratorAdapter:
    """A deep copy with gradients off and eval mode: the KL / fidelity reference."""
    ref = copy.deepcopy(adapter).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


# --------------------------------------------------------------------------------------------------
# loaders (the names they resolve are listed in :mod:`finpercep.gen.registry`)


@dataclass(frozen=True)
class AdapterOptions:
    """Settings for adapters that own their LoRA and numerics (the one-step diffusion adapter).

    ``lora_rank`` 0 means the adapter's default rank; ``lora`` names LoRA weights merged into the base
    model before training; ``precision`` is the autocast dtype of the forward passes.
    """

    lora_rank: int = 0
    lora_alpha: float | None = None
    lora: str | None = None
    vae_lora: bool = False
    precision: str = "fp32"
    gradient_checkpointing: bool = False
    seed: int = 0

    def unsupported(self) -> list[str]:
        """The options set here that only adapters with ``owns_lora`` understand."""
        flags = {
            "--precision": self.precision != "fp32",
            "--gradient-checkpointing": self.gradient_checkpointing,
            "--lora": self.lora is not None,
            "--vae-lora": self.vae_lora,
        }
        return [k for k, on in flags.items() if on]


@dataclass(frozen=True)
class LoadedGenerator:
    """A trainable SR network and what the trainer needs to know about it."""

    net: nn.Module
    scale: int
    source: str
    arch: str
    multiple_of: int = 1
    minimum: int = 1


def build_generator(name_or_path: str, scale: int | None = None) -> LoadedGenerator:
    """Resolve ``--generator``: a registry name, a folder exported by ``finpercep rl train``, or a
    ``.pth``/``.safetensors`` file that spandrel can load."""
    if find_adapter(name_or_path) is not None:
        raise FinPercepError(
            f"generator {name_or_path!r} is a policy adapter, not a plain SR network: use build_adapter"
        )
    if any(spec.name == name_or_path for spec in TRAINABLE):
        spec = get_generator_spec(name_or_path, scale)
        net = build_network(spec)
        return LoadedGenerator(net, spec.scale, spec.name, type(net).__name__)
    path = Path(name_or_path)
    if path.is_dir() and (path / EXPORT_META).is_file():
        return load_exported(path, scale)
    if path.is_file() and path.suffix.lower() in SPANDREL_SUFFIXES:
        return load_spandrel(path, scale)
    if path.exists():
        raise FinPercepError(
            f"{path}: not a generator (expected a {'/'.join(SPANDREL_SUFFIXES)} file "
            f"or a folder with {EXPORT_META})"
        )
    raise FinPercepError(
        f"unknown generator {name_or_path!r}: neither a registered name ({', '.join(generator_names())}) "
        "nor an existing file or folder"
    )


def build_adapter(
    name_or_path: str,
    scale: int | None = None,
    std: float = 0.05,
    learn_std: bool = False,
    options: AdapterOptions | None = None,
) -> GeneratorAdapter:
    """The policy ``--generator`` names.

    A name of :data:`~finpercep.gen.registry.ADAPTER_ENTRIES` (``osediff-tiny``, ``osediff:DIR``) calls
    its factory with ``options``. ``package.module:function`` calls ``function(scale)``, which must return a
    :class:`GeneratorAdapter` (how other generator families plug in; such an adapter owns its noise
    settings, ``std`` and ``learn_std`` do not apply). Anything else goes through :func:`build_generator`
    and becomes a :class:`GaussianPolicy` with ``std`` (learned per channel if ``learn_std``).
    """
    options = options or AdapterOptions()
    path = Path(name_or_path)
    if path.is_dir() and (path / EXPORT_META).is_file():
        meta = _exported_meta(path)
        adapter = build_adapter(meta["source"], meta.get("scale"), std, learn_std, options)
        if scale is not None and adapter.scale != scale:
            raise FinPercepError(f"{path}: is an x{adapter.scale} generator, not x{scale}")
        _load_exported_weights(adapter, path, meta)
        adapter.source = str(path)
        return adapter
    entry = find_adapter(name_or_path)
    module, sep, attr = name_or_path.partition(":")
    if entry is not None:
        factory = _import_factory(entry.factory, name_or_path)
        adapter = factory(entry.argument(name_or_path), scale, std, learn_std, options)
    elif sep and attr and not Path(name_or_path).exists() and "/" not in module:
        _refuse_options(name_or_path, options)
        adapter = _import_factory(name_or_path, name_or_path)(scale)
    else:
        _refuse_options(name_or_path, options)
        g = build_generator(name_or_path, scale)
        policy = GaussianPolicy(g.net, g.scale, std, learn_std, per_channel=learn_std)
        policy.multiple_of, policy.minimum, policy.source, policy.arch = (
            g.multiple_of,
            g.minimum,
            g.source,
            g.arch,
        )
        return policy
    if not isinstance(adapter, GeneratorAdapter):
        raise FinPercepError(
            f"generator {name_or_path!r} returned {type(adapter).__name__}, not a GeneratorAdapter"
        )
    if scale is not None and adapter.scale != scale:
        raise FinPercepError(f"generator {name_or_path!r} is x{adapter.scale}, not x{scale}")
    adapter.source = adapter.source or name_or_path
    adapter.arch = adapter.arch or type(adapter).__name__
    return adapter


def _import_factory(spec: str, name: str) -> Callable[..., Any]:
    module, _, attr = spec.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise FinPercepError(f"generator {name!r}: cannot import it: {exc}") from None


def _refuse_options(name: str, options: AdapterOptions) -> None:
    if bad := options.unsupported():
        raise FinPercepError(f"{', '.join(bad)} apply to osediff generators only, not to {name!r}")


def load_spandrel(path: str | Path, scale: int | None = None) -> LoadedGenerator:
    """Load any single-image SR model spandrel supports; trains its raw ``descriptor.model``."""
    path = Path(path)
    try:
        import spandrel
    except ImportError as exc:
        raise FinPercepError(
            f"{path}: loading .pth/.safetensors SR models needs the 'spandrel' package "
            f"(pip install spandrel; it requires torchvision): {exc}"
        ) from None
    try:
        desc = spandrel.ModelLoader().load_from_file(str(path))
    except Exception as exc:  # spandrel raises many types for unknown architectures
        raise FinPercepError(f"{path}: spandrel could not load it: {exc}") from None
    if not isinstance(desc, spandrel.ImageModelDescriptor):
        raise FinPercepError(f"{path}: a {type(desc).__name__}, not a single-image SR model")
    if desc.input_channels != 3 or desc.output_channels != 3:
        raise FinPercepError(
            f"{path}: needs 3 input and output channels, has {desc.input_channels}/{desc.output_channels}"
        )
    if scale is not None and desc.scale != scale:
        raise FinPercepError(f"{path}: is an x{desc.scale} model, not x{scale}")
    net: nn.Module = desc.model
    net.train()
    for p in net.parameters():
        p.requires_grad_(True)
    req = desc.size_requirements
    return LoadedGenerator(
        net, int(desc.scale), str(path), str(desc.architecture.name), int(req.multiple_of), int(req.minimum)
    )


def export_generator(
    net: nn.Module, directory: str | Path, meta: dict[str, Any], name: str = "generator"
) -> Path:
    """Write ``<name>.safetensors`` and ``<name>.json`` into ``directory``.

    ``net`` is an SR network (saved with any LoRA merged into plain convs) or a :class:`GeneratorAdapter`
    (saved as its :meth:`~GeneratorAdapter.export_state`, e.g. only the LoRA of a diffusion adapter).
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    if isinstance(net, GeneratorAdapter):
        raw = net.export_state()
    else:
        raw = (merge_lora(copy.deepcopy(net)) if has_lora(net) else net).state_dict()
    state = {k: v.detach().to("cpu").contiguous() for k, v in raw.items()}
    weights = directory / f"{name}.safetensors"
    with atomic_path(weights) as tmp:
        save_file(state, str(tmp), metadata={"format": "finpercep-generator"})
    atomic_write_json(directory / f"{name}.json", {**meta, "weights": weights.name})
    return weights


def _exported_meta(directory: Path, name: str = "generator") -> dict[str, Any]:
    return json.loads((directory / f"{name}.json").read_text())


def _load_exported_weights(
    adapter: GeneratorAdapter, directory: Path, meta: dict[str, Any], name: str = "generator"
) -> None:
    from safetensors.torch import load_file

    state = load_file(str(directory / meta.get("weights", f"{name}.safetensors")))
    adapter.load_export_state(state, f"{directory} (from {meta['source']!r})")


def load_exported(
    directory: str | Path, scale: int | None = None, name: str = "generator"
) -> LoadedGenerator:
    """Rebuild an exported generator network: its original ``source`` with the exported weights loaded."""
    directory = Path(directory)
    meta = _exported_meta(directory, name)
    base = build_adapter(meta["source"], meta.get("scale"))
    if base.owns_lora:
        raise FinPercepError(
            f"{directory}: a {base.arch} run is not a plain SR network; load it with build_adapter"
        )
    if scale is not None and base.scale != scale:
        raise FinPercepError(f"{directory}: is an x{base.scale} generator, not x{scale}")
    _load_exported_weights(base, directory, meta, name)
    return LoadedGenerator(
        base.network, base.scale, str(directory), base.arch, base.multiple_of, base.minimum
    )
