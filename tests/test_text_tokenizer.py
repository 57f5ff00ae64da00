"""Byte-level BPE (modalities.text.bpe): round trips, save/load, Hugging Face interchange, plugin."""

import json

import numpy as np
import pytest
import transformers
from click.testing import CliRunner
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, processors

import foundry.plugins
from foundry.errors import CheckpointError, ConfigError, DataError
from foundry.plugins import PluginManager
from foundry.readers import Document
from foundry.tokenizer import Tokenizer as TokenizerProtocol
from modalities.text import plugin as text_plugin
from modalities.text.bpe import BpeTokenizer
from modalities.text.plugin import BUNDLED_TEXT, build_tokenizer

SHAKESPEARE = BUNDLED_TEXT.read_text(encoding="utf-8")

TRICKY = [
    "",
    " ",
    "First Citizen:\nBefore we proceed any further, hear me speak.",
    "  leading and trailing spaces  ",
    "tabs\tand\r\nCRLF\r\nand lone \r carriage returns\n\n\n",
    "héllo wörld — ünïcödé, 日本語のテキスト, emoji 🙂👍🏽, combining e\u0301, rtl עברית",
    "zero\u200bwidth and \ufeffBOM and \x0c form feed and \x7f DEL",
    "special strings <|bos|> <|eos|> <|pad|> <|mask|> <|endoftext|> stay text",
    "numbers 1234567890 3.14159 -42 1e-9",
    "".join(chr(c) for c in range(1, 0x800) if not 0xD800 <= c < 0xE000),
]


@pytest.fixture(scope="module")
def tok():
    return BpeTokenizer.train(SHAKESPEARE.split("\n\n"), vocab_size=4096)


def test_protocol_and_special_ids(tok):
    assert isinstance(tok, TokenizerProtocol)
    assert tok.kind == "bpe" and tok.vocab_size == 4096
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.mask_id, tok.unk_id) == (0, 1, 2, 3, None)
    assert tuple(tok.special_ids) == (0, 1, 2, 3)
    assert tuple(tok.maskable_ids) == tuple(range(4, 4096))
    assert [tok.id_to_token(i) for i in range(4)] == ["<|pad|>", "<|bos|>", "<|eos|>", "<|mask|>"]


def test_golden_tokens_for_frequent_words(tok):
    ids = tok.encode("First Citizen:\nYou are all resolved", add_special_tokens=False)
    assert [tok.id_to_token(int(i)) for i in ids] == ["First", "ĠCitizen", ":", "Ċ", "You", "Ġare", "Ġall", "Ġresol", "ved"]


@pytest.mark.parametrize("text", TRICKY)
def test_round_trip_is_exact(tok, text):
    ids = tok.encode(text)
    assert ids.dtype == np.int64 and ids.ndim == 1
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
    assert not set(ids[1:-1].tolist()) & set(tok.special_ids), "special strings in text must not become special ids"
    assert tok.decode(ids) == text
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text


def test_encode_batch_matches_encode_and_specials_are_optional(tok):
    batch = tok.encode_batch(TRICKY)
    assert [b.tolist() for b in batch] == [tok.encode(t).tolist() for t in TRICKY]
    bare = tok.encode_batch(TRICKY, add_special_tokens=False)
    assert [b.tolist() for b in bare] == [b.tolist()[1:-1] for b in batch]
    assert tok.decode(batch[2], skip_special_tokens=False) == "<|bos|>" + TRICKY[2] + "<|eos|>"
    assert tok.decode_batch(batch) == TRICKY


def test_every_byte_is_encodable_without_unknowns(tok):
    text = bytes(range(256)).decode("latin-1")  # all code points 0..255, i.e. many 2-byte sequences
    assert tok.decode(tok.encode(text)) == text


def test_training_is_deterministic_and_vocab_size_matters(tok):
    again = BpeTokenizer.train(SHAKESPEARE.split("\n\n"), vocab_size=4096)
    assert again.fingerprint() == tok.fingerprint()
    smaller = BpeTokenizer.train(SHAKESPEARE.split("\n\n"), vocab_size=1000)
    assert smaller.vocab_size == 1000 and smaller.fingerprint() != tok.fingerprint()


def test_train_accepts_documents_and_extra_specials():
    docs = [Document(id=f"d{i}", text=t) for i, t in enumerate(SHAKESPEARE[:50_000].split("\n\n"))]
    tok = BpeTokenizer.train(docs, 600, extra_special_tokens=("<|sep|>",))
    assert tok.token_to_id("<|sep|>") == 4 and 4 in tok.special_ids and 4 not in tok.maskable_ids


def test_bad_training_input():
    with pytest.raises(ConfigError, match="at least 260"):
        BpeTokenizer.train(["abc"], 100)
    with pytest.raises(DataError, match="no text"):
        BpeTokenizer.train(["", ""], 1000)


