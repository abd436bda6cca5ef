"""RL fine-tuning of Real-ISR generators against a reward, with the co-evolutionary curriculum (CCL).

Entry points: :func:`train` with an :class:`RLConfig` (``finpercep rl train`` on the command line),
the adapter interface :class:`GeneratorAdapter` for new generator families, the reward callables of
:mod:`.rewards`, the pure curriculum logic of :mod:`.curriculum`, and for code that reads RL output
folders :mod:`.policy` (:func:`load_policy`, :func:`reference_rewards`).
"""

from ..ema import EMA
from ..gen.registry import ADAPTER_ENTRIES
from .curriculum import Curriculum, CurriculumConfig, Transition, plateau_test
from .generators import (
    AdapterOptions,
    GaussianPolicy,
    GeneratorAdapter,
    LoadedGenerator,
    Rollout,
    build_adapter,
    build_generator,
    export_generator,
    frozen_copy,
    generator_names,
    load_exported,
    load_spandrel,
)
from .logs import read_log
from .lora import LoRAConv2d, apply_lora, merge_lora
from .losses import clipped_surrogate, gaussian_kl, gaussian_log_prob, group_advantages, grpo_loss
from .policy import (
    TrainingSamples,
    build_policy,
    checkpoint_step,
    is_run_dir,
    load_policy,
    pretrained_policy,
    reference_rewards,
    run_config,
    training_data,
    training_samples,
)
from .rewards import (
    PyIQAReward,
    RewardFn,
    RMScoreReward,
    StagedRMRewards,
    WeightedReward,
    load_reward,
    parse_weighted_spec,
)
from .train import RLConfig, train

__all__ = [
    "ADAPTER_ENTRIES",
    "EMA",
    "AdapterOptions",
    "Curriculum",
    "CurriculumConfig",
    "GaussianPolicy",
    "GeneratorAdapter",
    "LoRAConv2d",
    "LoadedGenerator",
    "PyIQAReward",
    "RLConfig",
    "RMScoreReward",
    "RewardFn",
    "Rollout",
    "StagedRMRewards",
    "TrainingSamples",
    "Transition",
    "WeightedReward",
    "apply_lora",
    "build_adapter",
    "build_generator",
    "build_policy",
    "checkpoint_step",
    "clipped_surrogate",
    "export_generator",
    "frozen_copy",
    "gaussian_kl",
    "gaussian_log_prob",
    "generator_names",
    "group_advantages",
    "grpo_loss",
    "is_run_dir",
    "load_exported",
    "load_policy",
    "load_reward",
    "load_spandrel",
    "merge_lora",
    "parse_weighted_spec",
    "plateau_test",
    "pretrained_policy",
    "read_log",
    "reference_rewards",
    "run_config",
    "train",
    "training_data",
    "training_samples",
]
