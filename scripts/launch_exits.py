"""Reliability of the local launcher: how many of N two-process launches of a small gloo job fail.

    python scripts/launch_exits.py --launches 80

Each launch runs ``finpercep.dist.launch`` with a job that all-reduces a tensor a few times, then exits.
Before git 9db5fa1 the spawned processes left their gloo group to interpreter exit, and 3 of 40 launches
ended with a process killed by SIGABRT after its work was done (``git checkout 9db5fa1~1 --
src/finpercep/dist.py`` to measure that again).
"""

from __future__ import annotations

import argparse

import torch
import torch.distributed as dist

from finpercep import dist as D


def job(n: int) -> None:
    d = D.setup("cpu")
    t = torch.ones(1000)
    for _ in range(n):
        dist.all_reduce(t)
    D.barrier(d)
    D.teardown(d)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--launches", type=int, default=20)
    p.add_argument("--processes", type=int, default=2)
    a = p.parse_args()
    failures = 0
    for i in range(a.launches):
        try:
            D.launch(job, (5,), a.processes)
        except Exception as exc:  # the launcher's ProcessExitedException / ProcessRaisedException
            failures += 1
            print(f"launch {i}: {type(exc).__name__}: {str(exc)[:120]}", flush=True)
    print(f"{failures} of {a.launches} launches failed")


if __name__ == "__main__":
    main()
