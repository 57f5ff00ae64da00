"""Reading images into one float tensor (N, C, S, S) with values in [0, 1].

Sources:
- a folder of images (``.png .jpg .jpeg .bmp``), searched recursively, in sorted path order;
  labelled: one sub-folder per class (torchvision's ImageFolder layout, ``DIR/<label>/*.png``);
- a CSV file. Pixel rows: one column per pixel, row-major (for colour: row, column, channel), a
  square image (grayscale when the count is a square, else colour when a third of it is); values
  are divided by the largest value in the file (so 0–16 digits and 0–255 MNIST both map to 0–1).
  Or a ``path`` column naming image files (relative to the CSV's folder). Labelled CSVs have a
  header with a ``label`` column; a header is otherwise optional, and ``id`` columns are skipped.

Decisions (documented in the README): every image is **resized** to the model's size (bilinear,
antialiased; non-square images are stretched), so mixed sizes are fine. Channels are **not**
converted: grayscale modes (L, LA, 1, I;16) are 1 channel, everything else RGB (alpha dropped), and
a file whose channel count differs from the run's is an error naming it, because silently
greying a colour image (or tinting a grey one) changes what the model sees.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from foundry.errors import DataError

SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}


@dataclass
class ImageSet:
    images: torch.Tensor  # (N, C, S, S) float32 in [0, 1]
    ids: list[str]  # file paths, or FILE:LINE for CSV rows
    labels: list[str] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])


def normalise(images: torch.Tensor) -> torch.Tensor:
    """What the model sees: [0, 1] pixels centred to [-1, 1]."""
    return (images - 0.5) / 0.5


def _resize(array: np.ndarray, size: int) -> torch.Tensor:
    """(H, W, C) float array -> (C, size, size) tensor."""
    t = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).permute(2, 0, 1)
    if t.shape[1:] != (size, size):
        t = torch.nn.functional.interpolate(t[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
    return t.clamp_(0.0, 1.0)


def load_image(path: Path, size: int) -> torch.Tensor:
    """One image file as (C, size, size) in [0, 1]; C = 1 for grayscale files, else 3."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()  # decodes now: a truncated file fails here, naming itself
            if img.mode in GRAY_MODES:
                if img.mode.startswith("I") or img.mode == "F":
                    array = np.asarray(img, dtype=np.float32) / (65535.0 if img.mode.startswith("I") else 1.0)
                else:
                    array = np.asarray(img.convert("L"), dtype=np.float32) / 255.0
                array = array[..., None]
            else:
                array = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    except UnidentifiedImageError:
        raise DataError(f"{path}: not an image file foundry can read (png, jpeg, bmp)") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"{path}: unreadable or truncated image ({exc})") from None
    return _resize(array, size)


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES and not p.name.startswith("."))


def _stack(tensors: list[torch.Tensor], ids: list[str], channels: int | None) -> torch.Tensor:
    """One tensor; every image must have ``channels`` (or the first image's) channels."""
    want = channels or int(tensors[0].shape[0])
    for t, rid in zip(tensors, ids):
        if t.shape[0] != want:
            kind = {1: "grayscale (1 channel)", 3: "colour (3 channels)"}
            raise DataError(f"{rid}: a {kind[int(t.shape[0])]} image where the run uses {kind.get(want, f'{want} channels')} images"
                            f"{'' if channels else f' (as {ids[0]})'}; convert the images to one mode")
    return torch.stack(tensors)


def read_images(path: Path, size: int, channels: int | None = None) -> ImageSet:
    """Unlabelled images from a folder (recursive) or a CSV (pixel rows or a path column)."""
    path = Path(path)
    if path.is_dir():
        files = image_files(path)
        if not files:
            raise DataError(f"{path}: no images ({', '.join(SUFFIXES)}) in this folder or below")
        ids = [str(f) for f in files]
        return ImageSet(_stack([load_image(f, size) for f in files], ids, channels), ids)
    if path.is_file() and path.suffix.lower() == ".csv":
        return _read_csv(path, size, channels, labelled=False)
    if path.is_file() and path.suffix.lower() in SUFFIXES:
        return ImageSet(_stack([load_image(path, size)], [str(path)], channels), [str(path)])
    raise DataError(f"{path}: not a folder of images or a .csv file")


