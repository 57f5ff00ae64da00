"""ESM-2 parity: fair-esm and HF ESM models built here, saved as their libraries save them, imported.

Nothing is downloaded: tiny random models (2 layers, 64 dim) stand in for the published ones; the
code paths (names, token dropout, rotary, padding, LM head, contact head) are the same.
"""

from __future__ import annotations

import argparse
import pickle
from pathlib import Path

import esm
import pytest
import torch
from esm.model.esm2 import ESM2
from transformers import AutoModelForMaskedLM, EsmConfig, EsmForMaskedLM, EsmModel

from foundry.convert import build_model, export_fair_esm, export_hf, import_model, load_fair_esm, load_hf, read_hf
from foundry.errors import CheckpointError, FoundryError
from modalities.protein.contact_head import predict_contacts

FASTA = Path("/work/shared/data/protein_sequences/esm/some_proteins.fasta")
TOL = 1e-5
ALPHABET = esm.data.Alphabet.from_architecture("ESM-1b")


def read_fasta(path: Path, n: int, crop: int) -> list[tuple[str, str]]:
    records, name, seq = [], None, []
    for line in path.read_text().splitlines():
        if line.startswith(">"):
            if name is not None:
                records.append((name, "".join(seq)))
            name, seq = line[1:].split()[0], []
        elif line.strip():
            seq.append(line.strip())
    records.append((name, "".join(seq)))
    return [(r, s[:crop]) for r, s in records[:n]]


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    """Real proteins of different lengths (so the batch is padded), a few residues set to <mask>."""
    seqs = read_fasta(FASTA, n=4, crop=48)
    seqs = [(name, s[: 20 + 9 * i]) for i, (name, s) in enumerate(seqs)]
    _, _, tokens = ALPHABET.get_batch_converter()(seqs)
    tokens[0, [3, 7, 11]] = ALPHABET.mask_idx  # token dropout with an observed mask ratio > 0
    tokens[2, 5] = ALPHABET.mask_idx
    assert (tokens == ALPHABET.padding_idx).any()
    return tokens


