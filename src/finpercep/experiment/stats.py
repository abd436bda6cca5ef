"""Intervals over RL seeds (and, with one seed, over evaluation crops) for the reward-hacking experiment.

Every table cell of a row run with ``N`` RL seeds is ``mean ± t_{0.975, N-1} · sd / √N`` (a 95 % Student t
interval; ``sd`` with ``N - 1`` degrees of freedom); with one seed it is just the value. A difference between
two rows is taken per seed (both rows ran with the same seeds; the deterministic baseline is the same for
every seed), and its interval is the t-interval of those differences. With a single seed the only spread
there is to measure is the crop-to-crop one, so the differences are taken per evaluation crop instead
(``unit`` says which).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

Unit = Literal["seeds", "crops"]


def t_quantile(n: int, level: float = 0.95) -> float:
    """``t_{(1+level)/2, n-1}``: the two-sided Student t quantile for ``n`` values (NaN for ``n < 2``)."""
    if n < 2:
        return math.nan
    from scipy.stats import t

    return float(t.ppf(0.5 + level / 2, n - 1))


@dataclass(frozen=True)
class Interval:
    """``mean ± half`` over ``n`` values (``half`` is NaN when ``n < 2``: there is no spread to measure)."""

    mean: float
    half: float
    n: int
    unit: Unit = "seeds"

    @property
    def lo(self) -> float:
        return self.mean - self.half

    @property
    def hi(self) -> float:
        return self.mean + self.half

    @property
    def measured(self) -> bool:
        """Whether there is an interval at all (a finite mean and a finite half-width)."""
        return math.isfinite(self.mean) and math.isfinite(self.half)

    def sign(self) -> int:
        """+1 when the whole interval lies above zero, -1 when below, 0 when it holds zero or is
        unmeasured."""
        if not self.measured:
            return 0
        return 1 if self.lo > 0 else -1 if self.hi < 0 else 0

    def excludes_zero(self) -> bool:
        return self.sign() != 0

    def text(self, digits: int = 4) -> str:
        """``"+0.0123 ± 0.0045, 95 % interval [+0.0078, +0.0168] over 3 seeds"``, or the value alone."""
        if not math.isfinite(self.mean):
            return "not measured"
        if not math.isfinite(self.half):
            return f"{self.mean:+.{digits}g}, one value: no interval"
        return (
            f"{self.mean:+.{digits}g} ± {self.half:.2g}, 95 % interval [{self.lo:+.{digits}g}, "
            f"{self.hi:+.{digits}g}] over {self.n} {self.unit}"
        )

    def spread(self) -> str:
        """What a difference inside this interval is within."""
        if self.unit == "crops":
            return "crop-to-crop spread of this one-seed evaluation"
        return "seed-to-seed spread"

    def to_dict(self) -> dict[str, Any]:
        finite = self.measured
        return {
            "mean": self.mean,
            "half": self.half,
            "lo": self.lo if finite else None,
            "hi": self.hi if finite else None,
            "n": self.n,
            "unit": self.unit,
        }


def t_interval(values: Sequence[float | None], unit: Unit = "seeds", level: float = 0.95) -> Interval:
    """``mean ± t_{(1+level)/2, n-1} · sd / √n`` of the finite ``values`` (``half`` NaN for one value)."""
    v = np.asarray([float(x) for x in values if x is not None and math.isfinite(float(x))], dtype=np.float64)
    if len(v) == 0:
        return Interval(math.nan, math.nan, 0, unit)
    if len(v) == 1:
        return Interval(float(v[0]), math.nan, 1, unit)
    half = t_quantile(len(v), level) * float(v.std(ddof=1)) / math.sqrt(len(v))
    return Interval(float(v.mean()), half, len(v), unit)


Verdict = Literal["yes", "no", "spread"]


def verdict(iv: Interval, expected_sign: int) -> Verdict:
    """``yes`` when the interval lies wholly on the ``expected_sign`` side of zero, ``no`` when it lies wholly
    on the other side, ``spread`` when it holds zero (or cannot be measured): then nothing may be stated."""
    s = iv.sign()
    if s == 0:
        return "spread"
    return "yes" if s == expected_sign else "no"


# --------------------------------------------------------------------------------------------------
# rows run with several seeds


def per_seed_values(row: Mapping[str, Any], key: str) -> dict[Any, float]:
    """``{seed: value}`` of ``key`` over a row's runs (the baseline's one run has seed ``None``)."""
    out = {}
    for run in row["runs"]:
        v = run["metrics"].get(key)
        out[run["seed"]] = math.nan if v is None else float(v)
    return out


def _crop_values(run: Mapping[str, Any], key: str) -> dict[str, float]:
    return {r["pair"]: float(r[key]) for r in run.get("per_image", []) if r.get(key) is not None}


def paired_seed_diffs(a: Mapping[str, Any], b: Mapping[str, Any], key: str) -> list[float]:
    """``a - b`` per seed: over the seeds both rows ran, or every seed of one row against the other's single
    unseeded run (the baseline)."""
    va, vb = per_seed_values(a, key), per_seed_values(b, key)
    if None in vb:
        return [x - vb[None] for x in va.values()]
    if None in va:
        return [va[None] - y for y in vb.values()]
    return [va[s] - vb[s] for s in va if s in vb]


def paired_crop_diffs(a: Mapping[str, Any], b: Mapping[str, Any], key: str) -> list[float]:
    """``a - b`` per evaluation crop of the rows' first runs (both rows see the same crops)."""
    ca, cb = _crop_values(a["runs"][0], key), _crop_values(b["runs"][0], key)
    return [ca[p] - cb[p] for p in ca if p in cb]