def test_save_load_fingerprint(tok, tmp_path):
    tok.save(tmp_path / "t")
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == ["foundry_tokenizer.json", "tokenizer.json"]
    meta = json.loads((tmp_path / "t" / "foundry_tokenizer.json").read_text())
    assert meta["kind"] == "bpe" and meta["special_tokens"]["mask"] == "<|mask|>"
    loaded = BpeTokenizer.load(tmp_path / "t")
    assert loaded.fingerprint() == tok.fingerprint()
    assert [x.tolist() for x in loaded.encode_batch(TRICKY)] == [x.tolist() for x in tok.encode_batch(TRICKY)]
    # the saved file is itself a plain tokenizers file that encodes the same
    plain = Tokenizer.from_file(str(tmp_path / "t" / "tokenizer.json"))
    assert plain.encode(TRICKY[2]).ids == tok.encode(TRICKY[2]).tolist()
    loaded.save(tmp_path / "again")
    assert (tmp_path / "again" / "tokenizer.json").read_bytes() == (tmp_path / "t" / "tokenizer.json").read_bytes()


def test_load_errors_name_the_path(tmp_path):
    with pytest.raises(CheckpointError, match="no such tokenizer directory"):
        BpeTokenizer.load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="empty: no tokenizer found"):
        BpeTokenizer.load(tmp_path / "empty")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "tokenizer.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="broken/tokenizer.json: not a valid tokenizers file"):
        BpeTokenizer.load(tmp_path / "broken")
    (tmp_path / "sp").mkdir()
    (tmp_path / "sp" / "tokenizer.model").write_bytes(b"\x00")
    with pytest.raises(CheckpointError, match="SentencePiece"):
        BpeTokenizer.load(tmp_path / "sp")


# -- Hugging Face interchange --------------------------------------------------------------------


def test_save_hf_loads_in_transformers_with_identical_ids(tok, tmp_path):
    tok.save_hf(tmp_path / "hf")
    auto = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "hf" / "tokenizer.json"))
    for text in TRICKY:
        # The export is a prompt tokenizer: bos where foundry puts it, no eos appended.
        assert auto(text)["input_ids"] == tok.encode_prompt(text).tolist()
        assert auto.decode(tok.encode(text), skip_special_tokens=True) == text
        if "<|" not in text:  # without tokenizer_config.json, transformers splits special strings out
            assert auto(text)["input_ids"] == fast(text)["input_ids"] == tok.encode(text).tolist()[:-1]
    assert (auto.pad_token, auto.bos_token, auto.eos_token, auto.mask_token) == ("<|pad|>", "<|bos|>", "<|eos|>", "<|mask|>")
    assert auto.pad_token_id == tok.pad_id and auto.mask_token_id == tok.mask_id
    assert BpeTokenizer.load(tmp_path / "hf").fingerprint() == tok.fingerprint()
    auto.save_pretrained(tmp_path / "resaved")  # a transformers-written dir reads back the same
    assert BpeTokenizer.from_hf(tmp_path / "resaved").encode(TRICKY[3]).tolist() == tok.encode(TRICKY[3]).tolist()


def _gpt2_vocab_and_merges(tok):
    model = json.loads(tok.backend.to_str())["model"]
    vocab = {t: i for t, i in model["vocab"].items() if not t.startswith("<|")}
    vocab = {t: n for n, t in enumerate(sorted(vocab, key=vocab.get))}
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    return {**vocab, "<|endoftext|>": len(vocab)}, merges


def test_from_hf_gpt2_tokenizer_json_and_vocab_merges(tmp_path):
    base = BpeTokenizer.train(SHAKESPEARE[:100_000].split("\n\n"), 700)
    vocab, merges = _gpt2_vocab_and_merges(base)
    # (1) the files transformers writes today
    gpt2 = transformers.GPT2TokenizerFast(tokenizer_object=_byte_level(vocab, merges), bos_token="<|endoftext|>",
                                          eos_token="<|endoftext|>", unk_token="<|endoftext|>")
    gpt2.save_pretrained(tmp_path / "gpt2")
    tok = BpeTokenizer.from_hf(tmp_path / "gpt2")
    eot = vocab["<|endoftext|>"]
    assert (tok.bos_id, tok.eos_id, tok.unk_id, tok.pad_id, tok.mask_id) == (eot, eot, eot, eot, None)
    assert tok.add_bos is False and tok.add_eos is True
    for text in TRICKY[1:5]:
        assert tok.encode(text).tolist() == gpt2(text)["input_ids"] + [eot]  # GPT-2 adds no bos; we end with eos
        assert tok.decode(tok.encode(text)) == text
    # (2) the original GPT-2 layout: vocab.json + merges.txt only
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "old" / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    old = BpeTokenizer.from_hf(tmp_path / "old")
    assert (old.bos_id, old.eos_id, old.pad_id) == (eot, eot, eot)
    assert [x.tolist() for x in old.encode_batch(TRICKY)] == [x.tolist() for x in tok.encode_batch(TRICKY)]
    # (3) exported again, transformers agrees with foundry's prompt encoding (no eos added)
    tok.save_hf(tmp_path / "export")
    again = transformers.AutoTokenizer.from_pretrained(tmp_path / "export")
    assert again(TRICKY[2])["input_ids"] == gpt2(TRICKY[2])["input_ids"] == tok.encode_prompt(TRICKY[2]).tolist()


