"""Evaluation metrics as the field reports them, in plain numpy (no scipy / sklearn needed).

Regression: Spearman ρ (ranks with ties averaged, as ``scipy.stats.spearmanr``), Pearson r, RMSE.
Classification: accuracy, balanced accuracy (mean recall over the classes present, as
``sklearn.metrics.balanced_accuracy_score``), macro F1, AUROC (binary: Mann-Whitney U with ties
counted half, as ``sklearn.metrics.roc_auc_score``; multi-class: one-vs-rest macro average), MCC
(multi-class form of Gorodkin 2004, as ``sklearn.metrics.matthews_corrcoef``). Accuracy alone
hides a model that predicts the majority class for everything; balanced accuracy (0.5 for two
classes) and MCC (0) do not, and ``class_report`` gives per-class precision / recall and the
confusion matrix behind them.
Per-residue: accuracy over labelled positions, reported as Q3 / Q8 when there are 3 / 8 states.

Every function takes 1-D arrays (targets, predictions or scores) and returns a float; an
undefined value (a constant input, a single class) is ``nan``.
"""

from __future__ import annotations

import math

import numpy as np

#: metrics where smaller is better; every other one is maximised by early stopping
LOWER_IS_BETTER = {"rmse", "loss"}


def rankdata(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties get the average of the ranks they span."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    sorted_x = x[order]
    # Boundaries of runs of equal values.
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
    ends = np.r_[starts[1:], len(x)]
    for s, e in zip(starts, ends):
        ranks[order[s:e]] = (s + e + 1) / 2.0  # mean of ranks s+1..e
    return ranks


def pearson(y: np.ndarray, p: np.ndarray) -> float:
    y, p = np.asarray(y, np.float64), np.asarray(p, np.float64)
    if len(y) < 2:
        return float("nan")
    yc, pc = y - y.mean(), p - p.mean()
    denom = math.sqrt(float((yc**2).sum()) * float((pc**2).sum()))
    return float((yc * pc).sum() / denom) if denom > 0 else float("nan")


def spearman(y: np.ndarray, p: np.ndarray) -> float:
    return pearson(rankdata(y), rankdata(p))


def rmse(y: np.ndarray, p: np.ndarray) -> float:
    y, p = np.asarray(y, np.float64), np.asarray(p, np.float64)
    return float(np.sqrt(np.mean((y - p) ** 2))) if len(y) else float("nan")


def accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    y, pred = np.asarray(y), np.asarray(pred)
    return float((y == pred).mean()) if len(y) else float("nan")


def confusion(y: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    """(n_classes, n_classes) counts, rows = true class, columns = predicted."""
    return np.bincount(np.asarray(y) * n_classes + np.asarray(pred), minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def f1(y: np.ndarray, pred: np.ndarray, n_classes: int) -> float:
    """Binary: F1 of class 1. Multi-class: macro F1 over classes present in targets or predictions."""
    c = confusion(y, pred, n_classes).astype(np.float64)
    tp = np.diag(c)
    denom = c.sum(0) + c.sum(1)  # 2 tp + fp + fn
    per_class = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    if n_classes == 2:
        return float(per_class[1])
    present = denom > 0
    return float(per_class[present].mean()) if present.any() else float("nan")


def balanced_accuracy(y: np.ndarray, pred: np.ndarray, n_classes: int) -> float:
    """Mean recall over the classes that occur in ``y``: 1/C for a constant prediction."""
    c = confusion(y, pred, n_classes).astype(np.float64)
    support = c.sum(1)
    present = support > 0
    return float((np.diag(c)[present] / support[present]).mean()) if present.any() else float("nan")


def class_report(y: np.ndarray, pred: np.ndarray, names: list[str]) -> dict:
    """Per class: precision, recall, support (true count), predicted count; and the confusion matrix
    (rows = true class, columns = predicted), as plain lists for JSON. An undefined precision (the
    class is never predicted) or recall (it never occurs) is ``None``."""
    c = confusion(y, pred, len(names))
    tp, support, predicted = np.diag(c), c.sum(1), c.sum(0)

    def ratio(a, b):
        return [round(float(x) / float(n), 6) if n else None for x, n in zip(a, b)]

    return {"classes": list(names), "precision": ratio(tp, predicted), "recall": ratio(tp, support),
            "support": support.tolist(), "predicted": predicted.tolist(), "confusion": c.tolist()}


def format_class_report(report: dict, title: str = "") -> str:
    """The per-class table and the confusion matrix as text, for a terminal."""
    names = report["classes"]
    width = max(9, *(len(n) + 2 for n in names))

    def cell(v):
        return f"{'-':>10s}" if v is None else f"{v:10.3f}"

    lines = [title] if title else []
    lines.append(f"{'class':{width}s}{'precision':>10s}{'recall':>10s}{'support':>10s}{'predicted':>10s}")
    for i, n in enumerate(names):
        lines.append(f"{n:{width}s}{cell(report['precision'][i])}{cell(report['recall'][i])}"
                     f"{report['support'][i]:10d}{report['predicted'][i]:10d}")
    lines.append("confusion (rows: true, columns: predicted)")
    lines.append(" " * width + "".join(f"{n:>{width}s}" for n in names))
    for n, row in zip(names, report["confusion"]):
        lines.append(f"{n:{width}s}" + "".join(f"{v:{width}d}" for v in row))
    return "\n".join(lines)


def mcc(y: np.ndarray, pred: np.ndarray, n_classes: int) -> float:
    c = confusion(y, pred, n_classes).astype(np.float64)
    t, p = c.sum(1), c.sum(0)
    n, correct = c.sum(), np.trace(c)
    num = correct * n - (t * p).sum()
    denom = math.sqrt(float(n**2 - (p**2).sum())) * math.sqrt(float(n**2 - (t**2).sum()))
    return float(num / denom) if denom > 0 else 0.0


def auroc_binary(y: np.ndarray, score: np.ndarray) -> float:
    """Probability that a random positive scores above a random negative (ties count 1/2)."""
    y = np.asarray(y).astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(score)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def auroc(y: np.ndarray, probs: np.ndarray) -> float:
    """``probs``: (N, C). Binary uses column 1; multi-class is the one-vs-rest macro average."""
    probs = np.asarray(probs, np.float64)
    if probs.shape[1] == 2:
        return auroc_binary(y, probs[:, 1])
    values = [auroc_binary(np.asarray(y) == c, probs[:, c]) for c in range(probs.shape[1])]
    values = [v for v in values if not math.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


# -- per task kind -------------------------------------------------------------------------------


def regression_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    return {"spearman": spearman(y, p), "pearson": pearson(y, p), "rmse": rmse(y, p)}


def classification_metrics(y: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    probs = np.asarray(probs)
    n_classes = probs.shape[1]
    pred = probs.argmax(1)
    return {
        "accuracy": accuracy(y, pred), "balanced_accuracy": balanced_accuracy(y, pred, n_classes),
        "f1": f1(y, pred, n_classes), "auroc": auroc(y, probs), "mcc": mcc(y, pred, n_classes),
    }


def multilabel_metrics(y: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """``y``, ``probs``: (N, C). Exact-match accuracy, micro F1, macro AUROC over labels."""
    y = np.asarray(y).astype(bool)
    pred = np.asarray(probs) >= 0.5
    tp = float((y & pred).sum())
    denom = float(y.sum() + pred.sum())
    aucs = [auroc_binary(y[:, c], probs[:, c]) for c in range(y.shape[1])]
    aucs = [a for a in aucs if not math.isnan(a)]
    return {
        "accuracy": float((y == pred).all(1).mean()), "f1": 2 * tp / denom if denom else float("nan"),
        "auroc": float(np.mean(aucs)) if aucs else float("nan"),
        "mcc": mcc(y.ravel().astype(int), pred.ravel().astype(int), 2),
    }


def residue_metrics(y: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """Flattened labelled residues. Accuracy is named Q3 / Q8 for 3- / 8-state labels too."""
    out = classification_metrics(y, probs)
    n_classes = np.asarray(probs).shape[1]
    if n_classes in (3, 8):
        out[f"q{n_classes}"] = out["accuracy"]
    return out


def is_better(metric: str, new: float, best: float | None) -> bool:
    if new is None or (isinstance(new, float) and math.isnan(new)):
        return False
    if best is None or (isinstance(best, float) and math.isnan(best)):
        return True
    return new < best if metric in LOWER_IS_BETTER else new > best
