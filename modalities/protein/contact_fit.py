"""Fit ESM's contact regression on a handful of structures (Rao et al. 2020): L1-regularised
logistic regression from APC-corrected attention to contacts, for any masked protein model.

    head, report = fit_contact_head(pm, structures)       # structures: StructureLabels
    attach_contact_head(pm.model, head)

Rao et al. fit it with scikit-learn on 20 structures; here it is proximal gradient descent
(FISTA) on the mean log-loss + ``l1`` * |w|_1, in float64 numpy, so no extra dependency. The
features are standardised while fitting (the L1 strength then means the same for every model,
whatever the scale of its attention), and the scaling is folded back into the weights, so the
saved head reads raw attention exactly like an imported fair-esm head.

Training pairs: i < j with j - i >= ``min_separation`` (6, as ESM) whose label is known (both
residues have coordinates); a structure longer than the model's window is cut to it.

The L1 strength is chosen by cross-validation over chains (fit on 4/5 of the chains, score the
long-range P@L/5 of the other fifth, the metric the head is for), and the report gives that
cross-validated precision beside two baselines on the same chains: the random rate (contacts among
long-range pairs) and ranking by sequence separation alone. So a user learns at fitting time
whether the model's attention carries contact signal, without a held-out set of their own.
Measured numbers, per model: examples/README.md (examples/contacts_fit.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from foundry.errors import DataError

from .contact_head import ContactRegression, attention_features
from .contact_metrics import contact_precisions, finite_mean, random_rate, separation_precisions

MIN_SEPARATION = 6
# On standardised features (see fit_l1_logistic). Small: a few hundred thousand pairs leave little
# to overfit with n_layer * n_head features, and weakly trained models (a few CPU minutes) have only
# faint contact signal that a larger penalty zeroes entirely (measured: 0.01 kept 0 of 16 maps).
DEFAULT_L1 = 0.001
#: the L1 strengths cross-validation chooses among (standardised features); measured on the
#: bundled chains, held-out long P@L/5 moves by less than its noise over 0 .. 0.003 and collapses
#: to "no map kept" at 0.01 for CPU-sized models, so the grid stays at the small end
L1_GRID = (0.0001, 0.0003, 0.001, 0.003)
CV_FOLDS = 5


@dataclass
class FitReport:
    n_structures: int
    n_pairs: int
    n_contacts: int
    n_features: int
    n_selected: int  # features with a non-zero weight
    train_loss: float
    notes: list[str]
    l1: float = DEFAULT_L1
    l1_chosen_by_cv: bool = False
    # long-range P@L/5 on the fit chains, each scored by a head fitted without it (None: one chain)
    cv_long_precision: float | None = None
    cv_by_l1: dict[float, float] | None = None
    random_long: float | None = None  # contacts among long-range pairs, per chain, averaged
    separation_long: float | None = None  # long P@L/5 ranking pairs by separation alone


@dataclass
class ChainPairs:
    """One chain's training pairs and its labels, for fitting and for scoring a fold."""

    name: str
    x: np.ndarray  # (n, C) features of the pairs (i < j, j - i >= min_separation, label known)
    y: np.ndarray  # (n,) 1.0 contact, 0.0 not
    i: np.ndarray
    j: np.ndarray
    contacts: np.ndarray  # (L, L) labels, 1 / 0 / -1 unknown


@torch.no_grad()
def structure_features(pm, sequence: str, max_residues: int | None = None) -> np.ndarray:
    """(L, L, n_layer * n_head) APC-corrected attention features of one sequence (float64)."""
    tokens = torch.as_tensor(pm.tokenizer.encode(sequence[:max_residues] if max_residues else sequence),
                             dtype=torch.long, device=pm.device)[None]
    out = pm.model(tokens, need_attention=True, need_logits=False)
    keep = torch.ones_like(tokens, dtype=torch.bool)
    keep[:, 0] = keep[:, -1] = False  # <cls> ... <eos>
    feats = attention_features(out.attentions.float(), keep)[0, 1:-1, 1:-1]  # (L, L, C)
    return feats.double().cpu().numpy()


def training_pairs(feats: np.ndarray, contacts: np.ndarray, min_separation: int = MIN_SEPARATION, where: bool = False):
    """Upper-triangle pairs with a known label: (X (n, C), y (n,)) [+ (i, j) with ``where``]."""
    n = feats.shape[0]
    i, j = np.triu_indices(n, k=min_separation)
    known = contacts[i, j] >= 0
    i, j = i[known], j[known]
    x, y = feats[i, j], (contacts[i, j] == 1).astype(np.float64)
    return (x, y, i, j) if where else (x, y)


def chain_precision(chain: ChainPairs, scores: np.ndarray) -> float:
    """Long-range P@L/5 of one chain given scores of its pairs (pairs closer than 6 are never
    ranked by the metric, so they need no score)."""
    pred = np.zeros(chain.contacts.shape)
    pred[chain.i, chain.j] = scores
    return contact_precisions(pred, chain.contacts)["long_P@L5"]


