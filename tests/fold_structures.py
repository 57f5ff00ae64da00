"""Backbone coordinates of the real chains the fold tests use (biopython, first model, first chain)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

DATA = Path(__file__).parent / "data" / "structures"


def backbone(name: str = "1A8O.pdb") -> tuple[str, np.ndarray]:
    """(sequence, (L, 4, 3) float64 N, CA, C, O) of the residues that have all four atoms."""
    import warnings

    from Bio.PDB import PDBParser
    from Bio.PDB.Polypeptide import three_to_index, index_to_one

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        structure = PDBParser(QUIET=True).get_structure("s", str(DATA / name))
    chain = next(iter(next(iter(structure))))
    seq, xyz = [], []
    for res in chain:
        if all(a in res for a in ("N", "CA", "C", "O")):
            name3 = "MET" if res.get_resname() == "MSE" else res.get_resname()
            try:
                seq.append(index_to_one(three_to_index(name3)))
            except (KeyError, ValueError):
                continue
            xyz.append([res[a].coord for a in ("N", "CA", "C", "O")])
    return "".join(seq), np.asarray(xyz, dtype=np.float64)


def random_rigid(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A random proper rotation (det +1) and a translation of tens of Å."""
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q, rng.normal(scale=30.0, size=3)
