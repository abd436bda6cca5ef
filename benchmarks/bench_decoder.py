"""Decoder overhead RM_N/RM_0, measured interleaved in one process so background load hits every config alike.

    python benchmarks/bench_decoder.py --threads 1 --rounds 15
    python benchmarks/bench_decoder.py --configs light light:8,16,48,96 res light:8,16,32,64:finest
    python benchmarks/bench_decoder.py --configs light:8,16,32,64 light:8,16,32,64:input:shifts

Each config is ``BLOCK[:W1,W2,...[:FUSION[:KERNELS]]]``: the decoder block body, the decoder widths finest
first (empty: the default), ``map_fusion`` (input unless given) and the kernels: ``fast`` (the library's:
shifted multiply-adds for depthwise convolutions up to ``SHIFT_MAX_CHANNELS`` channels, the stencil for
upsampling by integer factors, each with its adjoint as the backward pass, and 1x1 convolutions as batched
matrix products), ``conv1x1`` (the same with PyTorch's 1x1 convolution: the kernels up to git cd59953),
``shifts`` (shifts at every width, PyTorch's upsampling and 1x1 convolution: the kernels up to git 00d69dd)
or ``torch`` (PyTorch's ops only).

Every round times, for each config, one batch of RM_0, one of the config's RM_N and one of RM_0 again; the
overhead is the median over rounds of RM_N's time over the mean of the two RM_0 times around it (with
quartiles), so slow spells on a shared machine cancel. By default the clock is the process's CPU time, which
other jobs on the machine disturb less than elapsed time. ``--mode reward`` times a forward and backward
pass to the input with the parameters frozen (the model used as a reward or loss, as the RL loop holds it)
instead of inference; ``--mode ops`` times each kernel against the PyTorch op it replaces, at the first
config's shapes, without autograd and as forward + backward to the input (frozen weights).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F

from finpercep.allocator import add_allocator_argument, configure_allocator
from finpercep.rm import RewardModel, RMConfig
from finpercep.rm import kernels as rm_kernels
from finpercep.rm import model as rm_model
from finpercep.rm.kernels import DepthwiseConv3x3, PointwiseConv2d

KERNELS = ("fast", "conv1x1", "shifts", "torch")


def parse_config(text: str) -> tuple[RMConfig, str]:
    block, _, rest = text.partition(":")
    widths, _, rest = rest.partition(":")
    fusion, _, kernels = rest.partition(":")
    valid = block in ("res", "light") and fusion in ("", "input", "finest") and kernels in ("", *KERNELS)
    if not valid:
        raise SystemExit(
            f"config {text!r}: the block must be res or light, the fusion input or finest, "
            f"the kernels one of {', '.join(KERNELS)}"
        )
    cfg = RMConfig(
        decoder_block=block,
        decoder_widths=tuple(int(w) for w in widths.split(",") if w),
        map_fusion=fusion or "input",
    )
    return cfg, kernels or "fast"


def torch_resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


@contextlib.contextmanager
def kernels_of(model: RewardModel, kernels: str) -> Iterator[None]:
    """Run ``model`` with the given inference kernels (see the module docstring)."""
    for m in model.modules():
        if isinstance(m, DepthwiseConv3x3):
            fast = m.in_channels <= m.SHIFT_MAX_CHANNELS
            m.use_shifts = {"fast": fast, "conv1x1": fast, "shifts": True, "torch": False}[kernels]
        if isinstance(m, PointwiseConv2d):
            m.use_bmm = kernels == "fast"
    saved = rm_model.resize_bilinear
    if kernels in ("shifts", "torch"):
        rm_model.resize_bilinear = torch_resize
    try:
        yield
    finally:
        rm_model.resize_bilinear = saved


Op = Callable[[torch.Tensor], torch.Tensor]


def bench_ops(config: str, batch: int, size: int, rounds: int, out: Path | None) -> None:
    """``--mode ops``: each kernel against the PyTorch op it replaces, at the shapes of the first config's
    decoder: depthwise 3x3 per width (shifts vs. oneDNN, frozen weights), the lateral and logit-head 1x1
    convolutions (batched matrix product vs. ``F.conv2d``) and bilinear upsampling (stencil vs.
    ``F.interpolate``) of each block's 2x step and of its map logits to the input size; without
    autograd and as forward + backward to the input. Reports the median over rounds of the paired ratio
    PyTorch time / shift-or-stencil time (> 1: the replacement is faster)."""
    cfg, _ = parse_config(config)
    model = RewardModel(cfg).eval().requires_grad_(False)
    x = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        shapes = [tuple(f.shape[-2:]) for f in model.encoder(x)]
    widths = model.decoder_widths
    g = torch.Generator().manual_seed(1)
    pairs: dict[str, tuple[Op, Op, torch.Tensor]] = {}
    for level, (c, (h, w)) in enumerate(zip(widths, shapes, strict=True)):
        dw = DepthwiseConv3x3(c).requires_grad_(False)
        dw.use_shifts = True
        pairs[f"depthwise c={c} {h}x{w}"] = (
            functools.partial(F.conv2d, weight=dw.weight, bias=dw.bias, padding=1, groups=c),
            dw,
            torch.randn(batch, c, h, w, generator=g),
        )
        for c_in, c_out in ((model.encoder.channels[level], c), (c, 1)):  # lateral, logit head
            pw = PointwiseConv2d(c_in, c_out).requires_grad_(False)
            pairs[f"1x1 conv {c_in}->{c_out} {h}x{w}"] = (
                functools.partial(F.conv2d, weight=pw.weight, bias=pw.bias),
                pw,
                torch.randn(batch, c_in, h, w, generator=g),
            )
        pairs[f"logits {h}x{w} -> {size}x{size}"] = (
            functools.partial(torch_resize, size=(size, size)),
            functools.partial(rm_kernels.upsample_integer, sh=size // h, sw=size // w),
            torch.randn(batch, 1, h, w, generator=g),
        )
        if level + 1 < len(widths):
            pairs[f"2x upsample c={c} {h // 2}x{w // 2}"] = (
                functools.partial(torch_resize, size=(h, w)),
                functools.partial(rm_kernels.upsample_integer, sh=2, sw=2),
                torch.randn(batch, c, h // 2, w // 2, generator=g),
            )
    modes = ("infer", "fwd+bwd")
    ratios: dict[str, list[float]] = {f"{name} [{mode}]": [] for name in pairs for mode in modes}
    for _ in range(rounds + 1):  # the first round warms up
        for name, (ref, new, inp) in pairs.items():
            with torch.no_grad():
                ratios[f"{name} [infer]"].append(_paired_ratio(functools.partial(_apply, x=inp), ref, new))
            run = functools.partial(_with_backward, x=inp)
            ratios[f"{name} [fwd+bwd]"].append(_paired_ratio(run, ref, new))
    result = {name: statistics.median(v[1:]) for name, v in ratios.items()}
    for name, r in result.items():
        print(f"{name:44s} PyTorch / replacement = {r:5.2f}")
    if out:
        out.write_text(json.dumps({"mode": "ops", "config": config, "torch_over_new": result}, indent=2))


def _paired_ratio(run: Callable[[Op], object], ref: Op, new: Op) -> float:
    t0 = time.process_time()
    run(ref)
    t1 = time.process_time()
    run(new)
    t2 = time.process_time()
    return (t1 - t0) / max(t2 - t1, 1e-9)


def _apply(op: Op, x: torch.Tensor) -> None:
    op(x)


def _with_backward(op: Op, x: torch.Tensor) -> None:
    """``op`` on a copy of ``x`` that requires grad, then the backward pass to that copy."""
    op(x.clone().requires_grad_(True)).sum().backward()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="+", default=["light:8,16,32,64", "light"])
    p.add_argument("--mode", choices=["infer", "reward", "ops"], default="infer")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--threads", type=int, default=1, help="torch threads (0: torch default)")
    p.add_argument(
        "--clock",
        choices=["cpu", "wall"],
        default="cpu",
        help="cpu = this process's CPU time (robust to other jobs on a shared machine; with --threads 1 it "
        "is the work done), wall = elapsed time",
    )
    add_allocator_argument(p)
    p.add_argument("--json", type=Path, default=None, help="also write the result here")
    p.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="K",
        help="also list the K ops (with input shapes) whose self CPU time grows most from RM_0 to the first "
        "config (torch.profiler, 5 passes each)",
    )
    a = p.parse_args()
    if a.rounds < 2:
        p.error("--rounds must be at least 2 (quartiles of the paired ratios)")
    configure_allocator(a.allocator)
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.mode == "ops":
        bench_ops(a.configs[0], a.batch, a.size, a.rounds, a.json)
        return
    models = {"RM_0": RewardModel(RMConfig(stage=0)).eval()}
    kernels = {"RM_0": "fast"}
    for text in a.configs:
        cfg, kernels[text] = parse_config(text)
        models[text] = RewardModel(cfg).eval()
    for model in models.values():
        model.requires_grad_(a.mode != "reward")  # a reward's parameters are frozen (RMScoreReward)
    x = torch.rand(a.batch, 3, a.size, a.size, generator=torch.Generator().manual_seed(0))

    def step(name: str) -> None:
        model = models[name]
        with kernels_of(model, kernels[name]):
            if a.mode == "infer":
                with torch.no_grad():
                    model(x)
            else:
                model(x.clone().requires_grad_(True)).score.sum().backward()

    clock = time.process_time if a.clock == "cpu" else time.perf_counter

    def timed(name: str) -> float:
        t0 = clock()
        step(name)
        return (clock() - t0) * 1000 / a.batch

    for name in models:
        step(name)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in models}
    ratios: dict[str, list[float]] = {name: [] for name in a.configs}
    for _ in range(a.rounds):
        for name in a.configs:  # RM_0 right before and after each config: a paired ratio, drift cancels
            before, t, after = timed("RM_0"), timed(name), timed("RM_0")
            times["RM_0"] += [before, after]
            times[name].append(t)
            ratios[name].append(2 * t / (before + after))
    med = {name: statistics.median(v) for name, v in times.items()}
    quart = {name: statistics.quantiles(v, n=4) for name, v in ratios.items()}
    result = {
        "mode": a.mode,
        "batch": a.batch,
        "size": a.size,
        "threads": a.threads,
        "allocator": a.allocator,
        "clock": a.clock,
        "rounds": a.rounds,
        "ms_per_image_median": med,
        "overhead_vs_rm0": {name: statistics.median(v) for name, v in ratios.items()},
        "overhead_quartiles": {name: [q[0], q[2]] for name, q in quart.items()},
        "params": {name: sum(q.numel() for q in m.parameters()) for name, m in models.items()},
    }
    for name in models:
        ratio = ""
        if name != "RM_0":
            q = quart[name]
            ratio = f"  RM_N/RM_0 = {result['overhead_vs_rm0'][name]:.3f}x (quartiles {q[0]:.3f}-{q[2]:.3f})"
        print(f"{name:24s} {med[name]:7.1f} ms/image ({a.clock}, median of {len(times[name])}){ratio}")
    if a.json:
        a.json.write_text(json.dumps(result, indent=2) + "\n")
    if a.profile:
        profile_difference(step, "RM_0", a.configs[0], a.profile)


def profile_difference(step: Callable[[str], None], base: str, other: str, top: int, passes: int = 5) -> None:
    """Print the ``top`` (op, input shapes) whose self CPU time per pass grows most from ``base`` to
    ``other``, and each one's share of the whole difference."""
    from torch.profiler import ProfilerActivity, profile

    per_op: dict[str, dict[tuple[str, str], float]] = {}
    for name in (base, other):
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            for _ in range(passes):
                step(name)
        totals: dict[tuple[str, str], float] = {}
        for ev in prof.key_averages(group_by_input_shape=True):
            key = (ev.key, str(ev.input_shapes))
            totals[key] = totals.get(key, 0.0) + ev.self_cpu_time_total / 1000 / passes
        per_op[name] = totals
    diff = {k: v - per_op[base].get(k, 0.0) for k, v in per_op[other].items()}
    total = sum(per_op[other].values()) - sum(per_op[base].values())
    print(f"{other} - {base}: {total:.1f} ms per pass (self CPU time); the largest growths:")
    for (op, shapes), ms in sorted(diff.items(), key=lambda kv: -kv[1])[:top]:
        print(f"  {ms:7.2f} ms  {100 * ms / total:5.1f} %  {op}  {shapes[:90]}")


if __name__ == "__main__":
    main()
