"""Turn a run's ``data.paths`` into a tokenizer plus train/valid token datasets.

A path is either a prepared dataset (``foundry <modality> prepare``: memory-mapped shards with a
manifest) or raw files/folders that the modality's readers understand (tokenized in memory at the
start of the run — fine for the bundled corpora and small experiments).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .config import DataSection, RunConfig
from .data.dataset import InMemoryTokens, TokenDataset
from .data.order import ClusterOrder, ConcatTokens, DocumentOrder, MixtureOrder, ShuffledOrder, read_clusters
from .errors import DataError
from .modality import Modality
from .data.manifest import is_prepared, open_prepared
from .plugins import get_manager
from .readers import Document, read_documents


@dataclass
class RunData:
    tokenizer: Any
    train: TokenDataset
    valid: TokenDataset
    sources: list[str]
    order: DocumentOrder | None = None  # how training documents are drawn; None = shuffled


def resolve_paths(cfg: RunConfig, modality: Modality) -> list[Path]:
    paths = [Path(p) for p in cfg.data.paths] if cfg.data.paths else list(modality.default_data())
    if not paths:
        raise DataError(f"no --data given and the {modality.name} modality bundles no default corpus")
    return paths


def load_run_data(cfg: RunConfig, modality: Modality, tokenizer=None) -> RunData:
    """``tokenizer``: the one a resumed run or an imported model already has (else built here)."""
    if cfg.data.sources:
        return _load_mixture(cfg, modality, tokenizer)
    data = _load_source(resolve_paths(cfg, modality), cfg, modality, tokenizer)
    data.order = _order(data, cfg.data.clusters, cfg.train.seed)
    return data


def _load_mixture(cfg: RunConfig, modality: Modality, tokenizer) -> RunData:
    """Several sources drawn by weight; the tokenizer comes from the first (or tokenizer.path)."""
    parts = []  # paths vs sources, each path and weight: checked with the config (config.validate)
    for source in cfg.data.sources:
        part = _load_source([Path(source.path)], cfg, modality, tokenizer)
        tokenizer = part.tokenizer
        parts.append(part)
    train = ConcatTokens([p.train for p in parts])
    valid = ConcatTokens([p.valid for p in parts])
    orders = [_order(p, s.clusters, cfg.train.seed + i) for i, (p, s) in enumerate(zip(parts, cfg.data.sources))]
    order = MixtureOrder(orders, [s.weight for s in cfg.data.sources], train.offsets, cfg.train.seed)
    return RunData(tokenizer, train, valid, [s.path for s in cfg.data.sources], order)


def _order(data: RunData, clusters: str | None, seed: int) -> DocumentOrder:
    if clusters is None:
        return ShuffledOrder(len(data.train), seed)
    valid_ids = {data.valid.record_id(i) for i in range(len(data.valid))}
    return ClusterOrder(read_clusters(Path(clusters), data.train, known_elsewhere=valid_ids), seed)


def _load_source(paths: list[Path], cfg: RunConfig, modality: Modality, tokenizer) -> RunData:
    if len(paths) == 1 and is_prepared(paths[0]):
        return _from_prepared(paths[0], tokenizer)
    if any(is_prepared(p) for p in paths):
        raise DataError("a prepared dataset must be the only --data path (mix sources with data.sources)")

    readers = get_manager().reader_objects(modality.readers)
    documents = list(read_documents(paths, readers, cfg.data.on_decode_error))
    if not documents:
        raise DataError(f"{', '.join(map(str, paths))}: no documents found")
    if tokenizer is None:
        settings = {"path": cfg.tokenizer.path, "vocab_size": cfg.tokenizer.vocab_size}
        tokenizer = modality.build_tokenizer(documents, settings)
    split = split_documents(documents, tokenizer, cfg.data)
    train_idx = split.train if cfg.data.max_train_docs is None else split.train[: cfg.data.max_train_docs]
    fingerprint = tokenizer.fingerprint()

    def subset(indices):
        return InMemoryTokens([split.encoded[i] for i in indices], [documents[i].id for i in indices], fingerprint)

    return RunData(tokenizer, subset(train_idx), subset(split.valid), [str(p) for p in paths])


@dataclass
class Split:
    encoded: list  # token ids of every document (empty for those that encode to nothing)
    valid: list[int]  # indices into the documents: held out for validation
    train: list[int]  # the others that encode to something (before data.max_train_docs)


def split_documents(documents: list[Document], tokenizer, data: DataSection) -> Split:
    """The train/validation split a run makes of raw documents: documents that encode to no
    tokens are dropped, the rest split by ``split_by_id``. The forgetting probe calls this too, so
    it scores exactly the documents a pretraining run held out."""
    encoded = tokenizer.encode_batch([d.text for d in documents])
    keep = [i for i, ids in enumerate(encoded) if len(ids) > 0]
    valid, train = split_by_id([documents[i].id for i in keep], data.valid_fraction, data.max_valid_docs)
    return Split(encoded, [keep[i] for i in valid], [keep[i] for i in train])


def split_by_id(ids: list[str], valid_fraction: float, max_valid: int) -> tuple[list[int], list[int]]:
    """Deterministic split: a record goes to validation when the hash of its id is small.

    The same record lands in the same split whatever the file order or the rest of the corpus.
    """
    if len(ids) < 2:
        raise DataError(f"need at least 2 documents to hold out a validation set, found {len(ids)}")
    from .data.prepare import split_hash  # the rule `prepare` holds out by

    scores = np.array([split_hash(i) / 2**64 for i in ids])
    valid = [i for i in np.argsort(scores, kind="stable") if scores[i] < valid_fraction][:max_valid]
    if not valid:
        valid = [int(np.argmin(scores))]
    chosen = set(int(i) for i in valid)
    return sorted(chosen), [i for i in range(len(ids)) if i not in chosen]


def _from_prepared(path: Path, tokenizer) -> RunData:
    """A prepared dataset; a run that already has a tokenizer (resume, --from) must match it."""
    fingerprint = tokenizer.fingerprint() if tokenizer is not None else None
    data = open_prepared(path, expected_fingerprint=fingerprint)
    if tokenizer is None:
        tokenizer = data.load_tokenizer()
    if len(data.train) == 0 or len(data.valid) == 0:
        raise DataError(f"{path}: the prepared data needs documents in both splits (train {len(data.train)}, valid {len(data.valid)})")
    return RunData(tokenizer, data.train, data.valid, [str(path)])
