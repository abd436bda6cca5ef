"""Generators as RL policies: the adapter interface, the Gaussian policy over CNN outputs, and loaders.

The trainer only talks to a :class:`GeneratorAdapter`:

* ``adapter(lr)`` -- the deterministic output ``[B, 3, sH, sW]`` (differentiable; ReFL, previews, export);
* ``adapter.rollout(lr, n, generators)`` -- ``n`` stochastic samples per input plus whatever is needed
  to re-evaluate them (:class:`Rollout`); the sample log-probabilities under the current weights
  (``logp_old``) come with it;
* ``adapter.evaluate(rollout, ref)`` -- differentiable log-probabilities ``[B, n]`` of the rollout's
  actions under the current weights and the KL ``[B]`` to the frozen reference adapter ``ref``;
* ``adapter.output_kl(out, ref_out)`` -- the same KL between deterministic outputs (logged by ReFL);
* ``adapter.network`` -- the SR network whose weights are exported.

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
denoiser (with its LoRA). See ``README.md`` in this folder.
"""

from __future__ import annotations

import copy
import functools
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
from ..gen import GENERATORS, SRVGGNetCompact, load_ncnn_generator
from ..io import atomic_path, atomic_write_json
from .lora import has_lora, merge_lora
from .losses import gaussian_kl, gaussian_log_prob

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

    @property
    def network(self) -> nn.Module:
        raise NotImplementedError

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
        eps = torch.stack(
            [
                torch.randn((n, *mu.shape[1:]), generator=g, device=mu.device, dtype=mu.dtype)
                for g in generators
            ]
        )
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
# generator registry and loaders


@dataclass(frozen=True)
class GeneratorEntry:
    """A named generator ``--generator NAME`` resolves to."""

    name: str
    scale: int
    build: Callable[[], nn.Module]
    description: str = ""


def srvgg_tiny(scale: int = 4, seed: int = 0) -> SRVGGNetCompact:
    """A tiny randomly initialised SRVGGNetCompact (8 features, 2 convs) whose last conv is zero.

    It starts as nearest-neighbour upsampling; meant for tests and smoke runs, not for quality.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = SRVGGNetCompact(3, 3, num_feat=8, num_conv=2, upscale=scale, act_type="prelu")
    last = net.body[-1]
    assert isinstance(last, nn.Conv2d)
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    return net


GENERATOR_ENTRIES: tuple[GeneratorEntry, ...] = tuple(
    GeneratorEntry(s.name, s.scale, functools.partial(load_ncnn_generator, s.name, s.scale), s.description)
    for s in GENERATORS
) + tuple(
    GeneratorEntry("srvgg-tiny", s, functools.partial(srvgg_tiny, s), "tiny random SRVGGNetCompact (tests)")
    for s in (4, 2)
)


def generator_names() -> tuple[str, ...]:
    return tuple(dict.fromkeys(e.name for e in GENERATOR_ENTRIES))


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
    entries = [e for e in GENERATOR_ENTRIES if e.name == name_or_path]
    if entries:
        match = next((e for e in entries if scale is None or e.scale == scale), None)
        if match is None:
            scales = ", ".join(str(e.scale) for e in entries)
            raise FinPercepError(f"generator {name_or_path!r} has no x{scale} weights; available: {scales}")
        net = match.build()
        return LoadedGenerator(net, match.scale, match.name, type(net).__name__)
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
    name_or_path: str, scale: int | None = None, std: float = 0.05, learn_std: bool = False
) -> GeneratorAdapter:
    """The policy ``--generator`` names.

    ``package.module:function`` calls ``function(scale)``, which must return a :class:`GeneratorAdapter`
    (how other generator families, e.g. one-step diffusion models, plug in; such an adapter owns its noise
    settings, ``std`` and ``learn_std`` do not apply). Anything else goes through
    :func:`build_generator` and becomes a :class:`GaussianPolicy` with ``std`` (learned per channel if
    ``learn_std``).
    """
    path = Path(name_or_path)
    if path.is_dir() and (path / EXPORT_META).is_file():
        meta = _exported_meta(path)
        adapter = build_adapter(meta["source"], meta.get("scale"), std, learn_std)
        if scale is not None and adapter.scale != scale:
            raise FinPercepError(f"{path}: is an x{adapter.scale} generator, not x{scale}")
        _load_exported_weights(adapter.network, path, meta)
        adapter.source = str(path)
        return adapter
    module, sep, attr = name_or_path.partition(":")
    if sep and attr and not Path(name_or_path).exists() and "/" not in module:
        try:
            factory = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise FinPercepError(f"generator {name_or_path!r}: cannot import it: {exc}") from None
        adapter = factory(scale)
        if not isinstance(adapter, GeneratorAdapter):
            raise FinPercepError(
                f"generator {name_or_path!r} returned {type(adapter).__name__}, not a GeneratorAdapter"
            )
        if scale is not None and adapter.scale != scale:
            raise FinPercepError(f"generator {name_or_path!r} is x{adapter.scale}, not x{scale}")
        adapter.source = adapter.source or name_or_path
        adapter.arch = adapter.arch or type(adapter).__name__
        return adapter
    g = build_generator(name_or_path, scale)
    policy = GaussianPolicy(g.net, g.scale, std, learn_std, per_channel=learn_std)
    policy.multiple_of, policy.minimum, policy.source, policy.arch = (
        g.multiple_of,
        g.minimum,
        g.source,
        g.arch,
    )
    return policy


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
    """Write ``<name>.safetensors`` (LoRA merged into plain convs) and ``<name>.json`` into ``directory``."""
    from safetensors.torch import save_file

    directory = Path(directory)
    if has_lora(net):
        net = merge_lora(copy.deepcopy(net))
    state = {k: v.detach().to("cpu").contiguous() for k, v in net.state_dict().items()}
    weights = directory / f"{name}.safetensors"
    with atomic_path(weights) as tmp:
        save_file(state, str(tmp), metadata={"format": "finpercep-generator"})
    atomic_write_json(directory / f"{name}.json", {**meta, "weights": weights.name})
    return weights


def _exported_meta(directory: Path, name: str = "generator") -> dict[str, Any]:
    return json.loads((directory / f"{name}.json").read_text())


def _load_exported_weights(
    net: nn.Module, directory: Path, meta: dict[str, Any], name: str = "generator"
) -> None:
    from safetensors.torch import load_file

    state = load_file(str(directory / meta.get("weights", f"{name}.safetensors")))
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise FinPercepError(f"{directory}: weights do not fit {meta['source']!r}: {exc}") from None


def load_exported(
    directory: str | Path, scale: int | None = None, name: str = "generator"
) -> LoadedGenerator:
    """Rebuild an exported generator network: its original ``source`` with the exported weights loaded."""
    directory = Path(directory)
    meta = _exported_meta(directory, name)
    base = build_adapter(meta["source"], meta.get("scale"))
    if scale is not None and base.scale != scale:
        raise FinPercepError(f"{directory}: is an x{base.scale} generator, not x{scale}")
    _load_exported_weights(base.network, directory, meta, name)
    return LoadedGenerator(
        base.network, base.scale, str(directory), base.arch, base.multiple_of, base.minimum
    )
