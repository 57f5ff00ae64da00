"""prepare → open_prepared: round trip, deterministic split, errors, interruption, overwrite."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from foundry.data import prepare as prep
from foundry import prepare_cli
from foundry.data.prepare import is_prepared, open_prepared, prepare, split_hash
from foundry.errors import DataError
from foundry.readers import Reader

from test_shards import TSV_READER, CharTokenizer, DyingTokenizer, random_docs, read_tsv, write_tsv

TESTS = Path(__file__).parent
QUERY_FASTA = Path("/work/shared/data/protein_sequences/mmseqs2_uniprot_QUERY.fasta")


@pytest.fixture
def corpus(tmp_path):
    """Three files (one gzipped, two in a folder) with 300 records in all."""
    docs = random_docs(300, seed=3)
    files = [
        write_tsv(tmp_path / "in/a.tsv", docs[:120]),
        write_tsv(tmp_path / "in/sub/b.tsv.gz", docs[120:250]),
        write_tsv(tmp_path / "c.tsv", docs[250:]),
    ]
    return {"inputs": [tmp_path / "in", files[2]], "docs": docs, "files": files}


def _prepare(corpus, out, **kw):
    kw.setdefault("progress", False)
    kw.setdefault("fsync", False)
    return prepare(corpus["inputs"], [TSV_READER], kw.pop("tokenizer", CharTokenizer()), out, **kw)


def _split_bytes(out: Path, split: str) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted((out / split).rglob("*")) if p.is_file()}


def test_round_trip_every_document_and_id(corpus, tmp_path):
    tok = CharTokenizer()
    manifest = _prepare(corpus, tmp_path / "out", valid_fraction=0.2, shard_tokens=500)
    data = open_prepared(tmp_path / "out", expected_fingerprint=tok.fingerprint())
    seen = {}
    for split in (data.train, data.valid):
        assert split.tokenizer_fingerprint == tok.fingerprint()
        for i in range(len(split)):
            seen[split.record_id(i)] = split[i]
    assert len(seen) == 300
    for rid, text in corpus["docs"]:
        np.testing.assert_array_equal(seen[rid], tok.encode(text))
    # train keeps input order (files in iter_files order, records in file order)
    train_ids = [data.train.record_id(i) for i in range(len(data.train))]
    expected = [r for r, _ in corpus["docs"] if split_hash(r) >= manifest.settings["valid_threshold"]]
    assert train_ids == expected
    assert data.train.num_shards > 1
    m = json.loads((tmp_path / "out/manifest.json").read_text())
    assert m["format"] == "foundry-prepared" and m["tokenizer_kind"] == "test-char" and m["dtype"] == "uint16"
    assert m["splits"]["train"]["docs"] + m["splits"]["valid"]["docs"] == 300
    assert sum(s["docs"] for s in m["sources"]) == 300 and len(m["sources"]) == 3
    assert all(len(s["sha256"]) == 64 and s["size"] > 0 for s in m["sources"])
    assert m["splits"]["train"]["chars"] + m["splits"]["valid"]["chars"] == sum(len(t) for _, t in corpus["docs"])
    assert CharTokenizer.load(data.tokenizer_dir).fingerprint() == tok.fingerprint()
    assert is_prepared(tmp_path / "out") and not is_prepared(tmp_path / "in")
    assert not list(tmp_path.glob("out.tmp-*"))


def test_split_is_by_id_hash_and_independent_of_workers_and_order(corpus, tmp_path):
    _prepare(corpus, tmp_path / "w1", valid_fraction=0.25, shard_tokens=700, workers=1)
    _prepare(corpus, tmp_path / "w2", valid_fraction=0.25, shard_tokens=700, workers=2)
    for split in ("train", "valid"):
        assert _split_bytes(tmp_path / "w1", split) == _split_bytes(tmp_path / "w2", split)
    # reversed input order: same records in each split
    rev = {"inputs": corpus["inputs"][::-1]}
    _prepare(rev, tmp_path / "rev", valid_fraction=0.25)
    a, b = open_prepared(tmp_path / "w1"), open_prepared(tmp_path / "rev")
    assert set(a.valid.iter_record_ids()) == set(b.valid.iter_record_ids())
    assert 40 < len(a.valid) < 110  # ~25% of 300
    threshold = int(0.25 * 2**64)
    assert all(split_hash(r) < threshold for r in a.valid.iter_record_ids())


def test_valid_count_is_exact(corpus, tmp_path):
    manifest = _prepare(corpus, tmp_path / "out", valid_fraction=17)
    assert manifest.valid.docs == 17 and manifest.train.docs == 283
    assert manifest.settings["valid_count"] == 17
    with pytest.raises(DataError, match="leaves no training data"):
        _prepare(corpus, tmp_path / "out2", valid_fraction=300)


def test_uint32_tokens_for_large_vocab(corpus, tmp_path):
    tok = CharTokenizer(offset=70000)
    manifest = _prepare(corpus, tmp_path / "out", tokenizer=tok, workers=2)
    assert manifest.dtype == "uint32"
    data = open_prepared(tmp_path / "out")
    assert data.train[0][1:-1].min() >= 70000 and type(data.train[0]) is np.ndarray


def test_wrong_fingerprint_is_refused_naming_both(corpus, tmp_path):
    _prepare(corpus, tmp_path / "out")
    other = CharTokenizer(alphabet="ACGT").fingerprint()
    with pytest.raises(DataError) as err:
        open_prepared(tmp_path / "out", expected_fingerprint=other)
    msg = str(err.value)
    assert other in msg and CharTokenizer().fingerprint() in msg and "tokenizer" in msg and "prepare" in msg


def test_manifest_that_does_not_match_shards(corpus, tmp_path):
    _prepare(corpus, tmp_path / "out", valid_fraction=0.1)
    path = tmp_path / "out/manifest.json"
    m = json.loads(path.read_text())
    m["splits"]["train"]["docs"] += 1
    path.write_text(json.dumps(m))
    with pytest.raises(DataError, match=r"manifest.json: says train has \d+ docs, .*index.json has"):
        open_prepared(tmp_path / "out")
    path.write_text("{not json")
    with pytest.raises(DataError, match="manifest.json: not valid JSON"):
        open_prepared(tmp_path / "out")
    assert is_prepared(tmp_path / "out")  # the remains of prepared data: opened, so the manifest is named


def test_truncated_shard_in_prepared_dir_names_file(corpus, tmp_path):
    _prepare(corpus, tmp_path / "out")
    tokens = tmp_path / "out/train/shard-00000/tokens.bin"
    tokens.write_bytes(tokens.read_bytes()[:100])
    with pytest.raises(DataError, match="train/shard-00000/tokens.bin: 100 bytes on disk"):
        open_prepared(tmp_path / "out")


def test_missing_manifest_means_unfinished(corpus, tmp_path):
    _prepare(corpus, tmp_path / "out")
    (tmp_path / "out/manifest.json").unlink()
    assert is_prepared(tmp_path / "out") and not is_prepared(tmp_path / "in")  # shard indexes without a manifest
    with pytest.raises(DataError, match="prepare did not finish"):
        open_prepared(tmp_path / "out")
    with pytest.raises(DataError, match="not a prepared data folder"):
        open_prepared(tmp_path / "in")


def test_existing_output_refused_without_overwrite(corpus, tmp_path):
    _prepare(corpus, tmp_path / "out")
    with pytest.raises(DataError, match="already holds prepared data; pass --overwrite"):
        _prepare(corpus, tmp_path / "out")
    (tmp_path / "other").mkdir()
    (tmp_path / "other/notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not empty and is not prepared data"):
        _prepare(corpus, tmp_path / "other", overwrite=True)
    assert (tmp_path / "other/notes.txt").read_text() == "mine"
    with pytest.raises(DataError, match="inside the output folder"):
        _prepare(corpus, tmp_path / "in", overwrite=True)


def test_overwrite_keeps_old_data_until_new_is_complete(corpus, tmp_path):
    _prepare(corpus, tmp_path / "out", valid_fraction=0.0)
    before = _split_bytes(tmp_path / "out", "train")

    def failing(path):
        yield from read_tsv(path)
        raise DataError(f"{path}: boom")

    bad = Reader(name="test-tsv", suffixes=(".tsv", ".tsv.gz"), read=failing)
    with pytest.raises(DataError, match="boom"):
        prepare(corpus["inputs"], [bad], CharTokenizer(), tmp_path / "out", overwrite=True, progress=False)
    assert _split_bytes(tmp_path / "out", "train") == before and is_prepared(tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.tsv", "in", "out"]  # no temp left
    manifest = _prepare(corpus, tmp_path / "out", valid_fraction=0.5, overwrite=True)
    assert open_prepared(tmp_path / "out").manifest.valid.docs == manifest.valid.docs > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.tsv", "in", "out"]


def test_interrupt_in_process_leaves_nothing(corpus, tmp_path):
    def interrupted(path):
        for i, doc in enumerate(read_tsv(path)):
            if i == 50:
                raise KeyboardInterrupt
            yield doc

    reader = Reader(name="test-tsv", suffixes=(".tsv", ".tsv.gz"), read=interrupted)
    for workers in (1, 2):
        with pytest.raises(KeyboardInterrupt):
            prepare(corpus["inputs"], [reader], CharTokenizer(), tmp_path / "out", workers=workers, progress=False)
        assert not (tmp_path / "out").exists() and not list(tmp_path.glob("out.*"))


def test_killed_prepare_is_never_readable_and_rerun_cleans_up(corpus, tmp_path):
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        sys.path.insert(0, {str(TESTS)!r})
        from pathlib import Path
        from foundry.data.prepare import prepare
        from foundry.readers import Reader
        from test_shards import CharTokenizer, read_tsv

        def dying(path):
            for i, doc in enumerate(read_tsv(path)):
                if path.name.startswith("b.tsv") and i == 100:
                    os.kill(os.getpid(), signal.SIGKILL)
                yield doc

        reader = Reader(name="t", suffixes=(".tsv", ".tsv.gz"), read=dying)
        prepare({[str(p) for p in corpus["inputs"]]!r}, [reader], CharTokenizer(), Path({str(tmp_path / "out")!r}),
                shard_tokens=50, progress=False, fsync=False)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=1800)  # a hang guard
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    leftovers = list(tmp_path.glob("out.tmp-*"))
    assert len(leftovers) == 1 and list(leftovers[0].glob("train/shard-*"))  # it got as far as writing shards
    assert not (tmp_path / "out").exists()
    with pytest.raises(DataError, match="prepare did not finish"):
        open_prepared(leftovers[0])
    _prepare(corpus, tmp_path / "out")  # rerun: completes and removes the dead run's temp folder
    assert is_prepared(tmp_path / "out") and not list(tmp_path.glob("out.tmp-*"))


def test_bad_inputs_give_clear_errors(corpus, tmp_path):
    with pytest.raises(DataError, match="nope.tsv: no such file"):
        prepare([tmp_path / "nope.tsv"], [TSV_READER], CharTokenizer(), tmp_path / "out", progress=False)
    corrupt = tmp_path / "bad.tsv.gz"
    corrupt.write_bytes(b"\x1f\x8b\x08\x00" + os.urandom(64))
    with pytest.raises(DataError, match="bad.tsv.gz: cannot read"):
        prepare([corrupt], [TSV_READER], CharTokenizer(), tmp_path / "out", progress=False)
    empty = tmp_path / "empty.tsv"
    empty.write_text("")
    with pytest.raises(DataError, match="no documents found"):
        prepare([empty], [TSV_READER], CharTokenizer(), tmp_path / "out", progress=False)
    bad_chars = write_tsv(tmp_path / "x.tsv", [("ok", "ACD"), ("weird", "AC#D")])
    for workers in (1, 2):
        with pytest.raises(DataError, match=r"x.tsv: record 'weird': .*unknown character '#'"):
            prepare([bad_chars], [TSV_READER], CharTokenizer(), tmp_path / "out", workers=workers, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.tsv.gz", "c.tsv", "empty.tsv", "in", "x.tsv"]


def test_file_workers_report_errors_and_deaths(corpus, tmp_path):
    """Several files + picklable reader: workers read whole files; failures still name the file."""
    corrupt = tmp_path / "in/zz.tsv.gz"
    corrupt.write_bytes(b"\x1f\x8b\x08\x00" + os.urandom(64))
    with pytest.raises(DataError, match="zz.tsv.gz: cannot read"):
        _prepare(corpus, tmp_path / "out", workers=2)
    corrupt.unlink()
    write_tsv(tmp_path / "in/zz.tsv", [("doomed", DyingTokenizer.POISON)])
    with pytest.raises(DataError, match="worker process died"):
        _prepare(corpus, tmp_path / "out", workers=2, tokenizer=DyingTokenizer())
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob("out.*"))


def test_read_ahead_is_bounded(tmp_path, monkeypatch):
    """Memory stays flat: the reader is never more than 2×workers (+1) chunks ahead of the writer."""
    monkeypatch.setattr(prep, "CHUNK_DOCS", 10)
    read = [0]

    def counting(path):
        for doc in read_tsv(path):
            read[0] += 1
            yield doc

    f = write_tsv(tmp_path / "big.tsv", random_docs(400, max_len=5))
    files = [(f, Reader(name="c", suffixes=(".tsv",), read=counting))]
    tok = CharTokenizer()
    enc = prep._Encoder(tok, True, 0, "uint16")
    for workers in (1, 2):
        read[0] = written = 0
        stream = prep._run(files, enc, workers, tok, tmp_path, "spawn")
        for chunk in stream:
            written += len(chunk.ids)
            assert read[0] - written <= (2 * workers + 1) * 10
        assert written == 400


def test_real_protein_plugin_round_trip(tmp_path):
    """The real FASTA reader and ESM tokenizer, registered as the plugin registers them."""
    pytest.importorskip("modalities.protein.plugin")
    from foundry.plugins import PluginManager
    from modalities.protein import plugin

    manager = PluginManager()
    assert manager.register_plugin(plugin, "protein") is not None, manager.failures
    modality = manager.modality("protein")
    readers = manager.reader_objects(modality.readers)
    tok = modality.build_tokenizer([], {})
    manifest = prepare([QUERY_FASTA], readers, tok, tmp_path / "out", workers=2, valid_fraction=0.1,
                       progress=False, fsync=False)
    data = open_prepared(tmp_path / "out", expected_fingerprint=tok.fingerprint())
    assert manifest.tokenizer_kind == tok.kind and manifest.train.docs + manifest.valid.docs == 500
    direct = {d.id: tok.encode(d.text) for d in readers[0].read(QUERY_FASTA)}
    for split in (data.train, data.valid):
        for i in range(len(split)):
            np.testing.assert_array_equal(split[i], direct[split.record_id(i)])
    assert type(tok).load(data.tokenizer_dir).fingerprint() == tok.fingerprint()


def test_prepare_modality_cli_entry(tmp_path, monkeypatch):
    """What the CLI calls: modality name → its readers and tokenizer → prepared folder."""
    pytest.importorskip("modalities.protein.plugin")
    import foundry.plugins as plugins
    from modalities.protein import plugin

    manager = plugins.PluginManager()
    manager.register_plugin(plugin, "protein")
    monkeypatch.setattr(plugins, "_manager", manager)
    out = tmp_path / "out"
    manifest = prepare_cli.prepare_modality("protein", [QUERY_FASTA], out, workers=1, valid_fraction=25, progress=False)
    assert manifest.valid.docs == 25 and manifest.sources[0].reader == "fasta"
    tok = open_prepared(out).load_tokenizer()
    assert tok.fingerprint() == manifest.tokenizer_fingerprint
    with pytest.raises(DataError, match="pass --overwrite"):
        prepare_cli.prepare_modality("protein", [QUERY_FASTA], out, progress=False)


@pytest.mark.parametrize("text, value", [("0.01", 0.01), ("1%", 0.01), ("500", 500), ("0", 0)])
def test_parse_valid_fraction(text, value):
    assert prepare_cli.parse_valid_fraction(text) == value


@pytest.mark.parametrize("text", ["1.5", "-3", "abc", "100%"])
def test_parse_valid_fraction_rejects(text):
    with pytest.raises(DataError, match="--valid-fraction"):
        prepare_cli.parse_valid_fraction(text)
