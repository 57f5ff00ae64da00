"""Structural violation losses of the predicted backbone (AlphaFold2 supplement 1.9.11; OpenFold
``between_residue_bond_loss`` and ``between_residue_clash_loss`` are the reference formulas).

    loss = violation_loss(atoms, residue_mask)      # atoms (B, L, 4+, 3): N, Cα, C, O (Å)

FAPE compares each structure with the truth but says nothing about chemistry: trained on little
information, the structure module hedges by pulling every residue toward the middle (consecutive
Cα 2 Å apart instead of 3.8, a radius of gyration a third of the true one). These terms make
the hedge cost what it costs a protein:

- peptide bond: |C(i) - N(i+1)| within 12 standard deviations of 1.329 Å;
- the two angles at that bond, Cα(i)-C(i)-N(i+1) and C(i)-N(i+1)-Cα(i+1), within 12 standard
  deviations of their cosines (``residue_constants``);
- clashes: two backbone atoms of different residues (the peptide bond excepted) closer than the sum
  of their van der Waals radii less 1.5 Å.

Each term is a flat-bottomed hinge (zero inside the tolerance) averaged per structure, then over
the batch. Two simplifications, both inside the tolerance: the peptide bond before a proline
(1.341 ± 0.016 Å in AlphaFold2) uses the general 1.329 ± 0.014 Å (the loss has no residue types;
12 standard deviations are 0.17 Å), and clashes are counted on the backbone atoms N, Cα, C, O
(side chains are not predicted; a glycine's Cβ would not exist).
"""

from __future__ import annotations

import torch

from .losses import _full, _no_autocast

TOLERANCE = 12.0  # standard deviations (AlphaFold2's violation_tolerance_factor)
CLASH_OVERLAP = 1.5  # Å (AlphaFold2's clash_overlap_tolerance)
BACKBONE = ("N", "C", "C", "O")  # elements of N, Cα, C, O


def _constants():
    from transformers.models.esm.openfold_utils import residue_constants as rc

    return rc


def _unit(v: torch.Tensor, eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    length = torch.sqrt((v**2).sum(-1) + eps)
    return v / length[..., None], length


def _mean_over(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per structure mean of ``values`` where ``mask`` (same shape, leading B), then over the batch."""
    dims = tuple(range(1, values.dim()))
    return ((values * mask).sum(dims) / mask.sum(dims).clamp(min=1.0)).mean()


@_no_autocast
def peptide_bond_loss(atoms: torch.Tensor, residues: torch.Tensor) -> torch.Tensor:
    """Bond length and the two bond angles at every peptide bond between consecutive residues."""
    (atoms,) = _full(atoms)
    rc = _constants()
    ca, c = atoms[:, :-1, 1], atoms[:, :-1, 2]
    next_n, next_ca = atoms[:, 1:, 0], atoms[:, 1:, 1]
    bonded = (residues[:, :-1] & residues[:, 1:]).to(atoms.dtype)  # both residues of the chain (the sequence is continuous)
    c_to_n, bond = _unit(next_n - c)
    c_to_ca, _ = _unit(ca - c)
    n_to_ca, _ = _unit(next_ca - next_n)

    def hinge(value, ideal, stddev):
        return torch.relu(torch.sqrt((value - ideal) ** 2 + 1e-6) - TOLERANCE * stddev)

    length = hinge(bond, rc.between_res_bond_length_c_n[0], rc.between_res_bond_length_stddev_c_n[0])
    ca_c_n = hinge((c_to_ca * c_to_n).sum(-1), *rc.between_res_cos_angles_ca_c_n)
    c_n_ca = hinge((-c_to_n * n_to_ca).sum(-1), *rc.between_res_cos_angles_c_n_ca)
    return _mean_over(length, bonded) + _mean_over(ca_c_n, bonded) + _mean_over(c_n_ca, bonded)


@_no_autocast
def clash_loss(atoms: torch.Tensor, residues: torch.Tensor) -> torch.Tensor:
    """Overlap beyond the tolerance of backbone atoms of different residues, summed per atom pair
    and divided by the structure's backbone atoms (AlphaFold2's normalisation)."""
    (atoms,) = _full(atoms)
    rc = _constants()
    b, length = atoms.shape[:2]
    xyz = atoms[:, :, :4].reshape(b, length * 4, 3)
    radius = torch.tensor([rc.van_der_waals_radius[e] for e in BACKBONE], dtype=xyz.dtype, device=xyz.device).repeat(length)
    residue_of = torch.arange(length, device=xyz.device).repeat_interleave(4)
    atom_of = torch.arange(4, device=xyz.device).repeat(length)
    exists = residues.to(xyz.dtype).repeat_interleave(4, dim=1)  # (B, 4L)
    later = residue_of[None, :] > residue_of[:, None]  # each pair of residues once
    peptide = (residue_of[None, :] == residue_of[:, None] + 1) & (atom_of[:, None] == 2) & (atom_of[None, :] == 0)  # C(i)-N(i+1)
    pairs = (later & ~peptide).to(xyz.dtype)[None] * exists[:, :, None] * exists[:, None, :]
    dist = torch.sqrt(((xyz[:, :, None] - xyz[:, None]) ** 2).sum(-1) + 1e-10)
    overlap = torch.relu(radius[:, None] + radius[None, :] - CLASH_OVERLAP - dist)
    return ((overlap * pairs).sum((1, 2)) / exists.sum(1).clamp(min=1.0)).mean()


def violation_loss(atoms: torch.Tensor, residues: torch.Tensor) -> torch.Tensor:
    """Peptide bonds + clashes of predicted atoms (B, L, 4+, 3); ``residues`` (B, L) bool: the chain's residues."""
    return peptide_bond_loss(atoms, residues) + clash_loss(atoms, residues)
