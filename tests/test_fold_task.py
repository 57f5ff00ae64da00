"""``finetune --task fold``: structures -> examples (every chain, masks, odd files), crops, the loss,
the CLI contract end to end (OUT/best reloads through load_folder and folds), and bad input."""

import csv
import gzip
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from foundry.errors import CheckpointError, DataError
from foundry.testing import run_cli
from modalities.protein.alphabet import EsmTokenizer
from modalities.protein.fold.data import random_crop, read_chains
from modalities.protein.fold.head import ATOM_START, CHANNELS, PLDDT_START
from modalities.protein.fold.task import Fold

pytestmark = pytest.mark.usefixtures("one_thread")

STRUCTURES = Path(__file__).parents[1] / "modalities/protein/data/structures"
SMALL = STRUCTURES / "fit/PF00249_1GUU_A.pdb.gz"  # 50 residues
TOKENIZER = EsmTokenizer()


def pdb_lines(path: Path = SMALL) -> list[str]:
    return [line for line in gzip.decompress(path.read_bytes()).decode().splitlines() if line.startswith("ATOM")]


def with_chain(lines: list[str], chain: str) -> list[str]:
    return [line[:21] + chain + line[22:] for line in lines]


def odd_file(tmp_path: Path) -> Path:
    """Chain A as deposited; chain B the same residues with residue 45's N missing and residue 47
    renumbered 46A (an insertion code); chain C two DNA nucleotides (not a protein chain)."""
    a = pdb_lines()
    b = []
    for line in with_chain(a, "B"):
        if line[22:26].strip() == "45" and line[12:16].strip() == "N":
            continue
        if line[22:26].strip() == "47":
            line = line[:22] + f"{46:4d}A" + line[27:]
        b.append(line)
    dna = [f"ATOM  {9000 + k:5d}  P    DA C{k + 1:4d}    {k:8.3f}{0.0:8.3f}{0.0:8.3f}  1.00  0.00           P  " for k in range(2)]
    path = tmp_path / "odd.pdb"
    path.write_text("\n".join(a + ["TER"] + b + ["TER"] + dna + ["END"]) + "\n")
    return path


def test_every_protein_chain_is_an_example_and_missing_atoms_are_masked(tmp_path):
    chains = read_chains(odd_file(tmp_path))
    assert [c.chain for c in chains] == ["A", "B"]  # the DNA chain is not a protein chain
    a, b = chains
    assert a.sequence == b.sequence and len(a.sequence) == 50
    ta, tb = a.target(), b.target()
    assert ta.shape == (50, 20) and ta[:, 15:].all()  # every atom present (CB channel: Cα for glycine)
    k = 45 - 40  # residues are numbered from 40
    assert tb[k, 15] == 0 and tb[k, 16:19].all() and np.isnan(b.atoms[k, 0]).all()  # N masked, not shifted
    np.testing.assert_allclose(ta[k + 2], tb[k + 2])  # the insertion-coded residue is still residue 47's atoms
    assert [c.chain for c in read_chains(odd_file(tmp_path), chain="B")] == ["B"]
    with pytest.raises(DataError, match=r"odd.pdb: chain 'C' has no amino-acid residues"):
        read_chains(odd_file(tmp_path), chain="C")
    dna_only = tmp_path / "dna.pdb"
    dna_only.write_text("\n".join(line for line in odd_file(tmp_path).read_text().splitlines() if " DA " in line) + "\nEND\n")
    with pytest.raises(DataError, match=r"dna.pdb: no protein chain"):
        read_chains(dna_only)


