"""Causal LM parity: HF Llama (GQA), Mistral (GQA + sliding window) and GPT-2 built here, saved with
``save_pretrained``, imported, exported back; logits equal in fp32 on real text, padded batches too."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import (
    AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM,
)

from foundry.convert import build_model, export_hf, import_model, load_hf, resolve_model_path
from foundry.errors import CheckpointError, FoundryError

TEXT = Path("/work/shared/data/text/tinyshakespeare.txt")
TOL = 1e-5
VOCAB = 260  # bytes + a pad id


def randomize(model: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if p.dim() == 2:
                p.copy_(noise * (0.5 if ("wte" in name or "wpe" in name or "embed" in name) else min(p.shape) ** -0.5))
            elif "norm" in name or "ln_" in name:
                p.copy_(1 + 0.1 * noise) if name.endswith("weight") else p.copy_(0.1 * noise)
            else:
                p.copy_(0.1 * noise)


@pytest.fixture(scope="module")
def batch():
    """Real text as UTF-8 bytes: three lines of different lengths, right-padded with id 256."""
    lines = [ln for ln in TEXT.read_text().splitlines() if len(ln) > 20][:3]
    ids = [torch.tensor(list(ln.encode())[: 16 + 8 * i]) for i, ln in enumerate(lines)]
    width = max(len(x) for x in ids)
    tokens = torch.full((len(ids), width), 256)
    mask = torch.zeros(len(ids), width, dtype=torch.bool)
    for i, x in enumerate(ids):
        tokens[i, : len(x)], mask[i, : len(x)] = x, True
    return tokens, mask


def llama_cfg(**kw):
    return LlamaConfig(**{**dict(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-5, pad_token_id=256,
        bos_token_id=None, eos_token_id=None,
    ), **kw})


def mistral_cfg(**kw):
    return MistralConfig(**{**dict(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-5, sliding_window=7,
        pad_token_id=256, bos_token_id=None, eos_token_id=None,
    ), **kw})


def gpt2_cfg(**kw):
    return GPT2Config(**{**dict(
        vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=64, resid_pdrop=0.0, embd_pdrop=0.0,
        attn_pdrop=0.0, bos_token_id=None, eos_token_id=None,
    ), **kw})


FAMILIES = {
    "llama": (LlamaForCausalLM, llama_cfg),
    "llama_tied_bias": (LlamaForCausalLM, lambda: llama_cfg(tie_word_embeddings=True, attention_bias=True, mlp_bias=True)),
    "mistral": (MistralForCausalLM, mistral_cfg),
    "gpt2": (GPT2LMHeadModel, gpt2_cfg),
}


def make(name: str, directory: Path):
    cls, cfg = FAMILIES[name]
    torch.manual_seed(0)
    ref = cls(cfg())
    randomize(ref)
    ref.eval()
    ref.save_pretrained(directory)
    return ref


def hf_logits(model, tokens, mask):
    with torch.no_grad():
        return model(input_ids=tokens, attention_mask=mask.long()).logits


@pytest.mark.parametrize("name", FAMILIES)
def test_import_export_round_trip(name, batch, tmp_path):
    tokens, mask = batch
    ref = make(name, tmp_path / "hf")
    expected = hf_logits(ref, tokens, mask)

    cfg, state = load_hf(tmp_path / "hf")
    ours = build_model(cfg, state)
    with torch.no_grad():
        got = ours(tokens, attention_mask=mask).logits
    assert (expected - got)[mask].abs().max() <= TOL

    export_hf(ours, None, tmp_path / "out", modality="text")
    assert not list(tmp_path.glob("out.tmp-*"))
    back_hf = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert type(back_hf) is type(ref)
    assert (hf_logits(back_hf, tokens, mask) - expected)[mask].abs().max() <= TOL

    again = import_model(tmp_path / "out").model
    with torch.no_grad():
        assert (again(tokens, attention_mask=mask).logits - got)[mask].abs().max() == 0


def test_llama_gqa_config(tmp_path):
    make("llama", tmp_path / "hf")
    cfg, _ = load_hf(tmp_path / "hf")
    assert (cfg.n_kv_heads, cfg.norm, cfg.mlp, cfg.causal, cfg.tie_embeddings) == (2, "rmsnorm", "swiglu", True, False)


def test_mistral_sliding_window_matters(batch, tmp_path):
    """The window is honoured: with it removed, long rows give different logits."""
    tokens, mask = batch
    make("mistral", tmp_path / "hf")
    cfg, state = load_hf(tmp_path / "hf")
    assert cfg.sliding_window == 7
    windowed = build_model(cfg, state)
    full = build_model(cfg.replace(sliding_window=None), state)
    with torch.no_grad():
        assert (windowed(tokens).logits - full(tokens).logits).abs().max() > 1e-3


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_packed_documents_equal_separate_runs(name, batch, tmp_path):
    tokens, mask = batch
    make(name, tmp_path / "hf")
    model = import_model(tmp_path / "hf").model
    a, b = tokens[0][mask[0]], tokens[2][mask[2]]
    packed = torch.cat([a, b])[None]
    doc = torch.cat([torch.full_like(a, 5), torch.full_like(b, 9)])[None]
    with torch.no_grad():
        together = model(packed, document_ids=doc).logits[0]
        alone_a, alone_b = model(a[None]).logits[0], model(b[None]).logits[0]
    assert (together[: len(a)] - alone_a).abs().max() <= TOL
    assert (together[len(a):] - alone_b).abs().max() <= TOL


def test_sharded_safetensors(batch, tmp_path):
    tokens, mask = batch
    ref = LlamaForCausalLM(llama_cfg())
    randomize(ref)
    ref.eval().save_pretrained(tmp_path / "hf", max_shard_size="100KB")
    assert (tmp_path / "hf" / "model.safetensors.index.json").exists()
    ours = import_model(tmp_path / "hf").model
    with torch.no_grad():
        assert (hf_logits(ref, tokens, mask) - ours(tokens, attention_mask=mask).logits)[mask].abs().max() <= TOL


def test_pytorch_model_bin(batch, tmp_path):
    tokens, mask = batch
    ref = make("gpt2", tmp_path / "hf")
    state = load_file(tmp_path / "hf" / "model.safetensors")
    torch.save(state, tmp_path / "hf" / "pytorch_model.bin")
    (tmp_path / "hf" / "model.safetensors").unlink()
    ours = import_model(tmp_path / "hf").model
    with torch.no_grad():
        assert (hf_logits(ref, tokens, mask) - ours(tokens, attention_mask=mask).logits)[mask].abs().max() <= TOL


# -- bad input -------------------------------------------------------------------------------


def _edit_weights(directory: Path, edit) -> None:
    path = directory / "model.safetensors"
    state = dict(load_file(path))
    edit(state)
    save_file(state, path)


def test_missing_tensor_is_named(tmp_path):
    make("llama", tmp_path / "hf")
    _edit_weights(tmp_path / "hf", lambda s: s.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(CheckpointError, match=r"model.safetensors: missing tensor 'model\.layers\.1\.mlp\.up_proj\.weight'"):
        load_hf(tmp_path / "hf")


def test_wrong_shape_is_named(tmp_path):
    make("llama", tmp_path / "hf")
    _edit_weights(tmp_path / "hf", lambda s: s.__setitem__("model.layers.0.self_attn.k_proj.weight", torch.zeros(64, 64)))
    message = r"'model\.layers\.0\.self_attn\.k_proj\.weight' has shape \(64, 64\), expected \(32, 64\)"
    with pytest.raises(CheckpointError, match=message):
        load_hf(tmp_path / "hf")


def test_unexpected_tensor_is_named(tmp_path):
    make("gpt2", tmp_path / "hf")
    _edit_weights(tmp_path / "hf", lambda s: s.__setitem__("transformer.h.5.ln_1.weight", torch.zeros(64)))
    with pytest.raises(CheckpointError, match=r"unexpected tensor 'transformer\.h\.5\.ln_1\.weight': layer 5"):
        load_hf(tmp_path / "hf")


def test_unsupported_architecture_and_options(tmp_path):
    make("llama", tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    for change, message in [
        ({"model_type": "bert"}, "model_type 'bert' is not supported"),
        ({"rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0}}, "rope_type='llama3'"),
        ({"hidden_act": "gelu"}, "hidden_act='gelu'"),
        ({"num_key_value_heads": 3}, "divisible by model.n_kv_heads"),
        ({"num_attention_heads": 5}, "head_dim=16 differs"),
    ]:
        (tmp_path / "hf" / "config.json").write_text(json.dumps({**config, **change}))
        with pytest.raises(CheckpointError, match=message):
            load_hf(tmp_path / "hf")


def test_no_weights_and_not_a_model(tmp_path):
    make("gpt2", tmp_path / "hf")
    (tmp_path / "hf" / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no weights found"):
        load_hf(tmp_path / "hf")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not a recognised model"):
        import_model(tmp_path / "empty")


def test_export_refuses_layouts_without_equivalent(tmp_path):
    from foundry.model import Transformer, from_name

    odd = Transformer(from_name("llama-tiny", vocab_size=64, norm="layernorm"))
    with pytest.raises(FoundryError, match="norm='layernorm'"):
        export_hf(odd, None, tmp_path / "odd")
    assert not (tmp_path / "odd").exists()


# -- hub ids never touch the network ---------------------------------------------------------


def test_hub_id_not_cached_says_where_to_put_files(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(FoundryError, match=r"huggingface-cli download facebook/esm2_t6_8M_UR50D"):
        resolve_model_path("facebook/esm2_t6_8M_UR50D")
    with pytest.raises(FoundryError, match=r"esm2_t6_8M_UR50D\.pt"):
        resolve_model_path("esm2_t6_8M_UR50D")


def test_hub_id_resolves_from_local_cache(tmp_path, monkeypatch):
    make("gpt2", tmp_path / "hf")
    snapshot = tmp_path / "cache" / "models--someone--tiny-gpt2" / "snapshots" / ("0" * 40)
    shutil.copytree(tmp_path / "hf", snapshot)
    refs = tmp_path / "cache" / "models--someone--tiny-gpt2" / "refs"
    refs.mkdir()
    (refs / "main").write_text("0" * 40)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("huggingface_hub.file_download.constants.HF_HUB_CACHE", str(tmp_path / "cache"), raising=False)
    assert resolve_model_path("someone/tiny-gpt2") == snapshot
    assert resolve_model_path(tmp_path / "hf") == tmp_path / "hf"
