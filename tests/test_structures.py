"""PDB / mmCIF -> sequence + Cβ distance / contact labels, on real files with odd cases
(tests/data/structures/SOURCES.md says why each file is there)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from foundry.errors import DataError
from modalities.protein.structures import CHAIN_ATOMS, read_chain_atoms, read_structure, read_structures, virtual_cb

DATA = Path(__file__).parent / "data" / "structures"


def atom_xyz(path: Path, resseq: int, atom: str, chain: str = "A") -> np.ndarray:
    """Coordinates straight from the fixed PDB columns, independent of biopython."""
    for line in path.read_text().splitlines():
        if line.startswith(("ATOM", "HETATM")) and line[12:16].strip() == atom and line[21] == chain \
                and int(line[22:26]) == resseq:
            return np.array([float(line[30:38]), float(line[38:46]), float(line[46:54])])
    raise KeyError((resseq, atom))


def test_mse_is_methionine_and_distances_use_cb_or_glycine_ca():
    lab = read_structure(DATA / "1A8O.pdb")
    assert lab.chain == "A" and lab.sequence_source == "seqres" and len(lab) == 70
    assert lab.sequence == "MDIRQGPKEPFRDYVDRFYKTLRAEQASQEVKNWMTETLLVQNANPDCKTILKALGPGATLEEMMTACQG"
    assert lab.residue_ids[0] == "151" and lab.mask.all() and lab.backbone_mask.all()
    # MSE 151 (HETATM) Cβ to GLY 156 Cα, read from the file by hand
    expected = np.linalg.norm(atom_xyz(DATA / "1A8O.pdb", 151, "CB") - atom_xyz(DATA / "1A8O.pdb", 156, "CA"))
    assert lab.distances[0, 5] == pytest.approx(expected, abs=1e-4)
    assert lab.distances.shape == (70, 70) and np.allclose(lab.distances, lab.distances.T)
    assert (np.diag(lab.distances) == 0).all()
    assert ((lab.contacts == 1) == (lab.distances < 8.0)).all() and set(np.unique(lab.contacts)) == {0, 1}


def test_pdb_seqres_alignment_masks_the_unobserved_n_terminus():
    lab = read_structure(DATA / "2BEG.pdb.gz", chain="C")
    assert lab.sequence == "DAEFRHDSGYEVHHQKLVFFAEDVGSNKGAIIGLMVGGVVIA"  # Aβ(1-42)
    assert lab.residue_ids[:16] == [None] * 16 and lab.residue_ids[16] == "17"  # Leu17 is position 17
    assert not lab.mask[:16].any() and lab.mask[16:].all()
    assert (lab.contacts[:16] == -1).all() and (lab.contacts[:, :16] == -1).all()
    assert np.isnan(lab.distances[:16]).all() and not np.isnan(lab.distances[16:, 16:]).any()
    assert "16 of 42 SEQRES residues have no coordinates (masked)" in lab.notes
    observed = read_structure(DATA / "2BEG.pdb.gz", chain="C", use_seqres=False)
    assert observed.sequence_source == "observed" and observed.sequence == lab.sequence[16:]
    assert np.array_equal(observed.distances, lab.distances[16:, 16:], equal_nan=True)


def test_pdb_seqres_that_disagrees_is_refused(tmp_path):
    text = (DATA / "1A8O.pdb").read_text().replace("SEQRES   2 A   70  TYR VAL", "SEQRES   2 A   70  TRP VAL")
    bad = tmp_path / "bad.pdb"
    bad.write_text(text)
    with pytest.raises(DataError, match=r"bad.pdb: chain A: residue TYR 164 .*SEQRES"):
        read_structure(bad)


def test_mmcif_poly_seq_scheme_places_residues_exactly():
    lab = read_structure(DATA / "4CUP.cif.gz")
    assert lab.sequence_source == "seqres" and len(lab) == 117
    assert lab.residue_ids[0] == "1856" and lab.residue_ids[-2:] == [None, None]
    assert lab.mask.sum() == 115 and not lab.mask[-2:].any()
    no_scheme = read_structure(DATA / "6WQA.cif.gz")  # minimal mmCIF: observed residues only
    assert no_scheme.sequence_source == "observed" and len(no_scheme) == 391


def test_first_protein_chain_first_model_and_chain_errors():
    lab = read_structure(DATA / "1LCD.pdb.gz")  # DNA chains B and C come first in the file
    assert lab.chain == "A" and len(lab) == 51 and lab.n_models == 3
    assert "3 models; the first is used" in lab.notes
    with pytest.raises(DataError, match=r"1LCD.pdb.gz: chain 'B' has no amino-acid residues; chains: B \(0"):
        read_structure(DATA / "1LCD.pdb.gz", chain="B")
    with pytest.raises(DataError, match=r"chain 'Q' not found; chains: B \(0 amino acids\), C \(0 amino acids\), A \(51"):
        read_structure(DATA / "1LCD.pdb.gz", chain="Q")


def test_missing_backbone_atoms_mask_that_residue_only():
    lab = read_structure(DATA / "PF00041_1TEN_A.pdb")  # ARG 802: only C and O
    assert lab.residue_ids[0] == "802" and lab.sequence[0] == "R"
    assert not lab.mask[0] and not lab.backbone_mask[0] and lab.mask[1:].all()
    assert lab.missing_backbone == ["ARG 802: N, CA"]
    assert (lab.contacts[0] == -1).all() and np.isnan(lab.distances[:, 0]).all()
    # neighbours are not shifted: residue 803's Cβ is where the file says
    d = np.linalg.norm(atom_xyz(DATA / "PF00041_1TEN_A.pdb", 803, "CB") - atom_xyz(DATA / "PF00041_1TEN_A.pdb", 804, "CB"))
    assert lab.residue_ids[1] == "803" and lab.distances[1, 2] == pytest.approx(d, abs=1e-4)


def test_truncated_line_and_residue_without_cb():
    lab = read_structure(DATA / "occupancy.pdb")
    assert lab.sequence == "D" and not lab.mask[0] and lab.contacts[0, 0] == -1
    assert any("no CB" in n for n in lab.notes)
    virtual = read_structure(DATA / "occupancy.pdb", virtual_cb=True)  # N, CA, C present
    assert virtual.mask[0] and virtual.contacts[0, 0] == 1


def test_virtual_cb_is_close_to_real_cb():
    lab = read_structure(DATA / "1A8O.pdb")
    f = DATA / "1A8O.pdb"
    cb = virtual_cb(atom_xyz(f, 153, "N"), atom_xyz(f, 153, "CA"), atom_xyz(f, 153, "C"))
    assert np.linalg.norm(cb - atom_xyz(f, 153, "CB")) < 0.3
    assert lab.coords[2] == pytest.approx(atom_xyz(f, 153, "CB"), abs=1e-4)


def test_alternate_locations_take_the_highest_occupancy(tmp_path):
    lines = (DATA / "disordered.pdb").read_text().splitlines()
    cb = next(line for line in lines if line.startswith("ATOM") and line[12:16] == " CB " and line[22:26] == "  26")
    # Split SER 26's Cβ into A (occupancy 0.30, moved 5 Å) and B (0.70, where the file has it).
    moved = f"{float(cb[30:38]) + 5.0:8.3f}"
    alt_a = cb[:16] + "A" + cb[17:30] + moved + cb[38:54] + "  0.30" + cb[60:]
    alt_b = cb[:16] + "B" + cb[17:54] + "  0.70" + cb[60:]
    path = tmp_path / "alt.pdb"
    path.write_text("\n".join(sum(([alt_a, alt_b] if line == cb else [line] for line in lines), [])) + "\n")
    lab = read_structure(path)
    assert lab.sequence == "MSRNTT"
    assert lab.coords[1] == pytest.approx(atom_xyz(DATA / "disordered.pdb", 26, "CB"), abs=1e-4)
    assert any("alternate locations" in n for n in lab.notes)


def test_no_atoms_and_folder_and_bad_files(tmp_path):
    with pytest.raises(DataError, match=r"header.pdb: no atoms"):
        read_structure(DATA / "header.pdb")
    with pytest.raises(DataError, match="no such file"):
        read_structure(tmp_path / "missing.pdb")
    junk = tmp_path / "junk.cif"
    junk.write_bytes(gzip.compress(b"\x00\x01binary"))
    with pytest.raises(DataError, match="junk.cif: binary data"):
        read_structure(junk)
    folder = tmp_path / "pdbs"
    folder.mkdir()
    for name in ("1A8O.pdb", "PF00041_1TEN_A.pdb"):
        (folder / name).write_bytes((DATA / name).read_bytes())
    (folder / "notes.txt").write_text("not a structure")
    assert [lab.name for lab in read_structures(folder)] == ["1A8O_A", "PF00041_1TEN_A_A"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty: no structure files"):
        list(read_structures(tmp_path / "empty"))


# Residue counts from the data store's BACKBONE_SUMMARY.tsv (computed there independently).
SUMMARY = [("1A8O.pdb", "A", 70), ("2BEG.pdb.gz", "B", 26), ("4CUP.cif.gz", "A", 115), ("6WQA.cif.gz", "A", 391),
           ("1LCD.pdb.gz", "A", 51), ("disordered.pdb", "A", 6), ("PF00041_1TEN_A.pdb", "A", 90)]


@pytest.mark.parametrize("name, chain, n_residues", SUMMARY)
def test_observed_residue_counts_match_the_data_summary(name, chain, n_residues):
    lab = read_structure(DATA / name, chain=chain)
    assert sum(r is not None for r in lab.residue_ids) == n_residues


def test_free_amino_acid_ligand_is_not_part_of_the_chain(tmp_path):
    lines = (DATA / "1A8O.pdb").read_text().splitlines()
    mse = [line for line in lines if line.startswith("HETATM") and line[17:20] == "MSE" and line[22:26] == " 151"]
    ligand = [line[:22] + " 999" + line[26:30] + f"{float(line[30:38]) + 30:8.3f}" + line[38:] for line in mse]
    end = lines.index(next(line for line in lines if line.startswith("END")))
    path = tmp_path / "ligand.pdb"
    path.write_text("\n".join(lines[:end] + ligand + lines[end:]) + "\n")
    lab = read_structure(path)
    assert len(lab) == 70 and "999" not in lab.residue_ids
    assert lab.sequence == read_structure(DATA / "1A8O.pdb").sequence


def test_read_chain_atoms_gives_every_protein_chain_with_the_labels_own_atoms():
    """The public per-chain reading (what the fold task trains on) is the one read_structure uses:
    same sequence, same positions, labels.coords == atoms[:, 4]; atoms straight from the file."""
    chains = read_chain_atoms(DATA / "2BEG.pdb.gz")
    assert [c.chain for c in chains] == ["A", "B", "C", "D", "E"] and CHAIN_ATOMS == ("N", "CA", "C", "O", "CB")
    for c in chains:
        lab = read_structure(DATA / "2BEG.pdb.gz", chain=c.chain)
        assert c.atoms.shape == (42, 5, 3) and c.atoms.dtype == np.float32 and c.name == lab.name == f"2BEG_{c.chain}"
        assert (c.sequence, c.residue_ids, c.notes) == (lab.sequence, lab.residue_ids, lab.notes)
        assert np.array_equal(c.atoms[:, 4], lab.coords, equal_nan=True)
        assert np.isnan(c.atoms[:16]).all() and np.isfinite(c.atoms[16:, :4]).all()  # unobserved N-terminus: every atom absent
    [one] = read_chain_atoms(DATA / "1A8O.pdb", chain="A")
    for k, name in enumerate(CHAIN_ATOMS):  # MSE 151, GLY 156 (its distance atom is Cα)
        np.testing.assert_allclose(one.atoms[0, k], atom_xyz(DATA / "1A8O.pdb", 151, name), atol=1e-3)
        np.testing.assert_allclose(one.atoms[5, k], atom_xyz(DATA / "1A8O.pdb", 156, "CA" if name == "CB" else name), atol=1e-3)
    [bare], [ideal] = read_chain_atoms(DATA / "occupancy.pdb"), read_chain_atoms(DATA / "occupancy.pdb", virtual_cb=True)
    assert np.isnan(bare.atoms[0, 4]).all() and np.isfinite(ideal.atoms[0, [0, 1, 2, 4]]).all()  # no side chain: an ideal Cβ on request
    with pytest.raises(DataError, match=r"1A8O.pdb: chain 'Z' not found; chains: A"):
        read_chain_atoms(DATA / "1A8O.pdb", chain="Z")
