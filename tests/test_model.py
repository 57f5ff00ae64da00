"""The trunk: config validation, presets (shapes equal the published models), forward semantics."""

from __future__ import annotations

import pytest
import torch
from esm.model.esm2 import ESM2

from foundry.errors import ConfigError, FoundryError
from foundry.model import ModelConfig, Transformer, from_name, list_presets
from foundry.model.masks import attention_mask, position_ids

TOL = 1e-5


# -- config ----------------------------------------------------------------------------------


@pytest.mark.parametrize("changes, message", [
    ({"d_model": 100, "n_head": 3}, r"model.d_model \(100\) must be divisible by model.n_head \(3\)"),
    ({"n_head": 4, "n_kv_heads": 3}, r"model.n_head \(4\) must be divisible by model.n_kv_heads \(3\)"),
    ({"norm": "batchnorm"}, "model.norm: 'batchnorm' is not allowed; choose one of layernorm, rmsnorm"),
    ({"mlp": "relu"}, "model.mlp: 'relu'"),
    ({"pos": "alibi"}, "model.pos: 'alibi'"),
    ({"lm_head": "tied"}, "model.lm_head"),
    ({"token_dropout": True, "mask_id": None}, "needs model.mask_id"),
    ({"pad_id": 99, "vocab_size": 33}, "model.pad_id: 99 is outside the vocabulary"),
    ({"n_layer": 0}, "model.n_layer: must be a positive integer"),
])
def test_config_errors_are_clear(changes, message):
    with pytest.raises(ConfigError, match=message):
        ModelConfig(**changes)


def test_config_dict_round_trip_and_unknown_keys():
    cfg = from_name("llama-tiny", vocab_size=512)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="unknown model config key\\(s\\): colour, n_layers"):
        ModelConfig.from_dict({**cfg.to_dict(), "n_layers": 3, "colour": "red"})


def test_unknown_preset_suggests_the_close_one():
    with pytest.raises(FoundryError, match="unknown model preset 'esm2_t6_8m'. Did you mean 'esm2_t6_8M'"):
        from_name("esm2_t6_8m")


@pytest.mark.parametrize("name", list_presets())
def test_every_preset_builds_and_names_its_source(name):
    cfg = from_name(name)
    assert cfg.source and cfg.name == name
    with torch.device("meta"):
        model = Transformer(cfg)
    assert model.num_parameters() > 0


@pytest.mark.parametrize("name, layers, dim, heads", [
    ("esm2_t6_8M", 6, 320, 20), ("esm2_t12_35M", 12, 480, 20), ("esm2_t30_150M", 30, 640, 20),
    ("esm2_t33_650M", 33, 1280, 20), ("esm2_t36_3B", 36, 2560, 40), ("esm2_t48_15B", 48, 5120, 40),
])
def test_esm2_presets_have_fair_esm_parameter_counts(name, layers, dim, heads):
    with torch.device("meta"):
        ref = ESM2(num_layers=layers, embed_dim=dim, attention_heads=heads)
        ours = Transformer(from_name(name))
    ref_count = sum(p.numel() for n, p in ref.named_parameters() if not n.startswith("contact_head"))
    assert ours.num_parameters() == ref_count


@pytest.mark.parametrize("name, count", [
    ("gpt2", 124_439_808), ("gpt2-medium", 354_823_168), ("llama2-7b", 6_738_415_616),
    ("codellama-7b", 6_738_546_688), ("mistral-7b", 7_241_732_096),
])
def test_causal_presets_have_published_parameter_counts(name, count):
    with torch.device("meta"):
        assert Transformer(from_name(name)).num_parameters() == count


def test_flops_per_token():
    model = Transformer(from_name("gpt2-tiny"))
    cfg = model.config
    n = model.num_parameters(exclude_embeddings=True) + cfg.vocab_size * cfg.d_model  # tied output matmul
    assert model.flops_per_token(256) == 6 * n + 12 * cfg.n_layer * cfg.d_model * 256
    assert model.num_parameters() < model.num_parameters(exclude_embeddings=True) + 2 * cfg.vocab_size * cfg.d_model


# -- forward ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def esm_tiny():
    torch.manual_seed(0)
    return Transformer(from_name("esm2_tiny")).eval()


@pytest.fixture(scope="module")
def llama_tiny():
    torch.manual_seed(0)
    return Transformer(from_name("llama-tiny", vocab_size=300, pad_id=0)).eval()