def randomize(model: torch.nn.Module, seed: int = 0) -> None:
    """Weights with moderate scales (logits of order 1-10), including non-trivial norm weights."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if p.dim() == 2:
                p.copy_(noise * (0.5 if "embed" in name else p.shape[-1] ** -0.5))
            elif "norm" in name.lower() and name.endswith("weight"):
                p.copy_(1 + 0.1 * noise)
            else:
                p.copy_(0.1 * noise)


def fair_esm_model(layers=2, dim=64, heads=4, token_dropout=True) -> ESM2:
    model = ESM2(num_layers=layers, embed_dim=dim, attention_heads=heads, alphabet=ALPHABET, token_dropout=token_dropout)
    randomize(model)
    return model.eval()


def save_fair_esm(model: ESM2, path: Path, regression: bool = True) -> Path:
    """Like a real fair-esm checkpoint: fairseq prefixes, cfg['model'] a Namespace, regression file beside."""
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("contact_head.")}
    state = {("encoder." if k.startswith("lm_head") else "encoder.sentence_encoder.") + k: v for k, v in state.items()}
    ns = argparse.Namespace(
        arch="esm2", encoder_layers=model.num_layers, encoder_embed_dim=model.embed_dim,
        encoder_ffn_embed_dim=4 * model.embed_dim, encoder_attention_heads=model.attention_heads,
        token_dropout=model.token_dropout,
    )
    torch.save({"model": state, "cfg": {"model": ns}}, path)
    if regression:
        head = {f"contact_head.{k}": v for k, v in model.contact_head.state_dict().items()}
        torch.save({"model": head}, str(path.with_suffix("")) + "-contact-regression.pt")
    return path


def real(tokens):
    return tokens != ALPHABET.padding_idx


# -- fair-esm -> foundry ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def fair(tmp_path_factory):
    ref = fair_esm_model()
    path = save_fair_esm(ref, tmp_path_factory.mktemp("fair") / "esm2_t2_tiny.pt")
    return ref, import_model(path).model, path  # the regression file becomes the attached contact head


def test_fair_esm_logits_hidden_and_attention_match(fair, batch):
    ref, ours, _ = fair
    with torch.no_grad():
        r = ref(batch, repr_layers=[0, 1, 2], need_head_weights=True)
        o = ours(batch, need_hidden=[0, 1, 2], need_attention=True)
    mask = real(batch)
    assert (r["logits"] - o.logits)[mask].abs().max() <= TOL
    for i in (0, 1, 2):
        assert (r["representations"][i] - o.hidden_states[i])[mask].abs().max() <= TOL
    assert (r["attentions"] - o.attentions).abs().max() <= TOL


def test_fair_esm_without_token_dropout(tmp_path, batch):
    ref = fair_esm_model(token_dropout=False)
    cfg, state, _ = load_fair_esm(save_fair_esm(ref, tmp_path / "esm2_t2_nodrop.pt"))
    assert cfg.token_dropout is False
    with torch.no_grad():
        diff = ref(batch)["logits"] - build_model(cfg, state)(batch).logits
    assert diff[real(batch)].abs().max() <= TOL


def test_fair_esm_contacts_match_predict_contacts(fair, batch):
    ref, ours, _ = fair
    with torch.no_grad():
        expected = ref.predict_contacts(batch)
    got = predict_contacts(ours, batch)  # the protein plugin's head (modalities/protein/contact_head.py)
    assert got.shape == expected.shape
    assert (got - expected).abs().max() <= TOL


def test_fair_esm_config_comes_from_checkpoint(fair):
    _, ours, path = fair
    cfg = ours.config
    assert (cfg.n_layer, cfg.d_model, cfg.n_head, cfg.d_ff) == (2, 64, 4, 256)
    assert (cfg.vocab_size, cfg.pad_id, cfg.mask_id, cfg.lm_head, cfg.token_dropout) == (33, 1, 32, "esm", True)


def test_export_fair_esm_loads_in_fair_esm(fair, batch, tmp_path):
    ref, ours, _ = fair
    out = export_fair_esm(ours, tmp_path / "esm2_exported.pt")
    with torch.serialization.safe_globals([argparse.Namespace]):
        back, alphabet = esm.pretrained.load_model_and_alphabet_local(str(out))
    back.eval()
    assert len(alphabet) == 33
    with torch.no_grad():
        r, b = ref(batch, return_contacts=True), back(batch, return_contacts=True)
    assert (r["logits"] - b["logits"]).abs().max() <= TOL
    assert (r["contacts"] - b["contacts"]).abs().max() <= TOL
    # and back into foundry: unchanged
    again = import_model(out).model
    with torch.no_grad():
        assert (again(batch).logits - ours(batch).logits)[real(batch)].abs().max() == 0


def test_export_fair_esm_refuses_names_fair_esm_would_misread(fair, tmp_path):
    with pytest.raises(FoundryError, match="esm2"):
        export_fair_esm(fair[1], tmp_path / "my_model.pt")


def test_packed_documents_equal_separate_runs(fair, batch):
    """Two proteins packed in one row (with document ids) give each its own logits."""
    _, ours, _ = fair
    a, b = batch[0][real(batch)[0]], batch[2][real(batch)[2]]
    packed = torch.cat([a, b])[None]
    doc = torch.cat([torch.zeros_like(a), torch.ones_like(b)])[None]
    with torch.no_grad():
        together = ours(packed, document_ids=doc).logits[0]
        alone_a, alone_b = ours(a[None]).logits[0], ours(b[None]).logits[0]
    assert (together[: len(a)] - alone_a).abs().max() <= TOL
    assert (together[len(a):] - alone_b).abs().max() <= TOL


# -- HF ESM ----------------------------------------------------------------------------------


def hf_esm_config(**kw) -> EsmConfig:
    base = dict(
        vocab_size=33, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256,
        position_embedding_type="rotary", token_dropout=True, mask_token_id=32, pad_token_id=1,
        layer_norm_eps=1e-5, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, max_position_embeddings=1026,
    )
    return EsmConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def hf_esm(tmp_path_factory):
    torch.manual_seed(0)
    ref = EsmForMaskedLM(hf_esm_config())
    randomize(ref, seed=1)
    ref.eval()
    path = tmp_path_factory.mktemp("hf") / "esm"
    ref.save_pretrained(path)
    return ref, path


def test_hf_esm_logits_match(hf_esm, batch):
    ref, path = hf_esm
    cfg, state = load_hf(path)
    ours = build_model(cfg, state)
    mask = real(batch)
    with torch.no_grad():
        r = ref(input_ids=batch, attention_mask=mask.long(), output_hidden_states=True)
        o = ours(batch, need_hidden=[0, 1])
    assert (r.logits - o.logits)[mask].abs().max() <= TOL
    assert (r.hidden_states[1] - o.hidden_states[1])[mask].abs().max() <= TOL


def test_hf_esm_export_and_full_round_trip(fair, batch, tmp_path):
    """fair-esm -> foundry -> HF (AutoModelForMaskedLM) -> foundry: logits unchanged all the way."""
    ref, ours, _ = fair
    export_hf(ours, None, tmp_path / "hf", modality="protein")
    hf = AutoModelForMaskedLM.from_pretrained(tmp_path / "hf", attn_implementation="eager").eval()
    mask = real(batch)
    with torch.no_grad():
        expected = ref(batch)["logits"]
        got_hf = hf(input_ids=batch, attention_mask=mask.long()).logits
        contacts_hf = hf.predict_contacts(batch, attention_mask=mask.long())
        back = import_model(tmp_path / "hf").model
        got_back = back(batch).logits
    assert (expected - got_hf)[mask].abs().max() <= TOL
    assert (expected - got_back)[mask].abs().max() <= TOL
    assert (ref.predict_contacts(batch) - predict_contacts(back, batch)).abs().max() <= TOL
    # HF's contact head runs on the exported regression weights too
    assert (contacts_hf - ref.predict_contacts(batch)).abs().max() <= TOL


def test_hf_esm_model_without_lm_head(tmp_path, batch):
    trunk = EsmModel(hf_esm_config(), add_pooling_layer=False).eval()
    trunk.save_pretrained(tmp_path / "trunk")
    with pytest.raises(CheckpointError, match="without masked-LM head"):
        load_hf(tmp_path / "trunk")
    with pytest.warns(UserWarning, match="fresh"):
        imported = read_hf(tmp_path / "trunk", allow_missing_head=True)
    assert imported.head_missing
    ours = build_model(imported.config, imported.state)
    mask = real(batch)
    with torch.no_grad():
        expected = trunk(input_ids=batch, attention_mask=mask.long()).last_hidden_state
        got = ours(batch, need_hidden=[2]).hidden_states[2]
    assert (expected - got)[mask].abs().max() <= TOL


def test_hf_esm1b_layout_is_refused(tmp_path):
    EsmForMaskedLM(hf_esm_config(position_embedding_type="absolute")).save_pretrained(tmp_path / "esm1b")
    with pytest.raises(CheckpointError, match="ESM-1b"):
        load_hf(tmp_path / "esm1b")


# -- bad input -------------------------------------------------------------------------------


def load_checkpoint(path):
    """Read back a checkpoint this test wrote, as foundry does: tensors plus argparse.Namespace only."""
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(path, weights_only=True)


def test_missing_tensor_is_named(fair, tmp_path):
    data = load_checkpoint(fair[2])
    del data["model"]["encoder.sentence_encoder.layers.1.fc2.weight"]
    torch.save(data, tmp_path / "esm2_broken.pt")
    with pytest.raises(CheckpointError, match=r"esm2_broken\.pt: missing tensor 'layers\.1\.fc2\.weight'"):
        load_fair_esm(tmp_path / "esm2_broken.pt")


def test_wrong_shape_is_named(fair, tmp_path):
    data = load_checkpoint(fair[2])
    data["model"]["encoder.sentence_encoder.layers.0.fc1.weight"] = torch.zeros(128, 64)
    torch.save(data, tmp_path / "esm2_shape.pt")
    with pytest.raises(CheckpointError, match=r"'layers\.0\.fc1\.weight' has shape \(128, 64\), expected \(256, 64\)"):
        load_fair_esm(tmp_path / "esm2_shape.pt")


def test_unexpected_tensor_is_named(fair, tmp_path):
    data = load_checkpoint(fair[2])
    data["model"]["encoder.sentence_encoder.layers.0.adapter.weight"] = torch.zeros(3)
    torch.save(data, tmp_path / "esm2_extra.pt")
    with pytest.raises(CheckpointError, match=r"unexpected tensor 'layers\.0\.adapter\.weight'"):
        load_fair_esm(tmp_path / "esm2_extra.pt")


def test_wrong_vocab_is_refused(tmp_path):
    data = {"model": {"embed_tokens.weight": torch.zeros(40, 64)}, "cfg": {"model": argparse.Namespace(
        encoder_layers=1, encoder_embed_dim=64, encoder_attention_heads=4, token_dropout=True)}}
    torch.save(data, tmp_path / "esm2_vocab.pt")
    with pytest.raises(CheckpointError, match="40 rows"):
        load_fair_esm(tmp_path / "esm2_vocab.pt")


def test_pt_that_is_not_a_checkpoint(tmp_path):
    torch.save([torch.zeros(2)], tmp_path / "esm2_list.pt")
    with pytest.raises(CheckpointError, match="not a fair-esm checkpoint"):
        load_fair_esm(tmp_path / "esm2_list.pt")
    torch.save({"model": {"w": [1, 2]}, "cfg": {}}, tmp_path / "esm2_nested.pt")
    with pytest.raises(CheckpointError, match="entry 'w' is a list"):
        load_fair_esm(tmp_path / "esm2_nested.pt")


class Evil:
    def __reduce__(self):
        return (print, ("pickled code ran",))


def test_pickled_code_is_never_executed(tmp_path, capsys):
    with open(tmp_path / "esm2_evil.pt", "wb") as f:
        pickle.dump({"model": {}, "cfg": Evil()}, f, protocol=2)
    with pytest.raises(CheckpointError, match="refuses to unpickle"):
        load_fair_esm(tmp_path / "esm2_evil.pt")
    assert "pickled code ran" not in capsys.readouterr().out


def test_truncated_file(fair, tmp_path):
    raw = Path(fair[2]).read_bytes()
    (tmp_path / "esm2_cut.pt").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match="esm2_cut.pt"):
        load_fair_esm(tmp_path / "esm2_cut.pt")


def test_truncated_hf_safetensors(hf_esm, tmp_path):
    import shutil

    shutil.copytree(hf_esm[1], tmp_path / "cut")
    weights = tmp_path / "cut" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_hf(tmp_path / "cut")


def test_hf_export_with_tokenizer_runs_without_foundry(fair, tmp_path):
    """The exported folder alone (AutoTokenizer + AutoModelForMaskedLM) reproduces fair-esm on a real protein."""
    alphabet_mod = pytest.importorskip("modalities.protein.alphabet")
    from transformers import AutoTokenizer

    ref, ours, _ = fair
    export_hf(ours, alphabet_mod.EsmTokenizer(), tmp_path / "hf", modality="protein")
    name, seq = read_fasta(FASTA, n=1, crop=40)[0]
    hf_tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    hf_model = AutoModelForMaskedLM.from_pretrained(tmp_path / "hf").eval()
    ids = torch.tensor([hf_tok(seq)["input_ids"]])
    _, _, expected_ids = ALPHABET.get_batch_converter()([(name, seq)])
    assert torch.equal(ids, expected_ids)
    with torch.no_grad():
        assert (hf_model(input_ids=ids).logits - ref(expected_ids)["logits"]).abs().max() <= TOL
