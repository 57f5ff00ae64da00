"""`foundry protein finetune` / `predict` and `foundry text finetune` as a user runs them (subprocess)."""

import csv
import json

import torch

from conftest import FINETUNE_DATA as DATA, foundry, head_rows as head

QUICK = ["--max-steps", "4", "--batch-size", "8", "--quiet", "--forgetting-docs", "8"]


def test_variant_effect_finetune_then_predict(tmp_path, protein_model):
    train, valid = head(DATA / "pab1_train.csv", tmp_path / "t.csv", 32), head(DATA / "pab1_valid.csv", tmp_path / "v.csv", 16)
    out = tmp_path / "run"
    result = foundry("protein", "finetune", "--from", protein_model, "--task", "variant-effect", "--wildtype", DATA / "pab1_wt.fasta",
                     "--wildtype-start", "126", "--train", train, "--valid", valid, "--test", valid, "--out", out,
                     "--strategy", "lora", "--lora-rank", "2", *QUICK)
    assert "spearman" in result.stdout and "forgetting: masked-LM loss" in result.stdout
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    final = [m for m in lines if m.get("final") and m["split"] == "test"][0]
    assert {"spearman", "pearson", "rmse"} <= set(final)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["forgetting"]["before"] > 0 and summary["strategy"] == "lora"

    pred = tmp_path / "pred.csv"
    foundry("protein", "predict", "--model", out / "best", valid, "-o", pred)
    rows = list(csv.DictReader(pred.open()))
    assert len(rows) == 16 and list(rows[0]) == ["id", "sequence", "prediction"]
    assert rows[0]["id"] == valid.read_text().splitlines()[1].split(",")[0]  # the mutation string names the row
    assert len(rows[0]["sequence"]) == 75 and float(rows[0]["prediction"]) == float(rows[0]["prediction"])


def test_classification_from_fasta_and_labels_writes_probabilities(tmp_path, protein_model):
    out = tmp_path / "run"
    result = foundry("protein", "finetune", "--from", protein_model, "--task", "sequence-classification",
                     "--train", DATA / "amp_train.fasta", "--train-labels", DATA / "amp_train_labels.txt",
                     "--valid", DATA / "amp_valid.csv", "--out", out, "--metric", "mcc", "--no-forgetting", *QUICK)
    assert "auroc" in result.stdout and "mcc" in result.stdout
    pred = tmp_path / "pred.csv"
    foundry("protein", "predict", "--model", out / "best", DATA / "amp_test.csv", "-o", pred)
    rows = list(csv.DictReader(pred.open()))
    assert list(rows[0]) == ["id", "sequence", "prediction", "p_amp", "p_other"]
    assert all(r["prediction"] in ("amp", "other") for r in rows)
    assert all(abs(float(r["p_amp"]) + float(r["p_other"]) - 1) < 1e-4 for r in rows)


def test_residue_predictions_are_state_strings_as_long_as_the_sequence(tmp_path, protein_model):
    train, valid = head(DATA / "ss3_train.csv", tmp_path / "t.csv", 16), head(DATA / "ss3_valid.csv", tmp_path / "v.csv", 8)
    out = tmp_path / "run"
    foundry("protein", "finetune", "--model", "esm2_tiny", "--model-set", "n_layer=1", "--model-set", "d_model=32",
            "--model-set", "n_head=2", "--model-set", "d_ff=64", "--task", "residue-classification",
            "--train", train, "--valid", valid, "--out", out, *QUICK)
    fasta = tmp_path / "q.fasta"
    fasta.write_text(">q1\nMKTAYIAKQRQISFVKSHFSRQ\n>q2\nGSHMLE\n")
    pred = tmp_path / "pred.csv"
    foundry("protein", "predict", "--model", out / "best", fasta, "-o", pred)
    rows = list(csv.DictReader(pred.open()))
    assert [r["id"] for r in rows] == ["q1", "q2"]
    assert all(len(r["prediction"]) == len(r["sequence"]) and set(r["prediction"]) <= set("CEH") for r in rows)


def test_bad_input_prints_one_error_naming_file_and_row_and_leaves_no_run(tmp_path, protein_model):
    bad = tmp_path / "bad.csv"
    bad.write_text("mutation,label\nG126A,0.1\nA127G,0.3\n")  # residue 127 of Pab1 is N
    out = tmp_path / "run"
    result = foundry("protein", "finetune", "--from", protein_model, "--task", "variant-effect", "--wildtype", DATA / "pab1_wt.fasta",
                     "--wildtype-start", "126", "--train", bad, "--valid", bad, "--out", out, *QUICK, check=False)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {bad}: line 3: mutation A127G: position 127 expects wild-type A but the sequence has N there (--wildtype-start 126; is it right?)")
    assert not out.exists()
    missing = foundry("protein", "finetune", "--from", protein_model, "--task", "sequence-regression", "--train", bad,
                      "--valid", bad, "--out", out, "--sequence-column", "mutation", "--label-column", "score", *QUICK, check=False)
    assert missing.returncode != 0 and "no label column 'score'" in missing.stderr and "Traceback" not in missing.stderr


def test_text_sentiment_finetune_pools_the_last_token(tmp_path):
    from foundry.model import Transformer, from_name
    from foundry.model.store import save_model
    from modalities.text.bpe import BpeTokenizer

    rows = list(csv.DictReader((DATA / "reviews_train.csv").open()))
    tok = BpeTokenizer.train([r["text"] for r in rows], 400)
    torch.manual_seed(0)
    model = tmp_path / "textlm"
    save_model(model, Transformer(from_name("llama-tiny", vocab_size=tok.vocab_size, pad_id=tok.pad_id, n_layer=1, d_model=32,
                                            n_head=2, n_kv_heads=1, d_ff=64)), tok, "text")
    held_out = tmp_path / "held_out.txt"
    held_out.write_text("\n\n".join(r["text"] for r in csv.DictReader((DATA / "reviews_valid.csv").open())))
    out = tmp_path / "run"
    result = foundry("text", "finetune", "--from", model, "--task", "sequence-classification", "--train", DATA / "reviews_train.csv",
                     "--valid", DATA / "reviews_valid.csv", "--sequence-column", "text", "--max-len", "96", "--out", out,
                     "--forgetting-data", held_out, *QUICK[:-2], "--forgetting-docs", "4")
    assert "accuracy" in result.stdout and "next-token loss" in result.stdout
    meta = json.loads((out / "best" / "finetune.json").read_text())
    assert meta["head"]["pooling"] == "last" and meta["labels"]["names"] == ["negative", "positive"]
