"""Attention backends (foundry/model/attention.py) equal the dense masked SDPA path, outputs and
gradients, on packed rows with padding, causal and bidirectional, GQA, sliding windows."""

from __future__ import annotations

import pytest
import torch

from foundry.model import Transformer, from_name
from foundry.model.attention import attend, choose
from foundry.model.masks import AttentionSpec, document_runs

TOL = 1e-5


def packed_ids(lengths_per_row: list[list[int]], length: int) -> torch.Tensor:
    """(B, T) document ids 1, 2, … per row from document lengths; the rest is padding (0)."""
    ids = torch.zeros(len(lengths_per_row), length, dtype=torch.long)
    for r, lengths in enumerate(lengths_per_row):
        at = 0
        for d, n in enumerate(lengths, start=1):
            ids[r, at : at + n] = d
            at += n
    return ids


ROWS = [[5, 9, 3, 9], [26], [1, 7, 7, 7, 2], [12, 12]]  # padding after rows 0, 2, 3; one full row


def qkv(b, t, h, k, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, t, n, d, generator=g, dtype=torch.float32).requires_grad_() for n in (h, k, k)]


def run(impl, q, k, v, ids, valid, causal, window=None, slack=None):
    spec = AttentionSpec(valid, ids, causal, ids.shape[1], "cpu", window, impl)
    if slack is not None:
        spec.buckets(slack)  # fills the cache with this bucketing
    y = attend(q, k, v, spec)
    grads = torch.autograd.grad((y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum(), (q, k, v))
    return y, grads


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("heads, kv_heads", [(4, 4), (4, 2), (6, 1)])
@pytest.mark.parametrize("slack", [0.0, 0.125, 1.0])  # exact-length groups … one bucket for all
def test_documents_equal_dense_outputs_and_gradients(causal, heads, kv_heads, slack):
    ids = packed_ids(ROWS, 26)
    valid = ids != 0
    q, k, v = qkv(len(ROWS), 26, heads, kv_heads)
    dense, dense_grads = run("sdpa", q, k, v, ids, valid, causal)
    fast, fast_grads = run("documents", q, k, v, ids, valid, causal, slack=slack)
    assert (fast - dense).abs().max() <= TOL  # padding positions included: they see themselves
    for a, b in zip(fast_grads, dense_grads):
        assert (a - b).abs().max() <= TOL


@pytest.mark.parametrize("causal", [False, True])
def test_sliding_window_and_padding_inside_a_document(causal):
    ids = packed_ids(ROWS, 26)
    valid = ids != 0
    valid[2, 3] = False  # a padded key inside document 2 of row 2
    valid[2, 1] = False  # and the first token of a document (causal: it sees nothing but itself)
    q, k, v = qkv(len(ROWS), 26, 4, 2, seed=1)
    dense, dense_grads = run("sdpa", q, k, v, ids, valid, causal, window=4)
    fast, fast_grads = run("documents", q, k, v, ids, valid, causal, window=4)
    assert (fast - dense).abs().max() <= TOL
    for a, b in zip(fast_grads, dense_grads):
        assert (a - b).abs().max() <= TOL


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("causal", [False, True])
def test_flex_forward_equals_dense_on_cpu(causal):
    ids = packed_ids(ROWS, 26)
    valid = ids != 0
    q, k, v = (x.detach() for x in qkv(len(ROWS), 26, 4, 2, seed=2))
    with torch.no_grad():
        dense = attend(q, k, v, AttentionSpec(valid, ids, causal, 26, "cpu", None, "sdpa"))
        flex = attend(q, k, v, AttentionSpec(valid, ids, causal, 26, "cpu", None, "flex"))
    assert (flex - dense).abs().max() <= TOL


def test_automatic_choice_and_refusals():
    ids = packed_ids(ROWS, 26)
    q = torch.zeros(4, 26, 4, 8)
    assert choose(AttentionSpec(None, None, False, 26, "cpu"), q, 0.0) == "sdpa"
    assert choose(AttentionSpec(ids != 0, ids, False, 26, "cpu"), q, 0.0) == "documents"
    assert choose(AttentionSpec(ids != 0, ids, False, 26, "cpu", impl="documents"), q, 0.0) == "documents"
    assert choose(AttentionSpec(ids != 0, ids, False, 26, "cpu", impl="sdpa"), q, 0.0) == "sdpa"
    with pytest.raises(ValueError, match="'varlen' needs"):
        choose(AttentionSpec(ids != 0, ids, False, 26, "cpu", impl="varlen"), q, 0.0)
    with pytest.raises(ValueError, match="no backward on CPU"):
        choose(AttentionSpec(ids != 0, ids, False, 26, "cpu", impl="flex"), q.requires_grad_(), 0.0)
    # a document id that recurs apart in a row: runs cannot express it, the dense mask can
    split = torch.tensor([[1, 1, 2, 2, 1, 0]])
    assert document_runs(split, None) is None
    assert choose(AttentionSpec(None, split, False, 6, "cpu"), torch.zeros(1, 6, 4, 8), 0.0) == "sdpa"


def test_runs_cover_rows_and_mark_padding():
    ids = packed_ids([[2, 3], [5]], 6)
    runs = document_runs(ids, ids != 0)
    assert runs.starts.tolist() == [0, 2, 5, 6, 11]  # rows break runs: row 1 starts at 6
    assert runs.lengths.tolist() == [2, 3, 1, 5, 1]
    assert runs.attend.tolist() == [True, True, False, True, False]


def _packed_batch(model, seed=0):
    cfg = model.config
    ids = packed_ids(ROWS, 26)
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(4, 24, ids.shape, generator=g)
    tokens[ids == 0] = cfg.pad_id if cfg.pad_id is not None else 0
    if cfg.mask_id is not None:
        tokens[:, 1::7] = cfg.mask_id  # (a document of only <mask> would divide by zero in token dropout)
    return tokens, ids


@pytest.mark.parametrize("name", ["esm2_tiny", "llama-tiny"])
def test_model_with_per_document_attention_equals_dense(name):
    """The whole trunk, forward and backward, on packed rows: documents == sdpa."""
    torch.manual_seed(0)
    overrides = {"vocab_size": 33, "pad_id": 1, "mask_id": 32} if name.startswith("esm") else {"vocab_size": 64, "pad_id": 0}
    dense = Transformer(from_name(name, attn_impl="sdpa", **overrides))
    fast = Transformer(from_name(name, attn_impl="auto", **overrides))  # auto = documents on CPU
    fast.load_state_dict(dense.state_dict())
    tokens, ids = _packed_batch(dense)
    real = ids != 0
    outs = []
    for model in (dense, fast):
        logits = model(tokens, document_ids=ids).logits
        logits[real].square().mean().backward()
        outs.append((logits, {n: p.grad for n, p in model.named_parameters()}))
    assert (outs[0][0] - outs[1][0])[real].abs().max() <= TOL
    for n, grad in outs[0][1].items():
        assert (grad - outs[1][1][n]).abs().max() <= TOL, n


def test_contact_path_keeps_explicit_weights():
    torch.manual_seed(0)
    model = Transformer(from_name("esm2_tiny", vocab_size=33, pad_id=1, mask_id=32))
    tokens, ids = _packed_batch(model)
    with torch.no_grad():
        fast = model(tokens, document_ids=ids)
        explicit = model(tokens, document_ids=ids, need_attention=True)
    assert explicit.attentions is not None
    real = ids != 0
    assert (fast.logits - explicit.logits)[real].abs().max() <= TOL
    # attention never crosses a document in the materialised maps either
    cross = (ids[:, :, None] != ids[:, None, :])[:, None, None]
    assert explicit.attentions.masked_select(cross.expand_as(explicit.attentions)).abs().max() == 0
