"""``foundry protein fold`` and the PDB writer: parity with transformers' own EsmForProteinFolding output
on a tiny random model built here, files that reopen in biopython, and one-line errors for bad input."""

import csv
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from Bio.PDB import PDBParser

from fold_structures import backbone
from foundry.testing import run_cli
from modalities.protein.fold.prediction import FoldPrediction, write_pdb

VOCAB = ["<cls>", "<pad>", "<eos>", "<unk>", "L", "A", "G", "V", "S", "E", "R", "T", "I", "D", "P", "K", "Q", "N",
         "F", "Y", "M", "H", "W", "C", "X", "B", "U", "Z", "O", ".", "-", "<null_1>", "<mask>"]
RECORDS = {"d1or4a_": "MKTAYIAKQRGXSWV", "sp|P1|short": "gavlc"}


def _parse(path: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a malformed line would warn
        structure = PDBParser().get_structure("p", str(path))
    return list(structure.get_residues())


@pytest.fixture(scope="module")
def esmfold(tmp_path_factory):
    """A tiny random EsmForProteinFolding (1 LM layer, 1 folding block), saved as a local directory."""
    from transformers import EsmConfig, EsmForProteinFolding

    trunk = {"num_blocks": 1, "sequence_state_dim": 32, "pairwise_state_dim": 16, "sequence_head_width": 8,
             "pairwise_head_width": 8, "position_bins": 8, "max_recycles": 1, "chunk_size": None,
             "structure_module": {"sequence_dim": 32, "pairwise_dim": 16, "ipa_dim": 8, "resnet_dim": 8,
                                  "num_heads_ipa": 2, "num_qk_points": 2, "num_v_points": 2, "num_blocks": 2,
                                  "dropout_rate": 0.0}}
    config = EsmConfig(vocab_size=33, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                       pad_token_id=1, mask_token_id=32, position_embedding_type="rotary", max_position_embeddings=42,
                       token_dropout=True, is_folding_model=True, vocab_list=VOCAB,
                       esmfold_config={"fp16_esm": False, "lddt_head_hid_dim": 16, "trunk": trunk})
    torch.manual_seed(0)
    model = EsmForProteinFolding(config).eval()
    with torch.no_grad():  # AlphaFold's zero init makes pLDDT a constant 50: give it something to carry
        model.lddt_head[-1].weight.normal_(0, 0.5)
    path = tmp_path_factory.mktemp("esmfold") / "model"
    model.save_pretrained(path)
    return path, model


@pytest.fixture
def fasta(tmp_path):
    path = tmp_path / "in.fasta"
    path.write_text("".join(f">{rid} some description\n{seq}\n" for rid, seq in RECORDS.items()))
    return path


def test_fold_matches_transformers_output(esmfold, fasta, tmp_path):
    path, model = esmfold
    out = tmp_path / "pred"
    result = run_cli("protein", "fold", "--model", path, fasta, "-o", out, "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    assert "2 structures" in result.stdout
    assert sorted(p.name for p in out.iterdir()) == ["d1or4a_.pdb", "d1or4a_.png", "sp_P1_short.pdb",
                                                     "sp_P1_short.png", "summary.csv"]
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert [(r["id"], r["length"]) for r in rows] == [("d1or4a_", "15"), ("sp|P1|short", "5")]
    assert (out / "d1or4a_.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for (rid, seq), name in zip(RECORDS.items(), ("d1or4a_", "sp_P1_short")):
        seq = seq.upper()
        with torch.no_grad():
            ref = model.infer([seq])
        atom14 = ref["positions"][-1][0].numpy()
        plddt = ref["plddt"][0, :, 1].numpy() * 100
        residues = _parse(out / f"{name}.pdb")
        assert [r.id[1] for r in residues] == list(range(1, len(seq) + 1))
        assert [r.get_resname() for r in residues][:3] == {"M": ["MET", "LYS", "THR"], "G": ["GLY", "ALA", "VAL"]}[seq[0]]
        assert abs(float(np.mean([r["CA"].get_bfactor() for r in residues])) - float(rows[0 if name == "d1or4a_" else 1]["mean_plddt"])) < 0.01
        for i, (res, letter) in enumerate(zip(residues, seq)):
            names = [a.get_id() for a in res]
            if letter == "X":  # ESMFold places no atom for X: N, CA, C, CB from its backbone frame, no O
                assert res.get_resname() == "UNK" and names == ["N", "CA", "C", "CB"]
                assert np.allclose(res["CA"].coord, ref["frames"][-1][0, i, 4:].numpy(), atol=1e-3)
                continue
            assert names == (["N", "CA", "C", "O"] if letter == "G" else ["N", "CA", "C", "O", "CB"])
            for k, atom in enumerate(names):
                assert np.allclose(res[atom].coord, atom14[i, k], atol=1e-3), (rid, i, atom)
                assert res[atom].get_bfactor() == pytest.approx(plddt[i], abs=0.006)
    # chunked axial attention (long sequences): the same structure
    chunked = tmp_path / "chunked"
    result = run_cli("protein", "fold", "--model", path, fasta, "-o", chunked, "--device", "cpu", "--chunk-size", "4")
    assert result.exit_code == 0, result.stderr
    assert (chunked / "d1or4a_.pdb").read_text() == (out / "d1or4a_.pdb").read_text()
    # transformers' own PDB of the first record: same backbone coordinates
    with torch.no_grad():
        hf_pdb = model.output_to_pdb(model.infer(["MKTAYIAKQRGXSWV"]))[0]
    (tmp_path / "hf.pdb").write_text(hf_pdb)
    hf = {r.id[1]: r for r in PDBParser(QUIET=True).get_structure("h", str(tmp_path / "hf.pdb")).get_residues()}
    ours = _parse(out / "d1or4a_.pdb")
    for number, res in hf.items():
        for atom in ("N", "CA", "C", "O"):
            assert np.allclose(res[atom].coord, ours[number - 1][atom].coord, atol=2e-3)


def test_write_pdb_round_trips_a_real_chain(tmp_path):
    seq, xyz = backbone("1A8O.pdb")
    atoms = np.concatenate([xyz, xyz[:, 1:2] + 1.5], axis=1)
    atoms[[c == "G" for c in seq], 4] = np.nan
    plddt = np.linspace(10, 99, len(seq))
    write_pdb(FoldPrediction("1a8o", seq, atoms, plddt), tmp_path / "a.pdb")
    residues = _parse(tmp_path / "a.pdb")
    assert "".join({"GLY": "G"}.get(r.get_resname(), "?") for r in residues).count("G") == seq.count("G")
    assert len(residues) == len(seq)
    for i, res in enumerate(residues):
        assert np.allclose(res["CA"].coord, xyz[i, 1], atol=1e-3)
        assert res["CA"].get_bfactor() == pytest.approx(plddt[i], abs=0.005)
        assert ("CB" in res) == (seq[i] != "G")


def _error(*args):
    result = run_cli("protein", "fold", *args, "--device", "cpu")
    assert result.exit_code == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_record_longer_than_the_model_is_refused_by_name(esmfold, tmp_path):
    path, _ = esmfold
    fasta = tmp_path / "long.fasta"
    fasta.write_text(">ok\nMKV\n>too_long\n" + "A" * 41 + "\n")
    message = _error("--model", path, fasta, "-o", tmp_path / "out")
    assert "record 2 'too_long' has 41 residues" in message and "at most 40" in message
    assert not (tmp_path / "out").exists()


def test_bad_inputs_give_one_line_errors(esmfold, tmp_path):
    path, _ = esmfold
    out = tmp_path / "out"
    assert _error("--model", path, tmp_path / "missing.fasta", "-o", out).endswith("missing.fasta: no such file")
    empty = tmp_path / "empty.fasta"
    empty.write_text("")
    assert "no FASTA records" in _error("--model", path, empty, "-o", out)
    gapped = tmp_path / "gapped.fasta"
    gapped.write_text(">g1\nMKV-LA\n")
    assert "record 1 'g1': '-' at residue 4 cannot be folded" in _error("--model", path, gapped, "-o", out)
    good = tmp_path / "good.fasta"
    good.write_text(">a\nMKV\n")
    assert "nope: no such file or directory" in _error("--model", tmp_path / "nope", good, "-o", out)
    (tmp_path / "not_a_model").mkdir()
    assert "not_a_model" in _error("--model", tmp_path / "not_a_model", good, "-o", out)  # neither ESMFold nor fold
    (out / "old").mkdir(parents=True)
    assert "not empty" in _error("--model", path, good, "-o", out)
    assert not out.exists() or (out / "old").exists()


class _FakeFolder:
    """A foundry fold model stand-in: records how it is called, returns a straight chain with a distogram."""

    max_length = 100

    def __init__(self):
        self.batches, self.chunk_size = [], None

    def fold(self, ids, sequences):
        from modalities.protein.fold.losses import DISTOGRAM_BINS, DISTOGRAM_MAX, DISTOGRAM_MIN

        self.batches.append(list(ids))
        out = []
        for rid, seq in zip(ids, sequences):
            n = len(seq)
            atoms = np.arange(n * 15, dtype=np.float64).reshape(n, 5, 3)
            disto = np.zeros((n, n, DISTOGRAM_BINS))
            disto[..., 0] = 1.0  # every pair certainly closer than 2.3 Å: P(contact) = 1
            out.append(FoldPrediction(rid, seq, atoms, np.full(n, 80.0), disto,
                                      np.linspace(DISTOGRAM_MIN, DISTOGRAM_MAX, DISTOGRAM_BINS - 1)))
        return out


def test_foundry_models_go_through_load_folder(monkeypatch, tmp_path):
    import sys
    import types

    from modalities.protein.fold.prediction import contact_probabilities

    fake, calls = _FakeFolder(), []
    module = types.ModuleType("modalities.protein.fold.predictor")
    module.load_folder = lambda path, device: calls.append((Path(path), str(device))) or fake
    monkeypatch.setitem(sys.modules, "modalities.protein.fold.predictor", module)
    model = tmp_path / "best"
    model.mkdir()
    fasta = tmp_path / "in.fasta"
    fasta.write_text(">a\nMKV\n>b\nGGGG\n>c\nWY\n")
    result = run_cli("protein", "fold", "--model", model, fasta, "-o", tmp_path / "pred", "--device", "cpu",
                     "--batch-size", "2", "--chunk-size", "16")
    assert result.exit_code == 0, result.stderr
    assert calls == [(model, "cpu")] and fake.batches == [["a", "b"], ["c"]] and fake.chunk_size == 16
    assert [len(_parse(tmp_path / "pred" / f"{r}.pdb")) for r in "abc"] == [3, 4, 2]
    assert "3 structures, mean pLDDT 80.0" in result.stdout
    assert np.all(contact_probabilities(fake.fold(["x"], ["MK"])[0]) == 1.0)


def test_a_model_without_coordinates_writes_nothing(monkeypatch, tmp_path):
    """A distogram-only model (first training stage) predicts no atoms: refused, no half-written folder."""
    import sys
    import types

    class NoAtoms(_FakeFolder):
        def fold(self, ids, sequences):
            out = super().fold(ids, sequences)
            for p in out:
                p.atoms[:] = np.nan
            return out

    module = types.ModuleType("modalities.protein.fold.predictor")
    module.load_folder = lambda path, device: NoAtoms()
    monkeypatch.setitem(sys.modules, "modalities.protein.fold.predictor", module)
    (tmp_path / "best").mkdir()
    fasta = tmp_path / "in.fasta"
    fasta.write_text(">a\nMKV\n")
    message = _error("--model", tmp_path / "best", fasta, "-o", tmp_path / "pred")
    assert "no Cα coordinates for 3 of 3 residues of record 'a'" in message
    assert not (tmp_path / "pred").exists()


def test_write_pdb_refuses_coordinates_the_format_cannot_hold(tmp_path):
    from foundry.errors import DataError

    atoms = np.zeros((2, 5, 3))
    atoms[1, 1, 0] = -12345.0
    with pytest.raises(DataError, match="outside what the PDB format"):
        write_pdb(FoldPrediction("x", "MK", atoms, np.zeros(2)), tmp_path / "x.pdb")
    assert not (tmp_path / "x.pdb").exists()