def diff_interval(a: Mapping[str, Any], b: Mapping[str, Any], key: str) -> Interval:
    """The 95 % t-interval of ``a - b`` for ``key``: paired by seed when two or more seeds pair up, else (one
    seed) paired by evaluation crop when the metric has per-crop values, else the single difference."""
    by_seed = paired_seed_diffs(a, b, key)
    if len(by_seed) >= 2:
        return t_interval(by_seed, "seeds")
    by_crop = paired_crop_diffs(a, b, key)
    if len(by_crop) >= 2:
        return t_interval(by_crop, "crops")
    return t_interval(by_seed, "seeds")


def cell(values: Sequence[float | None], decimals: int) -> str:
    """A table cell: ``"0.1234"`` for one value, ``"0.1234 ± 0.0056"`` (mean ± 95 % t half-width) for more,
    ``"–"`` when there is no finite value."""
    iv = t_interval(values)
    if not math.isfinite(iv.mean):
        return "–"
    if not math.isfinite(iv.half):
        return f"{iv.mean:.{decimals}f}"
    return f"{iv.mean:.{decimals}f} ± {iv.half:.{decimals}f}"


def seed_means(runs: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Every metric of a row averaged over its runs (NaN where no run has a finite value)."""
    keys: dict[str, None] = {}
    for run in runs:
        keys.update(dict.fromkeys(run["metrics"]))
    return {k: t_interval([run["metrics"].get(k) for run in runs]).mean for k in keys}


def crop_stderr(runs: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Standard error over the evaluation crops of each per-crop metric, averaged over the runs first (with
    one run: that run's per-crop standard error)."""
    by_pair: dict[str, dict[str, list[float]]] = {}
    for run in runs:
        for r in run.get("per_image", []):
            slot = by_pair.setdefault(r["pair"], {})
            for k, v in r.items():
                if k != "pair" and v is not None and math.isfinite(float(v)):
                    slot.setdefault(k, []).append(float(v))
    keys = {k for slot in by_pair.values() for k in slot}
    out = {}
    for k in sorted(keys):
        v = np.asarray([np.mean(s[k]) for s in by_pair.values() if s.get(k)], dtype=np.float64)
        out[k] = float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else math.nan
    return out


__all__ = [
    "Interval",
    "cell",
    "crop_stderr",
    "diff_interval",
    "paired_crop_diffs",
    "paired_seed_diffs",
    "per_seed_values",
    "seed_means",
    "t_interval",
    "t_quantile",
    "verdict",
]
