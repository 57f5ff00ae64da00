"""Bring your own model through the CLI: import fair-esm / transformers checkpoints, continue
pretraining from them, export to transformers and fair-esm — logits unchanged at every hop."""

import argparse
import json

import esm
import pytest
import torch

from foundry.model.store import load_model
from test_convert_esm import ALPHABET, fair_esm_model, save_fair_esm
from test_pretrain_cli import foundry

# Real sequences (UniProt fragments) of different lengths, so batches are padded.
SEQUENCES = [("a", "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ"), ("b", "KALTARQQEVFDLIRDHISQTGMPPTRAEIAQRLG"), ("c", "MSLFDKKHLVSPADALPGRNTPMPVATLH")]


@pytest.fixture(scope="module")
def fair_esm_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = fair_esm_model(layers=2, dim=64, heads=4)
    path = save_fair_esm(model, tmp_path_factory.mktemp("esm") / "esm2_t2_tiny.pt")
    return model, path


def _tokens():
    _, _, tokens = ALPHABET.get_batch_converter()(SEQUENCES)
    tokens[0, 5] = ALPHABET.mask_idx
    return tokens


def test_import_fair_esm_then_export_to_transformers_and_back_to_fair_esm(fair_esm_checkpoint, tmp_path):
    reference_model, checkpoint = fair_esm_checkpoint
    tokens = _tokens()
    with torch.no_grad():
        reference = reference_model(tokens)["logits"]
    real = tokens != ALPHABET.padding_idx

    model_dir = tmp_path / "imported"
    out = foundry("protein", "import", str(checkpoint), "-o", str(model_dir))
    assert "imported fair-esm model: 2 layers" in out.stdout
    loaded = load_model(model_dir)
    assert loaded.modality == "protein" and loaded.tokenizer.vocab_size == 33
    with torch.no_grad():
        ours = loaded.model(tokens).logits
    assert (ours - reference)[real].abs().max() <= 1e-5

    hf_dir = tmp_path / "hf"
    foundry("export", str(model_dir), "--to", "hf", "-o", str(hf_dir))
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    hf = AutoModelForMaskedLM.from_pretrained(hf_dir).eval()
    hf_tokens = AutoTokenizer.from_pretrained(hf_dir)([s for _, s in SEQUENCES], padding=True, return_tensors="pt")
    assert torch.equal(hf_tokens["input_ids"][1], tokens[1][: hf_tokens["input_ids"].shape[1]])
    with torch.no_grad():
        hf_logits = hf(input_ids=tokens, attention_mask=real.long()).logits
    assert (hf_logits - reference)[real].abs().max() <= 1e-5

    esm_file = tmp_path / "back" / "esm2_t2_back.pt"
    foundry("export", str(model_dir), "--to", "esm", "-o", str(esm_file))
    with torch.serialization.safe_globals([argparse.Namespace]):
        back, _ = esm.pretrained.load_model_and_alphabet_local(str(esm_file))
    with torch.no_grad():
        back_logits = back.eval()(tokens)["logits"]
    assert (back_logits - reference)[real].abs().max() <= 1e-5


def test_continued_pretraining_from_an_outside_checkpoint(fair_esm_checkpoint, tmp_path):
    _, checkpoint = fair_esm_checkpoint
    out = tmp_path / "continued"
    foundry("protein", "pretrain", "--from", str(checkpoint), "--out", str(out), "--max-steps", "2",
            "--set", "data.max_len=128",
            "--set", "data.batch_tokens=1024", "--set", "data.max_train_docs=50", "--set", "data.max_valid_docs=5", "--quiet")
    final = load_model(out / "final")
    assert final.config.n_layer == 2 and final.config.d_model == 64
    assert json.loads((out / "summary.json").read_text())["step"] == 2


def test_import_transformers_esm_directory(tmp_path):
    from transformers import EsmConfig, EsmForMaskedLM

    config = EsmConfig(vocab_size=33, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                       pad_token_id=1, mask_token_id=32, position_embedding_type="rotary", token_dropout=True,
                       max_position_embeddings=1026, emb_layer_norm_before=False)
    torch.manual_seed(0)
    hf = EsmForMaskedLM(config).eval()
    hf.save_pretrained(tmp_path / "hf")
    out = tmp_path / "model"
    foundry("protein", "import", str(tmp_path / "hf"), "-o", str(out))
    tokens = _tokens()
    real = tokens != 1
    with torch.no_grad():
        diff = (load_model(out).model(tokens).logits - hf(input_ids=tokens, attention_mask=real.long()).logits)[real]
    assert diff.abs().max() <= 1e-5


def test_refuses_a_checkpoint_from_another_tokenizer(tmp_path):
    from transformers import EsmConfig, EsmForMaskedLM

    config = EsmConfig(vocab_size=33, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
                       pad_token_id=1, mask_token_id=32, position_embedding_type="rotary", max_position_embeddings=64)
    EsmForMaskedLM(config).save_pretrained(tmp_path / "hf")
    vocab = ["<cls>", "<pad>", "<eos>", "<unk>"] + list("ACDEFGHIKLMNPQRSTVWYXBUZO.-") + ["<null_1>", "<mask>"]
    (tmp_path / "hf" / "vocab.txt").write_text("\n".join(vocab) + "\n")
    result = foundry("protein", "import", str(tmp_path / "hf"), "-o", str(tmp_path / "out"), check=False)
    assert result.returncode != 0
    assert "not the ESM-2 alphabet" in result.stderr and "another tokenizer" in result.stderr
    assert not (tmp_path / "out").exists()


def test_refuses_a_causal_model_for_proteins(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=32, n_embd=32, n_layer=1, n_head=4)).save_pretrained(tmp_path / "gpt2")
    result = foundry("protein", "import", str(tmp_path / "gpt2"), "-o", str(tmp_path / "out"), check=False)
    assert result.returncode != 0 and "causal (GPT/Llama-style) model does not fit the protein modality" in result.stderr


def test_hub_id_without_local_files_says_where_to_put_them(tmp_path, monkeypatch):
    result = foundry("protein", "import", "facebook/esm2_t6_8M_UR50D", "-o", str(tmp_path / "out"), check=False)
    assert result.returncode != 0
    assert "facebook/esm2_t6_8M_UR50D" in result.stderr and "Traceback" not in result.stderr


def test_export_to_esm_refuses_to_overwrite_like_hf(fair_esm_checkpoint, tmp_path, capsys):
    from foundry.cli import main

    def refused(target, out) -> str:
        with pytest.raises(SystemExit) as exit_info:
            main(["export", str(tmp_path / "model"), "--to", target, "-o", str(out)])
        assert exit_info.value.code == 2
        return capsys.readouterr().err

    _, checkpoint = fair_esm_checkpoint
    main(["protein", "import", str(checkpoint), "-o", str(tmp_path / "model")])
    target, regression = tmp_path / "esm2_t2_out.pt", tmp_path / "esm2_t2_out-contact-regression.pt"
    main(["export", str(tmp_path / "model"), "--to", "esm", "-o", str(target)])
    before = target.read_bytes()
    capsys.readouterr()
    assert f"error: {target}: already exists; choose another -o or remove it first" in refused("esm", target)
    assert target.read_bytes() == before
    target.unlink()  # the contact-regression file beside it counts too
    assert f"error: {regression}: already exists" in refused("esm", target)
    assert not target.exists() and regression.is_file()
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "keep.txt").write_text("mine")
    assert f"error: {tmp_path / 'hf'}: already exists and is not empty" in refused("hf", tmp_path / "hf")
