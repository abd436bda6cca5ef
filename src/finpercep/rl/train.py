"""RL fine-tuning of a Real-ISR generator against a reward, with the co-evolutionary curriculum (CCL).

``finpercep rl train --generator NAME_OR_PATH --reward-model DIR --curriculum ccl --out DIR`` and
``train(RLConfig(...))`` run the same code. Algorithms:

* ``grpo`` -- Gaussian policy over the generator output (:class:`~.generators.GaussianPolicy`; over the
  predicted latent for one-step diffusion generators, :mod:`.diffusion`), ``G`` samples per LR input,
  group-normalised advantages, PPO-clipped ratio, exact KL to the frozen reference generator;
* ``refl`` -- back-propagate the reward of the deterministic output (ReFL / DRaFT), plus
  ``fidelity_weight * MSE`` to the reference generator's output.

Output folder::

    rl_config.json          what was run (a re-run with other settings is refused)
    state.pt                resume point (policy, optimiser, EMA, curriculum), rewritten atomically
    log.csv  tensorboard/   one row / scalar set per step
    curves.png              reward, reward std, KL, stage
    transitions.json        every curriculum transition: {step, from, to, reason}
    generator.safetensors   fine-tuned weights (LoRA merged), generator.json says how to rebuild them
    generator_ema.*         the EMA weights, when ema_decay is set
    preview.png summary.json

Re-running the same command resumes after the last save. Every random draw derives from ``seed``, the
step and the sample index, so a resumed run repeats the lost steps exactly, and a run is reproducible
on the same machine and software (it is bitwise identical on CPU).
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from .. import dist as D
from ..checkpoint import check_resume, save_state
from ..config import check, flatten, option, to_dict
from ..ema import EMA
from ..errors import FinPercepError
from ..io import atomic_write_json, remove_stale_temps, save_png
from .curriculum import Curriculum, CurriculumConfig
from .data import DegradationKind, PairSource
from .generators import AdapterOptions, GeneratorAdapter, build_adapter, export_generator
from .logs import CSV_NAME, CURVES_NAME, RunLog, plot_curves, read_log
from .lora import apply_lora
from .losses import Exploration
from .rewards import RewardFn, StagedRMRewards, WeightedReward, parse_weighted_spec
from .steps import grpo_step, noise_generators, reduce_stats, refl_step  # noqa: F401 (re-exported)

logger = logging.getLogger(__name__)

Algorithm = Literal["grpo", "refl"]
STATE_NAME = "state.pt"
CONFIG_NAME = "rl_config.json"
TRANSITIONS_NAME = "transitions.json"
RM_MIN_SIZE = 32
PLOT_EVERY_S = 60.0
_RESUME_IGNORES = {
    "out",
    "progress",
    "threads",
    "tensorboard",
    "num_processes",
    "device",
    "save_every",
    "preview",
    "gradient_checkpointing",
}
# options added after runs were made, with the value that reproduces what those runs did (option names)
_ADDED_LATER = {"early_steps": 0, "precision": "fp32", "lora": None, "vae_lora": False, "exploration": "iid"}
Precision = Literal["fp32", "bf16", "fp16"]


@dataclass(frozen=True)
class RLConfig:
    """RL fine-tuning of an SR generator (``finpercep rl train``)."""

    generator: str = option(
        "realesrgan-animevideov3", help="registered name, exported run folder or .pth/.safetensors"
    )
    scale: int | None = option(
        None, help="upscale factor; none = the generator's default (x4 for the registry)"
    )
    reward_model: str | None = option(
        None,
        help="reward-model training folder (stage_<k> sub-folders) or one model folder; none = packaged one",
    )
    map_penalty: float = option(0.0, help="subtract this times the mean degradation map from the RM score")
    rm_weight: float = option(1.0, help="weight of the RM score in the reward")
    extra_rewards: tuple[str, ...] = option(
        (), help="more reward terms 'WEIGHT*pyiqa:NAME' or 'WEIGHT*module:function'"
    )
    algorithm: Algorithm = option(
        "grpo", help="grpo (policy gradient, PPO clip, KL) or refl (reward back-propagation)"
    )
    curriculum: CurriculumConfig = option(
        default_factory=CurriculumConfig, help="reward curriculum over the RM stages"
    )
    steps: int = option(500, help="optimisation steps")
    batch_size: int = option(4, help="LR inputs per step, over all processes")
    group_size: int = option(4, help="grpo: samples per LR input (G)")
    ppo_epochs: int = option(1, help="grpo: optimisation passes over each batch of samples")
    lr: float = option(1e-5, help="learning rate (AdamW)")
    weight_decay: float = option(0.0, help="AdamW weight decay")
    clip_eps: float = option(0.2, help="grpo: PPO ratio clip")
    kl_coef: float = option(0.05, help="grpo: weight of the KL to the reference policy")
    policy_std: float = option(0.05, help="grpo: std of the Gaussian policy around the generator output")
    learn_std: bool = option(False, help="grpo: learn the policy std (per channel)")
    exploration: Exploration = option(
        "antithetic", help="grpo: group noise, antithetic (mirrored pairs +eps, -eps; needs an even G) or iid"
    )
    fidelity_weight: float = option(1.0, help="refl: weight of the MSE to the reference generator's output")
    lora_rank: int = option(0, help="LoRA rank on every conv (0 = train all weights)")
    lora_alpha: float | None = option(None, help="LoRA alpha (none = rank)")
    lora: str | None = option(
        None, help="osediff: LoRA weights (.safetensors or a peft folder) merged into the base model first"
    )
    vae_lora: bool = option(False, help="osediff: also put LoRA on the VAE encoder")
    precision: Precision = option(
        "fp32", help="osediff: autocast dtype of the generator's passes (fp32, bf16 or fp16)"
    )
    gradient_checkpointing: bool = option(
        False, help="osediff: recompute UNet/VAE activations in the backward pass (less memory)"
    )
    ema_decay: float | None = option(None, help="EMA of the weights (none = off), e.g. 0.999")
    grad_clip: float = option(1.0, help="gradient norm clip (0 = off)")
    save_every: int = option(50, help="checkpoint every this many steps")
    lr_size: int = option(64, help="LR crop size (the SR output is scale times larger)")
    hr_folders: tuple[str, ...] = option(
        (), help="HR photo folders degraded on the fly; empty = embedded photos"
    )
    paired_lr: str | None = option(None, help="folder of LR images (paired training data)")
    paired_hr: str | None = option(None, help="folder of HR images with the same names as in paired_lr")
    degradation: DegradationKind = option("realesrgan", help="on-the-fly LR synthesis: realesrgan or bicubic")
    seed: int = option(0, help="seed of data, policy noise and LoRA initialisation")
    out: str = option("runs/rl", help="output folder")
    num_processes: int = option(1, help="local data-parallel processes (accelerate; gloo on CPU)")
    device: str = option("cpu", help="cpu, cuda or auto")
    threads: int = option(0, help="torch threads per process (0 = default)")
    tensorboard: bool = option(True, help="also log to TensorBoard (needs the tensorboard package)")
    preview: int = option(4, help="LR inputs in preview.png (0 = no preview)")
    progress: bool = option(True, help="show a progress bar")

    def __post_init__(self) -> None:
        check(self.algorithm in ("grpo", "refl"), f"algorithm must be grpo or refl, got {self.algorithm!r}")
        check(self.steps >= 1, "steps must be >= 1")
        check(self.batch_size >= 1, "batch_size must be >= 1")
        check(self.num_processes >= 1, "num_processes must be >= 1")
        check(
            self.batch_size % self.num_processes == 0,
            f"batch_size {self.batch_size} must be divisible by num_processes {self.num_processes}",
        )
        check(self.algorithm != "grpo" or self.group_size >= 2, "grpo needs group_size >= 2")
        check(self.ppo_epochs >= 1, "ppo_epochs must be >= 1")
        check(self.exploration in ("iid", "antithetic"), "exploration must be iid or antithetic")
        check(
            self.algorithm != "grpo" or self.exploration == "iid" or self.group_size % 2 == 0,
            f"antithetic exploration needs an even group_size, got {self.group_size}",
        )
        check(self.lr > 0, "lr must be positive")
        check(self.weight_decay >= 0, "weight_decay must be >= 0")
        check(0 < self.clip_eps < 1, f"clip_eps must lie in (0, 1), got {self.clip_eps}")
        check(self.kl_coef >= 0, "kl_coef must be >= 0")
        check(self.policy_std > 0, "policy_std must be positive")
        check(not (self.learn_std and self.algorithm == "refl"), "learn_std has no effect with refl")
        check(self.fidelity_weight >= 0, "fidelity_weight must be >= 0")
        check(self.map_penalty >= 0, "map_penalty must be >= 0")
        check(self.lora_rank >= 0, "lora_rank must be >= 0")
        check(self.lora_alpha is None or self.lora_alpha > 0, "lora_alpha must be positive")
        check(self.precision in ("fp32", "bf16", "fp16"), "precision must be fp32, bf16 or fp16")
        check(self.ema_decay is None or 0 < self.ema_decay < 1, "ema_decay must lie in (0, 1)")
        check(self.grad_clip >= 0, "grad_clip must be >= 0")
        check(self.save_every >= 1, "save_every must be >= 1")
        check(self.lr_size >= 8, "lr_size must be >= 8")
        check(
            (self.paired_lr is None) == (self.paired_hr is None),
            "give both paired_lr and paired_hr, or neither",
        )
        check(not (self.paired_lr and self.hr_folders), "use either hr_folders or paired folders, not both")
        check(self.degradation in ("realesrgan", "bicubic"), "degradation must be realesrgan or bicubic")
        check(self.preview >= 0, "preview must be >= 0")
        check(self.threads >= 0, "threads must be >= 0")
        check(
            isinstance(self.curriculum, CurriculumConfig),
            f"curriculum must be a CurriculumConfig (e.g. kind='ccl'), not {self.curriculum!r}",
        )


StepCallback = Callable[[int, dict[str, float]], None]


# --------------------------------------------------------------------------------------------------
# pieces of the loop (the step functions are in steps.py)


def adapter_options(cfg: RLConfig) -> AdapterOptions:
    """What :func:`~.generators.build_adapter` passes to adapters that own their LoRA (osediff)."""
    return AdapterOptions(
        lora_rank=cfg.lora_rank,
        lora_alpha=cfg.lora_alpha,
        lora=cfg.lora,
        vae_lora=cfg.vae_lora,
        precision=cfg.precision,
        gradient_checkpointing=cfg.gradient_checkpointing,
        seed=cfg.seed,
    )


def _preview(policy: GeneratorAdapter, ref: GeneratorAdapter, data: PairSource, n: int, path: Path) -> None:
    """Rows of LR (nearest) | reference output | fine-tuned output | HR for a fixed set of inputs."""
    lr, hr = data.preview(n)
    dev = next(policy.parameters()).device
    with torch.no_grad():
        lr = lr.to(dev)
        outs = [ref(lr).clamp(0, 1), policy(lr).clamp(0, 1)]
    up = torch.nn.functional.interpolate(lr, scale_factor=policy.scale, mode="nearest")
    rows = [torch.cat([up[i], outs[0][i], outs[1][i], hr[i].to(dev)], dim=2) for i in range(lr.shape[0])]
    save_png(path, torch.cat(rows, dim=1).permute(1, 2, 0).cpu().numpy())


def _stage_rewards(
    cfg: RLConfig, device: torch.device, rewards: Sequence[RewardFn] | None
) -> tuple[Callable[[int], RewardFn], tuple[int, ...]]:
    extras = [parse_weighted_spec(s, device) for s in cfg.extra_rewards]
    if rewards is not None:
        table = dict(enumerate(rewards))

        def base(k: int) -> RewardFn:
            return table[k]

        stages = tuple(table)
    else:
        staged = StagedRMRewards(cfg.reward_model, cfg.map_penalty, device)
        base, stages = staged.__getitem__, staged.stages
    if not extras and cfg.rm_weight == 1.0:
        return base, stages
    return (lambda k: WeightedReward([(cfg.rm_weight, base(k)), *extras])), stages


# --------------------------------------------------------------------------------------------------
# the training run


@dataclass
class _Run:
    """What the loop's parts share: the process group, the policy and its optimiser, the curriculum, data."""

    d: D.Dist
    cfg: RLConfig
    out: Path
    policy: GeneratorAdapter
    ref: GeneratorAdapter
    params: list[torch.nn.Parameter]
    opt: torch.optim.Optimizer
    ema: EMA | None
    curriculum: Curriculum
    data: PairSource
    step: int = 0
    last_plot: float = 0.0


