"""Fine-tuning metrics equal hand-computed reference values (scipy / sklearn semantics)."""

import math

import numpy as np
import pytest

from foundry.finetune import metrics as M
from foundry.finetune.tasks import IGNORE, get_task
from modalities.protein.contact_metrics import contact_precisions


def test_spearman_with_ties_equals_pearson_of_average_ranks():
    y = np.array([1.0, 2.0, 2.0, 3.0, 5.0])
    p = np.array([0.1, 0.4, 0.3, 0.3, 0.9])
    # Average ranks by hand: y -> 1, 2.5, 2.5, 4, 5 ; p -> 1, 4, 2.5, 2.5, 5
    ry, rp = np.array([1, 2.5, 2.5, 4, 5]), np.array([1, 4, 2.5, 2.5, 5])
    np.testing.assert_allclose(M.rankdata(y), ry)
    np.testing.assert_allclose(M.rankdata(p), rp)
    expected = np.corrcoef(ry, rp)[0, 1]
    assert M.spearman(y, p) == pytest.approx(expected)
    # By hand: centred ranks (-2,-.5,-.5,1,2) and (-2,1,-.5,-.5,2): 7.25 / sqrt(9.5 * 9.5)
    assert M.spearman(y, p) == pytest.approx(7.25 / 9.5)


def test_pearson_rmse_and_undefined_cases():
    y, p = np.array([1.0, 2.0, 3.0]), np.array([2.0, 4.0, 7.0])
    assert M.pearson(y, p) == pytest.approx(np.corrcoef(y, p)[0, 1])
    assert M.rmse(y, p) == pytest.approx(math.sqrt((1 + 4 + 16) / 3))
    assert math.isnan(M.pearson(y, np.ones(3)))  # constant predictions: undefined, not an error


def test_binary_classification_metrics_match_hand_counts():
    y = np.array([0, 0, 1, 1, 1, 0])
    probs1 = np.array([0.1, 0.6, 0.8, 0.4, 0.9, 0.2])
    probs = np.stack([1 - probs1, probs1], 1)
    m = M.classification_metrics(y, probs)
    # predictions 0 1 1 0 1 0: tp=2 fp=1 fn=1 tn=2
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    assert m["mcc"] == pytest.approx((2 * 2 - 1 * 1) / math.sqrt(3 * 3 * 3 * 3))
    # AUROC: pairs (pos, neg) with pos score > neg score: 0.8>{.1,.6,.2}, 0.4>{.1,.2}, 0.9>all -> 8 of 9
    assert m["auroc"] == pytest.approx(8 / 9)


def test_auroc_counts_ties_as_half_and_multiclass_is_one_vs_rest():
    assert M.auroc_binary(np.array([0, 1]), np.array([0.5, 0.5])) == pytest.approx(0.5)
    y = np.array([0, 1, 2, 2])
    probs = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.2, 0.7], [0.5, 0.1, 0.4]])
    per_class = [M.auroc_binary(y == c, probs[:, c]) for c in range(3)]
    assert M.auroc(y, probs) == pytest.approx(np.mean(per_class))
    assert per_class == [pytest.approx(1.0), pytest.approx(1.0), pytest.approx(1.0)]


def test_multiclass_mcc_and_macro_f1():
    y = np.array([0, 1, 2, 0, 1, 2])
    pred = np.array([0, 2, 2, 0, 1, 1])
    c = M.confusion(y, pred, 3)
    assert c.tolist() == [[2, 0, 0], [0, 1, 1], [0, 1, 1]]
    t, p, n, k = c.sum(1), c.sum(0), c.sum(), np.trace(c)
    expected = (k * n - (t * p).sum()) / math.sqrt((n**2 - (p**2).sum()) * (n**2 - (t**2).sum()))
    assert M.mcc(y, pred, 3) == pytest.approx(expected)
    assert M.f1(y, pred, 3) == pytest.approx((1.0 + 0.5 + 0.5) / 3)


def test_residue_metrics_report_q3_and_q8():
    y = np.array([0, 1, 2, 2])
    probs = np.eye(3)[[0, 1, 2, 0]]
    assert M.residue_metrics(y, probs)["q3"] == pytest.approx(0.75)
    y8 = np.arange(8)
    assert M.residue_metrics(y8, np.eye(8))["q8"] == pytest.approx(1.0)


