"""Contact-prediction precision as the field reports it: P@L, P@L/2, P@L/5 by sequence separation.

    metrics = contact_precisions(predicted_probs, labels.contacts)
    metrics["long_P@L5"]          # the headline number of ESM / CASP papers

The convention is ESM's evaluation (Rao et al. 2020; fair-esm's contact-prediction notebook), which
follows CASP's:

- pairs (i, j), i < j, in a separation range: short 6 <= j-i < 12, medium 12 <= j-i < 24,
  long j-i >= 24 (``local`` 3 <= j-i < 6 on request);
- pairs whose true label is unknown (-1: a residue without coordinates) are left out;
- pairs are ranked by predicted probability, highest first, and the top k = L/n are taken
  (integer division; n = 1, 2, 5), where L is the number of residues with known labels (residues
  with coordinates), so a structure with a disordered tail is not penalised for it;
- precision = true contacts among those k / k. When a range has fewer than k scorable pairs the
  missing ones count as wrong (ESM pads with zeros), so a short protein cannot score 1.0 on 3 pairs.
  When k = 0 (fewer than n residues with labels) P@L/n is undefined: NaN here, null in files.

This is the one P@L implementation: ``protein contacts`` and the ``contact`` fine-tuning task
(``foundry.finetune.tasks``) both score through it.

fair-esm's pip package ships no evaluation helper (its ``compute_precisions`` lives in a
notebook); the tests check this module against a hand-computed example instead. Two differences
from that notebook, both deliberate: k is ``L // n`` computed in integers (the notebook's float
``0.1 * i * L`` can round one lower), and ties in the predictions are broken by position (i, then
j) so results are deterministic.
"""

from __future__ import annotations

import numpy as np

RANGES: dict[str, tuple[int, int | None]] = {"short": (6, 12), "medium": (12, 24), "long": (24, None)}
LOCAL = ("local", (3, 6))
FRACTIONS = {"P@L": 1, "P@L2": 2, "P@L5": 5}


def contact_precisions(predictions, targets, length: int | None = None,
                       ranges: dict[str, tuple[int, int | None]] | None = None) -> dict[str, float]:
    """(L, L) predicted probabilities and (L, L) labels (1, 0, -1 unknown) -> {"long_P@L5": ...}.

    ``length`` overrides L (the number of residues with any known label).
    """
    pred = np.asarray(predictions, dtype=np.float64)
    target = np.asarray(targets)
    if pred.ndim != 2 or pred.shape[0] != pred.shape[1] or pred.shape != target.shape:
        raise ValueError(f"contact_precisions: predictions {pred.shape} and targets {target.shape} must be equal (L, L)")
    n = pred.shape[0]
    if length is None:
        known = target >= 0
        np.fill_diagonal(known, False)
        length = int(known.any(axis=1).sum())
    i, j = np.triu_indices(n, k=1)
    sep = j - i
    result = {}
    for name, (lo, hi) in (ranges or RANGES).items():
        keep = (sep >= lo) & (target[i, j] >= 0)
        if hi is not None:
            keep &= sep < hi
        p, t = pred[i[keep], j[keep]], target[i[keep], j[keep]]
        order = np.argsort(-p, kind="stable")  # pairs are in (i, j) order: ties go to the earlier pair
        hits = np.cumsum(t[order] == 1)
        for key, frac in FRACTIONS.items():
            k = length // frac
            if k == 0:
                result[f"{name}_{key}"] = float("nan")
                continue
            found = int(hits[min(k, len(hits)) - 1]) if len(hits) else 0
            result[f"{name}_{key}"] = found / k
    return result


def random_rate(contacts, min_separation: int = RANGES["long"][0], max_separation: int | None = None) -> float:
    """What a random ranking scores: the fraction of contacts among the known pairs with
    ``min_separation`` <= j - i (< ``max_separation``); default the long range. NaN: no such pairs."""
    contacts = np.asarray(contacts)
    i, j = np.triu_indices(len(contacts), k=min_separation)
    if max_separation is not None:
        i, j = i[j - i < max_separation], j[j - i < max_separation]
    known = contacts[i, j][contacts[i, j] >= 0]
    return float((known == 1).mean()) if len(known) else float("nan")


def separation_precisions(contacts) -> dict[str, float]:
    """``contact_precisions`` of ranking pairs by sequence separation alone (closest first): the
    baseline a model's contacts have to beat."""
    i, j = np.indices(np.shape(contacts))
    return contact_precisions(-np.abs(i - j).astype(np.float64), contacts)


def finite_mean(values) -> float:
    """Mean of the defined values (a chain too short for a range has NaN there); NaN if none."""
    finite = [v for v in values if v == v]
    return float(np.mean(finite)) if finite else float("nan")


def format_metrics(metrics: dict[str, float | None], keys=("short_P@L5", "medium_P@L5", "long_P@L5", "long_P@L2", "long_P@L")) -> str:
    """One line; an undefined value (None, NaN: fewer than n residues for P@L/n) reads "n/a".

    Where ``metrics`` has a range's random rate (``long_random``: contacts among that range's pairs),
    it follows the range's first precision shown, "long_P@L5 0.096 (random 0.044)", so the number
    can be judged against chance; it is the same for every k, so it is shown once per range."""
    def shown(v) -> str:
        return "n/a" if v is None or v != v else f"{v:.3f}"

    parts, ranges_shown = [], set()
    for k in (k for k in keys if k in metrics):
        part, rng = f"{k} {shown(metrics[k])}", k.split("_")[0]
        if f"{rng}_random" in metrics and rng not in ranges_shown:
            part += f" (random {shown(metrics[f'{rng}_random'])})"
        ranges_shown.add(rng)
        parts.append(part)
    return "  ".join(parts)
