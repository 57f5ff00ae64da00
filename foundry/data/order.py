"""The order in which training documents are drawn: plain shuffling, UniRef-style cluster
sampling, and weighted mixtures of sources. All are deterministic from the seed and resumable
from a small JSON-able state.

- ``ShuffledOrder``: every document once per epoch, in a permutation drawn from (seed, epoch).
- ``ClusterOrder``: every cluster once per epoch in a permutation; from each a member drawn
  uniformly from (seed, epoch, position) — ESM-2's UniRef50/90 sampling: diversity per cluster,
  not per sequence.
- ``MixtureOrder``: each draw picks a source by weight from (seed, draw index) and takes that
  source's next document; document indices are offset into a ``ConcatTokens`` view.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from ..errors import DataError
from .dataset import TokenDataset


class DocumentOrder(Protocol):
    def peek(self) -> int:
        """The next document index, without consuming it."""
        ...

    def advance(self) -> None: ...

    @property
    def epoch(self) -> float:
        """Progress in epochs (for logging); for mixtures, of the first source."""
        ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


class ShuffledOrder:
    def __init__(self, n_documents: int, seed: int):
        if n_documents <= 0:
            raise DataError("cannot draw from an empty dataset")
        self.n, self.seed = n_documents, seed
        self._epoch, self._cursor = 0, 0
        self._perm_epoch, self._perm = -1, np.empty(0, dtype=np.int64)

    def _permutation(self) -> np.ndarray:
        if self._perm_epoch != self._epoch:
            self._perm = np.random.default_rng([self.seed, self._epoch]).permutation(self.n)
            self._perm_epoch = self._epoch
        return self._perm

    def peek(self) -> int:
        return int(self._permutation()[self._cursor])

    def advance(self) -> None:
        self._cursor += 1
        if self._cursor >= self.n:
            self._epoch, self._cursor = self._epoch + 1, 0

    @property
    def epoch(self) -> float:
        return self._epoch + self._cursor / self.n

    def state_dict(self) -> dict:
        return {"epoch": self._epoch, "cursor": self._cursor}

    def load_state_dict(self, state: dict) -> None:
        self._epoch, self._cursor = int(state["epoch"]), int(state["cursor"])


class ClusterOrder:
    def __init__(self, clusters: Sequence[np.ndarray], seed: int):
        if not clusters:
            raise DataError("cannot draw from an empty set of clusters")
        self.clusters, self.seed = list(clusters), seed
        self._clusters = ShuffledOrder(len(self.clusters), seed)

    def peek(self) -> int:
        members = self.clusters[self._clusters.peek()]
        state = self._clusters.state_dict()
        pick = np.random.default_rng([self.seed, state["epoch"], state["cursor"], 3]).integers(len(members))
        return int(members[pick])

    def advance(self) -> None:
        self._clusters.advance()

    @property
    def epoch(self) -> float:
        return self._clusters.epoch

    def state_dict(self) -> dict:
        return self._clusters.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self._clusters.load_state_dict(state)


class MixtureOrder:
    def __init__(self, orders: Sequence[DocumentOrder], weights: Sequence[float], offsets: Sequence[int], seed: int):
        weights = np.asarray(weights, dtype=np.float64)
        if len(orders) != len(weights) or (weights <= 0).any():
            raise DataError("mixture weights must be positive, one per source")
        self.orders, self.offsets, self.seed = list(orders), list(offsets), seed
        self.cumulative = np.cumsum(weights / weights.sum())
        self._draws = 0

    def _source(self) -> int:
        u = np.random.default_rng([self.seed, self._draws, 4]).random()
        return int(min(np.searchsorted(self.cumulative, u, side="right"), len(self.orders) - 1))

    def peek(self) -> int:
        s = self._source()
        return self.offsets[s] + self.orders[s].peek()

    def advance(self) -> None:
        self.orders[self._source()].advance()
        self._draws += 1

    @property
    def epoch(self) -> float:
        return self.orders[0].epoch

    def state_dict(self) -> dict:
        return {"draws": self._draws, "sources": [o.state_dict() for o in self.orders]}

    def load_state_dict(self, state: dict) -> None:
        self._draws = int(state["draws"])
        for order, sub in zip(self.orders, state["sources"]):
            order.load_state_dict(sub)


class ConcatTokens:
    """Several token datasets seen as one; document ``offsets[s] + i`` is document i of source s."""

    def __init__(self, datasets: Sequence[TokenDataset]):
        self.datasets = list(datasets)
        fingerprints = {d.tokenizer_fingerprint for d in self.datasets}
        if len(fingerprints) != 1:
            raise DataError(f"the mixture's sources were tokenized differently (fingerprints {', '.join(sorted(fingerprints))})")
        self.tokenizer_fingerprint = fingerprints.pop()
        sizes = [len(d) for d in self.datasets]
        self.offsets = [0, *np.cumsum(sizes)[:-1].tolist()]
        self._ends = np.cumsum(sizes)
        self._lengths = np.concatenate([np.asarray(d.lengths, dtype=np.int64) for d in self.datasets])

    def __len__(self) -> int:
        return int(self._ends[-1]) if len(self._ends) else 0

    @property
    def lengths(self) -> np.ndarray:
        return self._lengths

    def _locate(self, index: int) -> tuple[TokenDataset, int]:
        s = int(np.searchsorted(self._ends, index, side="right"))
        return self.datasets[s], index - self.offsets[s]

    def __getitem__(self, index: int) -> np.ndarray:
        dataset, local = self._locate(index)
        return dataset[local]

    def record_id(self, index: int) -> str:
        dataset, local = self._locate(index)
        return dataset.record_id(local)


def read_clusters(path: Path, train: TokenDataset, known_elsewhere: set[str] | None = None) -> list[np.ndarray]:
    """Clusters of ``train`` documents from a TSV of ``member_id<TAB>cluster_id`` lines.

    Ids named in the file must exist in the corpus (train, or ``known_elsewhere`` such as the
    validation split, whose members are simply not drawn). Training documents the file does not
    name become clusters of their own.
    """
    index = {train.record_id(i): i for i in range(len(train))}
    known_elsewhere = known_elsewhere or set()
    groups: dict[str, list[int]] = {}
    try:
        lines = Path(path).read_text().splitlines()
    except FileNotFoundError:
        raise DataError(f"{path}: cluster file not found") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a text file (expected member_id<TAB>cluster_id lines)") from None
    listed = set()
    for number, line in enumerate(lines, start=1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.rstrip("\n").split("\t")
        if len(fields) < 2:
            raise DataError(f"{path}:{number}: expected member_id<TAB>cluster_id, got {line[:60]!r}")
        member, cluster = fields[0].strip(), fields[1].strip()
        if member in index:
            groups.setdefault(cluster, []).append(index[member])
            listed.add(member)
        elif member not in known_elsewhere:
            raise DataError(f"{path}:{number}: member {member!r} is not a record of the corpus")
    for record, i in index.items():
        if record not in listed:
            groups.setdefault(f"\0{record}", []).append(i)
    return [np.asarray(sorted(members), dtype=np.int64) for _, members in sorted(groups.items())]
