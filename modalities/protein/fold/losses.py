"""Structure losses with AlphaFold2's formulas (supplement 1.9; OpenFold ``openfold/utils/loss.py``).

    loss = backbone_fape(pred_rot, pred_trans, true_rot, true_trans, pred_ca, true_ca, mask)
    loss = distogram_loss(logits, true_cb, mask)          # true_cb: Cβ, Cα for glycine
    loss = plddt_loss(plddt_logits, pred_ca, true_ca, mask)

Shapes: B structures of L residues; ``mask`` (B, L) is 1 where the residue has true coordinates
(N, Cα, C for frames). True coordinates of masked residues may be NaN: they are zeroed before any
arithmetic, so neither the loss nor its gradient sees them. Every loss is averaged per structure
(over its own masked pairs or residues), then over the batch, so a long chain does not outweigh a
short one. A structure with nothing unmasked contributes 0.

Deliberate difference from OpenFold: no ``resolution`` mask. OpenFold multiplies the lDDT (and TM)
losses by ``(min_resolution <= resolution <= max_resolution)``; files without a resolution (NMR,
predicted or hand-made models) would silently get zero weight. Here every structure counts.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from .geometry import to_local

DISTOGRAM_BINS = 64
DISTOGRAM_MIN, DISTOGRAM_MAX = 2.3125, 21.6875  # Å, AlphaFold2's distogram head
PLDDT_BINS = 50
LDDT_THRESHOLDS = (0.5, 1.0, 2.0, 4.0)


def _no_autocast(fn):
    """Run a loss outside autocast (with ``_full`` for half inputs): geometry in bf16 is off by tenths of an Å."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        device = next(a for a in args if isinstance(a, torch.Tensor)).device.type
        with torch.autocast(device_type=device, enabled=False):
            return fn(*args, **kwargs)
    return wrapper


def _full(*xs: torch.Tensor) -> list[torch.Tensor]:
    """Half-precision inputs (autocast) upcast to float32: 0.3 Å distogram bins and 1e-4 FAPE eps need it."""
    return [x.float() if x.dtype in (torch.float16, torch.bfloat16) else x for x in xs]


def _clean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Zero coordinates where ``mask`` is 0 (and any NaN), so masked entries cannot poison sums or gradients."""
    keep = mask.bool()
    while keep.dim() < x.dim():
        keep = keep[..., None]
    return torch.where(keep & ~torch.isnan(x), x, torch.zeros((), dtype=x.dtype, device=x.device))


@_no_autocast
def backbone_fape(pred_rot: torch.Tensor, pred_trans: torch.Tensor, true_rot: torch.Tensor, true_trans: torch.Tensor,
                  pred_pos: torch.Tensor, true_pos: torch.Tensor, mask: torch.Tensor,
                  clamp: float | None = 10.0, length_scale: float = 10.0, eps: float = 1e-4,
                  atom_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Frame-aligned point error (AF2 Algorithm 28): scalar, mean over structures.

    rot (B, L, 3, 3) and trans (B, L, 3) are the predicted / true residue frames; positions are
    (B, L, 3) (Cα) or (B, L, A, 3) (several atoms per residue, ``atom_mask`` (B, L, A) says which
    exist; default: all of an unmasked residue). For every frame i and atom j,
    d_ij = sqrt(|T_i^-1 x_j - T_i_true^-1 x_j_true|^2 + eps), clamped at ``clamp`` Å (None: no
    clamp), divided by ``length_scale``, averaged over the pairs (i, j) where both are unmasked.
    """
    pred_rot, pred_trans, true_rot, true_trans, pred_pos, true_pos = _full(
        pred_rot, pred_trans, true_rot, true_trans, pred_pos, true_pos)
    mask = mask.to(pred_trans.dtype)
    if pred_pos.dim() == 4:  # (B, L, A, 3) -> (B, L*A, 3)
        b, length, atoms, _ = pred_pos.shape
        atom_mask = mask[..., None].expand(b, length, atoms) if atom_mask is None else atom_mask.to(mask.dtype) * mask[..., None]
        true_pos = _clean(true_pos, atom_mask).reshape(b, length * atoms, 3)
        pred_pos = pred_pos.reshape(b, length * atoms, 3)
        pos_mask = atom_mask.reshape(b, length * atoms)
    else:
        true_pos = _clean(true_pos, mask)
        pos_mask = mask
    true_rot, true_trans = _clean(true_rot, mask), _clean(true_trans, mask)
    local_pred = to_local(pred_rot, pred_trans, pred_pos)  # (B, L, P, 3)
    local_true = to_local(true_rot, true_trans, true_pos)
    dist = torch.sqrt(((local_pred - local_true) ** 2).sum(-1) + eps)  # (B, L, P)
    if clamp is not None:
        dist = dist.clamp(max=clamp)
    pair = mask[:, :, None] * pos_mask[:, None, :]
    per_structure = (dist / length_scale * pair).sum((1, 2)) / pair.sum((1, 2)).clamp(min=1.0)
    return per_structure.mean()


