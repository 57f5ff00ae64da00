"""Pictures and file names for per-record outputs: pairwise maps as PNG with zlib only (axes in
sequence positions, a colour bar, known pairs overlaid; text from ``images_font.py``), so no
imaging dependency is needed, and record ids turned into safe, unique file stems."""

from __future__ import annotations

import re
import struct
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_names(ids: Sequence[str]) -> list[str]:
    """File-name stems for record ids (``sp|P69905|HBA_HUMAN`` -> ``sp_P69905_HBA_HUMAN``), unique.

    An id keeps its own characters where they are safe (``d1or4a_`` stays ``d1or4a_``); only a
    leading dot (a hidden file) is dropped."""
    seen: dict[str, int] = {}
    out = []
    for rid in ids:
        stem = _UNSAFE.sub("_", rid).lstrip(".") or "record"
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


WHITE, BLUE = np.array([255.0, 255.0, 255.0]), np.array([8.0, 48.0, 107.0])
TRUE_COLOR, UNKNOWN_COLOR = (220, 30, 30), (205, 205, 205)


def _nice_step(n: int, max_ticks: int = 8) -> int:
    for step in (1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000, 2000, 5000, 10000):
        if n / step <= max_ticks:
            return step
    return 10 ** len(str(n))


def _colors(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> RGB, white -> dark blue."""
    return WHITE + np.clip(values, 0, 1)[..., None] * (BLUE - WHITE)


def pair_map_image(values: np.ndarray, truth: np.ndarray | None = None, min_side: int = 400,
                   value_label: str = "probability", truth_label: str = "true pairs", axis_label: str = "position",
                   first: int = 1) -> np.ndarray:
    """(L, L) values in [0, 1] -> an RGB picture a person can read: the map (white -> dark blue,
    the darkest at the map's largest value, so faint maps stay visible), axes numbered in sequence
    positions (``first`` = the number of row 0), a colour bar in the values' units. With
    ``truth`` (1 / 0 / -1 unknown), the lower triangle also marks the true pairs in red and greys
    unknown pairs; the upper triangle shows the values alone."""
    from .images_font import HEIGHT, draw_text, text_width

    v = np.clip(np.nan_to_num(np.asarray(values, dtype=np.float64)), 0, 1)
    n = v.shape[0]
    top_value = float(v.max()) if v.size and v.max() > 0 else 1.0
    scale = max(1, -(-min_side // max(1, n)))
    cells = _colors(v / top_value)
    if truth is not None:
        truth = np.asarray(truth)
        lower = np.tril(np.ones(v.shape, dtype=bool), k=-1)
        cells[lower & (truth < 0)] = 0.5 * cells[lower & (truth < 0)] + 0.5 * np.array(UNKNOWN_COLOR)
    grid = np.repeat(np.repeat(cells, scale, axis=0), scale, axis=1)
    if truth is not None:
        _mark(grid, np.argwhere(lower & (truth == 1)), scale)
    side = n * scale

    step = _nice_step(n)
    ticks = [t for t in range(step, first + n, step) if t >= first] or [first]
    label_w = text_width(str(first + n - 1))
    left, top, bottom = label_w + 8 + HEIGHT + 6, 8 + (HEIGHT + 6 if truth is not None else 0), HEIGHT * 2 + 18
    bar_x = left + side + 14
    bar_labels = [(1.0, f"{top_value:.2g}"), (0.5, f"{top_value / 2:.2g}"), (0.0, "0")]
    right = 14 + 12 + 6 + max(text_width(t) for _, t in bar_labels) + 6 + HEIGHT + 4
    img = np.full((top + side + bottom, left + side + right, 3), 255, dtype=np.uint8)
    img[top : top + side, left : left + side] = grid.round().astype(np.uint8)
    img[top - 1, left - 1 : left + side + 1] = img[top + side, left - 1 : left + side + 1] = 0  # frame
    img[top - 1 : top + side + 1, left - 1] = img[top - 1 : top + side + 1, left + side] = 0
    for t in ticks:
        at = (t - first) * scale + scale // 2
        img[top + side + 1 : top + side + 4, left + at] = 0  # x tick
        draw_text(img, str(t), left + at - text_width(str(t)) // 2, top + side + 5)
        img[top + at, left - 4 : left - 1] = 0  # y tick
        draw_text(img, str(t), left - 6 - text_width(str(t)), top + at - HEIGHT // 2)
    draw_text(img, axis_label, left + side // 2 - text_width(axis_label) // 2, top + side + HEIGHT + 10)
    draw_text(img, axis_label, 2, top + side // 2 + text_width(axis_label) // 2, vertical=True)
    # colour bar: the largest value at the top, 0 at the bottom
    ramp = _colors(np.linspace(1, 0, side))[:, None, :].repeat(12, axis=1)
    img[top : top + side, bar_x : bar_x + 12] = ramp.round().astype(np.uint8)
    img[top - 1, bar_x - 1 : bar_x + 13] = img[top + side, bar_x - 1 : bar_x + 13] = 0
    img[top - 1 : top + side + 1, bar_x - 1] = img[top - 1 : top + side + 1, bar_x + 12] = 0
    for value, text in bar_labels:
        y = top + round((1 - value) * (side - 1))
        img[y, bar_x + 12 : bar_x + 16] = 0
        draw_text(img, text, bar_x + 18, min(max(y - HEIGHT // 2, 0), img.shape[0] - HEIGHT))
    draw_text(img, value_label, img.shape[1] - HEIGHT - 2, top + side // 2 + text_width(value_label) // 2, vertical=True)
    if truth is not None:  # legend
        img[4 : 4 + HEIGHT, left : left + HEIGHT] = TRUE_COLOR
        draw_text(img, f"{truth_label} (lower left)", left + HEIGHT + 4, 4)
    return img


def _mark(grid: np.ndarray, pairs: np.ndarray, scale: int) -> None:
    """True pairs: a hollow square when cells are big enough to keep the value visible inside."""
    for i, j in pairs:
        y, x = i * scale, j * scale
        cell = grid[y : y + scale, x : x + scale]
        if scale >= 4:
            cell[0, :] = cell[-1, :] = cell[:, 0] = cell[:, -1] = TRUE_COLOR
        else:
            cell[...] = TRUE_COLOR

