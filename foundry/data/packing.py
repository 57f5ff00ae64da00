"""A deterministic stream of packed micro-batches, resumable from a small state.

Documents come in the order of a ``DocumentOrder`` (by default every document once per epoch
in a permutation drawn from (seed, epoch); see ``order.py`` for cluster sampling and mixtures).
Each one is cropped to ``max_len`` (a random window in training, as ESM does, drawn from
(seed, number of documents drawn so far)) and placed in the first row of the micro-batch with
room left (first-fit). When a document fits no row, a random window of it fills the roomiest
row's tail if at least ``max_len / 8`` tokens are free there; otherwise the micro-batch is
complete and that document opens the next one. Padding therefore stays below 1/8 of every row.

The stream is a pure function of (seed, dataset lengths, settings), and ``state_dict()`` — documents drawn, micro-batch
count, the order's position — is all a checkpoint needs to continue it exactly.

With several processes, global micro-batch ``k`` belongs to rank ``k % world_size``; every rank
plans the whole stream (cheap: lengths only) and reads tokens only for its own micro-batches.
That is what makes resume independent of the number of processes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterator

import numpy as np
import torch

from .dataset import TokenDataset
from .order import DocumentOrder, ShuffledOrder


@dataclass
class StreamState:
    drawn: int = 0  # documents taken so far (seeds each document's crop)
    micro_batches: int = 0  # global micro-batches emitted so far

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Piece:
    doc: int  # document index in the dataset
    start: int  # first token of the window
    length: int


@dataclass
class Batch:
    tokens: torch.Tensor  # (rows, max_len) int64, padded with pad_id
    document_ids: torch.Tensor  # (rows, max_len) int64: 1, 2, … per document in a row, 0 on padding
    real_tokens: int  # non-padding tokens
    index: int  # global micro-batch index (seeds the objective's randomness)

    @property
    def padding_fraction(self) -> float:
        return 1.0 - self.real_tokens / self.tokens.numel()


class PackedStream:
    def __init__(
        self,
        dataset: TokenDataset,
        *,
        max_len: int,
        batch_tokens: int,
        pad_id: int,
        seed: int,
        pack: bool = True,
        random_crop: bool = True,
        order: DocumentOrder | None = None,
    ):
        if len(dataset) == 0:
            raise ValueError("cannot stream an empty dataset")
        self.dataset = dataset
        self.max_len = max_len
        self.rows = max(1, batch_tokens // max_len)
        self.pad_id = pad_id
        self.seed = seed
        self.pack = pack
        self.random_crop = random_crop
        # Shortest crop worth filling a row's tail with; bounds padding to < 1/8 of each row.
        self.min_piece = max(8, max_len // 8)
        self.lengths = np.asarray(dataset.lengths)
        self.order = order if order is not None else ShuffledOrder(len(dataset), seed)
        self.state = StreamState()

    # -- state -------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {**self.state.to_dict(), "order": self.order.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.state = StreamState(drawn=int(state["drawn"]), micro_batches=int(state["micro_batches"]))
        self.order.load_state_dict(state["order"])

    @property
    def epoch(self) -> float:
        return self.order.epoch

    # -- planning ----------------------------------------------------------------------------

    def _piece(self, doc: int) -> Piece:
        length = int(self.lengths[doc])
        if length <= self.max_len:
            return Piece(doc, 0, length)
        if not self.random_crop:
            return Piece(doc, 0, self.max_len)
        start = int(np.random.default_rng([self.seed, self.state.drawn, 1]).integers(0, length - self.max_len + 1))
        return Piece(doc, start, self.max_len)

    def _crop(self, piece: Piece, length: int) -> Piece:
        offset = int(np.random.default_rng([self.seed, self.state.drawn, 2]).integers(0, piece.length - length + 1))
        return Piece(piece.doc, piece.start + offset, length)

    def next_plan(self) -> list[list[Piece]]:
        """Advance the stream by one micro-batch and return its rows of pieces."""
        rows: list[list[Piece]] = [[] for _ in range(self.rows)]
        free = [self.max_len] * self.rows
        while True:
            piece = self._piece(self.order.peek())
            if self.pack:
                target = next((r for r in range(self.rows) if free[r] >= piece.length), None)
                if target is None:
                    # Fill the roomiest row's tail with a crop of this document rather than
                    # leaving it padded; stop only when every row is nearly full.
                    roomiest = max(range(self.rows), key=lambda r: free[r])
                    if free[roomiest] >= self.min_piece:
                        piece = self._crop(piece, free[roomiest])
                        target = roomiest
            else:
                target = next((r for r in range(self.rows) if free[r] == self.max_len), None)
            if target is None:
                break
            rows[target].append(piece)
            free[target] -= piece.length
            self.order.advance()
            self.state.drawn += 1
        self.state.micro_batches += 1
        return rows

    def materialize(self, rows: list[list[Piece]], index: int) -> Batch:
        return materialize(self.dataset, rows, self.max_len, self.pad_id, index)

    def next_for_rank(self, rank: int, world_size: int) -> Batch:
        """Plan the next ``world_size`` global micro-batches and read this rank's one.

        Every rank advances the stream identically, so after each call all ranks hold the same
        ``StreamState`` — the one a checkpoint stores.
        """
        mine = None
        for r in range(world_size):
            index = self.state.micro_batches
            plan = self.next_plan()
            if r == rank:
                mine = self.materialize(plan, index)
        assert mine is not None
        return mine

    def batches(self, rank: int = 0, world_size: int = 1) -> Iterator[Batch]:
        """Endless micro-batches of this rank, continuing from the current state."""
        while True:
            yield self.next_for_rank(rank, world_size)


def materialize(dataset: TokenDataset, rows: list[list[Piece]], max_len: int, pad_id: int, index: int) -> Batch:
    """Read the planned pieces into a padded (rows, max_len) batch with per-row document ids."""
    tokens = np.full((len(rows), max_len), pad_id, dtype=np.int64)
    doc_ids = np.zeros((len(rows), max_len), dtype=np.int64)
    real = 0
    for r, pieces in enumerate(rows):
        at = 0
        for d, piece in enumerate(pieces, start=1):
            tokens[r, at : at + piece.length] = dataset[piece.doc][piece.start : piece.start + piece.length]
            doc_ids[r, at : at + piece.length] = d
            at += piece.length
        real += at
    return Batch(torch.from_numpy(tokens), torch.from_numpy(doc_ids), real, index)


def evaluation_batches(dataset: TokenDataset, *, max_len: int, batch_tokens: int, pad_id: int, limit: int | None = None) -> list[Batch]:
    """Fixed validation batches: every document chunked into consecutive ``max_len`` windows
    (no randomness), packed first-fit in dataset order."""
    rows_per_batch = max(1, batch_tokens // max_len)
    pieces: list[Piece] = []
    for doc, length in enumerate(np.asarray(dataset.lengths)):
        for start in range(0, int(length), max_len):
            pieces.append(Piece(doc, start, min(max_len, int(length) - start)))
    batches: list[Batch] = []
    rows: list[list[Piece]] = [[] for _ in range(rows_per_batch)]
    free = [max_len] * rows_per_batch
    for piece in pieces:
        target = next((r for r in range(rows_per_batch) if free[r] >= piece.length), None)
        if target is None:
            batches.append(materialize(dataset, rows, max_len, pad_id, len(batches)))
            if limit is not None and len(batches) >= limit:
                return batches
            rows = [[] for _ in range(rows_per_batch)]
            free = [max_len] * rows_per_batch
            target = 0
        rows[target].append(piece)
        free[target] -= piece.length
    if any(rows):
        batches.append(materialize(dataset, [r for r in rows if r], max_len, pad_id, len(batches)))
    return batches