def _byte_level(vocab, merges):
    from tokenizers import pre_tokenizers

    tk = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.post_processor = processors.ByteLevel(trim_offsets=False)
    tk.add_special_tokens([AddedToken("<|endoftext|>", special=True, normalized=False)])
    return tk


def _llama_style_dir(path):
    """A tiny tokenizer laid out like Llama-2's: SentencePiece-BPE with byte fallback, <s> added in
    front by the post-processor, no pad token (files as transformers writes them)."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"<0x{b:02X}>": 3 + b for b in range(256)}}
    for piece in ["▁", "e", "h", "t", "o", "a", "n", "d", "r", "s", "l", "▁t", "he", "▁the", "▁a", "an", "nd", "▁and"]:
        vocab.setdefault(piece, len(vocab))
    merges = [("▁", "t"), ("h", "e"), ("▁t", "he"), ("▁", "a"), ("a", "n"), ("n", "d"), ("▁a", "nd")]
    tk = Tokenizer(models.BPE(vocab=vocab, merges=merges, byte_fallback=True, fuse_unk=True, unk_token="<unk>"))
    tk.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tk.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in ("<unk>", "<s>", "</s>")])
    path.mkdir()
    tk.save(str(path / "tokenizer.json"))
    config = {"tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False, "bos_token": "<s>",
              "eos_token": "</s>", "unk_token": "<unk>", "pad_token": None, "legacy": False,
              "clean_up_tokenization_spaces": False}
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    (path / "special_tokens_map.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}))


def test_from_hf_llama_style_keeps_its_ids_and_pads_with_unk(tmp_path):
    _llama_style_dir(tmp_path / "llama")
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path / "llama")
    tok = BpeTokenizer.from_hf(tmp_path / "llama")
    assert (tok.unk_id, tok.bos_id, tok.eos_id, tok.pad_id, tok.mask_id) == (0, 1, 2, 0, None)
    assert tok.add_bos and tok.add_eos
    for text in ["the hand and the heart", "Hello, world! ünï 🙂"]:
        assert tok.encode(text).tolist() == hf(text)["input_ids"] + [2]
        assert tok.decode(tok.encode(text)) == hf.decode(hf(text)["input_ids"], skip_special_tokens=True)
    tok.save(tmp_path / "saved")
    assert BpeTokenizer.load(tmp_path / "saved").fingerprint() == tok.fingerprint()


# -- plugin and CLI --------------------------------------------------------------------------


@pytest.fixture
def manager(monkeypatch):
    manager = PluginManager()
    assert manager.register_plugin(text_plugin, "text") is not None
    monkeypatch.setattr(foundry.plugins, "_manager", manager)
    return manager


def test_plugin_registers_kind_readers_and_modality(manager, tmp_path):
    assert manager.tokenizer_class("bpe") is BpeTokenizer
    assert manager.readers.names() == ["jsonl", "text"]
    text = manager.modality("text")
    assert text.objective == "clm" and text.default_preset == "llama-tiny" and text.readers == ("text", "jsonl")
    assert text.default_data() == [BUNDLED_TEXT] and BUNDLED_TEXT.stat().st_size == 1115394
    assert text.config_defaults["data.max_len"] == 256
    docs = [Document(id=str(i), text=t) for i, t in enumerate(SHAKESPEARE[:200_000].split("\n\n"))]
    built = build_tokenizer(docs, {"path": None, "vocab_size": 777})
    assert built.vocab_size == 777
    built.save(tmp_path / "tok")
    loaded = build_tokenizer([], {"path": str(tmp_path / "tok"), "vocab_size": 4096})
    assert loaded.fingerprint() == built.fingerprint()
    assert foundry.plugins.load_tokenizer("bpe", tmp_path / "tok").fingerprint() == built.fingerprint()


def test_train_tokenizer_command(manager, tmp_path):
    import click

    @click.group()
    def cli():
        pass

    manager.add_commands(cli)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text(SHAKESPEARE[:60_000])
    (corpus / "b.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in SHAKESPEARE[60_000:120_000].split("\n\n")))
    result = CliRunner().invoke(cli, ["text", "train-tokenizer", str(corpus), "-o", str(tmp_path / "tok"), "--vocab-size", "800"])
    assert result.exit_code == 0, result.output
    assert "vocab size 800" in result.output and "tokenizer.json" in result.output
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tok" / "tokenizer.json"))
    assert fast.vocab_size + len(fast.added_tokens_decoder) >= 800
    assert BpeTokenizer.load(tmp_path / "tok").vocab_size == 800


def test_pickle_keeps_behaviour(tok):
    import pickle

    clone = pickle.loads(pickle.dumps(tok))
    assert clone.fingerprint() == tok.fingerprint()
    assert [x.tolist() for x in clone.encode_batch(TRICKY)] == [x.tolist() for x in tok.encode_batch(TRICKY)]