def test_training_crops_a_window_and_keeps_the_special_tokens():
    tokens = torch.tensor([[0] + [5] * 10 + [2], [0] + [6] * 4 + [2] + [1] * 6])
    targets = torch.arange(12 * 2 * 20, dtype=torch.float32).reshape(2, 12, 20)
    torch.manual_seed(0)
    t, y = random_crop(tokens, targets, 6, TOKENIZER.special_ids, TOKENIZER.pad_id, -100.0)
    assert t.shape == (2, 8) and t[0, 0] == 0 and t[0, 7] == 2 and (t[0, 1:7] == 5).all()
    assert torch.equal(t[1, :6], tokens[1, :6]) and (t[1, 6:] == 1).all()  # shorter than the crop: whole, re-padded
    start = int(y[0, 1, 0] // 20)  # the targets moved with their tokens
    assert torch.equal(y[0, 1:7], targets[0, start : start + 6])


def pack(atoms: np.ndarray) -> torch.Tensor:
    """A head output whose structure is ``atoms`` (L, 5, 3) (and a flat distogram / pLDDT)."""
    n = len(atoms)
    out = torch.zeros(1, n, n, CHANNELS)
    for i in range(n):
        out[0, i, i, ATOM_START:PLDDT_START] = torch.from_numpy(atoms[i].reshape(-1))
    return out


def test_the_true_structure_scores_perfectly_and_a_moved_copy_has_the_same_fape():
    task = Fold()
    task.configure({})
    chain = read_chains(SMALL)[0]
    target = torch.from_numpy(chain.target())[None]
    perfect = task.losses(pack(chain.atoms), target)
    assert float(perfect["fape"]) < 2e-3  # sqrt(eps) / 10 with eps = 1e-4
    angle = 0.7
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    moved = chain.atoms @ rot.T + np.array([5.0, -3.0, 12.0])
    assert float(task.losses(pack(moved.astype(np.float32)), target)["fape"]) == pytest.approx(float(perfect["fape"]), abs=1e-4)
    metrics = task.metrics([pack(moved.astype(np.float32))[0].numpy()], [chain.target()], None)
    assert metrics["lddt_ca"] == pytest.approx(1.0) and metrics["rmsd_ca"] < 1e-3 and metrics["tm_score"] == pytest.approx(1.0)
    assert metrics["violation"] == pytest.approx(0.0, abs=1e-6)  # a real backbone: sound peptide bonds, no clashes


def test_violation_weight_prices_a_collapsed_prediction_in_the_loss():
    chain = read_chains(SMALL)[0]
    target = torch.from_numpy(chain.target())[None]
    collapsed = pack((chain.atoms * 0.3).astype(np.float32))  # FAPE's hedge: every residue pulled to the middle
    plain, priced = Fold(), Fold()
    plain.configure({})
    priced.configure({"violation_weight": 2.0})
    violation = float(plain.losses(collapsed, target)["violation"])
    assert violation > 1.0
    assert float(priced.loss(collapsed, target, None)) == pytest.approx(float(plain.loss(collapsed, target, None)) + 2 * violation, rel=1e-5)


def test_finetune_fold_cli_trains_saves_and_the_best_model_folds(tmp_path, protein_model):
    from modalities.protein.fold.predictor import load_folder

    train, valid = tmp_path / "train", tmp_path / "valid"
    train.mkdir()
    valid.mkdir()
    (train / "two_chains.pdb").write_text("\n".join(pdb_lines() + ["TER"] + with_chain(pdb_lines(), "B") + ["END"]) + "\n")
    (valid / SMALL.name).write_bytes(SMALL.read_bytes())
    out = tmp_path / "out"
    result = run_cli("protein", "finetune", "--task", "fold", "--from", protein_model, "--train", train, "--valid", valid,
                     "--out", out, "--max-steps", "2", "--distogram-steps", "1", "--structure-blocks", "1", "--crop-size", "32",
                     "--batch-size", "2", "--set", "train.eval_every=2", "--no-forgetting", "--quiet")
    assert result.exit_code == 0, result.stderr
    assert "lddt_ca" in result.stdout and "fape" in result.stdout and "strategy frozen" in result.stdout  # frozen trunk by default
    summary = json.loads((out / "summary.json").read_text())
    assert summary["train_examples"] == 2 and summary["strategy"] == "frozen"
    assert {"lddt_ca", "tm_score", "gdt_ts", "rmsd_ca", "fape", "long_P@L5"} <= set(summary["valid"])
    evaluations = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if "lddt_ca" in line]
    assert evaluations and all(np.isfinite(e["fape"]) for e in evaluations)
    folder = load_folder(out / "best", "cpu")
    [prediction] = folder.fold(["p1"], ["MKVLAGHEWq"])
    assert prediction.sequence == "MKVLAGHEWQ" and prediction.atoms.shape == (10, 5, 3) and prediction.plddt.shape == (10,)
    assert np.isnan(prediction.atoms[5, 4]).all() and np.isfinite(prediction.atoms[:, :4]).all()  # glycine has no Cβ
    assert prediction.distogram.shape == (10, 10, 64) and np.allclose(prediction.distogram.sum(-1), 1.0, atol=1e-4)
    with pytest.raises(DataError, match=r"p2: 2000 residues; this model folds at most 1022"):
        folder.fold(["p2"], ["A" * 2000])


