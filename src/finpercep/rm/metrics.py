"""Validation metrics for the reward model's map and score.

Map metrics follow RAHF (Rich Human Feedback, CVPR 2024): CC, KLD, SIM, NSS and AUC-Judd on maps
whose ground truth has defects (``M_gt > tau`` somewhere; those pixels are the "fixations" for NSS and
AUC-Judd), MSE on maps whose ground truth has none (a good model stays dark there), plus the pooled
pixel AUROC of M against ``M_gt > tau``. Score metrics: triplet and pairwise accuracy on ranking chains
and Spearman's rank correlation (SRCC) of the score with minus the defect area.

:func:`hf_energy_map` is the trivial baseline map the model must beat: local high-frequency energy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import combinations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import rankdata, spearmanr

EPS = float(np.finfo(np.float64).eps)


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties); NaN if one class is absent."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels, dtype=bool).ravel()
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def cc(pred: np.ndarray, gt: np.ndarray) -> float:
    """Pearson correlation between two maps (0 when either is constant)."""
    p = np.asarray(pred, np.float64).ravel()
    g = np.asarray(gt, np.float64).ravel()
    p, g = p - p.mean(), g - g.mean()
    denom = math.sqrt(float((p * p).sum()) * float((g * g).sum()))
    return float((p * g).sum() / denom) if denom > 0 else 0.0


def _as_distribution(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, np.float64).ravel()
    m = m - min(0.0, float(m.min()))
    s = m.sum()
    return m / s if s > 0 else np.full_like(m, 1.0 / m.size)


def kld(pred: np.ndarray, gt: np.ndarray) -> float:
    """KL divergence of the ground truth from the prediction, both normalised to sum 1 (lower is better)."""
    p, q = _as_distribution(pred), _as_distribution(gt)
    return float((q * np.log(EPS + q / (p + EPS))).sum())


def sim(pred: np.ndarray, gt: np.ndarray) -> float:
    """Histogram intersection of the two maps normalised to sum 1 (1 = identical)."""
    return float(np.minimum(_as_distribution(pred), _as_distribution(gt)).sum())


def nss(pred: np.ndarray, fixations: np.ndarray) -> float:
    """Normalised scanpath saliency: mean of the standardised prediction at the fixation pixels."""
    p = np.asarray(pred, np.float64).ravel()
    f = np.asarray(fixations, bool).ravel()
    if not f.any():
        return float("nan")
    sd = p.std()
    if sd == 0:
        return 0.0
    return float(((p - p.mean()) / sd)[f].mean())


def auc_judd(pred: np.ndarray, fixations: np.ndarray) -> float:
    """AUC-Judd: ROC area with thresholds at the predicted values of the fixation pixels."""
    s = np.asarray(pred, np.float64).ravel()
    f = np.asarray(fixations, bool).ravel()
    n_fix, n_pix = int(f.sum()), s.size
    if n_fix == 0 or n_fix == n_pix:
        return float("nan")
    thresholds = np.unique(s[f])[::-1]
    fix_sorted, rest_sorted = np.sort(s[f]), np.sort(s[~f])
    tp = (n_fix - np.searchsorted(fix_sorted, thresholds, side="left")) / n_fix
    fp = (rest_sorted.size - np.searchsorted(rest_sorted, thresholds, side="left")) / rest_sorted.size
    tp = np.concatenate([[0.0], tp, [1.0]])
    fp = np.concatenate([[0.0], fp, [1.0]])
    return float(np.trapezoid(tp, fp))


def mse(pred: np.ndarray, gt: np.ndarray) -> float:
    d = np.asarray(pred, np.float64) - np.asarray(gt, np.float64)
    return float((d * d).mean())


def spearman(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    """Spearman rank correlation (NaN when either side is constant)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.size < 2 or np.all(a == a[0]) or np.all(b == b[0]):
        return float("nan")
    return float(spearmanr(a, b).statistic)


def triplet_accuracy(scores: np.ndarray, valid: np.ndarray | None = None) -> float:
    """Fraction of ordered triples ``i < j < k`` (by rank, best first) of each chain with ``s_i > s_j > s_k``.

    ``scores`` is [C, K]; triples with a missing (invalid) member are skipped. A chain of 4 has 4 triples.
    """
    s = np.asarray(scores, np.float64)
    v = np.ones_like(s, bool) if valid is None else np.asarray(valid, bool)
    ok = total = 0
    for i, j, k in combinations(range(s.shape[1]), 3):
        m = v[:, i] & v[:, j] & v[:, k]
        total += int(m.sum())
        ok += int(((s[:, i] > s[:, j]) & (s[:, j] > s[:, k]) & m).sum())
    return ok / total if total else float("nan")