def _contact_example(n: int, contacts: str, scores: dict) -> tuple[np.ndarray, np.ndarray]:
    """Token-level (n + 2, n + 2) logits and target as the contact task sees them: <cls> and <eos>
    rows/columns unlabelled, pairs closer than 6 unlabelled."""
    task = get_task("contact")
    inner = task.encode(contacts, n, "x.csv: line 2", task.fit([contacts], ["x"]))
    target = np.full((n + 2, n + 2), IGNORE, np.float32)
    target[1:-1, 1:-1] = inner
    logits = np.zeros((n + 2, n + 2))
    for (i, j), v in scores.items():  # 0-based residues
        logits[i + 1, j + 1] = logits[j + 1, i + 1] = v
    return logits, target


def test_contact_task_scores_p_at_l5_with_the_protein_implementation():
    task = get_task("contact")
    info = task.fit(["1-28"], ["x"])
    # 28 residues: L/5 = 5 (not 30 tokens // 5 = 6, as the task's own P@L counted before)
    logits, target = _contact_example(28, "1-28;2-27", {(0, 27): 5, (1, 26): 4, (2, 27): 3})
    assert task.metrics([logits], [target], info)["p_at_l5_long"] == pytest.approx(2 / 5)
    assert task.metrics([logits], [target], info)["random_long"] == pytest.approx(2 / 10)  # 2 contacts in the 10 pairs 24+ apart
    assert contact_precisions(logits[1:-1, 1:-1], target[1:-1, 1:-1])["long_P@L5"] == pytest.approx(2 / 5)
    # 26 residues: only 3 pairs are 24+ apart but k = 5; the missing 2 count as wrong (ESM), not 3/3
    logits, target = _contact_example(26, "1-25;1-26;2-26", {(0, 24): 3, (0, 25): 2, (1, 25): 1})
    assert task.metrics([logits], [target], info)["p_at_l5_long"] == pytest.approx(3 / 5)
    assert task.metrics([logits], [target], info)["random_long"] == pytest.approx(1.0)  # all 3 pairs 24+ apart are contacts


def test_early_stopping_direction():
    assert M.is_better("rmse", 0.5, 0.7) and not M.is_better("rmse", 0.9, 0.7)
    assert M.is_better("spearman", 0.5, 0.4) and M.is_better("accuracy", 0.1, None)
    assert not M.is_better("accuracy", float("nan"), 0.1)


def test_a_majority_class_collapse_shows_in_balanced_accuracy_mcc_and_per_class_recall():
    # 50 / 48 rows, the model predicts the first class for all but two: accuracy looks like chance
    y = np.array([0] * 50 + [1] * 48)
    pred = np.array([0] * 49 + [1] + [0] * 47 + [1])
    probs = np.eye(2)[pred]
    m = M.classification_metrics(y, probs)
    assert m["accuracy"] == pytest.approx(50 / 98)
    assert m["balanced_accuracy"] == pytest.approx((49 / 50 + 1 / 48) / 2)
    assert abs(m["mcc"]) < 0.05
    report = M.class_report(y, pred, ["insoluble", "soluble"])
    assert report["confusion"] == [[49, 1], [47, 1]]
    assert report["recall"] == [pytest.approx(0.98), pytest.approx(1 / 48, abs=1e-6)]
    assert report["precision"] == [pytest.approx(49 / 96, abs=1e-6), pytest.approx(0.5)]
    assert report["support"] == [50, 48] and report["predicted"] == [96, 2]
    assert M.format_class_report(report).splitlines()[2] == "soluble         0.500     0.021        48         2"


def test_balanced_accuracy_ignores_absent_classes_and_undefined_precision_is_none():
    y, pred = np.array([0, 0, 1, 1]), np.array([0, 0, 0, 0])
    assert M.balanced_accuracy(y, pred, 3) == pytest.approx(0.5)  # class 2 never occurs: not averaged in
    report = M.class_report(y, pred, ["a", "b", "c"])
    assert report["precision"] == [0.5, None, None] and report["recall"] == [1.0, 0.0, None]
    assert "-" in M.format_class_report(report).splitlines()[2]


def test_classification_tasks_stop_early_on_mcc_and_report_per_class():
    assert get_task("sequence-classification").default_metric == "mcc"
    assert get_task("residue-classification").default_metric == "mcc"
    task = get_task("residue-classification")
    info = task.fit(["HHEC"], ["x"])
    logits = np.zeros((6, 3))
    logits[np.arange(6), [0, 2, 2, 2, 0, 0]] = 1.0  # <cls> H H E C <eos> -> C H H H C C
    target = np.array([IGNORE, 2, 2, 1, 0, IGNORE])
    report = task.class_report([logits], [target], info)
    assert report["classes"] == ["C", "E", "H"] and report["support"] == [1, 1, 2]
    assert report["confusion"] == [[1, 0, 0], [0, 0, 1], [0, 0, 2]]
    assert task.label_text(target[1:-1], info) == "HHEC"
