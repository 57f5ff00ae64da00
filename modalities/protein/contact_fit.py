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
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from foundry.errors import DataError

from .contact_head import ContactRegression, attention_features

MIN_SEPARATION = 6
# On standardised features (see fit_l1_logistic). Small: a few hundred thousand pairs leave little
# to overfit with n_layer * n_head features, and weakly trained models (a few CPU minutes) have only
# faint contact signal that a larger penalty zeroes entirely (measured: 0.01 kept 0 of 16 maps).
DEFAULT_L1 = 0.001


@dataclass
class FitReport:
    n_structures: int
    n_pairs: int
    n_contacts: int
    n_features: int
    n_selected: int  # features with a non-zero weight
    train_loss: float
    notes: list[str]


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


def training_pairs(feats: np.ndarray, contacts: np.ndarray, min_separation: int = MIN_SEPARATION):
    """Upper-triangle pairs with a known label: (X (n, C), y (n,))."""
    n = feats.shape[0]
    i, j = np.triu_indices(n, k=min_separation)
    known = contacts[i, j] >= 0
    return feats[i[known], j[known]], (contacts[i[known], j[known]] == 1).astype(np.float64)


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


def fit_contact_head(pm, structures, l1: float = DEFAULT_L1, steps: int = 500) -> tuple[ContactRegression, FitReport]:
    """A ``ContactRegression`` for ``pm.model`` fitted on ``structures`` (``StructureLabels``)."""
    cfg = pm.model.config
    window = cfg.max_position - 2  # <cls> and <eos> take two positions
    xs, ys, notes = [], [], []
    for labels in structures:
        n = min(len(labels.sequence), window)
        if n < len(labels.sequence):
            notes.append(f"{labels.name}: first {n} of {len(labels.sequence)} residues (the model's window)")
        x, y = training_pairs(structure_features(pm, labels.sequence, n), labels.contacts[:n, :n])
        xs.append(x)
        ys.append(y)
    if not xs:
        raise DataError("--fit: no structures")
    x, y = np.concatenate(xs), np.concatenate(ys)
    if y.sum() == 0 or y.sum() == len(y):
        raise DataError(f"--fit: the {len(xs)} structures give {int(y.sum())} contacts among {len(y)} scorable pairs "
                        "(separation >= 6); fitting needs both contacts and non-contacts")
    mean, std = x.mean(0), x.std(0)
    std[std == 0] = 1.0
    w, b, loss = fit_l1_logistic((x - mean) / std, y, l1, steps)
    head = ContactRegression(cfg.n_layer, cfg.n_head)
    with torch.no_grad():  # fold the standardisation back: w.(x - m)/s + b = (w/s).x + (b - w.m/s)
        head.regression.weight.copy_(torch.as_tensor(w / std)[None])
        head.regression.bias.fill_(float(b - (w / std) @ mean))
    if not np.any(w):
        notes.append(f"no attention map was kept at L1 {l1}: the head predicts one probability everywhere; "
                     "lower --l1, or fit a model trained longer (its attention carries no contact signal yet)")
    report = FitReport(len(xs), len(y), int(y.sum()), x.shape[1], int((w != 0).sum()), loss, notes)
    return head.to(pm.device), report
