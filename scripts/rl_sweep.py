"""Run RL variants x seeds with ``scripts/rl_probe.py`` in parallel and tabulate them against the baseline.

Question it answered (issue 22, item 3): which RL setting improves the generator on photos neither the
reward model nor RL saw, for every seed, and not only for one.

    python scripts/rl_sweep.py --sweep scripts/sweeps/item3.txt --seeds 0 1 2 --jobs 2 --out runs/sweep \\
        --eval val=.dev/pairs/val/lr:.dev/pairs/val/hr test=.dev/pairs/test/lr:.dev/pairs/test/hr

A sweep file has one variant a line, ``NAME: rl_probe options`` (``#`` starts a comment); ``--common``
options go to every variant. Runs already evaluated are skipped, so a killed sweep resumes. Writes
``OUT/summary.md`` and ``OUT/summary.json``: per evaluation set and variant, every seed's paired mean
difference to the untouched generator, their mean and the 95 % t-interval over the seeds; then, per seed, the
mean over the evaluation sets, against the untouched generator and against ``--control`` (a variant whose
change is the estimator's drift alone, e.g. ``--reward random``), with their t-intervals over the seeds.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from probe_table import METRICS, paired, read
from scipy import stats

HERE = Path(__file__).resolve().parent


def read_sweep(path: Path) -> list[tuple[str, list[str]]]:
    variants = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, opts = line.partition(":")
            variants.append((name.strip(), shlex.split(opts)))
    return variants


def run(args: list[str], log: Path) -> int:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as f:
        return subprocess.call(
            [sys.executable, str(HERE / "rl_probe.py"), *args], stdout=f, stderr=subprocess.STDOUT
        )


def interval(values: list[float]) -> tuple[float, float]:
    n = len(values)
    m = sum(values) / n
    if n < 2:
        return m, math.nan
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1))
    return m, stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)


def summarise(out: Path, variants: list[str], seeds: list[int], sets: list[str]) -> dict:
    summary: dict = {}
    for s in sets:
        base = read(out / "baseline" / f"eval_{s}")
        summary[s] = {"baseline": {m: sum(r[m] for r in base.values()) / len(base) for m in METRICS}}
        for v in variants:
            per_seed = {}
            for seed in seeds:
                path = out / v / f"seed_{seed}" / f"eval_{s}" / "per_image.csv"
                if path.is_file():
                    cur = read(path)
                    per_seed[seed] = {m: paired(base, cur, m)[0] for m in METRICS}
            if per_seed:
                summary[s][v] = {
                    m: {
                        "seeds": [d[m] for d in per_seed.values()],
                        "mean_ci": interval([d[m] for d in per_seed.values()]),
                    }
                    for m in METRICS
                }
    return summary


def pooled(summary: dict, sets: list[str], control: str | None) -> dict:
    """Per variant and metric: every seed's mean over ``sets`` (minus ``control``'s when given), their mean
    and t-interval. Only variants with the same seeds as the control on every set."""
    variants = [v for v in summary[sets[0]] if v != "baseline" and all(v in summary[s] for s in sets)]
    out: dict = {}
    for v in variants:
        if control is not None and v == control:
            continue
        cols = {}
        for m in METRICS:
            per = [
                sum(vals) / len(sets) for vals in zip(*(summary[s][v][m]["seeds"] for s in sets), strict=True)
            ]
            if control is not None:
                ref = [
                    sum(vals) / len(sets)
                    for vals in zip(*(summary[s][control][m]["seeds"] for s in sets), strict=True)
                ]
                per = [a - b for a, b in zip(per, ref, strict=True)]
            cols[m] = {"seeds": per, "mean_ci": interval(per)}
        out[v] = cols
    return out


def markdown(summary: dict) -> str:
    lines = []
    for s, rows in summary.items():
        base = rows.get("baseline")
        lines += [f"### {s}", "", "| variant | " + " | ".join(f"Δ{m}" for m in METRICS) + " |"]
        lines.append("|---|" + "---:|" * len(METRICS))
        if base is not None:
            lines.append("| baseline (absolute) | " + " | ".join(f"{base[m]:.4g}" for m in METRICS) + " |")
        for v, cols in rows.items():
            if v == "baseline":
                continue
            cells = []
            for m in METRICS:
                mean, half = cols[m]["mean_ci"]
                each = "/".join(f"{x:+.3g}" for x in cols[m]["seeds"])
                cells.append(f"{mean:+.3g} ± {half:.2g} ({each})")
            lines.append(f"| {v} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sweep", type=Path, required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--eval", nargs="+", required=True, metavar="NAME=DIR[:HRDIR]")
    p.add_argument("--common", default="", help="options given to every variant")
    p.add_argument("--only", nargs="*", default=None, help="run only these variants")
    p.add_argument("--summary-only", action="store_true", help="tabulate what has finished, run nothing")
    p.add_argument("--control", default="null", help="variant the pooled table is also compared with")
    ns = p.parse_args(argv)
    variants = [v for v in read_sweep(ns.sweep) if ns.only is None or v[0] in ns.only]
    sets = [e.partition("=")[0] for e in ns.eval]
    common = shlex.split(ns.common)
    ev = ["--eval", *ns.eval]
    jobs = []
    if not (ns.out / "baseline" / f"eval_{sets[-1]}" / "per_image.csv").is_file():
        jobs.append(
            ([*common, "--steps", "0", "--out", str(ns.out / "baseline"), *ev], ns.out / "baseline.log")
        )
    for name, opts in variants:
        for seed in ns.seeds:
            run_dir = ns.out / name / f"seed_{seed}"
            if (run_dir / f"eval_{sets[-1]}" / "per_image.csv").is_file():
                continue
            args = [*common, *opts, "--seed", str(seed), "--out", str(run_dir), *ev]
            jobs.append((args, ns.out / name / f"seed_{seed}.log"))
    if ns.summary_only:
        jobs = []
    with ThreadPoolExecutor(max(1, ns.jobs)) as pool:
        codes = list(pool.map(lambda j: run(*j), jobs))
    failed = [str(log) for (_, log), c in zip(jobs, codes, strict=True) if c != 0]
    summary = summarise(ns.out, [v for v, _ in variants], ns.seeds, sets)
    complete = [
        v
        for v, _ in variants
        if all(len(summary[s].get(v, {}).get("psnr", {}).get("seeds", [])) == len(ns.seeds) for s in sets)
    ]
    all_sets = "+".join(sets)
    summary[f"{all_sets}, per seed"] = pooled(
        {s: {v: summary[s][v] for v in complete} for s in sets}, sets, None
    )
    if ns.control in complete:
        summary[f"{all_sets}, per seed, minus {ns.control}"] = pooled(
            {s: {v: summary[s][v] for v in complete} for s in sets}, sets, ns.control
        )
    (ns.out / "summary.json").write_text(json.dumps(summary, indent=1))
    (ns.out / "summary.md").write_text(markdown(summary))
    sys.stdout.write(markdown(summary) + "\n")
    if failed:
        sys.stderr.write("failed: " + " ".join(failed) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
