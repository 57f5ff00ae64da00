"""Contact precision (P@L, P@L/2, P@L/5 by range): a hand-computed example, masking, a brute-force
re-implementation on random maps, and a real structure scored against itself.

fair-esm's pip package ships no contact-evaluation function (its ``compute_precisions`` is in a
notebook, examples/contact_prediction.ipynb), so there is nothing importable to compare against;
the hand-computed numbers below follow that notebook's convention.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from modalities.protein.contact_metrics import contact_precisions
from modalities.protein.structures import read_structure

DATA = Path(__file__).parent / "data" / "structures"


def example() -> tuple[np.ndarray, np.ndarray]:
    """L = 10: the short range (6 <= j-i < 12) has 10 pairs; true contacts (0,6) (2,8) (0,9)."""
    target = np.zeros((10, 10), dtype=np.int8)
    for i, j in [(0, 6), (2, 8), (0, 9), (0, 1), (4, 5)]:  # (0,1), (4,5): local, not scored
        target[i, j] = target[j, i] = 1
    pred = np.zeros((10, 10))
    scores = {(0, 1): 0.99, (0, 6): 0.9, (1, 7): 0.8, (2, 8): 0.7, (0, 9): 0.1, (3, 9): 0.06, (0, 7): 0.05,
              (1, 8): 0.04, (2, 9): 0.03, (0, 8): 0.02, (1, 9): 0.01}
    for (i, j), p in scores.items():
        pred[i, j] = pred[j, i] = p
    return pred, target


def test_hand_computed_example():
    pred, target = example()
    m = contact_precisions(pred, target)
    # top 2 (L/5): (0,6) hit, (1,7) miss; top 5: + (2,8) hit, (0,9) hit, (3,9) miss; top 10: 3 hits
    assert m["short_P@L5"] == 0.5 and m["short_P@L2"] == 0.6 and m["short_P@L"] == 0.3
    # no pair is 12 apart in a 10-residue chain: the missing pairs count as wrong, not as absent
    assert m["medium_P@L5"] == 0.0 and m["long_P@L"] == 0.0


def test_unknown_pairs_are_left_out_and_l_counts_known_residues():
    pred, target = example()
    target[2, :] = target[:, 2] = -1  # residue 3 has no coordinates
    m = contact_precisions(pred, target)
    # L = 9 -> k = 1, 4, 9. Ranked without (2,8), (2,9): (0,6)+ (1,7)- (0,9)+ (3,9)- ...: 2 hits in all
    assert m["short_P@L5"] == 1.0 and m["short_P@L2"] == 0.5 and m["short_P@L"] == pytest.approx(2 / 9)
    assert contact_precisions(pred, target, length=10)["short_P@L5"] == 0.5  # L overridden: k = 2


def brute_force(pred, target, lo, hi, k):
    pairs = [(pred[i, j], i, j) for i in range(len(pred)) for j in range(i + 1, len(pred))
             if lo <= j - i and (hi is None or j - i < hi) and target[i, j] >= 0]
    pairs.sort(key=lambda x: (-x[0], x[1], x[2]))
    return sum(target[i, j] == 1 for _, i, j in pairs[:k]) / k


def test_matches_a_brute_force_count_on_random_maps():
    rng = np.random.default_rng(0)
    for n in (30, 57, 120):
        pred = rng.random((n, n))
        target = (rng.random((n, n)) < 0.1).astype(np.int8)
        target = np.maximum(target, target.T)
        unknown = rng.random(n) < 0.1
        target[unknown] = -1
        target[:, unknown] = -1
        length = int((~unknown).sum())
        m = contact_precisions(pred, target)
        for name, lo, hi in (("short", 6, 12), ("medium", 12, 24), ("long", 24, None)):
            for key, frac in (("P@L", 1), ("P@L2", 2), ("P@L5", 5)):
                assert m[f"{name}_{key}"] == pytest.approx(brute_force(pred, target, lo, hi, length // frac)), (n, name, key)


def test_true_distances_as_predictions_score_perfectly_on_a_real_structure():
    lab = read_structure(DATA / "1A8O.pdb")
    m = contact_precisions(-np.nan_to_num(lab.distances, nan=99.0), lab.contacts)
    assert m["long_P@L5"] == 1.0 and m["medium_P@L5"] == 1.0 and m["short_P@L5"] == 1.0
    shuffled = np.random.default_rng(1).random(lab.distances.shape)
    assert contact_precisions(shuffled, lab.contacts)["long_P@L5"] < 0.5


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="must be equal"):
        contact_precisions(np.zeros((4, 4)), np.zeros((5, 5)))
