"""Pictures of fine-tuning results, drawn with numpy and written by ``foundry.images.write_png``
(no imaging dependency).

``confusion_image``: the confusion matrix as a grid, true classes down, predicted across. Each
cell is shaded by its share of the true class's rows (its row's recall: the diagonal dark when
the model is right, a dark column when it predicts one class for everything) and shows its count;
class names label rows and columns, with the recall of each class at the end of its row.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..images import write_png
from ..images_font import HEIGHT, draw_text, text_width

WHITE, BLUE, GREY = np.array([255.0, 255.0, 255.0]), np.array([8.0, 48.0, 107.0]), (120, 120, 120)
SCALE = 2  # text drawn at twice the font's size, to be readable


def _printable(text: str) -> str:
    """The font has lowercase letters, digits and a few capitals: other capitals draw lowercase."""
    from .. import images_font

    glyphs = getattr(images_font, "_GLYPHS", {})
    return "".join(c if c in glyphs or c.lower() not in glyphs else c.lower() for c in text)


def _text(image: np.ndarray, text: str, x: int, y: int, color=(0, 0, 0)) -> None:
    """``text`` at ``SCALE`` times the font size, top-left corner at (x, y)."""
    text = _printable(text)
    h, w = HEIGHT, max(1, text_width(text))
    small = np.full((h, w, 3), 255, np.uint8)
    draw_text(small, text, 0, 0, color=(0, 0, 0))
    ink = (small < 128).all(-1).repeat(SCALE, 0).repeat(SCALE, 1)
    region = image[y : y + ink.shape[0], x : x + ink.shape[1]]
    region[ink[: region.shape[0], : region.shape[1]]] = color


def _width(text: str) -> int:
    return text_width(_printable(text)) * SCALE


def confusion_image(report: dict, title: str = "") -> np.ndarray:
    """(H, W, 3) uint8 picture of ``report`` (``metrics.class_report``)."""
    names, matrix = report["classes"], np.asarray(report["confusion"], dtype=np.int64)
    k = len(names)
    counts = [str(v) for v in matrix.ravel()] + ["0"]
    cell = max(48, max(_width(c) for c in counts) + 12, *(_width(n) + 12 for n in names))
    line = HEIGHT * SCALE + 8
    left = max(_width("true"), *(_width(n) for n in names)) + 16
    top = 2 * line + line + 8  # title, "predicted", class names
    recall_w = _width("recall 0.000") + 16
    h, w = top + k * cell + 12, left + k * cell + recall_w
    image = np.full((h, max(w, _width(title) + 16), 3), 255, np.uint8)
    if title:
        _text(image, title, 8, 6)
    _text(image, "predicted", left + (k * cell - _width("predicted")) // 2, 6 + line)
    _text(image, "true", 6, top - line)
    support = matrix.sum(1)
    for j, name in enumerate(names):
        _text(image, name, left + j * cell + (cell - _width(name)) // 2, top - line)
    for i, name in enumerate(names):
        y = top + i * cell
        _text(image, name, left - _width(name) - 8, y + (cell - HEIGHT * SCALE) // 2)
        for j in range(k):
            share = matrix[i, j] / support[i] if support[i] else 0.0
            color = WHITE + share * (BLUE - WHITE)
            x = left + j * cell
            image[y + 1 : y + cell, x + 1 : x + cell] = color.astype(np.uint8)
            ink = (255, 255, 255) if share > 0.5 else (0, 0, 0)
            text = str(matrix[i, j])
            _text(image, text, x + (cell - _width(text)) // 2, y + (cell - HEIGHT * SCALE) // 2, ink)
        recall = f"recall {matrix[i, i] / support[i]:.3f}" if support[i] else "recall -"
        _text(image, recall, left + k * cell + 10, y + (cell - HEIGHT * SCALE) // 2, GREY)
    grid = image[top : top + k * cell + 1, left : left + k * cell + 1]
    grid[::cell, :] = 160  # cell borders
    grid[:, ::cell] = 160
    return image


def write_confusion_png(path: Path, report: dict, title: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_png(Path(path), confusion_image(report, title))
