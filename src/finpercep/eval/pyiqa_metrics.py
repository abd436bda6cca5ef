"""The paper's IQA metrics (LPIPS, MUSIQ, MANIQA, CLIP-IQA) through ``pyiqa``, from local weights only.

``pyiqa`` downloads weights on first use; FinPercep never does. A metric is *available* when ``pyiqa``
imports and every weight file it needs is found (by file name, anywhere below ``weights_dir``); otherwise
it is reported as ``unavailable: <reason>``. While a metric is created, the found files are the only
weights it can see: they are linked into a temporary torch-hub folder (``checkpoints/`` for torchvision
backbones, ``pyiqa/`` for pyiqa's own cache), the main checkpoint is passed as ``pretrained_model_path``
where pyiqa loads it the same way as its default, Hugging Face is switched to offline mode, and every
download function is replaced by one that raises. A metric whose creation still tries to download is
reported unavailable, naming the file it wanted.

Weight files (pyiqa's names; put them in one folder and pass it as ``--iqa-weights``):

* LPIPS: ``LPIPS_v0.1_alex-df73285e.pth`` and torchvision's ``alexnet-owt-7be5be79.pth``;
* MUSIQ: ``musiq_koniq_ckpt-e95806b9.pth``;
* MANIQA: ``ckpt_koniq10k.pt`` (its ViT backbone comes from the Hugging Face cache, offline);
* CLIP-IQA: OpenAI's ``RN50.pt``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import FinPercepError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class IQASpec:
    """One paper metric: its pyiqa name, direction, reference mode and the local files it needs."""

    name: str
    pyiqa_name: str
    label: str
    lower_better: bool
    full_reference: bool
    files: tuple[str, ...]
    checkpoint: str | None = None


IQA_SPECS: tuple[IQASpec, ...] = (
    IQASpec(
        "lpips",
        "lpips",
        "LPIPS",
        True,
        True,
        ("LPIPS_v0.1_alex-df73285e.pth", "alexnet-owt-7be5be79.pth"),
        "LPIPS_v0.1_alex-df73285e.pth",
    ),
    IQASpec(
        "musiq",
        "musiq",
        "MUSIQ",
        False,
        False,
        ("musiq_koniq_ckpt-e95806b9.pth",),
        "musiq_koniq_ckpt-e95806b9.pth",
    ),
    IQASpec("maniqa", "maniqa", "MANIQA", False, False, ("ckpt_koniq10k.pt",)),
    IQASpec("clipiqa", "clipiqa", "CLIP-IQA", False, False, ("RN50.pt",)),
)
IQA_NAMES: tuple[str, ...] = tuple(s.name for s in IQA_SPECS)


def iqa_spec(name: str) -> IQASpec:
    for s in IQA_SPECS:
        if s.name == name:
            return s
    raise FinPercepError(f"unknown IQA metric {name!r}; available: {', '.join(IQA_NAMES)}")


@dataclass(frozen=True)
class IQAStatus:
    """Whether a metric can be computed here; ``reason`` says why not, ``paths`` where its weights are."""

    name: str
    available: bool
    reason: str = ""
    paths: Mapping[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        return "available" if self.available else f"unavailable: {self.reason}"


class DownloadRefused(FinPercepError):
    """Raised in place of any download while an IQA metric is created."""


def import_pyiqa() -> tuple[Any | None, str]:
    """``(pyiqa, "")``, or ``(None, reason)`` when it cannot be imported."""
    try:
        import pyiqa
    except Exception as exc:  # ImportError, or its own imports failing (torchvision, timm)
        return (
            None,
            f"pyiqa cannot be imported ({type(exc).__name__}: {exc}); install pyiqa (it needs torchvision)",
        )
    return pyiqa, ""


def find_weight_files(weights_dir: str | Path | None, names: Sequence[str]) -> dict[str, Path]:
    """The first file of each name below ``weights_dir`` (sorted walk, so the choice is stable)."""
    if weights_dir is None:
        return {}
    root = Path(weights_dir)
    if not root.is_dir():
        return {}
    wanted = set(names)
    found: dict[str, Path] = {}
    for p in sorted(root.rglob("*")):
        if p.name in wanted and p.name not in found and p.is_file():
            found[p.name] = p
    return found


def available_iqa_metrics(
    weights_dir: str | Path | None, names: Sequence[str] = IQA_NAMES
) -> dict[str, IQAStatus]:
    """Which of ``names`` can be computed from ``weights_dir`` without downloading anything."""
    specs = [iqa_spec(n) for n in names]
    pyiqa, why = import_pyiqa()
    out: dict[str, IQAStatus] = {}
    for s in specs:
        if pyiqa is None:
            out[s.name] = IQAStatus(s.name, False, why)
            continue
        if weights_dir is None:
            out[s.name] = IQAStatus(s.name, False, f"no weights folder given (needs {', '.join(s.files)})")
            continue
        found = find_weight_files(weights_dir, s.files)
        missing = [f for f in s.files if f not in found]
        if missing:
            out[s.name] = IQAStatus(
                s.name, False, f"weights not found below {weights_dir}: {', '.join(missing)}"
            )
        else:
            out[s.name] = IQAStatus(s.name, True, "", {k: str(v) for k, v in found.items()})
    return out


def _refuse(url: Any, *args: Any, **kwargs: Any) -> None:
    raise DownloadRefused(
        f"would download {url}; FinPercep never downloads weights (put the file in the weights folder)"
    )


@contextlib.contextmanager
def offline_weights(files: Mapping[str, str | Path]) -> Iterator[Path]:
    """A torch-hub folder holding only ``files`` (linked), with every download path replaced by a refusal."""
    with tempfile.TemporaryDirectory(prefix="finpercep-iqa-") as tmp:
        hub = Path(tmp)
        for sub in ("checkpoints", "pyiqa"):
            (hub / sub).mkdir()
            for name, src in files.items():
                os.symlink(Path(src).resolve(), hub / sub / name)
        patches: list[tuple[Any, str, Any]] = [(torch.hub, "download_url_to_file", _refuse)]
        with contextlib.suppress(Exception):
            import pyiqa.utils.download_util as du

            patches += [
                (du, "download_url_to_file", _refuse),
                (du, "DEFAULT_CACHE_DIR", str(hub / "pyiqa")),
                (du, "download_file_from_google_drive", _refuse),
            ]
        with contextlib.suppress(Exception):
            import huggingface_hub.constants as hfc

            patches.append((hfc, "HF_HUB_OFFLINE", True))
        saved = [(obj, attr, getattr(obj, attr, None)) for obj, attr, _ in patches]
        old_dir, old_env = torch.hub.get_dir(), os.environ.get("HF_HUB_OFFLINE")
        try:
            for obj, attr, value in patches:
                setattr(obj, attr, value)
            torch.hub.set_dir(str(hub))
            os.environ["HF_HUB_OFFLINE"] = "1"
            yield hub
        finally:
            for obj, attr, value in saved:
                setattr(obj, attr, value)
            torch.hub.set_dir(old_dir)
            if old_env is None:
                os.environ.pop("HF_HUB_OFFLINE", None)
            else:
                os.environ["HF_HUB_OFFLINE"] = old_env


class IQAScorer:
    """The available paper metrics as one callable: ``scorer(sr, hr) -> {name: Tensor[B]}``.

    ``status`` reports every requested metric; one that fails to build from the local files (including a
    refused download) is marked unavailable with the error, and the others still run.
    """

    def __init__(
        self,
        weights_dir: str | Path | None,
        names: Sequence[str] = IQA_NAMES,
        device: str | torch.device = "cpu",
    ) -> None:
        self.status = available_iqa_metrics(weights_dir, names)
        self.metrics: dict[str, Any] = {}
        self.device = torch.device(device)
        for name, st in list(self.status.items()):
            if st.available:
                try:
                    self.metrics[name] = self._create(iqa_spec(name), st.paths)
                except Exception as exc:  # pyiqa raises many types; the metric is then just unavailable
                    self.status[name] = IQAStatus(
                        name, False, f"pyiqa could not build it from local files: {exc}"
                    )
            if not self.status[name].available:
                logger.info("IQA metric %s %s", name, self.status[name].describe())

    def _create(self, spec: IQASpec, paths: Mapping[str, str]) -> Any:
        pyiqa, why = import_pyiqa()
        if pyiqa is None:
            raise FinPercepError(why)
        kwargs: dict[str, Any] = {"device": self.device, "as_loss": False}
        if spec.checkpoint is not None:
            kwargs["pretrained_model_path"] = paths[spec.checkpoint]
        with offline_weights(paths):
            return pyiqa.create_metric(spec.pyiqa_name, **kwargs)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.metrics)

    def __call__(self, sr: torch.Tensor, hr: torch.Tensor) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # MANIQA scores random crops
            for name, metric in self.metrics.items():
                spec = iqa_spec(name)
                v = (
                    metric(sr.to(self.device), hr.to(self.device))
                    if spec.full_reference
                    else metric(sr.to(self.device))
                )
                out[name] = torch.as_tensor(v).detach().float().reshape(sr.shape[0]).cpu()
        return out
