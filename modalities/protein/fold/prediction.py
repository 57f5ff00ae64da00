"""What any folder returns, and the files ``foundry protein fold`` writes from it.

    predictions = folder.fold(["d1or4a_"], ["MKTAYIAKQR..."])     # list[FoldPrediction]
    write_pdb(predictions[0], out / "d1or4a_.pdb")               # pLDDT in the B-factor column
    write_summary_csv(predictions, out / "summary.csv")          # id, length, mean_plddt
    write_png(out / "d1or4a_.png", prediction_image(predictions[0]))

A ``Folder`` is anything with ``max_length`` and ``fold(ids, sequences)``: the foundry folding head
(``predictor.py``) and a transformers ``EsmForProteinFolding`` directory (``hf_folder.py``) both are.

Decisions a user can look up here:

- ``atoms`` is (L, 5, 3) N, CA, C, O, CB in Å. Glycine's CB is NaN (it has none; the PDB has no
  CB for GLY); any atom a folder could not place is NaN and is left out of the PDB.
  ``distogram_atom`` gives the distogram convention (CB, CA for glycine).
- The PDB has one residue per input residue, in input order, numbered 1..L, chain A; residue
  names are the standard three-letter codes, any other letter (X, B, Z, U, O) is UNK. pLDDT
  (0-100) is the B-factor of every atom of the residue; occupancy 1.00.
- The picture: the contact probability map P(CB-CB < 8 Å) from the predicted distogram (the
  probability of the bins whose upper edge is at most 8 Å) — or, without a distogram, the
  predicted structure's own contacts (0/1) — with axes in residue numbers and a colour bar, above
  the pLDDT along the sequence (grey lines at 50, 70 and 90, AlphaFold's confidence bands).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence, runtime_checkable

import numpy as np

from foundry.errors import DataError

ATOMS = ("N", "CA", "C", "O", "CB")
CONTACT_CUTOFF = 8.0
THREE_LETTER = {
    "A": "ALA", "R": "ARG", "N": "ASN", "D": "ASP", "C": "CYS", "Q": "GLN", "E": "GLU", "G": "GLY", "H": "HIS",
    "I": "ILE", "L": "LEU", "K": "LYS", "M": "MET", "F": "PHE", "P": "PRO", "S": "SER", "T": "THR", "W": "TRP",
    "Y": "TYR", "V": "VAL",
}


@dataclass
class FoldPrediction:
    id: str
    sequence: str
    atoms: np.ndarray  # (L, 5, 3) N, CA, C, O, CB in Å; NaN where absent (glycine's CB)
    plddt: np.ndarray  # (L,) 0-100
    distogram: np.ndarray | None = None  # (L, L, bins) probabilities
    bin_edges: np.ndarray | None = None  # (bins - 1,) Å: bin k covers [edge k-1, edge k)

    def __post_init__(self) -> None:
        n = len(self.sequence)
        if self.atoms.shape != (n, len(ATOMS), 3) or self.plddt.shape != (n,):
            raise ValueError(f"{self.id}: atoms {self.atoms.shape} / plddt {self.plddt.shape} do not fit {n} residues")


@runtime_checkable
class Folder(Protocol):
    """Sequences in, structures out. ``max_length``: the longest sequence it accepts (residues)."""

    max_length: int

    def fold(self, ids: list[str], sequences: list[str]) -> list[FoldPrediction]: ...


def distogram_atom(prediction: FoldPrediction) -> np.ndarray:
    """(L, 3) CB, CA for glycine (the distogram and contact convention)."""
    cb = prediction.atoms[:, 4].copy()
    gly = np.array([c == "G" for c in prediction.sequence.upper()], dtype=bool)
    cb[gly] = prediction.atoms[gly, 1]
    return cb


# -- PDB ----------------------------------------------------------------------------------------


def _atom_line(serial: int, name: str, resname: str, resseq: int, xyz: np.ndarray, bfactor: float) -> str:
    # PDB v3.3 ATOM record: a one-letter element's name starts in column 14 (" CA "), chain A.
    return (f"ATOM  {serial:5d}  {name:<3s} {resname:3s} A{resseq:4d}    "
            f"{xyz[0]:8.3f}{xyz[1]:8.3f}{xyz[2]:8.3f}{1.0:6.2f}{bfactor:6.2f}          {name[0]:>2s}  ")


def pdb_text(prediction: FoldPrediction) -> str:
    """The PDB file of ``prediction`` as a string (see the module docstring for the conventions)."""
    if len(prediction.sequence) > 9999:
        raise DataError(f"{prediction.id}: {len(prediction.sequence)} residues do not fit PDB residue numbers (9999)")
    finite = prediction.atoms[np.isfinite(prediction.atoms)]
    if finite.size and (finite.min() < -999.999 or finite.max() > 9999.999):
        raise DataError(f"{prediction.id}: predicted coordinates reach {np.abs(finite).max():.0f} Å, outside what the "
                        "PDB format's columns hold (-999.999 to 9999.999); the model is likely untrained or diverged")
    lines = [f"REMARK   1 {prediction.id} predicted structure; B-factor column = pLDDT (0-100)"]
    serial = 0
    for i, letter in enumerate(prediction.sequence.upper()):
        resname = THREE_LETTER.get(letter, "UNK")
        bfactor = float(np.clip(prediction.plddt[i], 0.0, 100.0))
        for k, name in enumerate(ATOMS):
            xyz = prediction.atoms[i, k]
            if (name == "CB" and resname == "GLY") or not np.isfinite(xyz).all():
                continue
            serial += 1
            lines.append(_atom_line(serial, name, resname, i + 1, xyz, bfactor))
    last = THREE_LETTER.get(prediction.sequence[-1:].upper(), "UNK")
    lines.append(f"TER   {serial + 1:5d}      {last:3s} A{len(prediction.sequence):4d}")
    lines.append("END")
    return "".join(line.ljust(80) + "\n" for line in lines)  # fixed 80 columns: "END   " is what parsers look for


def write_pdb(prediction: FoldPrediction, path: str | Path) -> None:
    """Write ``prediction`` as a PDB file that biopython's PDBParser and PyMOL open."""
    Path(path).write_text(pdb_text(prediction))


