"""Structure-comparison metrics as the field reports them: lDDT-Cα, TM-score, GDT-TS, Cα RMSD, contacts.

    m = fold_metrics(pred_ca, true_ca, mask)     # {"lddt_ca", "tm_score", "gdt_ts", "rmsd_ca"}
    rmsd = kabsch_rmsd(pred_ca, true_ca, mask)   # Å after the optimal superposition
    tm = tm_score(pred_ca, true_ca, mask)        # normalised by the true structure's length

One structure at a time, numpy (torch tensors are accepted and copied to CPU). ``pred`` and
``true`` are (L, 3) Cα coordinates of the same residues in the same order (a prediction never needs
a sequence alignment); ``mask`` (L,) says which residues count. Residues with a NaN coordinate in
either structure are left out too, so a true structure's missing residues need no separate mask.

Definitions, each a decision:

- **RMSD**: Kabsch (SVD with the reflection fix) on the masked residues.
- **lDDT-Cα** (Mariani et al. 2013): pairs (i, j), i != j, whose TRUE distance is < 15 Å; each
  pair scores the fraction of the thresholds 0.5, 1, 2, 4 Å its distance error stays under;
  global score = mean over all such pairs (the lDDT program's global score, not a mean of
  per-residue scores). Superposition-free.
- **TM-score** (Zhang & Skolnick 2004): max over superpositions of (1/L) Σ 1 / (1 + (d_i/d0)^2),
  L = number of true residues with coordinates (or ``length``), d0 = 1.24 (L-15)^(1/3) - 1.8
  (0.5 for L <= 21, and at least 0.5). The maximum is searched as the TM-score program does:
  seeds are superpositions on every contiguous fragment of length L, L/2, L/4, ... down to 4
  residues; each seed is refined by up to 20 rounds of "keep residues closer than d0_search + 1,
  re-superpose" (d0_search = d0 clamped to [4.5, 8] Å; the first round uses d0_search - 1; a
  cutoff that keeps fewer than 3 residues grows by 0.5 Å). Approximation: the program's fragment
  stride and stopping rules differ slightly, so this is a lower bound of the true maximum (every
  value is a real superposition's score). Checked against TM-align (tmtools 0.3.0, TM normalised
  by the reference) on 1A8O and 1TEN with noise or a hinge motion: equal to 4 decimals where
  TM-align keeps the residue-to-residue alignment, at most 0.004 above it where it drops pairs.
- **GDT-TS**: mean over cutoffs 1, 2, 4, 8 Å of the largest fraction of the L residues within the
  cutoff after a superposition, searched with the same seeds, iterating "keep residues within the
  cutoff, re-superpose" (LGA searches more exhaustively; same lower-bound caveat). In [0, 1].
- **Contact precision** of a predicted structure: its Cβ (or Cα) distances rank the pairs (closer
  first) and ``contact_metrics.contact_precisions`` scores them against true contact labels:
  P@L, P@L/2, P@L/5 by range (short 6-11, medium 12-23, long >= 24), the one P@L code of foundry.
"""

from __future__ import annotations

import numpy as np

from ..contact_metrics import contact_precisions

LDDT_THRESHOLDS = (0.5, 1.0, 2.0, 4.0)
GDT_CUTOFFS = (1.0, 2.0, 4.0, 8.0)
CONTACT_CUTOFF = 8.0