def test_a_lora_adapted_fold_model_reloads_with_its_adapter_and_folds_the_same(tmp_path, protein_model):
    from modalities.protein.fold.metrics import lddt_ca
    from modalities.protein.fold.predictor import load_folder

    out = tmp_path / "lora"
    result = run_cli("protein", "finetune", "--task", "fold", "--from", protein_model, "--train", SMALL, "--valid", SMALL,
                     "--out", out, "--max-steps", "2", "--distogram-steps", "0", "--structure-blocks", "1", "--crop-size", "32",
                     "--strategy", "lora", "--lr", "1e-2", "--set", "train.eval_every=2", "--no-forgetting", "--quiet")
    assert result.exit_code == 0, result.stderr
    assert (out / "best/adapter").is_dir() and not (out / "best/trunk").exists()  # the adapter, not a copy of the trunk
    summary = json.loads((out / "summary.json").read_text())
    sequence = read_chains(SMALL)[0].sequence
    [first] = load_folder(out / "best").fold(["a"], [sequence])
    [again] = load_folder(out / "best").fold(["a"], [sequence])
    assert np.array_equal(first.atoms, again.atoms, equal_nan=True)  # NaN: a glycine has no Cβ
    true_ca = read_chains(SMALL)[0].atoms[:, 1]
    # the reloaded model (base trunk + adapter + head) scores what the run reported for its best model
    assert lddt_ca(first.atoms[:, 1], true_ca, np.isfinite(true_ca).all(1)) == pytest.approx(summary["valid"]["lddt_ca"], abs=1e-4)


def test_bad_fold_input_is_one_line_naming_the_file(tmp_path, protein_model):
    table = tmp_path / "x.csv"
    table.write_text("sequence,label\nMKV,1\n")
    common = ["protein", "finetune", "--task", "fold", "--from", protein_model, "--valid", SMALL, "--out", tmp_path / "o", "--max-steps", "1"]
    result = run_cli(*common, "--train", table)
    assert result.exit_code == 2 and f"error: {table}: --task fold reads PDB/mmCIF files" in result.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_cli(*common, "--train", empty)
    assert result.exit_code == 2 and f"error: {empty}: no structure files" in result.stderr
    result = run_cli(*common, "--train", SMALL, "--chain", "Q")
    assert result.exit_code == 2 and "chain 'Q' not found; chains: A (50 amino acids)" in result.stderr
    long = tmp_path / "long.pdb"  # valid chains are folded whole: longer than ESM-2 reads is refused, not windowed
    long.write_text("".join(f"ATOM  {k:5d}  CA  ALA A{k:4d}    {1.5 * k % 999:8.3f}{0.0:8.3f}{0.0:8.3f}  1.00  0.00           C  \n"
                            for k in range(1, 1101)) + "END\n")
    result = run_cli(*common[:6], "--train", SMALL, "--valid", long, *common[8:])
    assert result.exit_code == 2 and f"error: {long}: chain A: 1100 residues; --valid chains are folded whole" in result.stderr
    assert not (tmp_path / "o").exists()  # nothing half-written


