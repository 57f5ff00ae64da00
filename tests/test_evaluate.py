"""`<modality> evaluate`: the pretraining objective on held-out files, JSON on the last stdout line.
Causal: next-token loss equal to a hand computation, every target counted once whatever the window,
bits per byte. Masked: seeded MLM loss, pseudo-perplexity equal to masking each position by hand."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from foundry.model import Transformer, from_name
from foundry.model.store import save_model
from foundry.testing import run_cli
from modalities.protein.alphabet import EsmTokenizer
from modalities.text.bpe import BpeTokenizer

LINES = ["First Citizen:\nBefore we proceed any further, hear me speak.\n", "All:\nSpeak, speak.\n",
         "First Citizen:\nYou are all resolved rather to die than to famish?\n", "All:\nResolved. resolved.\n"]


def _last_json(result) -> dict:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def text_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    tok = BpeTokenizer.train(LINES * 20, vocab_size=300)
    torch.manual_seed(0)
    model = Transformer(from_name("llama-tiny", vocab_size=tok.vocab_size, pad_id=tok.pad_id, n_layer=2, d_model=32, n_head=4,
                                  n_kv_heads=2, d_ff=64)).eval()
    save_model(root / "model", model, tok, "text")
    held_out = root / "held_out.txt"
    held_out.write_text("".join(LINES))
    return root / "model", model, tok, held_out


def test_causal_loss_equals_hand_computation_and_bits_per_byte(text_model):
    path, model, tok, held_out = text_model
    got = _last_json(run_cli("text", "evaluate", "--model", path, held_out))
    from foundry.plugins import get_manager
    from foundry.readers import read_documents

    texts = [d.text for d in read_documents([held_out], get_manager().reader_objects(get_manager().modality("text").readers))]
    total, count = 0.0, 0
    with torch.no_grad():
        for text in texts:
            ids = torch.as_tensor(tok.encode(text))[None]
            logits = model(ids).logits[0, :-1]
            total += float(F.cross_entropy(logits, ids[0, 1:], reduction="sum"))
            count += ids.shape[1] - 1
    assert got["tokens"] == count and got["documents"] == len(texts)
    assert got["loss"] == pytest.approx(total / count, rel=1e-5)
    assert got["perplexity"] == pytest.approx(math.exp(total / count), rel=1e-5)
    n_bytes = sum(len(t.encode()) for t in texts)
    assert got["bits_per_byte"] == pytest.approx(total / math.log(2) / n_bytes, rel=1e-5)
    # short windows overlap by one token: every target is still scored exactly once
    windowed = _last_json(run_cli("text", "evaluate", "--model", path, held_out, "--max-len", "5", "--batch-size", "3"))
    assert windowed["tokens"] == count


def _protein_model(path):
    tok = EsmTokenizer()
    torch.manual_seed(0)
    model = Transformer(from_name("esm2_tiny", vocab_size=tok.vocab_size, pad_id=tok.pad_id, mask_id=tok.mask_id, n_layer=1,
                                  d_model=32, n_head=4, d_ff=64)).eval()
    save_model(path, model, tok, "protein")
    return model, tok


def test_masked_loss_is_seeded_and_pseudo_perplexity_matches_hand_masking(tmp_path):
    model, tok = _protein_model(tmp_path / "esm")
    fasta = tmp_path / "held_out.fasta"
    fasta.write_text(">a\nMKTAYIAKQRQISFVKSHFSRQ\n>b\nGSHMLEDPVDAFQ\n>c\nMVLSPADKTNVKAAW\n")
    args = ("protein", "evaluate", "--model", tmp_path / "esm", fasta)
    first = _last_json(run_cli(*args, "--pseudo-perplexity", "--batch-size", "5"))
    assert first == _last_json(run_cli(*args, "--pseudo-perplexity", "--batch-size", "5"))  # fixed seed: same targets
    assert set(first) >= {"loss", "perplexity", "tokens", "pseudo_perplexity"} and "bits_per_byte" not in first
    other = _last_json(run_cli(*args, "--seed", "7"))
    assert other["loss"] != first["loss"]
    nll, n = 0.0, 0
    with torch.no_grad():
        for seq in ("MKTAYIAKQRQISFVKSHFSRQ", "GSHMLEDPVDAFQ", "MVLSPADKTNVKAAW"):
            ids = torch.as_tensor(tok.encode(seq))
            for i in range(1, len(ids) - 1):  # every residue, not <cls>/<eos>
                masked = ids.clone()
                masked[i] = tok.mask_id
                nll -= float(model(masked[None]).logits[0, i].log_softmax(-1)[ids[i]])
                n += 1
    assert first["pseudo_tokens"] == n
    assert first["pseudo_perplexity"] == pytest.approx(math.exp(nll / n), rel=1e-5)


def test_evaluate_bad_input_is_one_line_exit_2(text_model, tmp_path):
    path, _, _, held_out = text_model
    cases = [
        (("text", "evaluate", "--model", path), "give one or more held-out files"),
        (("text", "evaluate", "--model", path, tmp_path / "missing.txt"), "missing.txt: no such file or directory"),
        (("text", "evaluate", "--model", path, held_out, "--pseudo-perplexity"), "--pseudo-perplexity is for masked models"),
        (("text", "evaluate", "--model", tmp_path / "nope", held_out), "nope"),
        (("code", "evaluate", held_out), "evaluate needs --model"),
    ]
    for args, message in cases:
        result = run_cli(*args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.stderr and result.stderr.count("\n") == 1, (args, result.stderr)


def test_a_prepared_dataset_is_scored_on_its_validation_split(text_model, tmp_path):
    path, model, tok, held_out = text_model
    corpus = tmp_path / "corpus.jsonl"  # one record per line
    corpus.write_text("".join(json.dumps({"text": f"{i}: {line}"}) + "\n" for i, line in enumerate(LINES * 3)))
    prepared = tmp_path / "prepared"
    done = run_cli("text", "prepare", corpus, "-o", prepared, "--tokenizer", path / "tokenizer", "--valid-fraction", "3")
    assert done.exit_code == 0, done.output
    got = _last_json(run_cli("text", "evaluate", "--model", path, prepared))
    from foundry.data.manifest import open_prepared

    valid = open_prepared(prepared).valid
    assert got["documents"] == len(valid) == 3 and "bits_per_byte" not in got
    assert got["tokens"] == sum(len(valid[i]) - 1 for i in range(len(valid)))
    other = BpeTokenizer.train(LINES * 5, vocab_size=290)
    other.save(tmp_path / "other_tok")
    refused = run_cli("text", "prepare", corpus, "-o", tmp_path / "other", "--tokenizer", tmp_path / "other_tok", "--valid-fraction", "3")
    assert refused.exit_code == 0, refused.output
    wrong = run_cli("text", "evaluate", "--model", path, tmp_path / "other")
    assert wrong.exit_code == 2 and "fingerprint" in wrong.stderr