def pairwise_accuracy(scores: np.ndarray, valid: np.ndarray | None = None) -> float:
    """Fraction of ordered pairs ``i < j`` of each chain with ``s_i > s_j``."""
    s = np.asarray(scores, np.float64)
    v = np.ones_like(s, bool) if valid is None else np.asarray(valid, bool)
    ok = total = 0
    for i, j in combinations(range(s.shape[1]), 2):
        m = v[:, i] & v[:, j]
        total += int(m.sum())
        ok += int(((s[:, i] > s[:, j]) & m).sum())
    return ok / total if total else float("nan")


def hf_energy_map(x: torch.Tensor, sigma: float = 4.0) -> torch.Tensor:
    """Trivial baseline: local energy of the Laplacian of the luminance, Gaussian-pooled, min-max per image.

    ``x`` [B,3,H,W] in [0,1] -> [B,1,H,W] in [0,1]. ``1 - hf_energy_map(x)`` is the opposite hypothesis
    (smooth = degraded); validation reports both.
    """
    gray = x.mean(dim=1, keepdim=True)
    lap = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]], dtype=x.dtype, device=x.device)
    e = F.conv2d(F.pad(gray, (1, 1, 1, 1), mode="replicate"), lap.view(1, 1, 3, 3)) ** 2
    r = max(1, int(round(3 * sigma)))
    t = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
    g = torch.exp(-(t**2) / (2 * sigma**2))
    g = g / g.sum()
    e = F.conv2d(F.pad(e, (r, r, 0, 0), mode="replicate"), g.view(1, 1, 1, -1))
    e = F.conv2d(F.pad(e, (0, 0, r, r), mode="replicate"), g.view(1, 1, -1, 1))
    lo = e.amin(dim=(2, 3), keepdim=True)
    hi = e.amax(dim=(2, 3), keepdim=True)
    return (e - lo) / (hi - lo).clamp_min(1e-12)


MAP_METRICS = ("auroc", "cc", "kld", "sim", "nss", "auc_judd", "mse_clean")
HIGHER_IS_BETTER = {
    "auroc": True,
    "cc": True,
    "kld": False,
    "sim": True,
    "nss": True,
    "auc_judd": True,
    "mse_clean": False,
    "triplet_acc": True,
    "pair_acc": True,
    "srcc": True,
}


@dataclass
class MapMetricAccumulator:
    """Collects maps image by image; :meth:`result` returns the pooled and per-image-averaged metrics.

    Pixel AUROC pools a regular subsample (every ``stride``-th pixel in each direction) of all images.
    """

    tau: float = 0.1
    stride: int = 4
    _pix_pred: list[np.ndarray] = field(default_factory=list)
    _pix_lab: list[np.ndarray] = field(default_factory=list)
    _per_image: dict[str, list[float]] = field(default_factory=dict)

    def add(self, pred: np.ndarray, gt: np.ndarray) -> None:
        """``pred``, ``gt``: one map each, (H, W) in [0, 1]."""
        fix = gt > self.tau
        self._pix_pred.append(pred[:: self.stride, :: self.stride].ravel().astype(np.float32))
        self._pix_lab.append(fix[:: self.stride, :: self.stride].ravel())
        if fix.any():
            vals = {
                "cc": cc(pred, gt),
                "kld": kld(pred, gt),
                "sim": sim(pred, gt),
                "nss": nss(pred, fix),
                "auc_judd": auc_judd(pred, fix),
            }
        else:
            vals = {"mse_clean": mse(pred, gt)}
        for k, v in vals.items():
            if not math.isnan(v):
                self._per_image.setdefault(k, []).append(v)

    def result(self) -> dict[str, float]:
        out = {
            "auroc": auroc(np.concatenate(self._pix_pred), np.concatenate(self._pix_lab))
            if self._pix_pred
            else float("nan")
        }
        for k in MAP_METRICS[1:]:
            vals = self._per_image.get(k, [])
            out[k] = float(np.mean(vals)) if vals else float("nan")
        return out


def area_order(
    scores: Sequence[float] | np.ndarray,
    areas: Sequence[float] | np.ndarray,
    subset: Sequence[int] | np.ndarray,
) -> float:
    """How well the samples ``subset`` (indices) sit in the global score-vs-area order.

    The share of pairs (``i`` in ``subset``, any ``j`` with a smaller defect area) in which ``j`` scores
    higher (ties count half): 1.0 when every image with less defect area outscores them, 0.5 at chance. It
    is the part of SRCC(score, -area) that ``subset`` contributes, e.g. one SR model's whole outputs.
    """
    s, a = np.asarray(scores, np.float64), np.asarray(areas, np.float64)
    idx = np.asarray(subset, np.int64)
    if s.shape != a.shape:
        raise ValueError(f"scores {s.shape} and areas {a.shape} differ")
    wins, pairs = 0.0, 0
    for i in idx:
        lower = a < a[i]
        n = int(lower.sum())
        if n:
            wins += float((s[lower] > s[i]).sum() + 0.5 * (s[lower] == s[i]).sum())
            pairs += n
    return wins / pairs if pairs else float("nan")