def _prepare_output(d: D.Dist, cfg: RLConfig) -> Path:
    """Refuse an ``out`` with another run's settings; write the config of a new run."""
    out = Path(cfg.out)
    resuming = check_resume(
        out / CONFIG_NAME,
        cfg,
        ignore=_RESUME_IGNORES,
        added_later=_ADDED_LATER,
        layout=lambda saved: flatten(RLConfig, saved),
    )
    if d.main and resuming and (stale := remove_stale_temps(out)):
        logger.info("removed %d partial file(s) that a killed run left in %s", stale, out)
    D.barrier(d)
    if d.main and not resuming:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / CONFIG_NAME, to_dict(cfg))
    return out


def _build_policy(
    d: D.Dist, cfg: RLConfig
) -> tuple[GeneratorAdapter, GeneratorAdapter, list[torch.nn.Parameter], torch.optim.Optimizer, EMA | None]:
    """The generator as a policy, its frozen reference, LoRA, the optimiser and the EMA."""
    policy = build_adapter(cfg.generator, cfg.scale, cfg.policy_std, cfg.learn_std, adapter_options(cfg))
    policy = policy.to(d.device)
    check(
        cfg.lr_size % policy.multiple_of == 0 and cfg.lr_size >= policy.minimum,
        f"{policy.source} needs LR sizes that are multiples of {policy.multiple_of} and >= {policy.minimum}",
    )
    check(
        cfg.lr_size * policy.scale >= RM_MIN_SIZE,
        f"lr_size {cfg.lr_size} x{policy.scale} is below the reward model's {RM_MIN_SIZE} px minimum",
    )
    policy.exploration = cfg.exploration
    ref = policy.reference()
    if cfg.lora_rank and not policy.owns_lora:
        apply_lora(policy.network, cfg.lora_rank, cfg.lora_alpha, seed=cfg.seed)
    D.broadcast_module(d, policy)
    policy.train()
    params = [p for p in policy.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    ema = EMA(policy, cfg.ema_decay) if cfg.ema_decay else None
    logger.info(
        "generator %s (%s, x%d): %d trainable of %d parameters",
        policy.source,
        policy.arch,
        policy.scale,
        sum(p.numel() for p in params),
        sum(p.numel() for p in policy.parameters()),
    )
    return policy, ref, params, opt, ema


def _resume(run: _Run) -> None:
    """Load ``state.pt`` if the run was interrupted."""
    state_path = run.out / STATE_NAME
    if not state_path.is_file():
        return
    state = torch.load(state_path, map_location=run.d.device, weights_only=False)
    run.policy.load_trainable_state(state["policy"])
    run.opt.load_state_dict(state["optimizer"])
    if run.ema is not None:
        run.ema.load_state_dict(state["ema"])
    run.curriculum.load_state_dict(state["curriculum"])
    run.step = int(state["step"])
    logger.info("resuming %s at step %d (RM_%d)", run.out, run.step, run.curriculum.stage)


def _save(run: _Run, log: RunLog) -> None:
    """The resume point, the transitions and (at most once a minute, and at the end) the curves."""
    if run.d.main:
        save_state(
            run.out / STATE_NAME,
            {
                "step": run.step,
                "policy": run.policy.trainable_state(),
                "optimizer": run.opt.state_dict(),
                "ema": run.ema.state_dict() if run.ema is not None else None,
                "curriculum": run.curriculum.state_dict(),
            },
        )
        transitions = [t.as_dict() for t in run.curriculum.transitions]
        atomic_write_json(run.out / TRANSITIONS_NAME, transitions)
        log.flush()
        if run.step == run.cfg.steps or time.perf_counter() - run.last_plot > PLOT_EVERY_S:
            plot_curves(read_log(run.out / CSV_NAME), transitions, run.out / CURVES_NAME)
            run.last_plot = time.perf_counter()
    D.barrier(run.d)


def _train_step(run: _Run, reward: RewardFn) -> dict[str, float]:
    """One optimisation step on this process's share of the batch; returns the logged row."""
    d, cfg = run.d, run.cfg
    t0 = time.perf_counter()
    per_rank = cfg.batch_size // d.world
    indices = range(d.rank * per_rank, (d.rank + 1) * per_rank)
    lr, hr = run.data.batch(run.step, indices)
    lr, hr = lr.to(d.device), hr.to(d.device)
    if cfg.algorithm == "grpo":
        gens = noise_generators(cfg.seed, run.step, indices, d.device)
        stats = grpo_step(d, cfg, run.policy, run.ref, reward, run.opt, run.params, lr, hr, gens)
    else:
        stats = refl_step(d, cfg, run.policy, run.ref, reward, run.opt, run.params, lr, hr)
    if run.ema is not None:
        run.ema.update(run.policy)
    run.step += 1
    row = reduce_stats(d, stats)
    if not math.isfinite(row["loss"]):
        raise FinPercepError(
            f"step {run.step}: the loss is not finite ({row['loss']}); lower --lr or check the reward"
        )
    dt = time.perf_counter() - t0
    samples = cfg.batch_size * (cfg.group_size if cfg.algorithm == "grpo" else 1)
    log_std = getattr(run.policy, "log_std", None)
    row.update(
        step=run.step,
        stage=run.curriculum.stage,
        step_time_s=dt,
        samples_per_s=samples / dt,
        policy_std=float(log_std.detach().exp().mean()) if log_std is not None else math.nan,
    )
    return row


def _advance_curriculum(run: _Run, row: dict[str, float], log: RunLog) -> None:
    transition = run.curriculum.update(run.step, row["reward"])
    if transition is not None:
        logger.info(
            "curriculum: RM_%d -> RM_%d at step %d (%s)",
            transition.from_stage,
            transition.to_stage,
            transition.step,
            transition.reason,
        )
        log.text("curriculum", json.dumps(transition.as_dict()), run.step)


def _export(run: _Run, wall_s: float) -> None:
    """Generator weights (and EMA), preview and ``summary.json``; checks that the replicas agree."""
    d, cfg, policy = run.d, run.cfg, run.policy
    prints = D.gather_strings(d, D.fingerprint(policy))
    if len(set(prints)) > 1:
        logger.error("process replicas diverged: weight fingerprints %s", prints)
    if not d.main:
        return
    meta = {"source": cfg.generator, "scale": policy.scale, "arch": policy.arch, "steps": run.step}
    export_generator(policy, run.out, meta)
    if run.ema is not None:
        with run.ema.swapped_in(policy):
            export_generator(policy, run.out, {**meta, "ema_decay": cfg.ema_decay}, name="generator_ema")
    if cfg.preview:
        _preview(policy, run.ref, run.data, cfg.preview, run.out / "preview.png")
    rows = read_log(run.out / CSV_NAME)
    tail = rows[-max(1, len(rows) // 10) :]
    atomic_write_json(
        run.out / "summary.json",
        {
            "steps": run.step,
            "final_stage": run.curriculum.stage,
            "final_reward": sum(r["reward"] for r in tail) / len(tail) if tail else None,
            "final_kl": sum(r["kl"] for r in tail) / len(tail) if tail else None,
            "transitions": [t.as_dict() for t in run.curriculum.transitions],
            "world_size": d.world,
            "replica_fingerprints": prints,
            "wall_s": wall_s,
        },
    )


def train(
    cfg: RLConfig, *, rewards: Sequence[RewardFn] | None = None, on_step: StepCallback | None = None
) -> Path:
    """Fine-tune ``cfg.generator`` and return the output folder.

    ``rewards`` replaces the reward model's stages by your own stage rewards (stage ``k`` = ``rewards[k]``;
    the curriculum walks through them like RM_0..RM_N). ``on_step(step, row)`` is called after every
    step with the logged metrics (after the checkpoint of that step, if any).
    """
    if cfg.num_processes > 1 and not D.in_process_group():
        D.launch(_spawned_train, (cfg, rewards), cfg.num_processes)
        return Path(cfg.out)
    d = D.setup(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    elif d.world > 1 and d.device.type == "cpu":
        torch.set_num_threads(max(1, torch.get_num_threads() // d.world))
    check(
        cfg.batch_size % d.world == 0, f"batch_size {cfg.batch_size} must be divisible by {d.world} processes"
    )
    out = _prepare_output(d, cfg)
    policy, ref, params, opt, ema = _build_policy(d, cfg)
    reward_for, stages = _stage_rewards(cfg, d.device, rewards)
    curriculum = Curriculum(cfg.curriculum, stages, cfg.steps)
    data = PairSource(
        policy.scale, cfg.lr_size, cfg.seed, cfg.hr_folders, cfg.paired_lr, cfg.paired_hr, cfg.degradation
    )
    run = _Run(d, cfg, out, policy, ref, params, opt, ema, curriculum, data, last_plot=time.perf_counter())
    _resume(run)
    log = RunLog(out, run.step, enabled=d.main, tensorboard=cfg.tensorboard)
    logger.info(
        "curriculum %s/%s over RM stages %s; starting with RM_%d",
        cfg.curriculum.kind,
        cfg.curriculum.schedule,
        list(curriculum.order),
        curriculum.stage,
    )

    bar = None
    if d.main and cfg.progress and run.step < cfg.steps:
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, initial=run.step, desc="rl", unit="step", dynamic_ncols=True)
    t_start = time.perf_counter()
    try:
        while run.step < cfg.steps:
            stage = curriculum.stage
            row = _train_step(run, reward_for(stage))
            log.write(row)
            _advance_curriculum(run, row, log)
            if run.step % cfg.save_every == 0 or run.step == cfg.steps:
                _save(run, log)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(stage=stage, reward=f"{row['reward']:.4f}", kl=f"{row['kl']:.3g}")
            if on_step is not None:
                on_step(run.step, row)
    finally:
        if bar is not None:
            bar.close()
        log.close()

    _export(run, time.perf_counter() - t_start)
    D.barrier(d)
    D.teardown(d)
    return out


def _spawned_train(cfg: RLConfig, rewards: Sequence[RewardFn] | None) -> None:
    train(cfg, rewards=rewards)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m finpercep.rl`` (also under ``accelerate launch`` or ``torchrun``); see ``rl train``."""
    from ..config import run_main

    return run_main(
        RLConfig, lambda cfg, _: train(cfg), argv, prog="finpercep.rl", description=__doc__.splitlines()[0]
    )


if __name__ == "__main__":
    sys.exit(main())
