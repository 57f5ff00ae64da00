"""`protein predict` never cuts a sequence silently: a residue model with a 12-token window on a
30-residue protein warns with counts (it used to write 10 labels for 30 residues without a word)."""

from __future__ import annotations

import csv

import torch

from foundry.cli import main
from foundry.finetune.heads import FinetuneModel, head_for
from foundry.finetune.store import save_finetuned
from foundry.finetune.tasks import LabelInfo, get_task
from foundry.model import Transformer, from_name
from foundry.model.store import save_model
from modalities.protein.alphabet import EsmTokenizer


def test_predict_warns_with_counts_when_sequences_exceed_the_window(tmp_path, capsys):
    torch.manual_seed(0)
    tok = EsmTokenizer()
    trunk = Transformer(from_name("esm2_tiny", n_layer=1, d_model=32, n_head=2, d_ff=64))
    base = tmp_path / "base"
    save_model(base, trunk, tok, "protein")
    task, labels = get_task("residue-classification"), LabelInfo(["C", "E", "H"])
    model = FinetuneModel(trunk, head_for("residue", 32, 3), tok.special_ids, tok.pad_id, 1)
    save_finetuned(tmp_path / "ss3", model, tok, task, labels, strategy="full", modality="protein", base=str(base), max_len=12)
    fasta = tmp_path / "q.fasta"
    fasta.write_text(">long\n" + "MKTAYIAKQR" * 3 + "\n>short\nMKT\n")
    pred = tmp_path / "pred.csv"
    try:
        main(["protein", "predict", "--model", str(tmp_path / "ss3"), str(fasta), "-o", str(pred)])
        code = 0
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert code == 0, err
    assert ("warning: 1 of 2 sequences are longer than the model's window of 10 residues (max_len 12 tokens); their predicted "
            "state strings stop there, shorter than the sequences (20 residues left out; longest: 'long', 30 residues)") in err
    rows = list(csv.DictReader(pred.open()))
    assert [len(r["prediction"]) for r in rows] == [10, 3]
