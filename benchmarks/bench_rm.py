"""Reward-model speed and memory: images/s at 256x256 for RM_0 and RM_N, decoder overhead, peak memory.

    python benchmarks/bench_rm.py                      # default small CNN and a CLIP-RN50-sized encoder
    python benchmarks/bench_rm.py --threads 1 --batch 8 --iters 5 --json out.json
    python benchmarks/bench_rm.py --encoders small_cnn --decoder-block light   # the lighter decoder body
    python benchmarks/bench_rm.py --encoders small_cnn --decoder-block light --decoder-widths 8 16 48 96
    python benchmarks/bench_rm.py --encoders small_cnn --stages N --compile   # eager vs torch.compile

Each (encoder, stage, mode) runs in its own subprocess so the peak-memory numbers do not mix. Modes:
``infer`` (no grad) and ``reward`` (forward + backward to the input with the parameters frozen, as when
the model is a reward or a loss).
``--compile`` also times ``torch.compile(model, fullgraph=True)`` in the same subprocess, after the
peak-memory loop: eager and compiled steps alternate, so both see the same machine load, and the ratio
eager time / compiled time is reported with the first call's compile time. A setup where compiling fails
(no C++ compiler, an unsupported Python) reports the error in place of the ratio.
CLIP RN50 uses random weights (timing only). Peak memory is the growth of the process's peak RSS
during the timed loop on CPU (``torch.cuda.max_memory_allocated`` on GPU).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from finpercep.allocator import add_allocator_argument, configure_allocator

if TYPE_CHECKING:
    import torch


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def run_one(
    encoder: str,
    stage: str,
    mode: str,
    batch: int,
    size: int,
    iters: int,
    threads: int,
    device: str,
    decoder_block: str = "res",
    decoder_widths: tuple[int, ...] = (),
    allocator: str = "retain",
    compile_mode: str = "off",
) -> dict:
    import torch

    from finpercep.rm import RewardModel, RMConfig

    configure_allocator(allocator)
    if threads:
        torch.set_num_threads(threads)
    cfg = RMConfig(encoder=encoder, decoder_block=decoder_block, decoder_widths=tuple(decoder_widths))
    model = RewardModel(cfg).to(device).eval()
    n_levels = model.num_levels
    if stage == "0":
        model = RewardModel(replace(cfg, stage=0)).to(device).eval()
    params = sum(p.numel() for p in model.parameters())
    model.requires_grad_(False)  # a reward's parameters are frozen (RMScoreReward); inference needs none
    x = torch.rand(batch, 3, size, size, device=device)

    def step() -> None:
        reward_step(model, x, mode, device)

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS counter
    before = _rss_kib("VmRSS")
    step()  # warm-up (its allocations count towards the peak)
    t0 = time.perf_counter()
    for _ in range(iters):
        step()
    dt = time.perf_counter() - t0
    if device.startswith("cuda"):
        peak_mib = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mib = max(0, _rss_kib("VmHWM") - before) / 1024
    compiled = {} if compile_mode == "off" else eager_vs_compiled(model, x, mode, iters, device, compile_mode)
    return {
        "encoder": encoder,
        "decoder_block": decoder_block,
        "decoder_widths": list(model.decoder_widths) if stage != "0" else [],
        "stage": stage,
        "levels": n_levels,
        "mode": mode,
        "params": params,
        "images_per_s": batch * iters / dt,
        "ms_per_image": 1000 * dt / (batch * iters),
        "peak_mib": peak_mib,
        **compiled,
    }


def reward_step(model: torch.nn.Module, x: torch.Tensor, mode: str, device: str) -> None:
    """One pass of ``model`` on ``x``: no grad (``infer``) or forward + backward to the input (``reward``)."""
    import torch

    if mode == "infer":
        with torch.no_grad():
            model(x)
    else:
        xi = x.clone().requires_grad_(True)
        model(xi).score.sum().backward()
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def eager_vs_compiled(
    model: torch.nn.Module, x: torch.Tensor, mode: str, iters: int, device: str, compile_mode: str
) -> dict:
    """``compile_s`` (the first compiled call) and ``compile_speedup`` (eager time / compiled time over
    ``iters`` alternating steps of each), or ``compile_error`` where compiling fails."""
    import torch

    t0 = time.perf_counter()
    try:
        compiled = torch.compile(
            model, fullgraph=True, mode=None if compile_mode == "default" else compile_mode
        )
        reward_step(compiled, x, mode, device)  # compiles on the first call
    except Exception as exc:  # any backend failure: report it, keep the eager numbers
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        return {"compile_error": f"{type(exc).__name__}: {first}"}
    compile_s = time.perf_counter() - t0
    reward_step(compiled, x, mode, device)  # a second warm-up (autotuning, cudagraph recording)
    spent = {"eager": 0.0, "compiled": 0.0}
    for _ in range(iters):
        for name, m in (("eager", model), ("compiled", compiled)):
            t = time.perf_counter()
            reward_step(m, x, mode, device)
            spent[name] += time.perf_counter() - t
    return {
        "compile_s": compile_s,
        "compiled_images_per_s": x.shape[0] * iters / spent["compiled"],
        "compile_speedup": spent["eager"] / spent["compiled"],
    }


def _compiled(r: dict) -> str:
    if "compile_error" in r:
        return f"  compile failed: {r['compile_error']}"
    if "compile_speedup" in r:
        return f"  compiled {r['compile_speedup']:.2f}x eager (compile {r['compile_s']:.0f} s)"
    return ""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--encoders", nargs="+", default=["small_cnn", "clip_rn50"])
    p.add_argument("--modes", nargs="+", default=["infer", "reward"])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--decoder-block", default="res", choices=["res", "light"], help="RMConfig.decoder_block")
    p.add_argument(
        "--decoder-widths",
        nargs="*",
        type=int,
        default=[],
        help="RMConfig.decoder_widths, finest first (none: the default)",
    )
    p.add_argument("--stages", nargs="+", default=["0", "N"], choices=["0", "N"], help="RM_0 and/or RM_N")
    p.add_argument(
        "--compile",
        nargs="?",
        const="default",
        default="off",
        choices=["off", "default", "reduce-overhead", "max-autotune"],
        help="also time torch.compile(model, fullgraph=True) beside eager (value: the compile mode)",
    )
    add_allocator_argument(p)
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--one", nargs=3, metavar=("ENCODER", "STAGE", "MODE"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.one:
        args = (a.batch, a.size, a.iters, a.threads, a.device, a.decoder_block, a.decoder_widths, a.allocator)
        args += (a.compile,)
        print(json.dumps(run_one(*a.one, *args)))
        return
    results = []
    for enc in a.encoders:
        for mode in a.modes:
            for stage in a.stages:
                cmd = [
                    sys.executable,
                    __file__,
                    "--one",
                    enc,
                    stage,
                    mode,
                    "--batch",
                    str(a.batch),
                    "--size",
                    str(a.size),
                    "--iters",
                    str(a.iters),
                    "--threads",
                    str(a.threads),
                    "--device",
                    a.device,
                    "--decoder-block",
                    a.decoder_block,
                    "--allocator",
                    a.allocator,
                    "--compile",
                    a.compile,
                    "--decoder-widths",
                    *map(str, a.decoder_widths),
                ]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
                results.append(json.loads(out.strip().splitlines()[-1]))
                r = results[-1]
                print(
                    f"{enc:10s} RM_{stage if stage == '0' else r['levels']} {mode:6s} "
                    f"{r['images_per_s']:8.2f} img/s  {r['ms_per_image']:8.1f} ms/img  "
                    f"peak +{r['peak_mib']:7.1f} MiB  {r['params'] / 1e6:6.2f} M params{_compiled(r)}",
                    flush=True,
                )
    print(
        f"\nbatch {a.batch}, {a.size}x{a.size}, threads {a.threads or 'default'}, device {a.device}, "
        f"decoder block {a.decoder_block}, decoder widths {a.decoder_widths or 'default'}, "
        f"allocator {a.allocator}, compile {a.compile}"
    )
    for enc in a.encoders:
        for mode in a.modes:
            if set(a.stages) != {"0", "N"}:
                break
            r0 = next(r for r in results if r["encoder"] == enc and r["mode"] == mode and r["stage"] == "0")
            rn = next(r for r in results if r["encoder"] == enc and r["mode"] == mode and r["stage"] == "N")
            ratio = r0["images_per_s"] / rn["images_per_s"]
            print(f"{enc:10s} {mode:6s} decoder overhead RM_N/RM_0 = {ratio:.3f}x")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
