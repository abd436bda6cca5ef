"""Evaluation of SR generators: PSNR/SSIM, the GT-based artifact measure, a held-out judge reward model,
the paper's IQA metrics (through pyiqa, from local weights only) and NIQE."""

from .evaluate import (
    EVAL_PHOTOS,
    EvalConfig,
    EvalPair,
    EvalResult,
    degraded_pairs,
    evaluate,
    folder_pairs,
    make_pairs,
    read_result,
    run_eval,
    write_result,
)
from .metrics import ArtifactStats, artifact_maps, artifact_measure, artifact_stats, psnr, rgb_to_y, ssim
from .pyiqa_metrics import IQA_NAMES, IQA_SPECS, IQAScorer, IQAStatus, available_iqa_metrics

__all__ = [
    "EVAL_PHOTOS",
    "IQA_NAMES",
    "IQA_SPECS",
    "ArtifactStats",
    "EvalConfig",
    "EvalPair",
    "EvalResult",
    "IQAScorer",
    "IQAStatus",
    "artifact_maps",
    "artifact_measure",
    "artifact_stats",
    "available_iqa_metrics",
    "degraded_pairs",
    "evaluate",
    "folder_pairs",
    "make_pairs",
    "psnr",
    "read_result",
    "rgb_to_y",
    "run_eval",
    "ssim",
    "write_result",
]