def tokens_for(model, lengths, seed=0):
    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    rows = [torch.randint(4, min(cfg.vocab_size, 30), (n,), generator=g) for n in lengths]
    out = torch.full((len(rows), max(lengths)), cfg.pad_id)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def test_outputs_hidden_states_and_attention(esm_tiny):
    tokens = tokens_for(esm_tiny, [12, 9])
    out = esm_tiny(tokens, need_hidden=[0, 2, 4], need_attention=True)
    cfg = esm_tiny.config
    assert out.logits.shape == (2, 12, cfg.vocab_size)
    assert sorted(out.hidden_states) == [0, 2, 4]
    assert out.attentions.shape == (2, cfg.n_layer, cfg.n_head, 12, 12)
    # padded rows and columns are zero, real rows are distributions over real tokens
    assert torch.allclose(out.attentions[1, :, :, :9].sum(-1), torch.ones(cfg.n_layer, cfg.n_head, 9))
    assert out.attentions[1, ..., 9:].abs().max() == 0
    with pytest.raises(ValueError, match="outside 0..4"):
        esm_tiny(tokens, need_hidden=[5])


@pytest.mark.parametrize("fixture", ["esm_tiny", "llama_tiny"])
def test_padding_does_not_change_real_tokens(fixture, request):
    model = request.getfixturevalue(fixture)
    tokens = tokens_for(model, [14, 6])
    with torch.no_grad():
        batched = model(tokens).logits
        alone = model(tokens[1:, :6]).logits
    assert (batched[1, :6] - alone[0]).abs().max() <= TOL


@pytest.mark.parametrize("fixture", ["esm_tiny", "llama_tiny"])
def test_explicit_attention_path_equals_sdpa(fixture, request):
    model = request.getfixturevalue(fixture)
    tokens = tokens_for(model, [10, 7])
    with torch.no_grad():
        fast = model(tokens).logits
        explicit = model(tokens, need_attention=True).logits
    real = tokens != model.config.pad_id
    assert (fast - explicit)[real].abs().max() <= TOL


def test_causal_model_does_not_see_the_future(llama_tiny):
    tokens = tokens_for(llama_tiny, [10])
    changed = tokens.clone()
    changed[0, 7] = 5 if tokens[0, 7] != 5 else 6
    with torch.no_grad():
        a, b = llama_tiny(tokens).logits, llama_tiny(changed).logits
    assert (a[0, :7] - b[0, :7]).abs().max() == 0
    assert (a[0, 7:] - b[0, 7:]).abs().max() > 0


def test_packed_documents_with_padding_and_masks(esm_tiny):
    """Three documents in one row plus padding; token dropout counts <mask> per document."""
    cfg = esm_tiny.config
    docs = [tokens_for(esm_tiny, [n], seed=n)[0] for n in (7, 11, 5)]
    docs[1][3] = cfg.mask_id
    docs[1][4] = cfg.mask_id
    row = torch.cat(docs + [torch.full((4,), cfg.pad_id)])[None]
    doc_ids = torch.cat([torch.full((len(d),), i) for i, d in enumerate(docs)] + [torch.full((4,), 3)])[None]
    with torch.no_grad():
        packed = esm_tiny(row, document_ids=doc_ids).logits[0]
        start = 0
        for d in docs:
            alone = esm_tiny(d[None]).logits[0]
            assert (packed[start:start + len(d)] - alone).abs().max() <= TOL
            start += len(d)


def test_mask_helpers():
    assert attention_mask(None, None, True, 5, "cpu") == (None, True)
    assert attention_mask(torch.ones(2, 5, dtype=torch.bool), None, False, 5, "cpu") == (None, False)
    docs = torch.tensor([[0, 0, 1, 1, 1]])
    mask, causal = attention_mask(None, docs, True, 5, "cpu")
    assert not causal and mask.shape == (1, 1, 5, 5)
    assert mask[0, 0].int().tolist() == [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 1, 1, 0], [0, 0, 1, 1, 1]]
    assert position_ids(docs, 1, 5, "cpu").tolist() == [[0, 1, 0, 1, 2]]
    window, _ = attention_mask(None, None, True, 5, "cpu", sliding_window=2)
    assert window[0, 0, 4].int().tolist() == [0, 0, 0, 1, 1]
    # a row of pure padding attends to itself rather than producing NaN
    empty, _ = attention_mask(torch.tensor([[True, False]]), torch.tensor([[0, 1]]), False, 2, "cpu")
    assert empty[0, 0].int().tolist() == [[1, 0], [0, 1]]


def test_tiny_esm_learns_on_cpu():
    """A few optimizer steps on one batch lower the masked-LM loss (gradients reach tied weights)."""
    torch.manual_seed(0)
    model = Transformer(from_name("esm2_tiny"))
    tokens = tokens_for(model, [30, 30, 30, 30])
    inputs = tokens.clone()
    inputs[:, ::5] = model.config.mask_id
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        logits = model(inputs).logits
        loss = torch.nn.functional.cross_entropy(logits[:, ::5].reshape(-1, logits.shape[-1]), tokens[:, ::5].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]
    assert model.embed.weight.grad is not None
