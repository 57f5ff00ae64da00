"""PDB / mmCIF files -> sequence + Cβ distance map + contact labels, one chain at a time.

    labels = read_structure("1a8o.pdb")              # first protein chain, first model
    labels = read_structure("4cup.cif", chain="A")
    labels.sequence          # 'MDIRQGPKEPFRD...'  (SEQRES when the file has it, see below)
    labels.distances         # (L, L) float32 Cβ–Cβ distances in Å (Cα for glycine), NaN where unknown
    labels.contacts          # (L, L) int8: 1 contact (< 8 Å), 0 no contact, -1 unknown
    labels.mask              # (L,) bool: residue has the atom the distance needs
    for labels in read_structures("pdbs/"): ...      # every .pdb/.ent/.cif/.mmcif(.gz) of a folder
    chains = read_chain_atoms("1abc.cif")            # EVERY protein chain (chain="B": that one), with atoms:
    chains[0].atoms          # (L, 5, 3) float32 N, CA, C, O, CB (Cα for glycine) in Å per position, NaN where absent

``read_structure`` derives its labels from the same per-chain reading as ``read_chain_atoms``
(a ``StructureLabels`` is a ``ChainAtoms`` with contacts; ``labels.coords`` is ``labels.atoms[:, 4]``), so contact labels and the folding task's structures
(``modalities.protein.fold.data``) never disagree on a residue, a position or an atom.

Conventions, each one a decision a user can look up here:

- **Chain**: ``chain=`` is the author chain id (``auth_asym_id`` in mmCIF, column 22 in PDB).
  Without it, the first chain holding an amino-acid residue is taken. A file with no such chain
  (DNA only, a header without atoms) is a ``DataError``.
- **Model**: the first model (NMR ensembles have dozens); ``labels.notes`` says how many there were.
- **Residues**: the 20 standard amino acids; modified residues are mapped to their parent through
  biopython's ``protein_letters_3to1_extended`` table (MSE->M, SEP->S, TPO->T, ...), whether
  written as ATOM or HETATM (a HETATM one only when peptide-bonded to a neighbour: a free amino
  acid is a ligand); other residues in ATOM records with a Cα (UNK, ...) are ``X``. Waters and
  other ligands are not residues of the chain.
- **Alternate locations**: per atom, the highest occupancy (the first one on a tie: biopython's
  choice); for a point mutation modelled as two residues at one position, the residue with the
  higher mean occupancy.
- **Sequence**: when the file has the deposited sequence (mmCIF ``_pdbx_poly_seq_scheme``, PDB
  ``SEQRES``), ``labels.sequence`` is that full sequence and residues without coordinates (disordered
  termini, loops) are masked: ``labels.sequence_source == "seqres"``. mmCIF gives the exact
  position of each observed residue; for PDB the observed residues are aligned to SEQRES
  (biopython ``PairwiseAligner``) and the alignment must place every observed residue, in order,
  on an equal letter, or the file is refused (a ``DataError`` naming the residue) rather than
  misaligned. Without a deposited sequence (or with ``use_seqres=False``) the sequence is the
  observed residues in file order: ``sequence_source == "observed"``.
- **Distances**: Cβ–Cβ, Cα for glycine (the CASP / ESM convention). A residue without the needed
  atom (no Cβ in a truncated side chain, no Cα) is masked: its row and column are NaN / -1, never
  shifted. ``virtual_cb=True`` places an ideal Cβ from N, Cα, C instead (trRosetta's constants),
  when those three atoms are there. Residues missing any of N, Cα, C, O are listed in
  ``labels.missing_backbone`` and ``labels.backbone_mask`` is False for those missing N, Cα or C.
- **Atoms** (``read_chain_atoms``): N, Cα, C, O as observed and the distance atom above (Cβ, Cα for
  glycine, the ideal Cβ with ``virtual_cb=True``), at the residue's place in the sequence; NaN for
  an atom that is not there and for every atom of a residue without coordinates.
"""

from __future__ import annotations

import gzip
import io
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Iterator

import numpy as np

from foundry.errors import DataError

CONTACT_CUTOFF = 8.0
STRUCTURE_SUFFIXES = (".pdb", ".ent", ".cif", ".mmcif")
#: the atoms of ``ChainAtoms.atoms``, in order; the last is the distance atom (Cα for glycine)
CHAIN_ATOMS = ("N", "CA", "C", "O", "CB")
_WATER = {"HOH", "WAT", "DOD", "H2O"}


