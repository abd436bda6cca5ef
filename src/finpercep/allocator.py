"""The C allocator's policy for PyTorch's CPU tensors, which ``malloc`` and ``free`` each one.

glibc's default policy serves blocks above a moving threshold with fresh ``mmap`` pages and hands freed
memory at the heap's top back to the system, so a loop that allocates the same few-megabyte activations
every pass faults every page in again each time: 10,000-28,000 minor page faults per forward + backward
pass of a full-depth reward model on a batch of eight 256² images (``tests/test_allocator.py`` measures
this). ``retain`` serves blocks up to 32 MiB from the heap and keeps up to 1 GiB of freed memory there for
the next pass, which removes those faults; the process's memory then stays near its peak instead of
shrinking between passes. ``benchmarks/bench_allocator.py`` measures the effect on speed; the ``finpercep``
command applies ``retain`` unless ``--allocator system`` is given.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import platform
from typing import Literal

from .errors import ConfigError

log = logging.getLogger(__name__)

Allocator = Literal["retain", "system"]
ALLOCATOR_CHOICES: tuple[Allocator, ...] = ("retain", "system")

# mallopt parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20
"""Largest block served from the heap; glibc refuses more than 32 MiB on 64-bit systems."""
TRIM_THRESHOLD = 1 << 30
"""Freed memory at the heap's top kept for reuse instead of being returned to the system."""


def configure_allocator(mode: str = "retain") -> bool:
    """Set the process-wide allocator policy; returns whether anything was changed.

    ``retain``: serve blocks up to :data:`MMAP_THRESHOLD` from the heap and keep up to :data:`TRIM_THRESHOLD`
    of freed memory, so repeated passes reuse pages instead of faulting fresh ones in (glibc only; elsewhere
    nothing is changed). ``system``: leave the allocator as it is. Call it once, early; it cannot be undone
    within the process.
    """
    if mode not in ALLOCATOR_CHOICES:
        raise ConfigError(f"allocator must be one of {list(ALLOCATOR_CHOICES)}, got {mode!r}")
    if mode == "system":
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        log.debug("allocator %r: not glibc, left as it is", mode)
        return False
    libc = ctypes.CDLL(None)
    ok = (
        libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
        and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    )
    if not ok:
        log.warning("allocator %r: glibc's mallopt refused (part of) the setting", mode)
    return ok


def add_allocator_argument(parser: argparse.ArgumentParser) -> None:
    """``--allocator {retain,system}`` (default ``retain``), for :func:`configure_allocator`."""
    parser.add_argument(
        "--allocator",
        choices=list(ALLOCATOR_CHOICES),
        default="retain",
        help="retain: keep freed memory for the next pass instead of faulting its pages in again (faster "
        "training and scoring; memory stays near its peak); system: the C library's default policy",
    )
