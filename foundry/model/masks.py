"""Who may attend to whom, in one place.

``attention_mask`` builds the boolean mask SDPA takes from padding, packed-document ids,
causality and a sliding window. When nothing restricts attention beyond plain causality it
returns ``(None, causal)`` so SDPA can take its fused ``is_causal`` / unmasked paths.

``AttentionSpec`` keeps those inputs and builds, lazily and once per forward, what a backend in
``attention.py`` needs: the dense mask, the document runs (cu_seqlens), per-document buckets or a
flex_attention block mask. The rule is always the dense one: query i sees key j iff both are in
the same row and document, j is a real token, j <= i when causal, i - j < window; a query that
would see nothing sees itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch


def segment_index(document_ids: torch.Tensor) -> torch.Tensor:
    """(B, T) document ids -> (B, T) running index of contiguous documents, 0, 1, 2, ... per row."""
    starts = torch.ones_like(document_ids, dtype=torch.bool)
    starts[:, 1:] = document_ids[:, 1:] != document_ids[:, :-1]
    return starts.long().cumsum(dim=1) - 1


def position_ids(document_ids: torch.Tensor | None, batch: int, length: int, device) -> torch.Tensor:
    """Positions (B, T) or (1, T): 0..T-1, restarting at every document boundary when packed."""
    idx = torch.arange(length, device=device)
    if document_ids is None:
        return idx[None]
    starts = torch.ones_like(document_ids, dtype=torch.bool)
    starts[:, 1:] = document_ids[:, 1:] != document_ids[:, :-1]
    first = torch.where(starts, idx[None], torch.zeros_like(idx)[None]).cummax(dim=1).values
    return idx[None] - first  # (B, T)


def attention_mask(
    key_valid: torch.Tensor | None,  # (B, T) bool, True = real token; None = all real
    document_ids: torch.Tensor | None,  # (B, T) ints; attention stays within equal ids
    causal: bool,
    length: int,
    device,
    sliding_window: int | None = None,
) -> tuple[torch.Tensor | None, bool]:
    """-> (mask (B, 1, T, T) bool with True = may attend, or None; is_causal flag for SDPA)."""
    padded = key_valid is not None and not bool(key_valid.all())
    if not padded and document_ids is None and sliding_window is None:
        return None, causal
    allowed = _allowed(key_valid if padded else None, document_ids, causal, length, device, sliding_window)
    # A query with nothing to attend to (a row of pure padding) would give NaN through softmax;
    # let it see itself. Real tokens always see themselves already, so their outputs are unchanged.
    empty = ~allowed.any(dim=-1, keepdim=True)
    allowed = allowed | (empty & torch.eye(length, dtype=torch.bool, device=device))
    return allowed[:, None], False


def allowed(key_valid, document_ids, causal: bool, length: int, device, sliding_window=None) -> torch.Tensor:
    """(B|1, T, T) bool: the attention rule before the "a query that sees nothing sees itself" fix."""
    return _allowed(key_valid, document_ids, causal, length, device, sliding_window)


def _allowed(key_valid, document_ids, causal, length, device, sliding_window) -> torch.Tensor:
    q = torch.arange(length, device=device)
    allowed = torch.ones(1, length, length, dtype=torch.bool, device=device)  # (B|1, Tq, Tk)
    if causal:
        allowed = allowed & (q[None, :, None] >= q[None, None, :])
    if sliding_window is not None:
        allowed = allowed & (q[None, :, None] - q[None, None, :] < sliding_window)
    if key_valid is not None:
        allowed = allowed & key_valid[:, None, :]
    if document_ids is not None:
        allowed = allowed & (document_ids[:, :, None] == document_ids[:, None, :])
    return allowed


# -- the spec each attention backend reads -----------------------------------------------------


@dataclass
class DocumentRuns:
    """Maximal runs of one document id along the flattened (B*T) axis (rows always break a run)."""

    starts: np.ndarray  # (R,) int64 flattened start of each run
    lengths: np.ndarray  # (R,) int64
    attend: np.ndarray  # (R,) bool: the run holds at least one real key (else: padding, sees itself)
    full: np.ndarray  # (R,) bool: every key of the run is real

    @property
    def mixed(self) -> np.ndarray:
        """Runs with padding inside a document: only backends that take a key mask handle them."""
        return self.attend & ~self.full


@dataclass
class Bucket:
    """Runs of similar length attended as one (n, L) SDPA batch."""

    shape: tuple[int, int]  # (n runs, L = the longest)
    runs: list[int]  # indices into DocumentRuns
    mask: torch.Tensor | None  # SDPA mask over the bucket (keys past a run's end or padding hidden)
    is_causal: bool


def document_runs(document_ids: torch.Tensor, key_valid: torch.Tensor | None) -> DocumentRuns | None:
    """Runs of equal ids per row; None when an id recurs non-contiguously in a row (the dense
    rule would join the parts, runs cannot)."""
    doc = document_ids.detach().cpu().numpy()
    b, t = doc.shape
    new = np.ones((b, t), dtype=bool)
    new[:, 1:] = doc[:, 1:] != doc[:, :-1]
    ordered = np.sort(doc, axis=1)
    distinct = 1 + (ordered[:, 1:] != ordered[:, :-1]).sum(1)
    if (new.sum(1) != distinct).any():
        return None
    starts = np.flatnonzero(new.ravel())
    lengths = np.diff(np.append(starts, b * t))
    if key_valid is None:
        real = lengths.copy()
    else:
        real = np.add.reduceat(key_valid.detach().cpu().numpy().ravel().astype(np.int64), starts)
    return DocumentRuns(starts, lengths, real > 0, real == lengths)


@dataclass(eq=False)
class AttentionSpec:
    """Who may attend to whom, as inputs; each backend asks for the form it needs (cached)."""

    key_valid: torch.Tensor | None  # (B, T) bool, True = real token; None = all real
    document_ids: torch.Tensor | None  # (B, T) ints; attention stays within equal ids
    causal: bool
    length: int
    device: torch.device | str
    sliding_window: int | None = None
    impl: str = "auto"  # attention.IMPLS
    _cache: dict = field(default_factory=dict, repr=False)

    def _cached(self, key, build):
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

    def dense(self) -> tuple[torch.Tensor | None, bool]:
        """``attention_mask`` of these inputs: (mask (B, 1, T, T) or None, is_causal)."""
        return self._cached("dense", lambda: attention_mask(
            self.key_valid, self.document_ids, self.causal, self.length, self.device, self.sliding_window))

    def runs(self) -> DocumentRuns | None:
        return self._cached("runs", lambda: document_runs(self.document_ids, self.key_valid))

    def cu_seqlens(self) -> tuple[torch.Tensor, int]:
        """(R + 1,) int32 run boundaries on the device and the longest run, for varlen kernels."""
        def build():
            runs = self.runs()
            cu = np.append(runs.starts, runs.starts[-1] + runs.lengths[-1]).astype(np.int32)
            return torch.from_numpy(cu).to(self.device), int(runs.lengths.max())
        return self._cached("cu", build)

    def padding_positions(self) -> torch.Tensor:
        """(B*T,) bool on the device: positions in runs without a real key."""
        def build():
            runs = self.runs()
            pad = np.repeat(~runs.attend, runs.lengths)
            return torch.from_numpy(pad).to(self.device)
        return self._cached("pad", build)

    def buckets(self, slack: float | None = None) -> list[Bucket]:
        """Attending runs grouped longest first: a run joins the open bucket while its length is
        at least (1 - slack) of the bucket's longest, so padding inside a bucket stays small."""
        from .attention import BUCKET_SLACK

        return self._cached("buckets", lambda: self._buckets(BUCKET_SLACK if slack is None else slack))

    def _buckets(self, slack: float) -> list[Bucket]:
        runs = self.runs()
        valid = None if self.key_valid is None else self.key_valid.detach().cpu().numpy().ravel()
        chosen = np.flatnonzero(runs.attend)
        chosen = chosen[np.argsort(-runs.lengths[chosen], kind="stable")]
        groups, i = [], 0
        while i < len(chosen):
            j = i + 1
            floor = runs.lengths[chosen[i]] * (1.0 - slack)
            while j < len(chosen) and runs.lengths[chosen[j]] >= floor:
                j += 1
            groups.append(chosen[i:j])
            i = j
        return [self._bucket(runs, group, valid) for group in groups]

    def _bucket(self, runs: DocumentRuns, group: np.ndarray, valid: np.ndarray | None) -> Bucket:
        starts, lengths = runs.starts[group], runs.lengths[group]
        longest = int(lengths.max())
        offsets = np.arange(longest)
        keys = offsets[None, :] < lengths[:, None]  # (n, L): slots past a run's end are hidden
        if valid is not None:
            keys = keys & valid[starts[:, None] + np.minimum(offsets[None, :], lengths[:, None] - 1)]
        hidden = None if keys.all() else torch.from_numpy(keys).to(self.device)
        mask, is_causal = attention_mask(hidden, None, self.causal, longest, self.device, self.sliding_window)
        return Bucket(shape=(len(group), longest), runs=group.tolist(), mask=mask, is_causal=is_causal)

    def block_mask(self):
        from .attention import flex_block_mask

        return self._cached("block_mask", lambda: flex_block_mask(self))
