"""Structures -> folding examples: every protein chain's sequence and backbone atoms, and random crops.

    chains = read_chains("structures/")           # every protein chain of every PDB/mmCIF file
    chains = read_chains("1abc.cif", chain="B")   # one chain
    chains[0].atoms       # (L, 5, 3) float32 N, CA, C, O, CB in Å; NaN where the atom is absent
    chains[0].target()    # (L, 20): atoms flattened (15) + atom mask (5), what the fold task trains on

The conventions are those of ``modalities.protein.structures``: its public ``read_chain_atoms``
reads the chains, the reading its contact labels come from, so the two never disagree. First
model, highest-occupancy alternate location, modified residues mapped to their parent (MSE -> M),
SEQRES placement with insertion codes, residues without coordinates masked (never shifted). Here a
file contributes every chain that holds amino acids (``chain=`` picks one). The CB channel holds the distogram's atom: Cβ, Cα for glycine, an ideal
Cβ where the side chain is truncated. An atom counts only if it is there: a residue missing N, Cα
or C has no frame (masked in FAPE), one missing Cα is masked in lDDT / RMSD.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch

from foundry.errors import DataError

from ..structures import CHAIN_ATOMS as ATOM_NAMES  # N, CA, C, O, CB (Cα for glycine)
from ..structures import ChainAtoms

TARGET_WIDTH = 3 * len(ATOM_NAMES) + len(ATOM_NAMES)


@dataclass
class Chain(ChainAtoms):
    """A chain as ``structures.read_chain_atoms`` reads it, as the fold task trains on it."""

    @property
    def where(self) -> str:
        return f"{self.path}: chain {self.chain}"

    def target(self) -> np.ndarray:
        """(L, 20) float32: xyz of the 5 atoms (0 where absent), then 1/0 per atom present."""
        present = ~np.isnan(self.atoms).any(-1)  # (L, 5)
        coords = np.where(present[..., None], self.atoms, 0.0).reshape(len(self.sequence), -1)
        return np.concatenate([coords, present.astype(np.float32)], 1).astype(np.float32)


def read_chains(path: str | Path, chain: str | None = None) -> list[Chain]:
    """Every protein chain (or ``chain``) of a structure file, or of each structure file of a folder."""
    from ..structures import STRUCTURE_SUFFIXES, is_structure_file

    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and is_structure_file(p))
        if not files:
            raise DataError(f"{path}: no structure files (expected {', '.join(STRUCTURE_SUFFIXES)}, optionally .gz)")
        return [c for f in files for c in read_file_chains(f, chain)]
    return read_file_chains(path, chain)


def read_file_chains(path: Path, chain: str | None = None) -> list[Chain]:
    """Every protein chain (or ``chain``) of one structure file; an ideal Cβ where the side chain is truncated."""
    from ..structures import read_chain_atoms

    return [Chain(**{f.name: getattr(c, f.name) for f in fields(ChainAtoms)}) for c in read_chain_atoms(path, chain, virtual_cb=True)]


def random_crop(tokens: torch.Tensor, targets: torch.Tensor, size: int, special_ids, pad_id: int, ignore: float):
    """Each row's residues cut to a random window of ``size`` (drawn from torch's RNG), its special
    tokens kept around it (<cls> window <eos>, as the model reads whole proteins); rows re-padded.
    ``targets`` (B, T, K) follow their tokens."""
    special = torch.as_tensor(sorted(special_ids), device=tokens.device)
    rows_t, rows_y = [], []
    for tok, y in zip(tokens, targets):
        real = tok.ne(pad_id)
        residues = torch.nonzero(real & ~torch.isin(tok, special)).flatten()
        n = len(residues)
        if n <= size:
            keep = torch.nonzero(real).flatten()
        else:
            start = int(torch.randint(0, n - size + 1, ()))
            body = residues[start : start + size]
            first, last = int(residues[0]), int(residues[-1])
            keep = torch.cat([torch.arange(0, first), body, torch.arange(last + 1, int(real.sum()))])
        rows_t.append(tok[keep])
        rows_y.append(y[keep])
    width = max(len(r) for r in rows_t)
    out_t = torch.full((len(rows_t), width), pad_id, dtype=tokens.dtype)
    out_y = torch.full((len(rows_t), width, targets.shape[-1]), ignore, dtype=targets.dtype)
    for k, (t, y) in enumerate(zip(rows_t, rows_y)):
        out_t[k, : len(t)], out_y[k, : len(y)] = t, y
    return out_t, out_y
