"""Objectives: masking statistics and document-aware next-token labels."""

import torch

from foundry.objectives import IGNORE_INDEX, causal_labels, lm_loss, mask_tokens, unigram_log_probs

SPECIAL = [0, 1, 2]
MASK = 3
MASKABLE = list(range(4, 24))


def _mask(tokens, seed=0, **kw):
    return mask_tokens(tokens, special_ids=SPECIAL, maskable_ids=MASKABLE, mask_id=MASK, generator=torch.Generator().manual_seed(seed), **kw)


def test_mask_rates_follow_80_10_10():
    tokens = torch.randint(4, 24, (64, 512))
    tokens[:, 0] = 0  # <cls>
    tokens[:, -5:] = 1  # padding
    inputs, labels = _mask(tokens)
    selected = labels != IGNORE_INDEX
    rate = selected.float().sum() / (tokens >= 4).sum()
    assert abs(rate - 0.15) < 0.01
    assert not selected[:, 0].any() and not selected[:, -5:].any(), "special tokens are never selected"
    assert torch.equal(labels[selected], tokens[selected])
    masked = (inputs == MASK) & selected
    unchanged = (inputs == tokens) & selected
    assert abs(masked.sum() / selected.sum() - 0.8) < 0.02
    # unchanged = the 10% kept + random replacements that drew the same token (1/20 of 10%)
    assert abs(unchanged.sum() / selected.sum() - 0.105) < 0.02
    assert torch.equal(inputs[~selected], tokens[~selected])


def test_masking_is_a_function_of_the_seed():
    tokens = torch.randint(4, 24, (4, 100))
    a, b = _mask(tokens, seed=5), _mask(tokens, seed=5)
    c = _mask(tokens, seed=6)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


def test_at_least_one_target_even_for_short_rows():
    tokens = torch.tensor([[0, 5, 2]])
    for seed in range(20):
        _, labels = _mask(tokens, seed=seed)
        assert (labels != IGNORE_INDEX).sum() >= 1


def test_causal_labels_never_cross_documents_or_padding():
    tokens = torch.tensor([[10, 11, 12, 20, 21, 1, 1]])
    docs = torch.tensor([[1, 1, 1, 2, 2, 0, 0]])
    labels = causal_labels(tokens, docs, pad_id=1)
    assert labels.tolist() == [[11, 12, IGNORE_INDEX, 21, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX]]


def test_eos_is_predicted_even_when_it_doubles_as_padding():
    # GPT-2 style: <|endoftext|> (id 1 here) is both end of document and the pad token.
    tokens = torch.tensor([[10, 11, 1, 20, 1, 1]])
    docs = torch.tensor([[1, 1, 1, 2, 2, 0]])
    assert causal_labels(tokens, docs, pad_id=1).tolist() == [[11, 1, IGNORE_INDEX, 1, IGNORE_INDEX, IGNORE_INDEX]]


def test_lm_loss_matches_cross_entropy_on_labelled_positions():
    logits = torch.randn(2, 5, 7)
    labels = torch.tensor([[1, -100, 3, -100, -100], [-100, 6, -100, -100, 0]])
    loss, n = lm_loss(logits, labels)
    ref = torch.nn.functional.cross_entropy(logits.reshape(-1, 7), labels.reshape(-1), ignore_index=-100)
    assert n == 4 and torch.allclose(loss, ref)


def test_unigram_baseline_is_the_entropy_of_the_distribution():
    counts = torch.tensor([0, 300, 100, 600])
    targets = torch.tensor([1] * 3 + [2] * 1 + [3] * 6)
    p = (counts.double() + 1.0) / (counts.double() + 1.0).sum()
    expected = -(0.3 * p[1].log() + 0.1 * p[2].log() + 0.6 * p[3].log())
    assert abs(float(-unigram_log_probs(counts)[targets].mean()) - float(expected)) < 1e-9
