"""Multi-process data-parallel helpers (gloo on CPU, NCCL on GPU) and the process launcher.

Two ways to run several processes:

* ``accelerate launch --multi_gpu --num_processes P -m finpercep.rl ...`` (or ``torchrun``; the same for
  ``-m finpercep.rm.train``): every process finds ``WORLD_SIZE``/``RANK`` in its environment and joins the
  process group here;
* ``RLConfig(num_processes=P)`` / ``--num-processes P``: :func:`launch` starts ``P`` local processes
  with accelerate's launcher (spawned, rendezvous through a temporary file, so no port is needed).

Every process computes gradients on its share of the batch; :func:`sync_gradients` averages them, so
all replicas take identical optimiser steps.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .errors import FinPercepError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Dist:
    rank: int
    world: int
    device: torch.device
    owns_group: bool

    @property
    def main(self) -> bool:
        return self.rank == 0


def in_process_group() -> bool:
    return dist.is_available() and dist.is_initialized()


def setup(device: str) -> Dist:
    """Join the process group described by the environment (accelerate launch / torchrun), if any."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    owns = False
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not in_process_group():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
        owns = True
    rank, world = (dist.get_rank(), dist.get_world_size()) if in_process_group() else (0, 1)
    dev = torch.device(device)
    if dev.type == "cuda" and world > 1:
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
        torch.cuda.set_device(dev)
    return Dist(rank, world, dev, owns)


def teardown(d: Dist) -> None:
    if d.owns_group and in_process_group():
        dist.destroy_process_group()


def barrier(d: Dist) -> None:
    if d.world > 1:
        dist.barrier()


def all_reduce_sum(d: Dist, t: torch.Tensor) -> torch.Tensor:
    if d.world > 1:
        dist.all_reduce(t)
    return t


def broadcast_module(d: Dist, module: nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every process."""
    if d.world > 1:
        with torch.no_grad():
            for t in list(module.parameters()) + list(module.buffers()):
                dist.broadcast(t.data, src=0)


def sync_gradients(d: Dist, params: Sequence[nn.Parameter]) -> None:
    """Average the gradients of ``params`` over all processes (missing gradients count as zero)."""
    if d.world == 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= d.world
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset : offset + n].view_as(p).clone()
        offset += n


def all_finite(d: Dist, value: torch.Tensor) -> bool:
    """Whether ``value`` is finite on every process (all processes get the same answer)."""
    flag = torch.tensor([1.0 if bool(torch.isfinite(value).all()) else 0.0], device=d.device)
    if d.world > 1:
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item() > 0)


def fingerprint(module: nn.Module) -> str:
    """SHA-256 of a module's state (names and bytes), to compare replicas."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().to("cpu").contiguous().numpy().tobytes())
    return h.hexdigest()


def gather_strings(d: Dist, s: str) -> list[str]:
    if d.world == 1:
        return [s]
    out: list[Any] = [None] * d.world
    dist.all_gather_object(out, s)
    return [str(x) for x in out]


def _run_then_leave(fn: Callable[..., Any], *args: Any) -> None:
    """``fn(*args)``, then leave the process group that accelerate's launcher joined for this process.

    Left to interpreter exit, the gloo group's threads are destroyed in an order that now and then aborts
    the process (``terminate called without an active exception``, SIGABRT) after its work is done.
    """
    try:
        fn(*args)
    finally:
        if in_process_group():
            dist.destroy_process_group()


def launch(fn: Callable[..., Any], args: tuple[Any, ...], num_processes: int) -> None:
    """Run ``fn(*args)`` in ``num_processes`` spawned local processes joined in one gloo process group."""
    try:
        from accelerate.utils import PrepareForLaunch, patch_environment
    except ImportError as exc:
        raise FinPercepError(
            f"num_processes > 1 needs the accelerate package (pip install accelerate): {exc}"
        ) from None
    from torch.multiprocessing import start_processes

    with tempfile.TemporaryDirectory(prefix="finpercep-rdv-") as tmp:
        rdv = os.path.join(tmp, "rendezvous")
        with patch_environment(
            world_size=num_processes,
            accelerate_debug_rdv_file=rdv,
            accelerate_use_cpu="yes",
            accelerate_mixed_precision="no",
            gloo_socket_ifname="lo",
        ):
            start_processes(
                PrepareForLaunch(functools.partial(_run_then_leave, fn), debug=True),
                args=args,
                nprocs=num_processes,
                start_method="spawn",
            )