def fit_l1_logistic(x: np.ndarray, y: np.ndarray, l1: float = DEFAULT_L1, steps: int = 500) -> tuple[np.ndarray, float, float]:
    """Minimise mean log-loss(x @ w + b, y) + l1 * |w|_1 (b unpenalised) by FISTA.

    The step is 1 / L with L = ||x||_2^2 / (4 n) (+ the intercept), the Lipschitz constant of
    the log-loss gradient, so it converges without a line search. -> (w, b, final loss)."""
    n, c = x.shape
    lipschitz = (np.linalg.norm(x, 2) ** 2 + n) / (4.0 * n)
    step = 1.0 / lipschitz
    prior = float(np.clip(y.mean(), 1e-6, 1 - 1e-6))
    w, b = np.zeros(c), float(np.log(prior / (1 - prior)))  # start at the base rate
    zw, zb, t = w.copy(), b, 1.0
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-(x @ zw + zb)))
        gw, gb = x.T @ (p - y) / n, float(np.mean(p - y))
        w_next = zw - step * gw
        w_next = np.sign(w_next) * np.maximum(np.abs(w_next) - step * l1, 0.0)  # soft threshold: the L1 prox
        b_next = zb - step * gb
        t_next = (1 + np.sqrt(1 + 4 * t * t)) / 2
        zw = w_next + (t - 1) / t_next * (w_next - w)
        zb = b_next + (t - 1) / t_next * (b_next - b)
        w, b, t = w_next, b_next, t_next
    z = x @ w + b
    loss = float(np.mean(np.logaddexp(0, z) - y * z) + l1 * np.abs(w).sum())
    return w, b, loss


def _standardised_fit(chains: list[ChainPairs], l1: float, steps: int) -> tuple[np.ndarray, float, float]:
    """Fit on standardised features; -> (w, b, loss) for the raw features."""
    x = np.concatenate([c.x for c in chains])
    y = np.concatenate([c.y for c in chains])
    mean, std = x.mean(0), x.std(0)
    std[std == 0] = 1.0
    w, b, loss = fit_l1_logistic((x - mean) / std, y, l1, steps)
    # fold the standardisation back: w.(x - m)/s + b = (w/s).x + (b - w.m/s)
    return w / std, float(b - (w / std) @ mean), loss


def cross_validate(chains: list[ChainPairs], l1_values, steps: int = 500, folds: int = CV_FOLDS) -> dict[float, float]:
    """{l1: mean long-range P@L/5 of every chain scored by a head fitted on the other folds}.

    Folds are by chain (chain k in fold k % folds, in the order given), so no chain is scored by
    a head that saw it."""
    folds = min(folds, len(chains))
    result = {}
    for l1 in l1_values:
        scores = []
        for f in range(folds):
            train = [c for k, c in enumerate(chains) if k % folds != f]
            w, b, _ = _standardised_fit(train, l1, steps)
            scores += [chain_precision(c, c.x @ w + b) for k, c in enumerate(chains) if k % folds == f]
        result[l1] = float(np.nanmean(scores)) if not np.all(np.isnan(scores)) else float("nan")
    return result


def fit_contact_head(pm, structures, l1: float | None = None, steps: int = 500,
                     folds: int = CV_FOLDS) -> tuple[ContactRegression, FitReport]:
    """A ``ContactRegression`` for ``pm.model`` fitted on ``structures`` (``StructureLabels``).

    ``l1`` None: chosen from ``L1_GRID`` by cross-validation over chains (the best long-range
    P@L/5; a tie goes to the larger, sparser L1)."""
    cfg = pm.model.config
    window = cfg.max_position - 2  # <cls> and <eos> take two positions
    chains, notes = [], []
    for labels in structures:
        n = min(len(labels.sequence), window)
        if n < len(labels.sequence):
            notes.append(f"{labels.name}: first {n} of {len(labels.sequence)} residues (the model's window)")
        contacts = labels.contacts[:n, :n]
        x, y, i, j = training_pairs(structure_features(pm, labels.sequence, n), contacts, where=True)
        chains.append(ChainPairs(labels.name, x, y, i, j, contacts))
    if not chains:
        raise DataError("--fit: no structures")
    y = np.concatenate([c.y for c in chains])
    if y.sum() == 0 or y.sum() == len(y):
        raise DataError(f"--fit: the {len(chains)} structures give {int(y.sum())} contacts among {len(y)} scorable pairs "
                        "(separation >= 6); fitting needs both contacts and non-contacts")
    cv = cross_validate(chains, L1_GRID if l1 is None else (l1,), steps, folds) if len(chains) > 1 else {}
    finite = {k: v for k, v in cv.items() if v == v}  # NaN: no chain had long-range pairs to score
    chosen = l1
    if l1 is None:
        # max over (precision, l1): the best precision, a tie broken toward the sparser head
        chosen = max(finite, key=lambda k: (finite[k], k)) if finite else DEFAULT_L1
    w, b, loss = _standardised_fit(chains, chosen, steps)
    head = ContactRegression(cfg.n_layer, cfg.n_head)
    with torch.no_grad():
        head.regression.weight.copy_(torch.as_tensor(w)[None])
        head.regression.bias.fill_(b)
    if not np.any(w):
        notes.append(f"no attention map was kept at L1 {chosen}: the head predicts one probability everywhere; "
                     "lower --l1, or fit a model trained longer (its attention carries no contact signal yet)")
    report = FitReport(len(chains), len(y), int(y.sum()), w.shape[0], int((w != 0).sum()), loss, notes,
                       l1=chosen, l1_chosen_by_cv=l1 is None and bool(finite),
                       cv_long_precision=finite.get(chosen), cv_by_l1=cv or None,
                       random_long=_defined(finite_mean(random_rate(c.contacts) for c in chains)),
                       separation_long=_defined(finite_mean(separation_precisions(c.contacts)["long_P@L5"] for c in chains)))
    return head.to(pm.device), report


def _defined(value: float) -> float | None:
    return value if value == value else None  # the report says "n/a" for None
