"""Run logs: one CSV row per step, TensorBoard scalars, and PNG curves (reward, reward std, KL, stage)."""

from __future__ import annotations

import csv
import io
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..io import atomic_path, atomic_write_text

logger = logging.getLogger(__name__)

CSV_NAME = "log.csv"
TB_DIR = "tensorboard"
CURVES_NAME = "curves.png"
FIELDS = (
    "step", "stage", "reward", "reward_std", "kl", "fidelity", "loss", "clip_frac", "grad_norm", "policy_std",
    "step_time_s", "reward_time_s", "samples_per_s",
)  # fmt: skip


def read_log(path: str | Path) -> list[dict[str, float]]:
    """The rows of a run's ``log.csv`` as floats (``step`` and ``stage`` are whole numbers)."""
    path = Path(path)
    if path.is_dir():
        path = path / CSV_NAME
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]


class RunLog:
    """Appends rows to ``log.csv`` and TensorBoard; on resume, rows after the resumed step are dropped."""

    def __init__(self, out: Path, resume_step: int, enabled: bool = True, tensorboard: bool = True) -> None:
        self.path = out / CSV_NAME
        self.enabled = enabled
        self.writer: Any = None
        if not enabled:
            return
        rows = [r for r in read_log(self.path) if r["step"] <= resume_step]
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=FIELDS, lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: _fmt(r.get(k)) for k in FIELDS})
        atomic_write_text(self.path, buf.getvalue())
        self._file = open(self.path, "a", newline="")  # noqa: SIM115 - kept open for the run
        self._csv = csv.DictWriter(self._file, fieldnames=FIELDS, lineterminator="\n")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:
                logger.warning("TensorBoard logging is off: %s (pip install tensorboard)", exc)
            else:
                self.writer = SummaryWriter(str(out / TB_DIR), purge_step=resume_step + 1)

    def write(self, row: dict[str, float]) -> None:
        if not self.enabled:
            return
        self._csv.writerow({k: _fmt(row.get(k)) for k in FIELDS})
        self._file.flush()
        if self.writer is not None:
            step = int(row["step"])
            for k in FIELDS[1:]:
                v = row.get(k)
                if v is not None and math.isfinite(v):
                    self.writer.add_scalar(f"rl/{k}", v, step)

    def text(self, tag: str, text: str, step: int) -> None:
        if self.enabled and self.writer is not None:
            self.writer.add_text(tag, text, step)

    def flush(self) -> None:
        if self.enabled:
            self._file.flush()
            if self.writer is not None:
                self.writer.flush()

    def close(self) -> None:
        if self.enabled:
            self._file.close()
            if self.writer is not None:
                self.writer.close()


def _fmt(v: float | None) -> str:
    if v is None:
        return ""
    if float(v).is_integer() and abs(v) < 2**53:
        return str(int(v))
    return f"{v:.8g}"


def moving_average(values: Sequence[float], window: int) -> list[float]:
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


def plot_curves(
    rows: Sequence[dict[str, float]], transitions: Sequence[dict[str, Any]], path: Path
) -> Path | None:
    """Reward (with moving average), reward std, KL to the reference and RM stage against the step."""
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    fig, axes = plt.subplots(4, 1, figsize=(8, 9), sharex=True)
    fig.subplots_adjust(left=0.12, right=0.98, top=0.98, bottom=0.06, hspace=0.12)
    panels = (
        ("reward", "reward"),
        ("reward_std", "reward std"),
        ("kl", "KL to reference"),
        ("stage", "RM stage"),
    )
    for ax, (key, label) in zip(axes, panels, strict=True):
        ys = [r.get(key, math.nan) for r in rows]
        if key == "stage":
            ax.step(steps, ys, where="mid", color="k")
        else:
            ax.plot(steps, ys, lw=0.8, alpha=0.5)
            ax.plot(steps, moving_average(ys, max(1, len(ys) // 20)), lw=1.5)
        for t in transitions:
            ax.axvline(t["step"] + 0.5, color="r", ls="--", lw=0.8)  # between the last old and first new row
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("step")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
    return path
