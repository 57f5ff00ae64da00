"""A bounded, deterministic sample of documents to train a BPE vocabulary on.

BPE statistics settle after a few MB, so training on a whole corpus only costs time. The sample
keeps the documents with the smallest hash of (id, length) whose texts fit in ``max_bytes``: the
same corpus gives the same sample whatever order it is read in, memory stays bounded by
``max_bytes`` while streaming, and no document dominates (each is cut to ``max_doc_bytes``).
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
    for index, doc in enumerate(documents):
        doc_id, text = (doc.id, doc.text) if isinstance(doc, Document) else (str(index), doc)
        if not text:
            continue
        text = text[:cap]
        key = int.from_bytes(hashlib.blake2b(f"{doc_id}\x00{len(text)}".encode(), digest_size=8).digest(), "big")
        heapq.heappush(heap, (-key, doc_id, text))
        total += len(text)
        while total > max_bytes and heap:
            _, _, dropped = heapq.heappop(heap)
            total -= len(dropped)
    return [text for _, _, text in sorted(heap, key=lambda item: (-item[0], item[1]))]
