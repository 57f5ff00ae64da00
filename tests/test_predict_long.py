"""Evaluation and prediction never cut a sequence: a residue model with a 12-token window (10
residues beside <cls>/<eos>) reads a 30-residue protein in overlapping windows, predicts all 30
residues (it used to write 10 labels for 30 residues) and scores every labelled residue."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from foundry.finetune.data import encode_records, read_records
from foundry.finetune.evaluation import UNCUT, predict_logits, score, window_starts
from foundry.finetune.heads import FinetuneModel, head_for
from foundry.finetune.store import save_finetuned
from foundry.finetune.tasks import LabelInfo, get_task
from foundry.model import Transformer, from_name
from foundry.model.store import save_model
from foundry.testing import run_cli
from modalities.protein.alphabet import EsmTokenizer

LONG = "MKTAYIAKQRQISFVKSHFSRQLEERLGLI"  # 30 residues
LONG_LABELS = "CCHHHHHHHHEEEECC..CCHHHHHHCCCC"  # 28 labelled, 2 unlabelled ('.')


def _model(level: str) -> tuple[FinetuneModel, EsmTokenizer]:
    torch.manual_seed(0)
    tok = EsmTokenizer()
    trunk = Transformer(from_name("esm2_tiny", n_layer=1, d_model=32, n_head=2, d_ff=64))
    return FinetuneModel(trunk, head_for(level, 32, 3), tok.special_ids, tok.pad_id, 1), tok


@pytest.fixture()
def ss3_model(tmp_path):
    """A saved residue-classification model whose window is 12 tokens."""
    model, tok = _model("residue")
    base = tmp_path / "base"
    save_model(base, model.trunk, tok, "protein")
    save_finetuned(tmp_path / "ss3", model, tok, get_task("residue-classification"), LabelInfo(["C", "E", "H"]),
                   strategy="full", modality="protein", base=str(base), max_len=12)
    return tmp_path / "ss3"


def test_windows_cover_every_residue_half_a_window_apart():
    assert window_starts(10, 10) == [0]
    assert window_starts(30, 10) == [0, 5, 10, 15, 20]
    assert window_starts(11, 10) == [0, 1]
    for n, width in ((30, 10), (31, 8), (1000, 1022)):
        covered = np.zeros(n, int)
        for s in window_starts(n, width):
            covered[s : s + width] += 1
        assert covered.min() >= 1 and max(window_starts(n, width)) + width == max(n, width)


def test_residue_logits_are_the_mean_over_the_windows_that_hold_each_residue():
    model, tok = _model("residue")
    tokens = np.asarray(tok.encode(LONG), dtype=np.int64)  # <cls> 30 residues <eos>
    [example] = encode_records(read_records_from([LONG]), tok, get_task("residue-classification"), None, UNCUT)
    [got] = predict_logits(model, [example], 4, tok.pad_id, "residue", max_len=12, layout=(1, 1))
    assert got.shape == (32, 3)
    total, count = np.zeros((30, 3)), np.zeros(30)
    model.eval()
    with torch.no_grad():
        for s in window_starts(30, 10):
            window = torch.from_numpy(np.r_[tokens[:1], tokens[1 + s : 11 + s], tokens[-1:]])[None]
            total[s : s + 10] += model(window)[0, 1:-1].numpy()
            count[s : s + 10] += 1
    np.testing.assert_allclose(got[1:-1], total / count[:, None], atol=1e-5)


def read_records_from(sequences):
    from foundry.finetune.data import Record

    return [Record(f"s{i}", s, None, f"x: record {i}") for i, s in enumerate(sequences)]


def test_a_sequence_longer_than_max_len_is_scored_on_every_labelled_residue(tmp_path):
    table = tmp_path / "test.csv"
    table.write_text(f"id,sequence,label\nlong,{LONG},{LONG_LABELS}\nshort,MKT,CHE\n")
    task = get_task("residue-classification")
    task.configure({})
    labels = LabelInfo(["C", "E", "H"])
    examples = encode_records(read_records(table), EsmTokenizer(), task, labels, UNCUT)
    model, tok = _model("residue")
    scores = score(model, task, labels, examples, 4, tok.pad_id, max_len=12, layout=(1, 1))
    assert sum(scores.report["support"]) == 28 + 3  # every labelled residue, none cut off at the window
    assert np.asarray(scores.report["confusion"]).sum() == 31


def test_predict_reads_long_sequences_in_windows_and_says_so(ss3_model, tmp_path):
    fasta = tmp_path / "q.fasta"
    fasta.write_text(f">long\n{LONG}\n>short\nMKT\n")
    pred = tmp_path / "pred.csv"
    result = run_cli("protein", "predict", "--model", ss3_model, fasta, "-o", pred)
    assert result.exit_code == 0, result.stderr
    assert ("note: 1 of 2 sequences are longer than the model's window of 10 residues (max_len 12 tokens); they are read in "
            "overlapping windows and every residue is predicted (longest: 'long', 30 residues)") in result.stderr
    rows = list(csv.DictReader(pred.open()))
    assert [len(r["prediction"]) for r in rows] == [30, 3]
    assert "metrics on" not in result.stdout  # no labels, nothing to score


def test_predict_on_a_labelled_table_prints_metrics_and_writes_residue_probabilities(ss3_model, tmp_path):
    table = tmp_path / "test.csv"
    table.write_text(f"id,sequence,label\nlong,{LONG},{LONG_LABELS}\nshort,MKT,CHE\n")
    pred = tmp_path / "pred.csv"
    result = run_cli("protein", "predict", "--model", ss3_model, table, "-o", pred, "--probabilities")
    assert result.exit_code == 0, result.stderr
    assert f"metrics on 2 labelled records of {table} (column 'label'): " in result.stdout
    assert "q3 " in result.stdout and "mcc " in result.stdout and "balanced_accuracy " in result.stdout
    assert "class     precision    recall   support predicted\nC " in result.stdout
    saved = json.loads((tmp_path / "pred_metrics.json").read_text())
    assert sum(saved["classes"]["support"]) == 31 and saved["records"] == 2
    rows = list(csv.DictReader(pred.open()))
    assert list(rows[0]) == ["id", "sequence", "prediction"]  # the columns of an unlabelled input
    assert [len(r["prediction"]) for r in rows] == [30, 3]
    residues = list(csv.DictReader((tmp_path / "pred_residues.csv").open()))
    assert len(residues) == 33 and list(residues[0]) == ["id", "position", "residue", "prediction", "label", "p_C", "p_E", "p_H"]
    assert [(r["id"], r["position"], r["residue"], r["label"]) for r in residues[16:18]] == [("long", "17", LONG[16], ""), ("long", "18", LONG[17], "")]
    first = residues[0]
    assert sum(float(first[f"p_{s}"]) for s in "CEH") == pytest.approx(1.0, abs=2e-4)
    assert first["prediction"] == max("CEH", key=lambda s: float(first[f"p_{s}"]))


def test_predict_with_labels_it_cannot_read_still_predicts_and_says_why(ss3_model, tmp_path):
    table = tmp_path / "test.csv"
    table.write_text("id,sequence,label\nshort,MKT,CHX\n")
    pred = tmp_path / "pred.csv"
    result = run_cli("protein", "predict", "--model", ss3_model, table, "-o", pred)
    assert result.exit_code == 0, result.stderr
    assert (f"warning: the 'label' column is not scored: {table}: line 2 (id 'short'): label 'X' at position 3 does not occur in "
            "the training split") in result.stderr
    assert len(list(csv.DictReader(pred.open()))) == 1


def test_probabilities_are_refused_for_a_regression_model(tmp_path):
    model, tok = _model("sequence")
    model.head = head_for("sequence", 32, 1)
    base = tmp_path / "base"
    save_model(base, model.trunk, tok, "protein")
    save_finetuned(tmp_path / "reg", model, tok, get_task("sequence-regression"), LabelInfo([]), strategy="full",
                   modality="protein", base=str(base), max_len=12)
    fasta = tmp_path / "q.fasta"
    fasta.write_text(">a\nMKT\n")
    result = run_cli("protein", "predict", "--model", tmp_path / "reg", fasta, "-o", tmp_path / "p.csv", "--probabilities")
    assert result.exit_code == 2
    assert f"error: --probabilities: {tmp_path / 'reg'} is a sequence-regression model; it predicts numbers, not classes" in result.stderr


def test_sequence_outputs_average_the_windows_weighted_by_residues_and_far_pairs_rank_last():
    model, tok = _model("sequence")
    [example] = encode_records(read_records_from([LONG]), tok, get_task("sequence-regression"), None, UNCUT)
    [got] = predict_logits(model, [example], 4, tok.pad_id, "sequence", max_len=12, layout=(1, 1))
    tokens = example.tokens
    model.eval()
    with torch.no_grad():
        outs = [model(torch.from_numpy(np.r_[tokens[:1], tokens[1 + s : 11 + s], tokens[-1:]])[None])[0].numpy()
                for s in window_starts(30, 10)]
    np.testing.assert_allclose(got, np.mean(outs, 0), atol=1e-5)  # every window holds 10 residues: equal weights
    pair_model, _ = _model("pair")
    [pairs] = predict_logits(pair_model, [example], 4, tok.pad_id, "pair", max_len=12, layout=(1, 1))
    assert pairs.shape == (32, 32) and np.isfinite(pairs).all()
    # residues 1 and 30 (tokens 1 and 30) never share a window: ranked below every pair that does
    assert pairs[1, 30] == pairs.min() and pairs[1, 2] > pairs.min()
