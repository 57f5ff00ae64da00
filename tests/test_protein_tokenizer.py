"""The ESM protein tokenizer: golden ids against fair-esm, input rules, persistence, HF export."""

from __future__ import annotations

import gzip
import json
import re
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
from Bio.SeqIO.FastaIO import SimpleFastaParser

from foundry.errors import CheckpointError, DataError
from foundry.tokenizer import Tokenizer, pad_batch
from modalities.protein import alphabet as alphabet_mod
from modalities.protein.alphabet import EsmTokenizer
from modalities.protein.plugin import BUNDLED_FASTA

esm = pytest.importorskip("esm")

DATA = Path(__file__).parent / "data" / "protein"
ESM_FASTAS = sorted(DATA.glob("*.fasta"))


@pytest.fixture(scope="module")
def tok() -> EsmTokenizer:
    return EsmTokenizer()


@pytest.fixture(scope="module")
def fair():
    alphabet = esm.Alphabet.from_architecture("ESM-1b")
    return alphabet, alphabet.get_batch_converter()


def _records(path: Path, limit: int | None = None) -> list[tuple[str, str]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as handle:
        return list(islice(SimpleFastaParser(handle), limit))


# -- vocabulary -----------------------------------------------------------------------------


def test_vocabulary_is_fair_esm_esm1b(tok, fair):
    alphabet, _ = fair
    assert list(tok.tokens) == alphabet.all_toks
    assert tok.vocab_size == len(alphabet) == 33
    assert (tok.bos_id, tok.pad_id, tok.eos_id, tok.unk_id, tok.mask_id) == (
        alphabet.cls_idx, alphabet.padding_idx, alphabet.eos_idx, alphabet.unk_idx, alphabet.mask_idx)
    assert (tok.bos_id, tok.pad_id, tok.eos_id, tok.unk_id, tok.mask_id) == (0, 1, 2, 3, 32)
    assert alphabet.prepend_bos and alphabet.append_eos  # the layout we reproduce


def test_is_a_foundry_tokenizer(tok):
    assert isinstance(tok, Tokenizer)
    assert tok.kind == "esm"


def test_special_and_maskable_ids(tok):
    assert [tok.tokens[i] for i in tok.special_ids] == ["<cls>", "<pad>", "<eos>", "<unk>", "<null_1>", "<mask>"]
    assert "".join(tok.tokens[i] for i in tok.maskable_ids) == "LAGVSERTIDPKQNFYMHWC"
    assert not set(tok.special_ids) & set(tok.maskable_ids)


# -- golden ids against fair-esm's BatchConverter -------------------------------------------


def _assert_same_as_batch_converter(tok, fair, records):
    _, convert = fair
    _, _, expected = convert(records)
    ours = pad_batch(tok.encode_batch([seq for _, seq in records]), tok.pad_id)
    assert ours.dtype == np.int64
    np.testing.assert_array_equal(ours, expected.numpy())


@pytest.mark.parametrize("path", ESM_FASTAS, ids=lambda p: p.name)
def test_golden_esm_example_files(tok, fair, path):
    records = _records(path)
    assert records
    _assert_same_as_batch_converter(tok, fair, records)
    alphabet, _ = fair
    for _, seq in records:  # single-sequence path too
        np.testing.assert_array_equal(tok.encode(seq), [0, *alphabet.encode(seq), 2])


def test_golden_bundled_corpus_first_2000(tok, fair):
    records = _records(BUNDLED_FASTA, 2000)
    assert len(records) == 2000
    for start in range(0, len(records), 250):  # several batches: several padding layouts
        _assert_same_as_batch_converter(tok, fair, records[start : start + 250])


@pytest.mark.parametrize("text", [
    "AB<mask>CD", "<mask>MKV", "MKV<mask>", "MK<cls>V<eos>", "<null_1>A<unk>", "M K\nV\tL",
    "A <mask> C", "<mask><mask>", "XBUZO.-", "",
])
def test_inline_special_tokens_and_whitespace_match_fair_esm(tok, fair, text):
    alphabet, _ = fair
    np.testing.assert_array_equal(tok.encode(text, add_special_tokens=False), alphabet.encode(text))


# -- input rules ----------------------------------------------------------------------------


def test_lowercase_is_uppercased(tok):
    np.testing.assert_array_equal(tok.encode("mkvlaxbuzo"), tok.encode("MKVLAXBUZO"))


def test_whitespace_is_removed(tok):
    np.testing.assert_array_equal(tok.encode(" MKV\nLA\r\n G\t"), tok.encode("MKVLAG"))


def test_trailing_stop_is_dropped(tok):
    np.testing.assert_array_equal(tok.encode("MKV*"), tok.encode("MKV"))
    np.testing.assert_array_equal(tok.encode("MKV*\n"), tok.encode("MKV"))


@pytest.mark.parametrize("text, position", [("MK*V", 3), ("MKV**", 4), ("*MKV", 1)])
def test_internal_stop_is_an_error(tok, text, position):
    with pytest.raises(DataError, match=rf"stop codon '\*' at position {position}\b") as info:
        tok.encode(text)
    assert info.value.position == position


@pytest.mark.parametrize("text, char, position", [
    ("MKJV", "J", 3), ("MKjV", "j", 3), ("MK1V", "1", 3), ("MK>V", ">", 3), ("MKVé", "é", 4),
    ("MK<V", "<", 3), ("M K J", "J", 5), ("AB<mask>CJ", "J", 10),
])
def test_characters_outside_the_alphabet_are_errors(tok, text, char, position):
    with pytest.raises(DataError) as info:
        tok.encode(text)
    message = str(info.value)
    assert f"character {char!r} at position {position} " in message
    assert "\n" not in message
    assert info.value.position == position


def test_unknown_special_token_is_an_error(tok):
    with pytest.raises(DataError, match=r"unknown special token '<MASK>' at position 3 .*<mask>"):
        tok.encode("MK<MASK>V")


def test_encode_batch_equals_encode(tok):
    texts = ["MKV", "", "mkv*", "A B\nC", "AB<mask>C", "LAGV" * 50, "X", "<cls>"]
    for special in (True, False):
        batch = tok.encode_batch(texts, add_special_tokens=special)
        assert len(batch) == len(texts)
        for text, ids in zip(texts, batch):
            assert ids.dtype == np.int64
            np.testing.assert_array_equal(ids, tok.encode(text, add_special_tokens=special))
    assert tok.encode_batch([]) == []


def test_encode_batch_error_names_the_item(tok):
    with pytest.raises(DataError, match=r"sequence 2 of the batch: character 'J' at position 2 ") as info:
        tok.encode_batch(["MKV", "AAA", "AJ", "BJ"])
    assert (info.value.index, info.value.position) == (2, 2)
    with pytest.raises(DataError, match=r"sequence 1 of the batch: character 'é'"):
        tok.encode_batch(["MKV", "Aé"])
    for control in ("\x01", "\x02", "\x00"):  # the batch path's marker bytes are not accepted
        for special in (True, False):
            expected = rf"sequence 1 of the batch: character {re.escape(repr(control))} at position 2 "
            with pytest.raises(DataError, match=expected):
                tok.encode_batch(["MKV", f"A{control}C"], add_special_tokens=special)


def test_decode(tok):
    ids = tok.encode("MKV<mask>LA")
    assert tok.decode(ids) == "MKVLA"
    assert tok.decode(ids, skip_special_tokens=False) == "<cls>MKV<mask>LA<eos>"
    assert tok.decode(tok.encode("mkv*")) == "MKV"
    with pytest.raises(ValueError, match="outside"):
        tok.decode([0, 33])


# -- persistence ----------------------------------------------------------------------------


def test_save_load_roundtrip(tok, tmp_path):
    tok.save(tmp_path / "tok")
    loaded = EsmTokenizer.load(tmp_path / "tok")
    assert loaded.fingerprint() == tok.fingerprint()
    assert loaded.tokens == tok.tokens
    doc = json.loads((tmp_path / "tok" / alphabet_mod.SAVE_FILE).read_text())
    assert doc["kind"] == "esm" and doc["tokens"] == list(tok.tokens)


def test_load_verifies(tok, tmp_path):
    with pytest.raises(CheckpointError, match="missing"):
        EsmTokenizer.load(tmp_path)
    tok.save(tmp_path)
    path = tmp_path / alphabet_mod.SAVE_FILE
    doc = json.loads(path.read_text())
    doc["tokens"][5], doc["tokens"][6] = doc["tokens"][6], doc["tokens"][5]
    path.write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match=r"foundry_tokenizer.json: vocabulary differs .* at id 5"):
        EsmTokenizer.load(tmp_path)
    path.write_text(json.dumps({**doc, "kind": "bpe"}))
    with pytest.raises(CheckpointError, match="kind is 'bpe'"):
        EsmTokenizer.load(tmp_path)
    path.write_text("{not json")
    with pytest.raises(CheckpointError, match="unreadable"):
        EsmTokenizer.load(tmp_path)