@dataclass
class ChainAtoms:
    """One chain of a structure file: its sequence and each position's atoms (``read_chain_atoms``)."""

    path: str
    chain: str
    sequence: str  # full deposited sequence (sequence_source "seqres") or the observed residues
    sequence_source: str  # "seqres" | "observed"
    residue_ids: list[str | None]  # author residue number + insertion code per position; None: unobserved
    atoms: np.ndarray  # (L, 5, 3) float32 Å, CHAIN_ATOMS per position; NaN where absent
    n_models: int = 1
    missing_backbone: list[str] = field(default_factory=list)  # "ALA 52: N, O"
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        """A label for outputs: file stem + chain, e.g. ``1a8o_A``."""
        stem = Path(self.path).name
        for suffix in (".gz", *STRUCTURE_SUFFIXES):
            stem = stem[: -len(suffix)] if stem.lower().endswith(suffix) else stem
        return f"{stem}_{self.chain}"

    def __len__(self) -> int:
        return len(self.sequence)


@dataclass(kw_only=True)
class StructureLabels(ChainAtoms):
    """A chain with its contact labels (``read_structure``): everything ``ChainAtoms`` has, plus
    the distance atom's mask, coordinates, distances and contacts."""

    mask: np.ndarray  # (L,) bool: has the atom the distance uses
    backbone_mask: np.ndarray  # (L,) bool: has N, CA and C
    coords: np.ndarray  # (L, 3) float32 Cβ (Cα for Gly), NaN where masked
    distances: np.ndarray  # (L, L) float32 Å, NaN where unknown
    contacts: np.ndarray  # (L, L) int8, 1 / 0 / -1 unknown


# -- reading ------------------------------------------------------------------------------------


def is_structure_file(path: str | Path) -> bool:
    name = Path(path).name.lower()
    name = name[:-3] if name.endswith(".gz") else name
    return name.endswith(STRUCTURE_SUFFIXES)


