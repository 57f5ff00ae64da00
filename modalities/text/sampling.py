"""A bounded, deterministic sample of documents to train a BPE vocabulary on.

BPE statistics settle after a few MB, so training on a whole corpus only costs time. Rank the
documents by a hash of (id, length); the sample is the longest prefix of that ranking whose texts
fit in ``max_bytes``. So the same corpus gives the same sample whatever order it is read in,
memory stays bounded by ``max_bytes`` while streaming, and no document dominates (each is cut to
``max_doc_bytes``).
"""

from __future__ import annotations

import hashlib
import heapq
from typing import Iterable

from foundry.readers import Document


def sample_for_training(
    documents: Iterable[Document | str], max_bytes: int, max_doc_bytes: int | None = None
) -> list[str]:
    """Texts of a deterministic sample of ``documents`` totalling at most ``max_bytes`` (UTF-8
    size approximated by characters). ``max_doc_bytes`` defaults to a quarter of ``max_bytes``."""
    cap = max_doc_bytes if max_doc_bytes is not None else max(1, max_bytes // 4)
    heap: list[tuple[int, str, str]] = []  # (-key, tiebreak, text): the largest key is evicted first
    total = 0
    threshold: int | None = None  # the smallest key ever evicted: nothing at or above it may enter
    for index, doc in enumerate(documents):
        doc_id, text = (doc.id, doc.text) if isinstance(doc, Document) else (str(index), doc)
        if not text:
            continue
        text = text[:cap]
        key = int.from_bytes(hashlib.blake2b(f"{doc_id}\x00{len(text)}".encode(), digest_size=8).digest(), "big")
        if threshold is not None and key >= threshold:
            continue
        heapq.heappush(heap, (-key, doc_id, text))
        total += len(text)
        while total > max_bytes and heap:
            negative_key, _, dropped = heapq.heappop(heap)
            total -= len(dropped)
            threshold = -negative_key
    return [text for _, _, text in sorted(heap, key=lambda item: (-item[0], item[1]))]