def test_fingerprint_is_stable_and_covers_the_rules(tok, monkeypatch):
    assert tok.fingerprint() == EsmTokenizer().fingerprint()
    assert len(tok.fingerprint()) == 64
    before = tok.fingerprint()
    monkeypatch.setattr(alphabet_mod, "RULES_VERSION", alphabet_mod.RULES_VERSION + 1)
    assert tok.fingerprint() != before


def test_save_hf_gives_the_same_ids(tok, tmp_path):
    transformers = pytest.importorskip("transformers")
    tok.save_hf(tmp_path / "hf")
    hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    assert type(hf).__name__ == "EsmTokenizer"
    assert hf.get_vocab() == tok.token_to_id
    seqs = [seq for _, seq in _records(DATA / "few_proteins.fasta")] + ["MKV<mask>LA", "A"]
    for seq in seqs:
        assert hf(seq)["input_ids"] == tok.encode(seq).tolist()
    padded = hf(seqs, padding=True, return_tensors="np")["input_ids"]
    np.testing.assert_array_equal(padded, pad_batch(tok.encode_batch(seqs), tok.pad_id))
    assert (hf.cls_token_id, hf.pad_token_id, hf.eos_token_id, hf.mask_token_id, hf.unk_token_id) == (0, 1, 2, 32, 3)


# -- plugin ---------------------------------------------------------------------------------


def test_plugin_registers_tokenizer_and_modality():
    from foundry.plugins import PluginManager
    from modalities.protein import plugin

    manager = PluginManager()
    info = manager.register_plugin(plugin, "protein")
    assert info is not None, manager.failures
    assert manager.tokenizer_class("esm") is EsmTokenizer
    modality = manager.modality("protein")
    assert modality.objective == "mlm" and modality.readers == ("fasta",)
    assert modality.default_preset == "esm2_tiny"
    assert isinstance(modality.build_tokenizer([], {}), EsmTokenizer)
    assert [p.name for p in modality.default_data()] == ["uniprot_sample.fasta.gz"]
    assert all(p.is_file() for p in modality.default_data())
