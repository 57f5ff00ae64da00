"""Code BPE (modalities.code): byte-exact round trip over the whole Python standard library,
fill-in-the-middle specials, the code plugin."""

import sysconfig
from pathlib import Path

import pytest

from foundry.plugins import PluginManager
from foundry.readers import Document, read_documents
from modalities.code import plugin as code_plugin
from modalities.code.readers import SOURCE_READER
from modalities.code.tokenizer import FIM_TOKENS, train_code_tokenizer
from modalities.text.bpe import BpeTokenizer
from modalities.text.sampling import sample_for_training

STDLIB = Path(sysconfig.get_paths()["stdlib"])


@pytest.fixture(scope="module")
def stdlib_docs():
    docs = [d for d in read_documents([STDLIB], [SOURCE_READER]) if d.id.endswith(".py")]
    assert len(docs) > 500  # ~730 files, ~12 MB on CPython 3.11 without the test packages
    return docs


@pytest.fixture(scope="module")
def tok(stdlib_docs):
    return train_code_tokenizer(stdlib_docs, vocab_size=8192, sample_bytes=3_000_000)


def test_every_stdlib_file_round_trips_byte_for_byte(tok, stdlib_docs):
    originals = [(STDLIB / d.id).read_bytes() for d in stdlib_docs]  # ids are relative to the stdlib folder
    encoded = tok.encode_batch([d.text for d in stdlib_docs])
    decoded = tok.decode_batch(encoded)
    bad = [d.id for d, raw, text in zip(stdlib_docs, originals, decoded) if text.encode("utf-8") != raw]
    assert not bad, f"{len(bad)} files do not round-trip, e.g. {bad[:3]}"
    assert all(ids[0] == tok.bos_id and ids[-1] == tok.eos_id for ids in encoded)
    # compression sanity: a code vocabulary should need well under one token per 2.5 bytes
    assert sum(map(len, originals)) / sum(len(ids) for ids in encoded) > 2.5


@pytest.mark.parametrize(
    "source",
    [
        "def f(x):\r\n\tif x:\r\n\t\treturn 1\r\n",  # CRLF and tabs (absent from the stdlib)
        "class A:\n        deep = '   '  \n\n\n\tmixed\t \t\n",
        "\ufeff# BOM kept\nπ = 3.14159  # ünïcödé, 日本語, 🙂\n",
        "s = '<|fim_prefix|><|fim_middle|><|fim_suffix|><|file_sep|><|eos|>'\n",
        "no newline at end\x0c\x0b\r",
        "",
    ],
)
def test_whitespace_and_unicode_are_exact(tok, source):
    assert tok.decode(tok.encode(source)) == source


def test_indentation_runs_are_tokens(tok):
    pieces = [tok.id_to_token(int(i)) for i in tok.encode("    def f(self):\n        return self\n", add_special_tokens=False)]
    assert "ĠĠĠ" in pieces or "ĠĠĠĠĠĠĠ" in pieces  # indentation is its own token, not glued to words
    assert "Ġreturn" in pieces and "Ġself" in pieces


def test_fim_and_special_ids(tok, tmp_path):
    assert tok.fim_ids == {"fim_prefix": 4, "fim_middle": 5, "fim_suffix": 6, "file_sep": 7}
    assert [tok.id_to_token(i) for i in range(4, 8)] == list(FIM_TOKENS)
    assert tuple(tok.special_ids) == tuple(range(8)) and 4 not in tok.maskable_ids
    ids = tok.encode("x = '<|fim_middle|>'", add_special_tokens=False)
    assert not set(ids.tolist()) & set(tok.special_ids)  # literal sentinel strings stay text
    tok.save(tmp_path / "tok")
    loaded = BpeTokenizer.load(tmp_path / "tok")  # kind "bpe": the code behaviour lives in tokenizer.json
    assert loaded.fingerprint() == tok.fingerprint() and loaded.fim_ids == tok.fim_ids
    assert loaded.encode("\tx\r\n").tolist() == tok.encode("\tx\r\n").tolist()


def test_sample_is_bounded_and_order_independent():
    docs = [Document(id=f"f{i}.py", text=f"x{i} = {i}\n" * (i + 1)) for i in range(200)]
    sample = sample_for_training(docs, max_bytes=5_000)
    assert 0 < sum(map(len, sample)) <= 5_000
    assert sample_for_training(list(reversed(docs)), max_bytes=5_000) == sample
    assert sample_for_training(docs, max_bytes=10**9) != sample  # everything fits: all documents
    assert len(sample_for_training(docs, max_bytes=10**9)) == 200


def test_code_plugin(tmp_path):
    manager = PluginManager()
    assert manager.register_plugin(code_plugin, "code") is not None
    assert "bpe" not in manager.tokenizers  # the text plugin owns the "bpe" kind
    code = manager.modality("code")
    assert code.objective == "fim" and code.readers == ("source",) and code.default_preset == "llama-tiny"
    assert code.default_data() == [STDLIB] and code.config_defaults["data.max_len"] == 512
    assert manager.readers.get("source").skip_dirs
    docs = [Document(id="a.py", text="def f(x):\n    return x\n" * 200)]
    built = code.build_tokenizer(docs, {"path": None, "vocab_size": 400})
    assert built.vocab_size <= 400 and built.fim_ids["file_sep"] == 7
    built.save(tmp_path / "t")
    assert code.build_tokenizer([], {"path": str(tmp_path / "t")}).fingerprint() == built.fingerprint()


def test_sample_is_a_prefix_of_the_hash_ranking():
    import random

    docs = [Document(id=f"d{i}", text="z" * random.Random(i).randint(1, 400)) for i in range(300)]
    reference = sample_for_training(docs, max_bytes=8_000)
    for seed in range(5):
        shuffled = docs[:]
        random.Random(seed).shuffle(shuffled)
        assert sample_for_training(shuffled, max_bytes=8_000) == reference


def test_code_train_tokenizer_command(tmp_path, monkeypatch):
    import click
    from click.testing import CliRunner

    import foundry.plugins
    from modalities.text import plugin as text_plugin

    manager = PluginManager()
    manager.register_plugin(text_plugin, "text")
    manager.register_plugin(code_plugin, "code")
    monkeypatch.setattr(foundry.plugins, "_manager", manager)

    @click.group()
    def cli():
        pass

    manager.add_commands(cli)
    tree = tmp_path / "src"
    tree.mkdir()
    for name in ("json", "csv", "ast"):
        (tree / f"{name}.py").write_bytes((STDLIB / f"{name}.py" if (STDLIB / f"{name}.py").exists() else STDLIB / name / "__init__.py").read_bytes())
    result = CliRunner().invoke(cli, ["code", "train-tokenizer", str(tree), "-o", str(tmp_path / "tok"), "--vocab-size", "500"])
    assert result.exit_code == 0, result.output
    tok = BpeTokenizer.load(tmp_path / "tok")
    assert tok.vocab_size == 500 and tok.fim_ids["fim_prefix"] == 4