def read_structures(path: str | Path, chain: str | None = None, **kwargs) -> Iterator[StructureLabels]:
    """A structure file, or every structure file of a folder (sorted by name)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and is_structure_file(p))
        if not files:
            raise DataError(f"{path}: no structure files (expected {', '.join(STRUCTURE_SUFFIXES)}, optionally .gz)")
        for f in files:
            yield read_structure(f, chain=chain, **kwargs)
    else:
        yield read_structure(path, chain=chain, **kwargs)


def read_structure(path: str | Path, chain: str | None = None, use_seqres: bool = True,
                   virtual_cb: bool = False, cutoff: float = CONTACT_CUTOFF) -> StructureLabels:
    """One chain of a PDB or mmCIF file as labels; see the module docstring for the conventions."""
    path = Path(path)
    text, is_cif, models = _read_models(path)
    chain_id = _pick_chain(path, models[0], chain)
    return _labels(*_read_chain(path, text, is_cif, models, chain_id, use_seqres, virtual_cb), cutoff)


def read_chain_atoms(path: str | Path, chain: str | None = None, *, use_seqres: bool = True,
                     virtual_cb: bool = False) -> list[ChainAtoms]:
    """Every chain of a PDB / mmCIF file that holds an amino acid, in file order (``chain``: that
    one only), each with its atoms per position: the readers and conventions of ``read_structure``
    (module docstring). A file without a protein chain, or without ``chain``, is a ``DataError``
    listing the chains there."""
    path = Path(path)
    text, is_cif, models = _read_models(path)
    model = models[0]
    if chain is not None:
        ids = [_pick_chain(path, model, chain)]
    else:
        ids = [c.id for c in model if any(_is_amino_acid(r) for r in c)]
        if not ids:
            _pick_chain(path, model, None)  # raises: no protein chain, listing the chains
    return [_read_chain(path, text, is_cif, models, cid, use_seqres, virtual_cb)[0] for cid in ids]


def _read_models(path: Path) -> tuple[str, bool, list]:
    """(text, is mmCIF, models) of a structure file that has at least one model."""
    text = _read_text(path)
    is_cif = _is_cif(path, text)
    models = list(_parse(path, text, is_cif))
    if not models:
        raise DataError(f"{path}: no atoms (no MODEL / ATOM records)")
    return text, is_cif, models


def _read_chain(path: Path, text: str, is_cif: bool, models: list, chain_id: str, use_seqres: bool,
                use_virtual_cb: bool) -> tuple[ChainAtoms, np.ndarray]:
    """One chain of the first model placed on its sequence: the ``ChainAtoms`` and its atoms in
    float64 (distances are computed from those, as read)."""
    observed = [_residue_record(r) for r in _chain_residues(models[0][chain_id])]
    notes = []
    if len(models) > 1:
        notes.append(f"{len(models)} models; the first is used")
    seqres = None
    if use_seqres:
        seqres = _cif_seqres(path, text, chain_id) if is_cif else _pdb_seqres(text, chain_id)
    if seqres is not None:
        sequence, placement = _place(path, chain_id, observed, seqres, exact=is_cif)
        source = "seqres"
        n_unobserved = len(sequence) - len(observed)
        if n_unobserved:
            notes.append(f"{n_unobserved} of {len(sequence)} SEQRES residues have no coordinates (masked)")
    else:
        sequence = "".join(o.letter for o in observed)
        placement = list(range(len(observed)))
        source = "observed"
    atoms = np.full((len(sequence), len(CHAIN_ATOMS), 3), np.nan)
    residue_ids: list[str | None] = [None] * len(sequence)
    missing_bb, no_atom = [], []
    for o, i in zip(observed, placement):
        residue_ids[i] = o.label
        absent = [a for a in CHAIN_ATOMS[:4] if a not in o.atoms]
        if absent:
            missing_bb.append(f"{o.resname} {o.label}: {', '.join(absent)}")
        for k, name in enumerate(CHAIN_ATOMS[:4]):
            if name in o.atoms:
                atoms[i, k] = o.atoms[name]
        atom = "CA" if o.resname == "GLY" else "CB"
        if atom in o.atoms:
            atoms[i, 4] = o.atoms[atom]
        elif use_virtual_cb and all(a in o.atoms for a in ("N", "CA", "C")):
            atoms[i, 4] = virtual_cb(o.atoms["N"], o.atoms["CA"], o.atoms["C"])
        else:
            no_atom.append(f"{o.resname} {o.label} (no {atom})")
    n_alt = sum(o.altloc for o in observed)
    if n_alt:
        notes.append(f"{n_alt} residues with alternate locations (highest occupancy used)")
    if missing_bb:
        notes.append(f"{len(missing_bb)} residues miss backbone atoms: {'; '.join(missing_bb[:5])}"
                     + (" ..." if len(missing_bb) > 5 else ""))
    if no_atom:
        notes.append(f"{len(no_atom)} residues masked: {', '.join(no_atom[:5])}" + (" ..." if len(no_atom) > 5 else ""))
    chain = ChainAtoms(str(path), chain_id, sequence, source, residue_ids, atoms.astype(np.float32), len(models), missing_bb, notes)
    return chain, atoms


def _read_text(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, expected a PDB or mmCIF file") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise DataError(f"{path}: corrupt gzip data ({exc})") from None
    if b"\x00" in raw[:65536]:
        raise DataError(f"{path}: binary data, not a PDB or mmCIF text file")
    return raw.decode("utf-8", errors="replace")


def _is_cif(path: Path, text: str) -> bool:
    name = path.name.lower().removesuffix(".gz")
    if name.endswith((".cif", ".mmcif")):
        return True
    if name.endswith((".pdb", ".ent")):
        return False
    return text.lstrip().startswith("data_")


def _parse(path: Path, text: str, is_cif: bool):
    from Bio.PDB import MMCIFParser, PDBParser

    parser = MMCIFParser(QUIET=True) if is_cif else PDBParser(QUIET=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return parser.get_structure(path.stem, io.StringIO(text))
    except Exception as exc:  # noqa: BLE001 - biopython raises many types on malformed input
        kind = "mmCIF" if is_cif else "PDB"
        raise DataError(f"{path}: not a readable {kind} file ({type(exc).__name__}: {exc})") from None


# -- residues -----------------------------------------------------------------------------------


def _three_to_one() -> dict[str, str]:
    from Bio.Data.PDBData import protein_letters_3to1_extended

    table = {k.upper(): v for k, v in protein_letters_3to1_extended.items() if len(v) == 1}
    table.update({"SEC": "U", "PYL": "O", "UNK": "X", "ASX": "B", "GLX": "Z"})
    return table


_3TO1 = _three_to_one()


def residue_letter(resname: str) -> str | None:
    """One-letter code of a residue name (modified residues -> parent), None if not an amino acid."""
    return _3TO1.get(resname.strip().upper())


def _is_amino_acid(residue) -> bool:
    hetflag = residue.id[0]
    name = residue.resname.strip().upper()
    if hetflag == "W" or name in _WATER:
        return False
    if name in _3TO1:
        return True
    # An unnamed residue in ATOM records (group ' ') with a Cα is part of the polymer: X.
    return hetflag == " " and "CA" in residue


def _chain_residues(chain) -> list:
    """Amino-acid residues of a chain in file order. A HETATM amino acid (MSE, SEP, ...) counts
    only when peptide-bonded to a neighbour; a free one (a ligand) is not part of the chain."""
    candidates = []
    for residue in chain:
        if residue.is_disordered() == 2:  # point mutation: two residue names at one position
            children = [residue.child_dict[n] for n in residue.disordered_get_id_list()]
            residue = max(children, key=_mean_occupancy)  # max keeps the first on a tie
        if _is_amino_acid(residue):
            candidates.append(residue)
    out = []
    for k, residue in enumerate(candidates):
        if residue.id[0] == " " or _bonded(candidates[k - 1] if k else None, residue) \
                or _bonded(residue, candidates[k + 1] if k + 1 < len(candidates) else None):
            out.append(residue)
    return out


def _bonded(first, second) -> bool:
    """Peptide bond first.C - second.N (< 2 Å)."""
    if first is None or second is None or "C" not in first or "N" not in second:
        return False
    return float(np.linalg.norm(first["C"].coord - second["N"].coord)) < 2.0


def _mean_occupancy(residue) -> float:
    occ = [a.get_occupancy() for a in residue.get_unpacked_list() if a.get_occupancy() is not None]
    return float(np.mean(occ)) if occ else 0.0


@dataclass
class _Observed:
    letter: str
    resname: str
    label: str  # "52" or "52A"
    auth_key: tuple[int, str]  # (number, insertion code)
    atoms: dict[str, np.ndarray]
    altloc: bool = False  # some atom had alternate locations


def _residue_record(residue) -> _Observed:
    _, number, icode = residue.id
    icode = (icode or " ").strip()
    atoms, altloc = {}, False
    for atom in residue:  # disordered atoms: biopython gives the selected (highest occupancy) one
        atoms[atom.get_id()] = np.asarray(atom.coord, dtype=np.float64)
        altloc = altloc or bool(atom.is_disordered())
    name = residue.resname.strip().upper()
    return _Observed(residue_letter(name) or "X", name, f"{number}{icode}", (int(number), icode), atoms,
                     altloc or bool(residue.is_disordered()))


def _pick_chain(path: Path, model, chain: str | None) -> str:
    chains = list(model)
    counts = {c.id: sum(_is_amino_acid(r) for r in c) for c in chains}
    listing = ", ".join(f"{cid} ({n} amino acids)" for cid, n in counts.items()) or "none"
    if chain is not None:
        if chain not in counts:
            raise DataError(f"{path}: chain {chain!r} not found; chains: {listing}")
        if counts[chain] == 0:
            raise DataError(f"{path}: chain {chain!r} has no amino-acid residues; chains: {listing}")
        return chain
    for cid, n in counts.items():
        if n > 0:
            return cid
    raise DataError(f"{path}: no protein chain (no amino-acid residues in the first model); chains: {listing}")


# -- deposited sequence -------------------------------------------------------------------------


@dataclass
class _Seqres:
    letters: str
    keys: list[tuple[int, str] | None] | None  # mmCIF: author (number, icode) per position; None if unobserved


def _pdb_seqres(text: str, chain_id: str) -> _Seqres | None:
    names = []
    for line in text.splitlines():
        if line.startswith("SEQRES") and len(line) > 19 and line[11] == chain_id:
            names.extend(line[19:].split())
    if not names:
        return None
    return _Seqres("".join(residue_letter(n) or "X" for n in names), None)


def _cif_seqres(path: Path, text: str, chain_id: str) -> _Seqres | None:
    from Bio.PDB.MMCIF2Dict import MMCIF2Dict

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = MMCIF2Dict(io.StringIO(text))
    prefix = "_pdbx_poly_seq_scheme."
    if prefix + "seq_id" not in table:
        return None
    cols = {k[len(prefix):]: v for k, v in table.items() if k.startswith(prefix)}
    n = len(cols["seq_id"])
    strand = cols.get("pdb_strand_id", ["?"] * n)
    letters, keys, seen = [], [], set()
    for i in range(n):
        if strand[i] != chain_id:
            continue
        seq_id = (cols["asym_id"][i], cols["seq_id"][i])
        if seq_id in seen:  # microheterogeneity: several residues at one position, keep the first
            continue
        seen.add(seq_id)
        letters.append(residue_letter(cols["mon_id"][i]) or "X")
        auth = cols.get("auth_seq_num", cols.get("pdb_seq_num"))[i]
        icode = cols.get("pdb_ins_code", ["."] * n)[i]
        icode = "" if icode in (".", "?") else icode
        keys.append(None if auth in ("?", ".") else (int(auth), icode))
    if not letters:
        return None
    return _Seqres("".join(letters), keys)


def _place(path: Path, chain_id: str, observed: list[_Observed], seqres: _Seqres, exact: bool):
    """(sequence, index in sequence of each observed residue); refuses anything it cannot place."""
    where = f"{path}: chain {chain_id}"
    if exact and seqres.keys is not None:
        index = {k: i for i, k in enumerate(seqres.keys) if k is not None}
        placement = []
        for o in observed:
            i = index.get(o.auth_key)
            if i is None:
                raise DataError(f"{where}: residue {o.resname} {o.label} is not in _pdbx_poly_seq_scheme")
            if placement and i <= placement[-1]:
                raise DataError(f"{where}: residue {o.resname} {o.label} is out of order in _pdbx_poly_seq_scheme")
            if seqres.letters[i] != o.letter:
                raise DataError(f"{where}: residue {o.resname} {o.label} is {o.letter} in the coordinates but "
                                f"{seqres.letters[i]} at position {i + 1} of the deposited sequence")
            placement.append(i)
        return seqres.letters, placement
    return seqres.letters, _align(where, observed, seqres.letters)


def _align(where: str, observed: list[_Observed], seqres: str) -> list[int]:
    """Place observed residues on SEQRES: identical letters only, gaps only in the observed side."""
    from Bio import Align

    obs = "".join(o.letter for o in observed)
    if not obs:
        return []
    if len(obs) > len(seqres):
        raise DataError(f"{where}: {len(obs)} residues with coordinates but SEQRES lists only {len(seqres)}")
    if obs == seqres:
        return list(range(len(obs)))
    aligner = Align.PairwiseAligner()
    aligner.mode = "global"
    aligner.match_score, aligner.mismatch_score = 1.0, -10.0
    # Gaps only where SEQRES residues have no coordinates ("deletions" from SEQRES, cheap at the ends).
    aligner.open_internal_insertion_score = aligner.extend_internal_insertion_score = -1000.0
    aligner.end_insertion_score = -1000.0
    aligner.open_internal_deletion_score, aligner.extend_internal_deletion_score = -3.0, -0.1
    aligner.end_deletion_score = 0.0
    alignment = aligner.align(seqres, obs)[0]
    placement = [-1] * len(obs)
    for (t0, t1), (q0, q1) in zip(*alignment.aligned):
        for k in range(t1 - t0):
            placement[q0 + k] = t0 + k
    for q, t in enumerate(placement):
        o = observed[q]
        if t < 0:
            raise DataError(f"{where}: residue {o.resname} {o.label} cannot be placed on the SEQRES sequence")
        if seqres[t] != o.letter:
            raise DataError(f"{where}: residue {o.resname} {o.label} ({o.letter}) aligns to {seqres[t]} at SEQRES "
                            f"position {t + 1}; coordinates and SEQRES disagree")
    return placement


# -- labels -------------------------------------------------------------------------------------


def virtual_cb(n: np.ndarray, ca: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Ideal Cβ position from backbone N, Cα, C (trRosetta's constants)."""
    b, c_ = ca - n, c - ca
    a = np.cross(b, c_)
    return -0.58273431 * a + 0.56802827 * b - 0.54067466 * c_ + ca


def _labels(chain: ChainAtoms, atoms: np.ndarray, cutoff: float) -> StructureLabels:
    """Contact labels from a chain's distance atoms (``atoms[:, 4]``, float64 as read)."""
    coords = atoms[:, 4]
    mask = np.isfinite(coords).all(-1)
    backbone = np.isfinite(atoms[:, :3]).all((-1, -2))  # N, CA and C
    diff = coords[:, None, :] - coords[None, :, :]
    distances = np.sqrt((diff**2).sum(-1)).astype(np.float32)  # NaN propagates from masked rows
    contacts = (distances < cutoff).astype(np.int8)
    contacts[~(mask[:, None] & mask[None, :])] = -1
    shared = {f.name: getattr(chain, f.name) for f in fields(ChainAtoms)}
    return StructureLabels(**shared, mask=mask, backbone_mask=backbone, coords=coords.astype(np.float32), distances=distances,
                           contacts=contacts)
