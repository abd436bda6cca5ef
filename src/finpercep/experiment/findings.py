"""The reward-hacking report's findings, each stated only when the interval of its difference excludes zero.

A difference between two rows is paired by RL seed and summarised by the 95 % t-interval of the per-seed
differences (:func:`~finpercep.experiment.stats.diff_interval`; with one seed, by evaluation crop). A finding
is *stated* (``reproduced: True``) only when every interval it rests on lies on its side of zero; it is
*refuted* (``False``) when an interval lies on the other side; otherwise (``None``) the report says that the
difference is within the seed-to-seed (or, with one seed, crop-to-crop) spread, with the numbers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from .stats import Interval, Verdict, diff_interval, verdict

OSC_RATIO = 1.2
"""How much larger the reward-gain std without CCL must be than with it to count as oscillation."""

Row = Mapping[str, Any]


def _m(r: Row, k: str) -> float:
    v = r["metrics"].get(k)
    return math.nan if v is None else float(v)


def says(iv: Interval, expected_sign: int, yes: str, no: str, what: str) -> tuple[Verdict, str]:
    """The verdict on one difference and its sentence: ``yes`` / ``no`` when the interval excludes zero on the
    expected / other side, else that ``what`` is within the spread; the numbers follow in parentheses."""
    v = verdict(iv, expected_sign)
    if v == "yes":
        return v, f"{yes} (Δ {iv.text()})."
    if v == "no":
        return v, f"{no} (Δ {iv.text()})."
    if not iv.measured:
        return v, f"{what}: no interval can be measured (Δ {iv.text()}); run with --seeds 2 or more."
    return v, f"{what}: the difference is within the {iv.spread()} (Δ {iv.text()})."


def finding_hacking(b: Row, g: Row) -> dict[str, Any]:
    """Global reward hacking: RM_0's own score rose while the artifact fraction rose or PSNR fell."""
    ivs = {k: diff_interval(g, b, k) for k in ("score:RM_0", "artifact_frac", "psnr")}
    v_rm, t_rm = says(ivs["score:RM_0"], 1, "RM_0's own score rose", "RM_0's own score fell", "RM_0's score")
    v_art, t_art = says(
        ivs["artifact_frac"],
        1,
        "The artifact fraction rose",
        "The artifact fraction fell",
        "Artifact fraction",
    )
    v_ps, t_ps = says(ivs["psnr"], -1, "PSNR fell", "PSNR rose", "PSNR")
    text = (
        f"With the global reward against the baseline, RM_0's own score went {_m(b, 'score:RM_0'):.4f} → "
        f"{_m(g, 'score:RM_0'):.4f}, the artifact fraction {_m(b, 'artifact_frac'):.4f} → "
        f"{_m(g, 'artifact_frac'):.4f} and PSNR {_m(b, 'psnr'):.2f} → {_m(g, 'psnr'):.2f} dB. "
        f"{t_rm} {t_art} {t_ps} "
    )
    ok: bool | None
    if v_rm == "yes" and "yes" in (v_art, v_ps):
        ok = True
        text += "The reward rose while fidelity to the HR image fell: the global reward is hacked."
    elif v_rm == "no":
        ok = False
        text += "RL did not raise the global reward on the held-out crops, so there was nothing to hack."
    elif v_rm == "yes" and "no" in (v_art, v_ps):
        ok = False
        text += "The reward rose while fidelity did not fall: no hacking at this scale."
    else:
        ok = None
        text += "Hacking is not stated: a difference it rests on is within the spread."
    return {
        "finding": "global reward hacking",
        "reproduced": ok,
        "intervals": {k: iv.to_dict() for k, iv in ivs.items()},
        "text": text,
    }


def finding_oscillation(f: Row, c: Row, osc_from: int, n_stage: int) -> dict[str, Any]:
    """Without CCL the per-step reward gain fluctuates more (by :data:`OSC_RATIO`, with an interval over
    seeds; a training statistic has no per-crop values, so one seed decides nothing)."""
    fo, co = _m(f, "reward_osc"), _m(c, "reward_osc")
    ratio = fo / co if math.isfinite(fo) and math.isfinite(co) and co > 0 else math.nan
    iv = diff_interval(f, c, "reward_osc")
    v, sentence = says(
        iv,
        1,
        "The run without CCL fluctuates more",
        "The run without CCL fluctuates less",
        "Gain rolling std",
    )
    text = (
        f"Mean rolling std of the per-step reward gain over the pretrained generator (same batch, policy "
        f"noise and reward model, so batch content cancels) after step {osc_from}, where both rows train "
        f"against RM_{n_stage}: {fo:.4g} without CCL, {co:.4g} with CCL (ratio {ratio:.2f}; raw reward: "
        f"{_m(f, 'reward_osc_raw'):.4g} and {_m(c, 'reward_osc_raw'):.4g}). {sentence} "
    )
    ok: bool | None = None
    if v == "yes" and ratio >= OSC_RATIO:
        ok = True
        text += f"Training against the full FinPercep-RM from the start fluctuates more ({ratio:.2f}x)."
    elif v == "yes":
        ok = False
        text += (
            f"It fluctuates only {ratio:.2f}x as much, less than the {OSC_RATIO}x this report asks for: "
            "no clear oscillation at this scale."
        )
    elif v == "no":
        ok = False
        text += "The run without CCL did not fluctuate more by this measure."
    else:
        text += "Oscillation is not stated."
    return {
        "finding": "FinPercep-RM without CCL oscillates",
        "reproduced": ok,
        "ratio": ratio,
        "intervals": {"reward_osc": iv.to_dict()},
        "text": text,
    }


