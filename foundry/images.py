"""Pictures and file names for per-record outputs: pairwise maps (contacts) as PNG with zlib only,
so no imaging dependency is needed, and record ids turned into safe, unique file stems."""

from __future__ import annotations

import re
import struct
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_names(ids: Sequence[str]) -> list[str]:
    """File-name stems for record ids (``sp|P69905|HBA_HUMAN`` -> ``sp_P69905_HBA_HUMAN``), unique."""
    seen: dict[str, int] = {}
    out = []
    for rid in ids:
        stem = _UNSAFE.sub("_", rid).strip("._") or "record"
        stem = stem[:150]
        n = seen.get(stem.lower(), 0)
        seen[stem.lower()] = n + 1
        out.append(stem if n == 0 else f"{stem}__{n + 1}")
    return out


def write_png(path: Path, image: np.ndarray) -> None:
    """(H, W, 3) uint8 RGB -> PNG, with zlib only (no imaging dependency)."""
    image = np.ascontiguousarray(image, dtype=np.uint8)
    h, w, _ = image.shape
    raw = b"".join(b"\x00" + image[row].tobytes() for row in range(h))  # filter type 0 per row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)  # 8-bit RGB
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))


def contact_image(probs: np.ndarray, truth: np.ndarray | None = None, min_side: int = 400) -> np.ndarray:
    """Predicted probabilities as white -> dark blue; with ``truth``, the lower triangle shows the
    true contacts (black), unknown pairs (light grey) and the upper triangle the prediction."""
    p = np.clip(np.nan_to_num(np.asarray(probs, dtype=np.float64)), 0, 1)
    white, blue = np.array([255.0, 255.0, 255.0]), np.array([8.0, 48.0, 107.0])
    img = white + p[..., None] * (blue - white)
    if truth is not None:
        lower = np.tril(np.ones(p.shape, dtype=bool), k=-1)
        img[lower & (truth == 1)] = (0, 0, 0)
        img[lower & (truth == 0)] = (255, 255, 255)
        img[lower & (truth < 0)] = (220, 220, 220)
    scale = max(1, -(-min_side // max(1, p.shape[0])))
    img = np.repeat(np.repeat(img, scale, axis=0), scale, axis=1)
    return img.round().astype(np.uint8)