def read_labelled(path: Path, size: int, channels: int | None = None) -> ImageSet:
    """Labelled images: ``DIR/<label>/...`` (ImageFolder) or a CSV with a ``label`` column."""
    path = Path(path)
    if path.is_file() and path.suffix.lower() == ".csv":
        return _read_csv(path, size, channels, labelled=True)
    if not path.is_dir():
        raise DataError(f"{path}: not a folder of class folders (DIR/<label>/*.png) or a .csv file with a label column")
    classes = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{path}: no class folders; expected DIR/<label>/*.png (one folder per class)")
    files, labels = [], []
    for folder in classes:
        found = image_files(folder)
        if not found:
            raise DataError(f"{folder}: empty class folder (no {', '.join(SUFFIXES)} images) for label {folder.name!r}")
        files += found
        labels += [folder.name] * len(found)
    ids = [str(f) for f in files]
    return ImageSet(_stack([load_image(f, size) for f in files], ids, channels), ids, labels)


def _is_number(cell: str) -> bool:
    try:
        float(cell)
        return True
    except ValueError:
        return False


def _shape(n: int, where: str) -> tuple[int, int]:
    """(side, channels) of a square image with ``n`` values per row."""
    for channels in (1, 3):
        side = int(round((n / channels) ** 0.5))
        if n % channels == 0 and side * side * channels == n and side > 0:
            return side, channels
    raise DataError(f"{where}: {n} pixel values is not a square image (side² grayscale or 3·side² colour values)")


def _read_csv(path: Path, size: int, channels: int | None, labelled: bool) -> ImageSet:
    with open(path, newline="", encoding="utf-8") as handle:
        rows = [(i, r) for i, r in enumerate(csv.reader(handle), start=1) if r and any(c.strip() for c in r)]
    if not rows:
        raise DataError(f"{path}: empty CSV file")
    header = None if all(_is_number(c) for c in rows[0][1]) else [c.strip() for c in rows[0][1]]
    body = rows[1:] if header else rows
    if labelled and (header is None or "label" not in header):
        raise DataError(f"{path} line 1: a labelled CSV needs a header with a 'label' column (and pixel columns or a 'path' column)")
    if not body:
        raise DataError(f"{path}: no data rows")
    names = header or [str(i) for i in range(len(rows[0][1]))]
    label_at = names.index("label") if "label" in names else None
    if "path" in names:
        return _csv_paths(path, body, names, label_at, size, channels)
    pixel_at = [i for i, n in enumerate(names) if n not in ("label", "id")]
    side, file_channels = _shape(len(pixel_at), f"{path} line {body[0][0]}")
    values, labels, ids = [], [], []
    for line, row in body:
        if len(row) != len(names):
            raise DataError(f"{path} line {line}: {len(row) - (len(names) - len(pixel_at))} pixel values, expected {len(pixel_at)} "
                            f"(a {side}×{side} image{'' if file_channels == 1 else ' with 3 channels'})")
        try:
            values.append([float(row[i]) for i in pixel_at])
        except ValueError:
            bad = next(row[i] for i in pixel_at if not _is_number(row[i]))
            raise DataError(f"{path} line {line}: pixel value {bad!r} is not a number") from None
        labels.append(row[label_at].strip() if label_at is not None else None)
        ids.append(f"{path}:{line}")
    array = np.asarray(values, dtype=np.float32)
    top = float(array.max()) if array.size else 1.0
    array = array / (top if top > 1.0 else 1.0)  # see the module docstring: the file's largest value is white
    array = array.reshape(len(values), side, side, file_channels)
    tensors = [_resize(a, size) for a in array]
    return ImageSet(_stack(tensors, ids, channels), ids, labels if label_at is not None else None)


def _csv_paths(path: Path, body, names: list[str], label_at, size: int, channels: int | None) -> ImageSet:
    path_at = names.index("path")
    tensors, labels, ids = [], [], []
    for line, row in body:
        if len(row) != len(names):
            raise DataError(f"{path} line {line}: {len(row)} fields, expected {len(names)} ({', '.join(names)})")
        target = (path.parent / row[path_at].strip())
        if not target.is_file():
            raise DataError(f"{path} line {line}: image {row[path_at].strip()!r} not found (paths are relative to the CSV's folder)")
        try:
            tensors.append(load_image(target, size))
        except DataError as exc:
            raise DataError(f"{path} line {line}: {exc}") from None
        labels.append(row[label_at].strip() if label_at is not None else None)
        ids.append(f"{path}:{line}")
    return ImageSet(_stack(tensors, ids, channels), ids, labels if label_at is not None else None)
