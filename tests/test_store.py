"""The model directory: round trip, atomic replacement, clear errors for missing or garbled files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from foundry import plugins
from foundry.errors import CheckpointError
from foundry.model import Transformer, from_name
from foundry.model.store import load_model, save_model
from modalities.protein.contact_head import attach_contact_head, contact_head_of, predict_contacts


class LetterTokenizer:
    """The smallest tokenizer that satisfies what the store needs (kind, fingerprint, save/load)."""

    kind = "test-letters"

    def __init__(self, letters: str = "ACDEFGHIKLMNPQRSTVWY"):
        self.letters = letters

    def fingerprint(self) -> str:
        return "letters:" + self.letters

    def save(self, directory) -> None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        (Path(directory) / "letters.txt").write_text(self.letters)

    @classmethod
    def load(cls, directory) -> "LetterTokenizer":
        return cls((Path(directory) / "letters.txt").read_text())


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setenv("FOUNDRY_DISABLE_PLUGIN_AUTOLOAD", "1")
    plugins.reset_manager()
    plugins.get_manager().tokenizers.register(LetterTokenizer.kind, LetterTokenizer, owner="tests")
    yield
    plugins.get_manager().tokenizers.unregister(LetterTokenizer.kind)
    plugins.reset_manager()


@pytest.fixture
def model():
    torch.manual_seed(0)
    m = Transformer(from_name("esm2_tiny", n_layer=2))
    head = attach_contact_head(m)
    with torch.no_grad():
        head.regression.weight.normal_()
    return m.eval()


def tokens():
    return torch.tensor([[0, 5, 6, 7, 32, 9, 10, 2], [0, 11, 12, 13, 2, 1, 1, 1]])


def test_round_trip_keeps_logits_contacts_tokenizer_and_extras(tmp_path, model, registered):
    out = save_model(tmp_path / "m", model, LetterTokenizer(), "protein", extras={"step": 7})
    meta = json.loads((out / "model.json").read_text())
    assert meta["format"] == "foundry-model" and meta["version"] == 1 and meta["modality"] == "protein"
    assert meta["tokenizer"] == {"kind": "test-letters", "fingerprint": "letters:ACDEFGHIKLMNPQRSTVWY"}

    loaded = load_model(out)
    assert loaded.config == model.config and loaded.extras == {"step": 7} and loaded.modality == "protein"
    assert isinstance(loaded.tokenizer, LetterTokenizer)
    with torch.no_grad():
        assert torch.equal(loaded.model(tokens()).logits, model(tokens()).logits)
    assert torch.equal(predict_contacts(loaded.model, tokens()), predict_contacts(model, tokens()))
    assert all(p.device.type == "cpu" for p in loaded.model.parameters())


def test_tied_weights_are_saved_once(tmp_path):
    model = Transformer(from_name("gpt2-tiny", vocab_size=300))
    save_model(tmp_path / "m", model, None, "text")
    with safe_open(tmp_path / "m" / "model.safetensors", "pt") as f:
        names = list(f.keys())
    assert "embed.weight" in names and not any(n.startswith("lm_head") for n in names)
    loaded = load_model(tmp_path / "m").model
    assert loaded.lm_head is None  # the output projection uses embed.weight
    x = torch.randint(0, 300, (1, 9))
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, model.eval()(x).logits)


def test_existing_directory_is_replaced_only_when_complete(tmp_path, model, monkeypatch):
    save_model(tmp_path / "m", model, None, "protein", extras={"version": "old"})

    class Boom(RuntimeError):
        pass

    def broken_save(directory):
        raise Boom("disk full")

    bad_tok = LetterTokenizer()
    monkeypatch.setattr(bad_tok, "save", broken_save)
    with pytest.raises(Boom):
        save_model(tmp_path / "m", model, bad_tok, "protein", extras={"version": "new"})
    assert load_model(tmp_path / "m").extras == {"version": "old"}  # the old model is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temp leftovers

    save_model(tmp_path / "m", model, None, "protein", extras={"version": "new"})
    assert load_model(tmp_path / "m").extras == {"version": "new"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_missing_files_are_named(tmp_path, model):
    with pytest.raises(CheckpointError, match=r"nowhere/model.json: file not found"):
        load_model(tmp_path / "nowhere")
    save_model(tmp_path / "m", model, None, "protein")
    (tmp_path / "m" / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"m/model.safetensors: file not found"):
        load_model(tmp_path / "m")


def test_garbled_files_are_named(tmp_path, model):
    save_model(tmp_path / "m", model, None, "protein")
    weights = tmp_path / "m" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:500])
    with pytest.raises(CheckpointError, match=r"model.safetensors: not a readable safetensors file"):
        load_model(tmp_path / "m")
    (tmp_path / "m" / "model.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"model.json: not valid JSON"):
        load_model(tmp_path / "m")


def test_config_that_does_not_match_the_weights(tmp_path, model):
    save_model(tmp_path / "m", model, None, "protein")
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    meta["model"]["d_ff"] = 1024
    (tmp_path / "m" / "model.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"'blocks.0.mlp.up.weight' has shape \(512, 128\), expected \(1024, 128\)"):
        load_model(tmp_path / "m")
    meta["model"]["n_layers"] = 2
    (tmp_path / "m" / "model.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"model.json: unknown model config key\(s\): n_layers"):
        load_model(tmp_path / "m")


def test_changed_tokenizer_is_refused(tmp_path, model, registered):
    save_model(tmp_path / "m", model, LetterTokenizer(), "protein")
    (tmp_path / "m" / "tokenizer" / "letters.txt").write_text("ACGT")
    with pytest.raises(CheckpointError, match="fingerprint"):
        load_model(tmp_path / "m")


def test_import_then_store_keeps_the_contact_head(tmp_path):
    """fair-esm import -> save_model -> load_model: the contact head survives in its own file."""
    from foundry.convert import import_model

    m = Transformer(from_name("esm2_tiny", n_layer=2))
    attach_contact_head(m)
    save_model(tmp_path / "m", m, None, "protein")
    assert (tmp_path / "m" / "contact_head.safetensors").exists()
    again = import_model(tmp_path / "m")
    assert again.source_format == "foundry" and contact_head_of(again.model) is not None
