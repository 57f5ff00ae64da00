"""Fold metrics on real chains (1A8O, 1TEN): RMSD, lDDT-Cα, TM-score, GDT-TS, contact precision.

Hand-checked values come from constructions with a known answer (a rigid motion, a uniform
scaling, a hinge motion of one half) and from brute-force loops written independently here.
"""

import math

import numpy as np
import pytest
import torch

from fold_structures import backbone, random_rigid
from modalities.protein.contact_metrics import contact_precisions
from modalities.protein.fold.metrics import (
    contact_labels, contact_precision, fold_metrics, gdt_ts, kabsch_rmsd, lddt_ca, superpose, tm_d0, tm_score,
)


@pytest.fixture(scope="module")
def ca():
    return backbone("1A8O.pdb")[1][:, 1]


def _rigid(x, seed):
    rot, shift = random_rigid(seed)
    return x @ rot.T + shift


def _hinge(ca, k, seed=20, noise=0.7):
    """Residues k: moved rigidly (a domain motion), then 0.7 Å of noise everywhere."""
    rot, shift = random_rigid(seed)
    moved = ca.copy()
    moved[k:] = ca[k:] @ rot.T + shift / 10
    return moved + np.random.default_rng(seed).normal(size=ca.shape) * noise


def _tm_at(pred, true, rot, trans, d0):
    total = 0.0
    for p, t in zip(pred, true):
        d = math.dist(rot @ p + trans, t)
        total += 1.0 / (1.0 + (d / d0) ** 2)
    return total / len(true)


def test_identical_after_random_rigid_motion(ca):
    moved = _rigid(ca, 1)
    assert kabsch_rmsd(moved, ca) < 1e-9
    rot, trans = superpose(moved, ca)
    assert np.allclose(moved @ rot.T + trans, ca, atol=1e-9) and np.isclose(np.linalg.det(rot), 1.0)
    assert lddt_ca(moved, ca) == 1.0
    assert tm_score(moved, ca) == pytest.approx(1.0, abs=1e-12)
    assert gdt_ts(moved, ca) == 1.0
    assert fold_metrics(torch.tensor(moved), torch.tensor(ca)) == pytest.approx(
        {"lddt_ca": 1.0, "tm_score": 1.0, "gdt_ts": 1.0, "rmsd_ca": 0.0}, abs=1e-6)


def test_uniform_scaling_has_known_rmsd_and_lddt(ca):
    """Scaling by s about the centroid: the best rotation is the identity, RMSD = |s-1| * radius of gyration;
    every distance grows by (s-1)*d, so with s = 1.05 a pair (d < 15 Å) keeps the 1, 2, 4 Å thresholds and
    keeps 0.5 Å only when d < 10 Å: lDDT = (3 + fraction of pairs under 10 Å) / 4."""
    centre = ca.mean(0)
    scaled = _rigid(centre + 1.05 * (ca - centre), 2)
    rg = math.sqrt(((ca - centre) ** 2).sum(1).mean())
    assert kabsch_rmsd(scaled, ca) == pytest.approx(0.05 * rg, rel=1e-9)
    d = np.linalg.norm(ca[:, None] - ca[None], axis=-1)
    pairs = d[(d < 15.0) & ~np.eye(len(ca), dtype=bool)]
    assert lddt_ca(scaled, ca) == pytest.approx((3 + (pairs < 10.0).mean()) / 4, abs=1e-12)


def test_lddt_equals_brute_force_loop(ca):
    noisy = ca + np.random.default_rng(0).normal(size=ca.shape) * 1.5
    total, count = 0.0, 0
    for i in range(len(ca)):
        for j in range(len(ca)):
            dt = math.dist(ca[i], ca[j])
            if i == j or dt >= 15.0:
                continue
            err = abs(dt - math.dist(noisy[i], noisy[j]))
            total += sum(err < t for t in (0.5, 1.0, 2.0, 4.0)) / 4
            count += 1
    assert lddt_ca(noisy, ca) == pytest.approx(total / count, abs=1e-12)


def test_tm_score_hinge_motion_finds_the_larger_domain(ca):
    """TM-score must find a superposition at least as good as the one on the unmoved half (a search that only
    superposed all residues would miss it); TM-align 0.3.0 (tmtools) gives 0.6103 on this pair."""
    pred = _hinge(ca, 20)
    d0 = tm_d0(len(ca))
    assert d0 == pytest.approx(1.24 * (len(ca) - 15) ** (1 / 3) - 1.8)
    rot, trans = superpose(pred[20:], ca[20:])
    on_domain = _tm_at(pred, ca, rot, trans, d0)
    rot, trans = superpose(pred, ca)
    on_all = _tm_at(pred, ca, rot, trans, d0)
    tm = tm_score(pred, ca)
    assert tm >= max(on_domain, on_all) - 1e-12 and tm <= 1.0
    assert tm == pytest.approx(0.6103, abs=0.005)
    rot, trans = superpose(pred[20:], ca[20:])
    dist = np.linalg.norm(pred @ rot.T + trans - ca, axis=1)
    assert gdt_ts(pred, ca) >= np.mean([(dist < c).mean() for c in (1, 2, 4, 8)]) - 1e-12


def test_short_chain_d0_and_masking(ca):
    assert tm_d0(10) == 0.5 and tm_d0(21) == 0.5 and tm_d0(300) > 5
    noisy = ca + np.random.default_rng(3).normal(size=ca.shape)
    with_nan = noisy.copy()
    with_nan[:5] = np.nan  # residues the prediction lacks are left out, like masked ones
    mask = np.ones(len(ca), dtype=bool)
    mask[:5] = False
    for metric in (kabsch_rmsd, lddt_ca, tm_score, gdt_ts):
        assert metric(with_nan, ca) == pytest.approx(metric(noisy, ca, mask))
        assert math.isfinite(metric(noisy, ca, mask))


def test_contact_precision_of_true_structure():
    _, xyz = backbone("PF00041_1TEN_A.pdb")
    ca = xyz[:, 1]
    labels = contact_labels(ca)
    result = contact_precision(ca, labels)
    dist = np.linalg.norm(ca[:, None] - ca[None], axis=-1)
    assert result == contact_precisions(-dist, labels)
    assert result["long_P@L5"] == 1.0  # a β-sandwich has more than L/5 long-range contacts
    far = _rigid(ca * 1.5, 4)  # an inflated structure ranks pairs the same way
    assert contact_precision(far, labels) == result