def _best_of_all(c: Row, others: Sequence[Row]) -> tuple[bool, str]:
    """Whether CCL beats every other row on the judge and on the artifact fraction, by intervals that
    exclude zero."""
    lost: dict[str, list[str]] = {"judge": [], "artifact_frac": []}
    for r in others:
        if verdict(diff_interval(c, r, "judge"), 1) != "yes":
            lost["judge"].append(r["label"])
        if verdict(diff_interval(c, r, "artifact_frac"), -1) != "yes":
            lost["artifact_frac"].append(r["label"])
    parts = []
    for key, name in (("judge", "the judge"), ("artifact_frac", "the artifact measure")):
        if lost[key]:
            parts.append(
                f"not clearly the best on {name} (not beaten beyond the spread: {', '.join(lost[key])})"
            )
        else:
            parts.append(f"the best on {name}")
    return not (lost["judge"] or lost["artifact_frac"]), "Among all rows it is " + " and ".join(parts) + "."


def finding_ccl(c: Row, g: Row, others: Sequence[Row]) -> dict[str, Any]:
    """FinPercep-RM + CCL against the global reward: a higher judge score and fewer artifacts."""
    ivs = {k: diff_interval(c, g, k) for k in ("judge", "artifact_frac")}
    v_j, t_j = says(
        ivs["judge"],
        1,
        "The judge prefers CCL to the global reward",
        "The judge prefers the global reward to CCL",
        "Judge score",
    )
    v_a, t_a = says(
        ivs["artifact_frac"],
        -1,
        "CCL has fewer artifacts than the global reward",
        "CCL has more artifacts than the global reward",
        "Artifact fraction",
    )
    best, best_text = _best_of_all(c, others)
    text = (
        f"FinPercep-RM + CCL against the global reward: judge {_m(c, 'judge'):.4f} vs {_m(g, 'judge'):.4f}, "
        f"artifact fraction {_m(c, 'artifact_frac'):.4f} vs {_m(g, 'artifact_frac'):.4f}. {t_j} {t_a} "
        f"{best_text}"
    )
    ok = True if (v_j, v_a) == ("yes", "yes") else False if "no" in (v_j, v_a) else None
    return {
        "finding": "FinPercep-RM + CCL best on judge and artifacts",
        "reproduced": ok,
        "best_of_all_rows": best,
        "intervals": {k: iv.to_dict() for k, iv in ivs.items()},
        "text": text,
    }


def note(rows: Sequence[Row], n_seeds: int) -> dict[str, Any]:
    """How the intervals were taken (one seed: over the crops, evaluation noise only)."""
    n_pairs = len(rows[0]["runs"][0].get("per_image", [])) if rows else 0
    if n_seeds >= 2:
        text = (
            f"Every RL row ran with {n_seeds} RL seeds (reward model, judge and evaluation crops fixed). "
            "Table cells are mean ± the 95 % t-interval half-width over the seeds; a difference is taken per "
            "seed (paired by seed; the baseline has no seed) and a finding is stated only when the 95 % "
            "t-interval of those differences excludes zero."
        )
    else:
        text = (
            f"One RL seed: differences are paired over the same {n_pairs} held-out evaluation crops and a "
            "finding is stated only when their 95 % t-interval excludes zero. That interval holds only the "
            "evaluation noise, not the seed-to-seed spread (often larger): run with --seeds 2 or more."
        )
    return {"finding": "note", "reproduced": None, "text": text}


def findings(data: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The paper's three findings, each with ``reproduced`` (True: stated; False: the opposite holds beyond
    the spread; None: within the spread or not measurable) and a text written from the measured numbers."""
    rows = {r["row"]: r for r in data["rows"]}
    b, g, f, c = (rows.get(k) for k in ("baseline", "global", "finpercep", "finpercep_ccl"))
    out: list[dict[str, Any]] = []
    if b and g:
        out.append(finding_hacking(b, g))
    if f and c:
        out.append(finding_oscillation(f, c, data["osc_from"], data["n_stage"]))
    if c and g:
        out.append(finding_ccl(c, g, [r for k, r in rows.items() if k != "finpercep_ccl"]))
    if out:
        out.append(note(list(rows.values()), int(data.get("n_seeds", 1))))
    return out


__all__ = ["OSC_RATIO", "finding_ccl", "finding_hacking", "finding_oscillation", "findings", "says"]
