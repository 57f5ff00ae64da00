"""Rebuild the GB1 slice used by examples/pretraining_pays.py (byte-identical, deterministic).

    python examples/data/make_slices.py /work/shared/data/protein_labelled

Source and license: examples/data/SOURCES.md. The other tasks of the example use the slices in
tests/data/finetune (see its SOURCES.md).
"""

from __future__ import annotations

import csv
import io
import random
import sys
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
KEEP = 80  # residues kept: GB1's mutated sites (V39, D40, G41, V54) all lie in the first 56


def gb1(labelled: Path) -> None:
    with zipfile.ZipFile(labelled / "fitness_gb1" / "flip_gb1_splits.zip") as zf:
        rows = list(csv.DictReader(io.TextIOWrapper(zf.open("splits/sampled.csv"), encoding="utf-8")))
    train = [r for r in rows if r["set"] == "train" and r["validation"] != "True"]
    valid = [r for r in rows if r["set"] == "train" and r["validation"] == "True"]
    test = [r for r in rows if r["set"] == "test"]
    rng = random.Random(0)
    for name, pool, n in (("train", train, 400), ("valid", valid, 100), ("test", test, 200)):
        picked = rng.sample(pool, n)
        with (HERE / f"gb1_{name}.csv").open("w", newline="") as fh:
            out = csv.writer(fh, lineterminator="\n")
            out.writerow(["sequence", "label"])
            out.writerows([r["sequence"][:KEEP], r["target"]] for r in picked)


if __name__ == "__main__":
    gb1(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("/work/shared/data/protein_labelled"))