def test_load_folder_refuses_a_model_of_another_task(tmp_path):
    from modalities.protein.fold.predictor import load_folder

    with pytest.raises(CheckpointError, match="finetune.json: file not found"):
        load_folder(tmp_path)


def test_valid_and_test_chains_longer_than_max_len_are_folded_whole(tmp_path, protein_model):
    """--max-len crops training only: a 50-residue valid/test chain under --max-len 24 is scored on
    every residue in one piece (windows cannot stitch a structure), as an uncut read scores it."""
    from foundry.finetune.data import Columns, encode_records, special_layout
    from foundry.finetune.evaluation import UNCUT, score
    from foundry.finetune.store import load_finetuned

    out = tmp_path / "out"
    result = run_cli("protein", "finetune", "--task", "fold", "--from", protein_model, "--train", SMALL, "--valid", SMALL,
                     "--test", SMALL, "--out", out, "--max-steps", "1", "--distogram-steps", "0", "--structure-blocks", "1",
                     "--max-len", "24", "--no-forgetting", "--quiet")
    assert result.exit_code == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text())
    best = load_finetuned(out / "best")
    task = best.task
    task.configure(best.meta.get("task_options", {}))
    [example] = encode_records(task.read_split(SMALL, None, Columns(split="valid"), ()), best.tokenizer, task, best.labels, UNCUT)
    uncut = score(best.model, task, best.labels, [example], 1, best.tokenizer.pad_id, max_len=None, layout=special_layout(best.tokenizer))
    assert uncut.logits[0].shape[:2] == (52, 52)  # <cls> + 50 residues + <eos>, every pair
    for split in ("valid", "test"):
        assert summary[split]["lddt_ca"] == pytest.approx(uncut.metrics["lddt_ca"], abs=1e-6)
        assert summary[split]["rmsd_ca"] == pytest.approx(uncut.metrics["rmsd_ca"], abs=1e-4)
    [row] = list(csv.DictReader((out / "test_predictions.csv").open()))
    assert row["id"] == "PF00249_1GUU_A_A" and float(row["mean_plddt"]) > 0
    # `protein fold` with this model: a record longer than it reads is one line naming record and limit
    fasta = tmp_path / "in.fasta"
    fasta.write_text(">ok\nMKV\n>too_long\n" + "A" * 1100 + "\n")
    result = run_cli("protein", "fold", "--model", out / "best", fasta, "-o", tmp_path / "pred", "--device", "cpu")
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1, result.stderr
    assert re.search(r"^error: .*in.fasta: record 2 'too_long' has 1100 residues; the model .* folds at most \d+ ", lines[0])
    assert not (tmp_path / "pred").exists()


def test_an_example_longer_than_the_trunk_is_refused_by_name_not_windowed():
    from foundry.finetune.data import Example
    from foundry.finetune.evaluation import predict_logits
    from foundry.finetune.heads import FinetuneModel, head_for
    from foundry.model import Transformer, from_name

    trunk = Transformer(from_name("esm2_tiny", n_layer=1, d_model=16, n_head=2, d_ff=32, max_position=12))
    model = FinetuneModel(trunk, head_for("residue", 16, 3, "mean", 0.0), TOKENIZER.special_ids, TOKENIZER.pad_id, 1)
    tokens = np.asarray(TOKENIZER.encode("MKVLAGHEWQKT", add_special_tokens=True), np.int64)  # 14 tokens
    long = Example("p", "MKVLAGHEWQKT", tokens, None, "x.pdb: chain A")
    with pytest.raises(DataError, match=r"^x.pdb: chain A: 12 residues; the model reads at most 10 at once and this task scores an "
                                        r"example whole, never in windows$"):
        predict_logits(model, [long], 1, TOKENIZER.pad_id, "residue", whole=True)
    assert predict_logits(model, [long], 1, TOKENIZER.pad_id, "residue")[0].shape == (14, 3)  # windowed when the task allows it