def _np(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def _pair(pred, true, mask) -> tuple[np.ndarray, np.ndarray]:
    """The residues both structures have, as two (N, 3) arrays."""
    pred, true = _np(pred), _np(true)
    if pred.shape != true.shape or pred.ndim != 2 or pred.shape[1] != 3:
        raise ValueError(f"pred {pred.shape} and true {true.shape} must both be (L, 3)")
    keep = np.isfinite(pred).all(1) & np.isfinite(true).all(1)
    if mask is not None:
        keep &= _np(mask).astype(bool)
    return pred[keep], true[keep]


# -- superposition ------------------------------------------------------------------------------


def _kabsch(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weighted superpositions, batched: x, y (N, 3), w (S, N) -> rot (S, 3, 3), trans (S, 3), x @ rot.T + trans ≈ y."""
    wsum = np.maximum(w.sum(1, keepdims=True), 1e-12)
    cx, cy = (w @ x) / wsum, (w @ y) / wsum  # (S, 3)
    outer = (x[:, :, None] * y[:, None, :]).reshape(len(x), 9)  # one matrix product instead of an einsum
    h = (w @ outer).reshape(-1, 3, 3) - wsum[:, :, None] * cx[:, :, None] * cy[:, None, :]
    u, _, vt = np.linalg.svd(h)
    d = np.sign(np.linalg.det(np.einsum("sji,skj->sik", vt, u)))  # det(V U^T)
    d[d == 0] = 1.0
    fix = np.ones((len(w), 3))
    fix[:, 2] = d
    rot = np.einsum("sji,sj,skj->sik", vt, fix, u)  # V diag(1, 1, d) U^T
    trans = cy - np.einsum("sij,sj->si", rot, cx)
    return rot, trans


def superpose(mobile, target, mask=None) -> tuple[np.ndarray, np.ndarray]:
    """Optimal (least-squares) rigid motion of ``mobile`` onto ``target``: rot (3, 3), trans (3,).

    Apply it as ``mobile @ rot.T + trans``. The fit uses the masked residues with coordinates in both.
    """
    x, y = _pair(mobile, target, mask)
    if len(x) < 3:
        raise ValueError(f"superposition needs at least 3 residues with coordinates, got {len(x)}")
    rot, trans = _kabsch(x, y, np.ones((1, len(x))))
    return rot[0], trans[0]


def kabsch_rmsd(pred, true, mask=None) -> float:
    """Cα RMSD in Å after the optimal superposition of ``pred`` onto ``true``."""
    x, y = _pair(pred, true, mask)
    if len(x) < 3:
        return float("nan")
    rot, trans = _kabsch(x, y, np.ones((1, len(x))))
    moved = x @ rot[0].T + trans[0]
    return float(np.sqrt(((moved - y) ** 2).sum(1).mean()))


# -- lDDT ---------------------------------------------------------------------------------------


def lddt_ca(pred, true, mask=None, cutoff: float = 15.0) -> float:
    """Global lDDT-Cα in [0, 1] (superposition-free; inclusion radius on the true structure). NaN: no pair."""
    x, y = _pair(pred, true, mask)
    d_true = np.linalg.norm(y[:, None] - y[None], axis=-1)
    d_pred = np.linalg.norm(x[:, None] - x[None], axis=-1)
    scored = (d_true < cutoff) & ~np.eye(len(x), dtype=bool)
    if not scored.any():
        return float("nan")
    err = np.abs(d_true - d_pred)[scored]
    return float(np.mean([(err < t).mean() for t in LDDT_THRESHOLDS]))


# -- TM-score and GDT-TS ------------------------------------------------------------------------


def tm_d0(length: int) -> float:
    """TM-score's distance scale for a chain of ``length`` residues (Zhang & Skolnick 2004)."""
    if length <= 21:
        return 0.5
    return max(1.24 * (length - 15) ** (1.0 / 3.0) - 1.8, 0.5)


def _seeds(n: int) -> np.ndarray:
    """(S, n) 0/1 weights: every contiguous fragment of length n, n/2, n/4, ... down to min(4, n)."""
    smallest = min(4, n)
    sizes, size = [], n
    while True:
        size = max(size, smallest)
        sizes.append(size)
        if size == smallest:
            break
        size //= 2
    rows = []
    for size in sizes:
        starts = np.arange(n - size + 1)
        idx = np.arange(n)
        rows.append(((idx >= starts[:, None]) & (idx < starts[:, None] + size)).astype(np.float64))
    return np.concatenate(rows)


def _distances(x, y, rot, trans) -> np.ndarray:
    """(S, N) distance of each residue after each superposition."""
    moved = x[None] @ rot.transpose(0, 2, 1) + trans[:, None, :]
    return np.linalg.norm(moved - y[None], axis=-1)


def _keep_within(dist: np.ndarray, cutoff: float) -> np.ndarray:
    """Residues closer than ``cutoff``, the cutoff growing by 0.5 Å per seed until at least 3 are kept."""
    n = dist.shape[1]
    cut = np.full(len(dist), cutoff)
    keep = dist < cut[:, None]
    while n >= 3:
        short = keep.sum(1) < 3
        if not short.any():
            break
        cut[short] += 0.5
        keep = dist < cut[:, None]
    return keep.astype(np.float64)


def _unseen(keep: np.ndarray, seen: set[bytes]) -> np.ndarray:
    """The rows of ``keep`` (residue selections) not superposed before, each once: seeds converge to few sets."""
    packed = np.packbits(keep.astype(bool), axis=1)
    _, first = np.unique(packed, axis=0, return_index=True)
    rows = [i for i in sorted(first) if packed[i].tobytes() not in seen]
    seen.update(packed[i].tobytes() for i in rows)
    return keep[rows]


def _seed_distances(x, y) -> np.ndarray:
    """(S, N) residue distances after superposing each seed fragment."""
    rot, trans = _kabsch(x, y, _seeds(len(x)))
    return _distances(x, y, rot, trans)


def _search(x, y, score, first_cutoff: float, cutoff: float, rounds: int = 20, seeded=None) -> float:
    """Max of ``score(dist)`` over seed superpositions refined by keep-within-cutoff rounds.

    A selection's refinement is deterministic, so one already superposed is not repeated.
    ``seeded``: ``_seed_distances(x, y)`` when the caller searches several times.
    """
    dist = _seed_distances(x, y) if seeded is None else seeded
    best = score(dist).max()
    keep, seen = _keep_within(dist, first_cutoff), set()
    for _ in range(rounds):
        keep = _unseen(keep, seen)
        if not len(keep):
            break
        rot, trans = _kabsch(x, y, keep)
        dist = _distances(x, y, rot, trans)
        best = max(best, score(dist).max())
        keep = _keep_within(dist, cutoff)
    return float(best)


def tm_score(pred, true, mask=None, length: int | None = None) -> float:
    """TM-score of ``pred`` against ``true`` in (0, 1], normalised by ``length`` (default: true residues kept)."""
    x, y = _pair(pred, true, mask)
    length = length or len(y)
    if len(x) < 3:
        return float("nan")
    d0 = tm_d0(length)
    d0_search = min(max(d0, 4.5), 8.0)
    return _search(x, y, lambda d: (1.0 / (1.0 + (d / d0) ** 2)).sum(1) / length, d0_search - 1.0, d0_search + 1.0)


def gdt_ts(pred, true, mask=None, length: int | None = None) -> float:
    """GDT-TS in [0, 1]: mean over 1, 2, 4, 8 Å of the best fraction of residues within the cutoff."""
    x, y = _pair(pred, true, mask)
    length = length or len(y)
    if len(x) < 3:
        return float("nan")
    seeded = _seed_distances(x, y)
    return float(np.mean([_search(x, y, lambda d, c=c: (d < c).sum(1) / length, c, c, seeded=seeded)
                          for c in GDT_CUTOFFS]))


# -- contacts -----------------------------------------------------------------------------------


def contact_labels(coords, mask=None, cutoff: float = CONTACT_CUTOFF) -> np.ndarray:
    """(L, 3) true Cβ (Cα for glycine) -> (L, L) int8 labels: 1 contact (< cutoff Å), 0 not, -1 unknown."""
    xyz = _np(coords)
    known = np.isfinite(xyz).all(1) if mask is None else np.isfinite(xyz).all(1) & _np(mask).astype(bool)
    dist = np.linalg.norm(xyz[:, None] - xyz[None], axis=-1)
    labels = (dist < cutoff).astype(np.int8)
    labels[~(known[:, None] & known[None, :])] = -1
    return labels


def contact_precision(pred_coords, true_contacts, length: int | None = None) -> dict[str, float]:
    """P@L, P@L/2, P@L/5 by range of a predicted structure's (L, 3) Cβ or Cα against (L, L) true labels.

    Keys as ``contact_metrics.contact_precisions``: ``long_P@L5``, ``short_P@L`` ... A residue without
    predicted coordinates ranks last.
    """
    xyz = _np(pred_coords)
    dist = np.linalg.norm(xyz[:, None] - xyz[None], axis=-1)
    closeness = np.where(np.isfinite(dist), -dist, -np.inf)
    return contact_precisions(closeness, np.asarray(true_contacts), length=length)


def fold_metrics(pred_ca, true_ca, mask=None) -> dict[str, float]:
    """The per-structure table row: lDDT-Cα, TM-score, GDT-TS (0-1) and Cα RMSD (Å)."""
    return {
        "lddt_ca": lddt_ca(pred_ca, true_ca, mask),
        "tm_score": tm_score(pred_ca, true_ca, mask),
        "gdt_ts": gdt_ts(pred_ca, true_ca, mask),
        "rmsd_ca": kabsch_rmsd(pred_ca, true_ca, mask),
    }
