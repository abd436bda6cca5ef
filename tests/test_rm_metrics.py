"""Reward-model validation metrics against brute-force definitions and known cases."""

from __future__ import annotations

import math
from itertools import product

import numpy as np
import pytest
import torch

from finpercep.rm.metrics import (
    MapMetricAccumulator,
    area_order,
    auc_judd,
    auroc,
    beats,
    cc,
    hf_energy_map,
    kld,
    misorder,
    nss,
    pairwise_accuracy,
    role_separation,
    score_metrics,
    sim,
    spearman,
    triplet_accuracy,
)


def _auroc_bruteforce(s: np.ndarray, y: np.ndarray) -> float:
    pos, neg = s[y], s[~y]
    wins = sum((p > n) + 0.5 * (p == n) for p, n in product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_auroc_matches_pair_counting_with_ties() -> None:
    rng = np.random.default_rng(0)
    s = rng.integers(0, 5, 60).astype(float)  # many ties
    y = rng.random(60) < 0.3
    assert auroc(s, y) == pytest.approx(_auroc_bruteforce(s, y))
    assert auroc(y.astype(float), y) == 1.0
    assert auroc(-y.astype(float), y) == 0.0
    assert np.isnan(auroc(s, np.zeros(60, bool)))


def test_saliency_metrics_on_identical_and_unrelated_maps() -> None:
    rng = np.random.default_rng(1)
    gt = np.zeros((32, 32))
    gt[8:16, 8:20] = 1.0
    fix = gt > 0.5
    assert cc(gt, gt) == pytest.approx(1.0)
    assert cc(1 - gt, gt) == pytest.approx(-1.0)
    assert kld(gt, gt) == pytest.approx(0.0, abs=1e-9)
    assert sim(gt, gt) == pytest.approx(1.0)
    noise = rng.random((32, 32))
    assert kld(noise, gt) > 1.0
    assert sim(noise, gt) < 0.5
    assert nss(gt, fix) > 2.0 and nss(1 - gt, fix) < -2.0
    assert nss(np.ones_like(gt), fix) == 0.0


def test_auc_judd_perfect_constant_and_inverted() -> None:
    gt = np.zeros((20, 20), bool)
    gt[5:9, 5:9] = True
    assert auc_judd(gt.astype(float), gt) == pytest.approx(1.0)
    assert auc_judd(np.ones((20, 20)), gt) == pytest.approx(0.5)
    assert auc_judd(1.0 - gt, gt) <= 0.5  # thresholds only at fixation values: no credit below chance
    rng = np.random.default_rng(2)
    s = rng.random((20, 20))
    assert auc_judd(s, gt) == pytest.approx(_auc_judd_reference(s, gt))
    assert auc_judd(s, gt) >= auroc(s, gt)  # chords between fixation thresholds lie above the staircase


def _auc_judd_reference(s: np.ndarray, fix: np.ndarray) -> float:
    """The MIT saliency benchmark's loop (distinct values), written out."""
    s, fix = s.ravel(), fix.ravel()
    thresholds = sorted(s[fix], reverse=True)
    n_fix, n_pix = len(thresholds), s.size
    tp, fp = [0.0], [0.0]
    for i, t in enumerate(thresholds):
        above = int((s >= t).sum())
        tp.append((i + 1) / n_fix)
        fp.append((above - (i + 1)) / (n_pix - n_fix))
    tp.append(1.0)
    fp.append(1.0)
    return float(np.trapezoid(tp, fp))


def test_chain_accuracies_and_spearman() -> None:
    good = np.array([[4.0, 3.0, 2.0, 1.0]])
    assert triplet_accuracy(good) == 1.0 and pairwise_accuracy(good) == 1.0
    swapped = np.array([[4.0, 2.0, 3.0, 1.0]])  # small/large swapped
    # triples: (0,1,2) bad, (0,1,3) ok, (0,2,3) ok, (1,2,3) bad
    assert triplet_accuracy(swapped) == 0.5
    assert pairwise_accuracy(swapped) == pytest.approx(5 / 6)
    valid = np.array([[True, True, False, True]])  # the swapped member is missing
    assert triplet_accuracy(swapped, valid) == 1.0
    assert spearman([1, 2, 3, 4], [10, 20, 25, 40]) == pytest.approx(1.0)
    assert np.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_score_metrics_uses_minus_area() -> None:
    scores = {"a": 1.0, "b": 0.5, "c": 0.1, "d": -1.0}
    areas = {"a": 0.0, "b": 0.1, "c": 0.4, "d": 1.0}
    m = score_metrics(scores, [["a", "b", "c", "d"]], areas)
    assert m["srcc"] == pytest.approx(1.0) and m["triplet_acc"] == 1.0


def test_srcc_gt_relative_removes_the_offset_of_each_photo() -> None:
    # two crops, each in perfect order, but the second crop's scores sit 2 lower: its GT below the
    # first crop's SR output, so the plain SRCC suffers while the GT-relative one does not
    areas = {"a0": 0.0, "a1": 0.1, "a2": 0.4, "a3": 1.0, "b0": 0.0, "b1": 0.1, "b2": 0.4, "b3": 1.0}
    base = {"0": 1.0, "1": 0.8, "2": 0.5, "3": 0.0}
    scores = {k: base[k[1]] - (2.0 if k[0] == "b" else 0.0) for k in areas}
    chains = [["a0", "a1", "a2", "a3"], ["b0", "b1", "b2", "b3"]]
    m = score_metrics(scores, chains, areas)
    assert m["srcc"] < 0.5
    assert m["srcc_gt_relative"] == pytest.approx(1.0)
    # a chain out of order lowers it: the offset is all it removes
    scores["a3"] = 2.0
    assert score_metrics(scores, chains, areas)["srcc_gt_relative"] < 0.9
    assert np.isnan(score_metrics(scores, [], areas)["srcc_gt_relative"])


def test_misorder_counts_the_samples_on_the_wrong_side() -> None:
    scores = np.array([1.0, 0.5, 0.6, -1.0, 0.9])
    areas = np.array([0.0, 0.1, 0.4, 1.0, 1.0])
    # sample 4 (most area, second-highest score) is above 1 and 2, and 2 (more area) is above 1
    np.testing.assert_allclose(misorder(scores, areas), np.array([0, 2, 2, 0, 2]) / 4)
    assert misorder(np.array([0.0, 0.0]), np.array([0.0, 1.0])).tolist() == [0.5, 0.5]  # a tie counts half
    assert misorder(np.array([3.0, 1.0]), np.array([0.5, 0.5])).tolist() == [0.0, 0.0]  # equal areas never
    # brute force on random data with ties in both
    rng = np.random.default_rng(0)
    s, a = rng.integers(0, 6, 1100).astype(float), rng.integers(0, 4, 1100) / 3
    got = misorder(s, a)
    for i in rng.choice(1100, 25, replace=False):
        bad = ((a > a[i]) & (s > s[i])) | ((a < a[i]) & (s < s[i]))
        half = (a != a[i]) & (s == s[i])
        assert got[i] == pytest.approx((bad.sum() + 0.5 * half.sum()) / 1099)
    assert misorder([], []).shape == (0,)
    with pytest.raises(ValueError, match="equal 1-d shapes"):
        misorder([1.0, 2.0], [0.0])


def test_area_order_counts_pairs_with_less_area_that_score_higher() -> None:
    scores = np.array([1.0, 0.5, 0.6, -1.0, 0.55])
    areas = np.array([0.0, 0.1, 0.4, 1.0, 1.0])
    # sample 3 (area 1) is below all three smaller-area samples; sample 4 is below 0 and 2, above 1
    assert area_order(scores, areas, [3]) == 1.0
    assert area_order(scores, areas, [4]) == pytest.approx(2 / 3)
    assert area_order(scores, areas, [3, 4]) == pytest.approx(5 / 6)
    assert math.isnan(area_order(scores, areas, [0]))  # nothing has less area than the GT
    tie = area_order(np.array([0.0, 0.0]), np.array([0.0, 1.0]), [1])
    assert tie == 0.5
    # brute force on random data
    rng = np.random.default_rng(0)
    s, a = rng.normal(size=30), rng.integers(0, 4, 30) / 3
    sub = [i for i in range(30) if a[i] > 0.5]
    pairs = [(j, i) for i in sub for j in range(30) if a[j] < a[i]]
    want = sum((s[j] > s[i]) + 0.5 * (s[j] == s[i]) for j, i in pairs) / len(pairs)
    assert area_order(s, a, sub) == pytest.approx(want)


def test_role_separation_compares_roles_across_crops() -> None:
    # two crops, each ordered gt > small > large > sr, but crop b sits 0.5 lower (its GT under a's large swap)
    scores = {"a_gt": 1.0, "a_small": 0.9, "a_large": 0.6, "a_sr": 0.0, "b_gt": 0.5, "b_small": 0.4}
    scores |= {"b_large": 0.1, "b_sr": -0.5}
    roles = {k: k.split("_")[1] for k in scores}
    sep = role_separation(scores, roles)
    assert list(sep) == ["gt>small", "small>large", "large>sr"]
    # gt>small pairs: (a_gt, a_small) yes, (a_gt, b_small) yes, (b_gt, a_small) no, (b_gt, b_small) yes
    assert sep["gt>small"] == pytest.approx(3 / 4)
    assert sep["small>large"] == pytest.approx(3 / 4)  # b_small < a_large
    assert sep["large>sr"] == pytest.approx(4 / 4)
    assert math.isnan(role_separation({"x": 1.0}, {"x": "gt"})["gt>small"])


def test_hf_energy_map_highlights_texture() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.full((1, 3, 64, 64), 0.5)
    x[:, :, :, 32:] += 0.2 * (torch.rand(1, 1, 64, 32, generator=g) - 0.5)
    m = hf_energy_map(x)
    assert m.shape == (1, 1, 64, 64)
    assert float(m.min()) == pytest.approx(0.0) and float(m.max()) == pytest.approx(1.0)
    assert m[..., 40:].mean() > 5 * m[..., :24].mean()


def test_accumulator_separates_clean_and_defect_maps() -> None:
    acc = MapMetricAccumulator(tau=0.1, stride=1)
    gt = np.zeros((16, 16), np.float32)
    gt[4:8, 4:8] = 0.9
    acc.add(gt.copy(), gt)  # perfect on a defect map
    acc.add(np.full((16, 16), 0.2, np.float32), np.zeros((16, 16), np.float32))  # clean map, slightly lit
    r = acc.result()
    assert r["auroc"] > 0.99 and r["cc"] == pytest.approx(1.0)
    assert r["mse_clean"] == pytest.approx(0.04)
    wins = beats(r, {**r, "kld": r["kld"] + 1, "cc": 2.0})  # equal elsewhere: no strict win
    assert wins == {k: k == "kld" for k in ("auroc", "cc", "kld", "sim", "nss", "auc_judd", "mse_clean")}