def distogram_bins(true_cb: torch.Tensor, min_bin: float = DISTOGRAM_MIN, max_bin: float = DISTOGRAM_MAX,
                   bins: int = DISTOGRAM_BINS) -> torch.Tensor:
    """(B, L, 3) -> (B, L, L) bin index: ``bins - 1`` edges evenly spaced in [min_bin, max_bin] (AF2)."""
    edges = torch.linspace(min_bin, max_bin, bins - 1, device=true_cb.device, dtype=true_cb.dtype)
    d2 = ((true_cb[:, :, None, :] - true_cb[:, None, :, :]) ** 2).sum(-1, keepdim=True)
    return (d2 > edges**2).sum(-1)


@_no_autocast
def distogram_loss(logits: torch.Tensor, true_cb: torch.Tensor, mask: torch.Tensor,
                   min_bin: float = DISTOGRAM_MIN, max_bin: float = DISTOGRAM_MAX,
                   bins: int = DISTOGRAM_BINS) -> torch.Tensor:
    """Cross-entropy of the (B, L, L, bins) distogram logits against binned true distances.

    ``true_cb`` (B, L, 3) must already be Cβ with Cα for glycine (``geometry.cb_or_ca``): the loss
    does not know residue types. ``mask`` (B, L): residues with that atom; pairs (i, j) with both
    unmasked count, the diagonal included (as in AlphaFold2, where it is bin 0).
    """
    logits, true_cb = _full(logits, true_cb)
    mask = mask.to(logits.dtype)
    target = distogram_bins(_clean(true_cb, mask), min_bin, max_bin, bins)
    ce = F.cross_entropy(logits.permute(0, 3, 1, 2), target, reduction="none")  # (B, L, L)
    pair = mask[:, :, None] * mask[:, None, :]
    return ((ce * pair).sum((1, 2)) / pair.sum((1, 2)).clamp(min=1.0)).mean()


@_no_autocast
def lddt_per_residue(pred_ca: torch.Tensor, true_ca: torch.Tensor, mask: torch.Tensor,
                     cutoff: float = 15.0, eps: float = 1e-10) -> torch.Tensor:
    """Per-residue lDDT-Cα (B, L) in [0, 1] (AF2 Algorithm 29 / OpenFold ``lddt``).

    For residue i: the pairs (i, j), j != i, both unmasked, with true distance < ``cutoff``; each
    scores the fraction of the thresholds 0.5, 1, 2, 4 Å its distance error stays under. A residue
    with no such pair scores 1 (OpenFold's eps convention), masked residues are meaningless.
    """
    mask = mask.to(pred_ca.dtype)
    true_ca = _clean(true_ca, mask)
    d_true = torch.cdist(true_ca, true_ca)
    d_pred = torch.cdist(pred_ca, pred_ca)
    eye = torch.eye(pred_ca.shape[1], device=pred_ca.device, dtype=pred_ca.dtype)
    scored = (d_true < cutoff).to(mask.dtype) * mask[:, :, None] * mask[:, None, :] * (1.0 - eye)
    err = (d_true - d_pred).abs()
    score = sum((err < t).to(mask.dtype) for t in LDDT_THRESHOLDS) / len(LDDT_THRESHOLDS)
    return (eps + (scored * score).sum(-1)) / (eps + scored.sum(-1))


@_no_autocast
def plddt_loss(plddt_logits: torch.Tensor, pred_ca: torch.Tensor, true_ca: torch.Tensor, mask: torch.Tensor,
               cutoff: float = 15.0) -> torch.Tensor:
    """Cross-entropy of (B, L, bins) confidence logits against the binned true lDDT-Cα of each residue.

    The target is computed without gradient (AF2: the confidence head does not move the structure).
    bins = plddt_logits.shape[-1] (50 in AF2: bin k covers lDDT in [k/50, (k+1)/50)).
    No resolution mask: see the module docstring.
    """
    bins = plddt_logits.shape[-1]
    plddt_logits, pred_ca, true_ca = _full(plddt_logits, pred_ca, true_ca)
    with torch.no_grad():
        target = lddt_per_residue(pred_ca.detach(), true_ca, mask, cutoff)
        index = torch.clamp(torch.floor(target * bins).long(), max=bins - 1)
    mask = mask.to(plddt_logits.dtype)
    ce = F.cross_entropy(plddt_logits.permute(0, 2, 1), index, reduction="none")  # (B, L)
    return ((ce * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()


def plddt_from_logits(plddt_logits: torch.Tensor) -> torch.Tensor:
    """(..., bins) logits -> expected lDDT x 100 (..., ), the pLDDT written to B-factors (AF2 1.9.6)."""
    bins = plddt_logits.shape[-1]
    centers = (torch.arange(bins, device=plddt_logits.device, dtype=plddt_logits.dtype) + 0.5) / bins
    return (plddt_logits.softmax(-1) * centers).sum(-1) * 100.0