def role_separation(
    scores: dict[str, float], roles: dict[str, str], order: Sequence[str] = ("gt", "small", "large", "sr")
) -> dict[str, float]:
    """For neighbouring roles of ``order``, the AUROC with which the better role outscores the worse one
    over *all* samples, whatever crop they come from (``"gt>small"``: the share of (GT, small swap) pairs,
    of any two crops, in which the GT scores higher; ties count half).

    Triplet accuracy compares images of one crop; SRCC(score, -area) compares every image with every other,
    and these AUROCs say which step of the ladder it loses on: a step whose score gap is small next to the
    spread of scores from crop to crop has a low AUROC even when every chain is ordered.
    """
    out = {}
    for better, worse in zip(order[:-1], order[1:], strict=True):
        a = [v for k, v in scores.items() if roles.get(k) == better]
        b = [v for k, v in scores.items() if roles.get(k) == worse]
        labels = np.r_[np.ones(len(a), bool), np.zeros(len(b), bool)]
        out[f"{better}>{worse}"] = auroc(np.r_[a, b], labels) if a and b else float("nan")
    return out


def misorder(scores: Sequence[float] | np.ndarray, areas: Sequence[float] | np.ndarray) -> np.ndarray:
    """Per sample, the share of the other samples that sit on the wrong side of it for SRCC(score, -area).

    Sample ``i`` is misordered with ``j`` when ``j`` has less defect area but scores lower, or more defect
    area but scores higher (score ties with different areas count half; equal areas never count). 0 means
    every other sample sits on the right side of it; the samples with the largest values are those that
    cost SRCC the most.
    """
    s, a = np.asarray(scores, np.float64), np.asarray(areas, np.float64)
    if s.shape != a.shape or s.ndim != 1:
        raise ValueError(f"scores {s.shape} and areas {a.shape} must be equal 1-d shapes")
    n = len(s)
    if n < 2:
        return np.zeros(n)
    # O(n log n): walk the samples by area, group by group, counting score ranks of the groups already seen
    # in a Fenwick tree; once from small to large area (j has less area), once from large to small.
    ranks = np.unique(s, return_inverse=True)[1].astype(np.int64) + 1
    out = np.zeros(n)
    for forward in (True, False):
        tree = np.zeros(ranks.max() + 1, np.int64)

        def count_upto(r: int, tree: np.ndarray = tree) -> int:
            total = 0
            while r > 0:
                total += int(tree[r])
                r -= r & -r
            return total

        keys = a if forward else -a
        order = np.argsort(keys, kind="stable")
        seen = 0
        start = 0
        while start < n:
            stop = start
            while stop < n and keys[order[stop]] == keys[order[start]]:
                stop += 1
            group = order[start:stop]
            for i in group:
                below, upto = count_upto(ranks[i] - 1), count_upto(ranks[i])
                # forward: j has less area, wrong when it scores lower; backward: more area, scores higher
                wrong = below if forward else seen - upto
                out[i] += wrong + 0.5 * (upto - below)
            for i in group:
                r = ranks[i]
                while r < len(tree):
                    tree[r] += 1
                    r += r & -r
            seen += len(group)
            start = stop
    return out / (n - 1)


def score_metrics(
    scores: dict[str, float], chains: Sequence[Sequence[str]], areas: dict[str, float]
) -> dict[str, float]:
    """Triplet/pairwise accuracy over ``chains`` (sample ids, best first) and SRCC(score, -defect area).

    ``srcc_gt_relative`` is the SRCC of each chain member's score minus its chain's GT score (first member),
    over the samples in ``chains``: what SRCC would be if the score scale of every photo crop were known.
    Its gap to ``srcc`` is the part lost to content-dependent offsets; the rest is lost inside the chains
    and between SR sources.
    """
    mat = np.array([[scores[i] for i in c] for c in chains], np.float64) if chains else np.zeros((0, 4))
    ids = sorted(scores)
    gt_of = {i: c[0] for c in chains for i in c}
    rel = sorted(gt_of)
    return {
        "triplet_acc": triplet_accuracy(mat) if len(mat) else float("nan"),
        "pair_acc": pairwise_accuracy(mat) if len(mat) else float("nan"),
        "srcc": spearman([scores[i] for i in ids], [-areas[i] for i in ids]),
        "srcc_gt_relative": spearman([scores[i] - scores[gt_of[i]] for i in rel], [-areas[i] for i in rel])
        if rel
        else float("nan"),
    }


def beats(
    model: dict[str, float], baseline: dict[str, float], names: Sequence[str] = MAP_METRICS
) -> dict[str, bool]:
    """Per metric, whether ``model`` is strictly better than ``baseline``."""
    out = {}
    for k in names:
        a, b = model.get(k, float("nan")), baseline.get(k, float("nan"))
        if math.isnan(a) or math.isnan(b):
            continue
        out[k] = a > b if HIGHER_IS_BETTER[k] else a < b
    return out
