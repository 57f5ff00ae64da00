"""Memory-mapped shards: writer round trip, rolling, validation errors that name the file.

Also home of the small test tokenizer and reader that ``test_prepare.py`` imports.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from foundry.data.dataset import TokenDataset
from foundry.data.shards import ShardedTokens, ShardWriter, token_dtype
from foundry.errors import DataError
from foundry.readers import Document, Reader


class CharTokenizer:
    """A tiny character tokenizer implementing ``foundry.tokenizer.Tokenizer`` (picklable)."""

    kind = "test-char"

    def __init__(self, alphabet: str = "ACDEFGHIKLMNPQRSTVWY", offset: int = 0):
        self.alphabet = alphabet
        self.offset = offset  # shift ids up (offset > 65536 - 4 forces uint32 shards)
        self._index = {c: i + 4 + offset for i, c in enumerate(alphabet)}

    vocab_size = property(lambda self: 4 + self.offset + len(self.alphabet))
    pad_id = property(lambda self: 0)
    bos_id = property(lambda self: 1)
    eos_id = property(lambda self: 2)
    mask_id = property(lambda self: 3)
    unk_id = property(lambda self: None)
    special_ids = property(lambda self: [0, 1, 2, 3])
    maskable_ids = property(lambda self: sorted(self._index.values()))

    def encode(self, text: str, add_special_tokens: bool = True) -> np.ndarray:
        try:
            ids = [self._index[c] for c in text]
        except KeyError as exc:
            raise ValueError(f"unknown character {exc.args[0]!r}") from None
        if add_special_tokens:
            ids = [1, *ids, 2]
        return np.asarray(ids, dtype=np.int64)

    def encode_batch(self, texts, add_special_tokens: bool = True):
        return [self.encode(t, add_special_tokens) for t in texts]

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        rev = {v: k for k, v in self._index.items()}
        return "".join(rev.get(int(i), "") for i in ids)

    def save(self, directory) -> None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        (Path(directory) / "char.json").write_text(json.dumps({"alphabet": self.alphabet, "offset": self.offset}))

    @classmethod
    def load(cls, directory) -> "CharTokenizer":
        return cls(**json.loads((Path(directory) / "char.json").read_text()))

    def fingerprint(self) -> str:
        return hashlib.sha256(f"{self.alphabet}|{self.offset}".encode()).hexdigest()[:16]


class DyingTokenizer(CharTokenizer):
    """Kills its own process on one poison record: simulates a worker killed by the OOM killer."""

    POISON = "WYWYWYWYWYWY"

    def encode(self, text: str, add_special_tokens: bool = True) -> np.ndarray:
        if text == self.POISON:
            import os
            import signal

            os.kill(os.getpid(), signal.SIGKILL)
        return super().encode(text, add_special_tokens)


def read_tsv(path: Path):
    """``id<TAB>sequence`` per line; ``.tsv.gz`` is gunzipped."""
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt") as f:
        for line in f:
            if line.strip():
                rid, text = line.rstrip("\n").split("\t")
                yield Document(id=rid, text=text, source=str(path))


TSV_READER = Reader(name="test-tsv", suffixes=(".tsv", ".tsv.gz"), read=read_tsv)


def random_docs(n: int, seed: int = 0, prefix: str = "rec", max_len: int = 60) -> list[tuple[str, str]]:
    rng = np.random.default_rng(seed)
    alphabet = np.array(list("ACDEFGHIKLMNPQRSTVWY"))
    return [(f"{prefix}{i}", "".join(rng.choice(alphabet, rng.integers(1, max_len)))) for i in range(n)]


def write_tsv(path: Path, docs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(f"{i}\t{t}\n" for i, t in docs)
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(data.encode()))
    else:
        path.write_text(data)
    return path


# ------------------------------------------------------------------------------------------------


def _write(directory: Path, docs, **kw) -> ShardedTokens:
    kw.setdefault("vocab_size", 100)
    with ShardWriter(directory, tokenizer_fingerprint="fp", fsync=False, **kw) as w:
        for rid, arr in docs:
            w.add(arr, rid)
    return ShardedTokens(directory)


def _docs(n=50, seed=0, vocab=100):
    rng = np.random.default_rng(seed)
    return [(f"id{i} with spaces é", rng.integers(0, vocab, rng.integers(0, 40))) for i in range(n)]


def test_round_trip_rolls_shards_and_keeps_ids(tmp_path):
    docs = _docs()
    ds = _write(tmp_path / "train", docs, shard_tokens=100)
    assert isinstance(ds, TokenDataset)
    assert ds.num_shards > 3 and len(ds) == len(docs)
    for i, (rid, arr) in enumerate(docs):
        np.testing.assert_array_equal(ds[i], arr)
        assert ds.record_id(i) == rid
    np.testing.assert_array_equal(ds.lengths, [len(a) for _, a in docs])
    assert ds.lengths.dtype == np.int64
    assert list(ds.iter_record_ids()) == [r for r, _ in docs]
    assert ds.record_id(-1) == docs[-1][0]
    with pytest.raises(IndexError):
        ds[len(docs)]
    # every shard but the one holding a long document stays within shard_tokens
    for entry in ds.index["shards"]:
        assert entry["tokens"] <= 100 or entry["docs"] == 1


def test_add_batch_equals_add(tmp_path):
    docs = _docs(seed=1)
    a = _write(tmp_path / "a", docs, shard_tokens=64)
    with ShardWriter(tmp_path / "b", vocab_size=100, tokenizer_fingerprint="fp", shard_tokens=64, fsync=False) as w:
        w.add_batch([d for _, d in docs[:20]], [r for r, _ in docs[:20]])
        w.add_batch([d for _, d in docs[20:]], [r for r, _ in docs[20:]])
    for name in ("tokens.bin", "offsets.npy", "ids.txt"):
        for shard in sorted(p.name for p in (tmp_path / "a").glob("shard-*")):
            assert (tmp_path / "a" / shard / name).read_bytes() == (tmp_path / "b" / shard / name).read_bytes()
    assert len(ShardedTokens(tmp_path / "b")) == len(a)


def test_long_document_gets_own_shard_and_window_reads_slice(tmp_path):
    big = np.arange(1000) % 100
    ds = _write(tmp_path / "s", [("small", np.array([1, 2, 3])), ("big", big), ("tail", np.array([4]))], shard_tokens=10)
    assert ds.num_shards == 3
    np.testing.assert_array_equal(ds[1], big)
    np.testing.assert_array_equal(ds.window(1, 995, 10), big[995:])
    np.testing.assert_array_equal(ds.window(1, 10, 5), big[10:15])


def test_dtype_by_vocab_size(tmp_path):
    assert token_dtype(33) == np.uint16 and token_dtype(65536) == np.uint16 and token_dtype(65537) == np.uint32
    ds = _write(tmp_path / "big", [("a", np.array([70000, 5]))], vocab_size=70001)
    assert ds.dtype == np.uint32 and (tmp_path / "big/shard-00000/tokens.bin").stat().st_size == 8
    np.testing.assert_array_equal(ds[0], [70000, 5])


def test_out_of_range_ids_name_the_record(tmp_path):
    with pytest.raises(DataError, match="'bad'.*vocab_size 10"):
        _write(tmp_path / "s", [("ok", np.array([1])), ("bad", np.array([3, 10]))], vocab_size=10)
    assert not (tmp_path / "s").exists()  # the writer cleaned up after the error


def test_empty_documents_and_empty_split(tmp_path):
    ds = _write(tmp_path / "s", [("e", np.array([], dtype=np.int64)), ("x", np.array([7]))])
    assert ds.lengths.tolist() == [0, 1] and ds[0].size == 0
    empty = _write(tmp_path / "none", [])
    assert len(empty) == 0 and empty.num_shards == 0 and empty.lengths.shape == (0,)


def test_writer_memory_is_bounded_by_one_shard(tmp_path):
    # Structural: the writer keeps only the current shard's offsets; rolling resets it.
    with ShardWriter(tmp_path / "s", vocab_size=10, tokenizer_fingerprint="fp", shard_tokens=50, shard_docs=7, fsync=False) as w:
        peak = 0
        for i in range(500):
            w.add(np.array([1, 2, 3]), str(i))
            peak = max(peak, w.buffered_docs)
    assert peak <= 7
    ds = ShardedTokens(tmp_path / "s")
    assert len(ds) == 500 and max(e["docs"] for e in ds.index["shards"]) <= 7


def test_pickle_reopens_by_path(tmp_path):
    ds = _write(tmp_path / "s", _docs(20))
    ds[0]  # map it
    blob = pickle.dumps(ds)
    assert len(blob) < 1000  # the path, not the data
    again = pickle.loads(blob)
    np.testing.assert_array_equal(again[5], ds[5])


def test_unclosed_writer_is_not_readable(tmp_path):
    w = ShardWriter(tmp_path / "s", vocab_size=10, tokenizer_fingerprint="fp", shard_tokens=2, fsync=False)
    for i in range(5):
        w.add(np.array([1, 2]), str(i))
    with pytest.raises(DataError, match="index.json: missing"):
        ShardedTokens(tmp_path / "s")
    assert (tmp_path / "s/shard-00004.tmp").is_dir()  # the open shard lives under a temp name


def test_refuses_nonempty_folder(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s/x").write_text("x")
    with pytest.raises(DataError, match="not empty"):
        ShardWriter(tmp_path / "s", vocab_size=10, tokenizer_fingerprint="fp")


# -- validation on open ------------------------------------------------------------------------


@pytest.fixture
def split(tmp_path):
    _write(tmp_path / "s", _docs(30, vocab=100), shard_tokens=200)
    return tmp_path / "s"


def test_truncated_tokens_names_file(split):
    path = split / "shard-00001/tokens.bin"
    path.write_bytes(path.read_bytes()[:-2])
    with pytest.raises(DataError, match=r"shard-00001/tokens.bin: \d+ bytes on disk, expected"):
        ShardedTokens(split)


def test_truncated_offsets_names_file(split):
    path = split / "shard-00000/offsets.npy"
    path.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(DataError, match="shard-00000/offsets.npy"):
        ShardedTokens(split)


def test_offsets_not_monotone(split):
    path = split / "shard-00000/offsets.npy"
    off = np.load(path)
    off[2], off[3] = off[3] + 1, off[2]
    np.save(path, off)
    with pytest.raises(DataError, match="offsets.npy: offsets decrease at document"):
        ShardedTokens(split)


def test_offsets_end_mismatch(split):
    path = split / "shard-00000/offsets.npy"
    off = np.load(path)
    off[-1] -= 1
    np.save(path, off)
    with pytest.raises(DataError, match="offsets.npy: offsets run from 0 to"):
        ShardedTokens(split)


def test_truncated_ids_and_missing_shard(split):
    path = split / "shard-00000/ids.txt"
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(DataError, match="shard-00000/ids.txt"):
        ShardedTokens(split)


def test_missing_shard_and_stray_shard(split, tmp_path):
    import shutil

    shutil.move(split / "shard-00001", tmp_path / "elsewhere")
    with pytest.raises(DataError, match="shard-00001: shard listed in index.json is missing"):
        ShardedTokens(split)
    shutil.move(tmp_path / "elsewhere", split / "shard-00001")
    shutil.copytree(split / "shard-00001", split / "shard-00099")
    with pytest.raises(DataError, match="shard-00099: shard folder not listed"):
        ShardedTokens(split)


def test_index_totals_mismatch(split):
    index = json.loads((split / "index.json").read_text())
    index["docs"] += 1
    (split / "index.json").write_text(json.dumps(index))
    with pytest.raises(DataError, match="index.json: totals say"):
        ShardedTokens(split)