def write_summary_csv(predictions: Sequence[FoldPrediction], path: str | Path) -> None:
    """id, length, mean_plddt (0-100, two decimals) per prediction, in input order."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "length", "mean_plddt"])
        for p in predictions:
            writer.writerow([p.id, len(p.sequence), f"{float(np.mean(p.plddt)):.2f}"])


# -- picture ------------------------------------------------------------------------------------


def contact_probabilities(prediction: FoldPrediction, cutoff: float = CONTACT_CUTOFF) -> np.ndarray:
    """(L, L) P(contact): distogram mass of the bins ending at or below ``cutoff`` Å, else 0/1 from the structure."""
    if prediction.distogram is not None and prediction.bin_edges is not None:
        upper = np.append(np.asarray(prediction.bin_edges, dtype=np.float64), np.inf)  # bin k ends at edge k
        return prediction.distogram[..., upper <= cutoff].sum(-1)
    cb = distogram_atom(prediction)
    dist = np.linalg.norm(cb[:, None] - cb[None], axis=-1)
    return np.nan_to_num((dist < cutoff).astype(np.float64))


def plddt_image(plddt: np.ndarray, width: int, height: int = 150, left: int = 40,
                plot_w: int | None = None) -> np.ndarray:
    """pLDDT along the sequence: x in residue numbers (aligned with the map above when ``left``, ``plot_w`` match)."""
    from foundry.images import _nice_step
    from foundry.images_font import HEIGHT, draw_text, text_width

    n = len(plddt)
    img = np.full((height, width, 3), 255, dtype=np.uint8)
    plot_w = plot_w or max(1, width - left - 20)
    top, plot_h = 20, height - 20 - HEIGHT * 2 - 12
    y_of = lambda v: top + round((1 - np.clip(v, 0, 100) / 100) * (plot_h - 1))  # noqa: E731
    x_of = lambda i: left + round((i + 0.5) * plot_w / n)  # noqa: E731
    for level in (50, 70, 90):
        img[y_of(level), left : left + plot_w : 3] = (170, 170, 170)
    for level in (0, 50, 100):
        img[y_of(level), left - 4 : left] = 0
        draw_text(img, str(level), left - 6 - text_width(str(level)), y_of(level) - HEIGHT // 2)
    img[top : top + plot_h, left - 1] = 0
    img[top + plot_h, left - 1 : left + plot_w] = 0
    xs = [x_of(i) for i in range(n)]
    ys = [y_of(v) for v in np.nan_to_num(plddt)]
    for (x0, y0), (x1, y1) in zip(zip(xs, ys), zip(xs[1:] + xs[-1:], ys[1:] + ys[-1:])):
        steps = max(abs(x1 - x0), abs(y1 - y0), 1)
        for t in np.linspace(0, 1, steps + 1):
            img[round(y0 + t * (y1 - y0)), round(x0 + t * (x1 - x0))] = (8, 48, 107)
    step = _nice_step(n)
    for t in [t for t in range(step, n + 1, step)] or [1]:
        img[top + plot_h + 1 : top + plot_h + 4, x_of(t - 1)] = 0
        draw_text(img, str(t), x_of(t - 1) - text_width(str(t)) // 2, top + plot_h + 5)
    draw_text(img, "residue", left + plot_w // 2 - text_width("residue") // 2, top + plot_h + HEIGHT + 8)
    draw_text(img, "plddt", left, 4)
    return img


def prediction_image(prediction: FoldPrediction) -> np.ndarray:
    """(H, W, 3) uint8: the contact probability map above the pLDDT curve."""
    from foundry.images import pair_map_image
    from foundry.images_font import HEIGHT, text_width

    n = len(prediction.sequence)
    label = "P(contact)" if prediction.distogram is not None else "contact (predicted structure)"
    top = pair_map_image(contact_probabilities(prediction), value_label=label, axis_label="residue")
    # the map's geometry (foundry.images.pair_map_image), so residue i sits at the same x in both panels
    left, side = text_width(str(n)) + 8 + HEIGHT + 6, n * max(1, -(-400 // max(1, n)))
    bottom = plddt_image(prediction.plddt, width=top.shape[1], left=left, plot_w=side)
    return np.concatenate([top, bottom], axis=0)
