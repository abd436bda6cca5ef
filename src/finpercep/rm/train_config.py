"""Settings of a reward-model training run (``finpercep rm train``), kept apart from the trainer so that the
command line can be built without loading it."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from ..config import check, check_prob, option
from ..errors import ConfigError


@dataclass(frozen=True)
class RMTrainConfig:
    """Reward-model training (``finpercep rm train``)."""

    data: str = option("runs/fgr_default", help="FGR dataset folder (holds manifest.jsonl)")
    out: str = option("runs/rm", help="output folder (stage_<k> models, state.pt, metrics, curves)")
    stages: int = option(4, help="train RM_0 ... RM_stages; at most the encoder's number of levels")
    epochs: tuple[int, ...] = option(
        (2, 3, 2), help="epochs per stage RM_0, RM_1, ...; the last value repeats for the later stages"
    )
    batch_chains: int = option(4, help="ranking chains per step and process (4 images each)")
    crop: int = option(128, help="random square training crop in pixels (0: whole images)")
    color_jitter: float = option(0.5, help="strength in [0, 1] of the per-chain colour augmentation")
    lr: float = option(2e-3, help="peak AdamW learning rate (warm-up, then cosine decay within each stage)")
    refine_lr: float = option(1.0, help="peak learning rate of RM_2 ... RM_N relative to lr")
    weight_decay: float = option(1e-4, help="AdamW weight decay")
    warmup_steps: int = option(20, help="linear warm-up steps at the start of each stage")
    grad_clip: float = option(1.0, help="gradient-norm clip (0: off)")
    lambda_map: float = option(1.0, help="weight of L_map (map vs. M_gt)")
    lambda_rank: float = option(1.0, help="weight of L_rank (chain hinge)")
    cross_rank: float = option(
        1.0, help="weight, inside L_rank, of the same order across the chains of a batch"
    )
    lambda_level: float = option(
        0.0,
        help="weight of L_level (each score pulled towards -mean(M_gt) of its crop: one score level per "
        "amount of damage across photos, which the ranking hinges stop asking for once their margins hold; "
        "on the embedded-photo data it lowered every validation target, see the README)",
    )
    ema: float = option(
        0.0,
        help="decay per step of an exponential moving average of the weights (0: off); validation and the "
        "saved RM_k use the average, and RM_{k+1} grows from it",
    )
    keep: tuple[Literal["last", "best"], ...] = option(
        ("last",),
        help="per stage RM_0, RM_1, ... (the last value repeats), which epoch is saved as RM_k and grown "
        "from: last, or best = the epoch with the highest mean of validation pixel AUROC, triplet accuracy "
        "and SRCC (the three targets); e.g. best last: early-stop RM_0 only",
    )
    rank_pairs: Literal["chain", "crop_area"] = option(
        "chain",
        help="which ranking pairs count: chain = every pair in chain order; crop_area = only those whose "
        "lower-ranked image has more defect area inside the training crop",
    )
    chain_sampling: Literal["uniform", "hard"] = option(
        "uniform",
        help="order of the training chains in an epoch: uniform = each once; hard = as many draws, half "
        "uniform and half in proportion to each chain's map error when last seen (RM_1 on), so the "
        "chains the map gets wrong come up more often",
    )
    lambda_align: float = option(
        1.0, help="weight of L_align (anchor scores vs. the previous stage, in units of their spread)"
    )
    map_bce: float = option(1.0, help="weight of the soft BCE on map logits inside L_map (0: pure L1)")
    map_balance: float = option(
        0.5, help="class balance of L_map: 0 plain mean, 1 defect and clean pixels equal"
    )
    map_area: float = option(
        0.0, help="weight inside L_map of the image-level L1 between mean(M) and mean(M_gt)"
    )
    deep_supervision: float = option(
        0.5, help="weight of L_map on the coarser maps RM_1..RM_{k-1} inside RM_k"
    )
    margins: tuple[float, float, float] = option(
        (0.1, 0.1, 0.1), help="rank margins GT-small, small-large, large-SR"
    )
    gate_ramp: float = option(
        0.5,
        help="share of RM_1's steps over which the map gate opens from 0 to 1 (score = map-weighted pool)",
    )
    anchors: int = option(32, help="anchor training images whose scores L_align keeps fixed across stages")
    anchor_batch: int = option(4, help="anchor images per step")
    tau: float = option(0.1, help="M_gt threshold for defect pixels (AUROC, NSS, AUC-Judd, balancing)")
    val_sources: tuple[str, ...] = option(
        ("coffee", "motorcycle_*"),
        help="held-out source photos (fnmatch patterns); if none match, a hash rule",
    )
    val_fraction: float = option(
        0.25, help="share of source photos held out when no val_sources pattern matches"
    )
    train_sr_models: tuple[str, ...] = option(
        (),
        help="train only on the chains of these SR sources (fnmatch patterns; none: all); validation keeps "
        "every source, so the others measure the model on SR models it never saw",
    )
    chain_weights: tuple[str, ...] = option(
        (),
        help="PATTERN=W ...: draw the training chains of SR sources matching the fnmatch PATTERN W times as "
        "often as the others (first match wins; the epoch keeps its length), e.g. realesrgan-x4plus=3",
    )
    max_val_samples: int = option(
        0,
        help="validate on whole held-out groups up to this many samples (0: all), the same every epoch",
    )
    max_steps_per_epoch: int = option(0, help="cap on steps per epoch (0: one pass over the chains)")
    val_batch: int = option(8, help="images per validation batch")
    seed: int = option(0, help="seed of data order, augmentation, anchors and parameter initialisation")
    num_workers: int = option(0, help="DataLoader worker processes")
    device: str = option("auto", help="auto, cpu, cuda or cuda:N")
    threads: int = option(0, help="torch CPU threads per process (0: leave torch's default)")
    progress: bool = option(True, help="show progress bars (only on a terminal)")
    curves: Literal["epoch", "stage", "off"] = option("stage", help="redraw curves.png per epoch or stage")
    export: str | None = option(
        None, help="at the end, copy every stage (float16 weights) here, e.g. src/finpercep/assets/rm_default"
    )
    init: str | None = option(
        None,
        help="fine-tune a trained reward model (a run or export folder, or 'default' for the packaged one): "
        "stage k starts from its RM_k, stages it lacks grow as usual; the architecture is its own",
    )

    def __post_init__(self) -> None:
        check(self.stages >= 0, f"stages must be >= 0, got {self.stages}")
        check(
            1 <= len(self.epochs) <= self.stages + 1,
            f"epochs needs 1 to stages+1={self.stages + 1} values, got {len(self.epochs)}",
        )
        check(all(e >= 0 for e in self.epochs), "epochs must be >= 0")
        check(self.batch_chains >= 1, "batch_chains must be >= 1")
        check(self.crop == 0 or self.crop >= 32, f"crop must be 0 or >= 32, got {self.crop}")
        check(
            self.lr > 0 and self.weight_decay >= 0 and self.grad_clip >= 0,
            "lr > 0, weight_decay >= 0, grad_clip >= 0",
        )
        check(
            min(
                self.lambda_map,
                self.lambda_rank,
                self.cross_rank,
                self.lambda_align,
                self.lambda_level,
                self.map_bce,
                self.map_area,
                self.deep_supervision,
            )
            >= 0,
            "loss weights must be >= 0",
        )
        check_prob("map_balance", self.map_balance)
        check_prob("color_jitter", self.color_jitter)
        check(all(m >= 0 for m in self.margins), "margins must be >= 0")
        check(0.0 <= self.ema < 1.0, f"ema must be in [0, 1), got {self.ema}")
        check(
            1 <= len(self.keep) <= self.stages + 1 and all(k in ("last", "best") for k in self.keep),
            f"keep needs 1 to stages+1={self.stages + 1} values, each last or best, got {self.keep}",
        )
        check(
            self.rank_pairs in ("chain", "crop_area"),
            f"rank_pairs must be chain or crop_area, got {self.rank_pairs!r}",
        )
        check(self.anchors >= 0 and self.anchor_batch >= 0, "anchors and anchor_batch must be >= 0")
        check(0.0 < self.tau < 1.0, f"tau must be in (0, 1), got {self.tau}")
        check(self.refine_lr > 0, f"refine_lr must be positive, got {self.refine_lr}")
        check(0.0 <= self.gate_ramp <= 1.0, f"gate_ramp must be in [0, 1], got {self.gate_ramp}")
        check(0.0 < self.val_fraction < 1.0, f"val_fraction must be in (0, 1), got {self.val_fraction}")
        check(self.max_val_samples >= 0 and self.max_steps_per_epoch >= 0, "caps must be >= 0")
        parse_chain_weights(self.chain_weights)
        check(
            self.val_batch >= 1 and self.num_workers >= 0 and self.threads >= 0,
            "val_batch >= 1, workers/threads >= 0",
        )
        check(
            self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"),
            f"device must be auto, cpu or cuda[:N], got {self.device!r}",
        )

    def epochs_for(self, stage: int) -> int:
        return self.epochs[min(stage, len(self.epochs) - 1)]

    def keep_for(self, stage: int) -> str:
        return self.keep[min(stage, len(self.keep) - 1)]


def parse_chain_weights(items: Sequence[str]) -> list[tuple[str, float]]:
    """``["PATTERN=W", ...]`` -> ``[(PATTERN, W), ...]``; a clear error for a malformed item or W <= 0."""
    out = []
    for item in items:
        pattern, sep, w = item.rpartition("=")
        try:
            weight = float(w)
        except ValueError:
            weight = float("nan")
        if not sep or not pattern or not weight > 0 or not math.isfinite(weight):
            raise ConfigError(f"chain_weights: {item!r} is not PATTERN=W with a weight W > 0")
        out.append((pattern, weight))
    return out
