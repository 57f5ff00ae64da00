"""Fill-in-the-middle: documents are rearranged in PSM order without changing their length."""

from collections import Counter

import torch

from foundry.fim import apply_fim
from test_pretrain_cli import foundry

PRE, MID, SUF, BOS, EOS = 4, 5, 6, 1, 2


def _row():
    tokens = torch.tensor([[BOS, *range(10, 30), EOS, BOS, 40, 41, EOS, 0, 0]])
    docs = torch.tensor([[1] * 22 + [2] * 4 + [0, 0]])
    return tokens, docs


def _fim(tokens, docs, rate, seed=0):
    return apply_fim(tokens, docs, prefix_id=PRE, middle_id=MID, suffix_id=SUF, rate=rate,
                     generator=torch.Generator().manual_seed(seed), keep_ids=(BOS, EOS))


def test_psm_order_keeps_length_ends_and_content():
    tokens, docs = _row()
    for seed in range(20):
        out = _fim(tokens, docs, rate=1.0, seed=seed)
        doc = out[0, :22].tolist()
        assert doc[0] == BOS and doc[-1] == EOS and doc[1] == PRE
        assert doc.index(PRE) < doc.index(SUF) < doc.index(MID)
        body = Counter(t for t in doc if t not in (BOS, EOS, PRE, MID, SUF))
        assert sum(body.values()) == 20 - 3 and not body - Counter(range(10, 30)), "only original tokens, 3 trimmed"
        prefix = doc[2 : doc.index(SUF)]
        assert prefix == list(range(10, 10 + len(prefix))), "the prefix is the start of the document"
        assert out[0, 22:].tolist() == tokens[0, 22:].tolist(), "documents too short are left alone, padding too"


def test_cuts_at_the_very_end_keep_the_length():
    # Every pair of cut points, including a middle and suffix shorter than the three sentinels.
    tokens, docs = _row()
    for seed in range(300):
        out = _fim(tokens, docs, rate=1.0, seed=seed)
        assert out.shape == tokens.shape and out[0, 21] == EOS


def test_rate_zero_is_identity_and_the_generator_fixes_the_cuts():
    tokens, docs = _row()
    assert torch.equal(_fim(tokens, docs, rate=0.0), tokens)
    assert torch.equal(_fim(tokens, docs, 1.0, seed=3), _fim(tokens, docs, 1.0, seed=3))
    assert any(not torch.equal(_fim(tokens, docs, 1.0, seed=3), _fim(tokens, docs, 1.0, seed=s)) for s in range(4, 10))


def test_code_pretraining_uses_fim_by_default(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(30):
        (src / f"m{i}.py").write_text(f"def f{i}(x):\n    return x * {i} + {i * i}\n\n\nprint(f{i}(3))\n")
    out = tmp_path / "run"
    foundry("code", "pretrain", "--data", str(src), "--out", str(out), "--max-steps", "2", "--set", "tokenizer.vocab_size=300",
            "--set", "data.max_len=64", "--set", "data.batch_tokens=256", "--set", "data.valid_fraction=0.2", "--quiet")
    assert "fim_rate: 0.5" in (out / "config.yaml").read_text()


def test_a_tokenizer_without_sentinels_turns_fim_off_with_a_notice(capsys):
    from foundry.fim import fim_sentinels
    from modalities.code.tokenizer import train_code_tokenizer
    from modalities.text.bpe import BpeTokenizer

    code = ["def f(x):\n    return x + 1\n"] * 20
    assert fim_sentinels(BpeTokenizer.train(code, vocab_size=300)) is None
    err = capsys.readouterr().err
    assert "objective.fim_rate is not applied: the tokenizer has no fill-in-the-middle tokens" in err
    assert "fim_prefix, fim_middle, fim_suffix missing" in err
    assert fim_sentinels(train_code_tokenizer(code, vocab_size=300)) == {"prefix_id": 4, "middle_id": 5, "suffix_id": 6}
    assert capsys.readouterr().err == ""
