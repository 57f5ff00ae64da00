"""Proof run of ``contacts --fit`` (ESM's L1 logistic regression on APC-corrected attention) on
foundry's own models, scored on chains the head never saw.

    .venv/bin/python examples/contacts_fit.py --model runs/protein-small/final [--model runs/demo-protein/final ...]

For each model, through the CLI a user runs:

1. ``foundry protein contacts --model COPY --fit modalities/protein/data/structures/fit`` with
   default settings (a copy of the model directory: the head is saved into it), which prints the
   L1 it chose by cross-validation over the fit chains and the cross-validated long P@L/5;
2. ``foundry protein contacts --model COPY SET -o ...`` on the held-out sets, reading the
   per-chain precisions from its metrics.json:
   - ``held_out``: 20 Pfam domains, each a family none of the 20 ``fit`` chains belongs to;
   - ``globins`` (25 SCOPe globin domains) and ``zincfingers`` (15 C2H2 domains), the fold
     example's sets, also absent from ``fit``: they show how a single family fares, not an
     independent sample (homologs inside a set are not independent).

Beside each precision: the random rate (contacts among the pairs of that range, per chain,
averaged: what a random ranking scores) and separation alone (pairs ranked closest first, no
model), both computed here from the same structures; a 95% bootstrap interval over chains.

Writes OUT/contacts_fit.json and prints one table. A few minutes per model on a busy CPU.
Measured numbers: ``examples/README.md`` ("Contacts from foundry's own models").
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
STRUCTURES = ROOT / "modalities/protein/data/structures"
SETS = {"held_out": STRUCTURES / "held_out", "globins": STRUCTURES / "fold/globins",
        "zincfingers": STRUCTURES / "fold/zincfingers"}
RANGES = ("short", "medium", "long")  # |i - j| in [6, 12), [12, 24), >= 24


def foundry(*args) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    done = subprocess.run([sys.executable, "-m", "foundry", *map(str, args)], check=True, env=env, cwd=ROOT,
                          capture_output=True, text=True)
    sys.stderr.write(done.stderr)
    return done.stdout


def separation_alone(folder: Path) -> dict[str, dict[str, float]]:
    """{chain name: {"long_P@L5": ...}}: each range's precision of ranking pairs by sequence separation alone."""
    from modalities.protein.contact_metrics import separation_precisions
    from modalities.protein.structures import read_structures

    return {labels.name: separation_precisions(labels.contacts) for labels in read_structures(folder)}


def interval(values: list[float], n: int = 2000) -> tuple[float, float, float]:
    v = np.array([x for x in values if x is not None and x == x], dtype=float)
    rng = np.random.default_rng(0)
    means = [v[rng.integers(0, len(v), len(v))].mean() for _ in range(n)]
    return float(v.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def measure(model: Path, work: Path) -> dict:
    copy = work / "model"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(model, copy, ignore=shutil.ignore_patterns("contact_head.safetensors"))
    fit_out = foundry("protein", "contacts", "--model", copy, "--fit", STRUCTURES / "fit", "--device", "cpu")
    print(fit_out.strip())
    result = {"model": str(model), "fit": fit_out.strip().splitlines(), "sets": {}}
    for name, folder in SETS.items():
        out = work / name
        foundry("protein", "contacts", "--model", copy, folder, "-o", out, "--overwrite", "--device", "cpu")
        rows = json.loads((out / "metrics.json").read_text())["structures"]
        separation = separation_alone(folder)
        table = {}
        for rng in RANGES:
            key = f"{rng}_P@L5"
            table[rng] = {"head": interval([r[key] for r in rows]),
                          "random": interval([r[f"{rng}_random"] for r in rows]),  # written by `contacts` itself
                          "separation": interval([separation[r["name"]][key] for r in rows])}
        result["sets"][name] = {"n_chains": len(rows), "P@L5": table,
                                "per_chain_long": {r["name"]: r["long_P@L5"] for r in rows}}
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", action="append", required=True, type=Path, help="A foundry protein model directory.")
    ap.add_argument("--out", type=Path, default=ROOT / "runs/contacts-fit")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for model in args.model:
        with tempfile.TemporaryDirectory() as work:
            results.append(measure(model, Path(work)))
    (args.out / "contacts_fit.json").write_text(json.dumps(results, indent=1) + "\n")
    print(f"\n{'model':40s} {'set':12s} {'range':7s} {'head P@L/5 [95%]':24s} {'random':7s} {'sep. alone':10s}")
    for res in results:
        for name, s in res["sets"].items():
            for rng, t in s["P@L5"].items():
                h = t["head"]
                print(f"{res['model'][-40:]:40s} {name:12s} {rng:7s} {h[0]:.3f} [{h[1]:.3f}, {h[2]:.3f}]     "
                      f"{t['random'][0]:.3f}   {t['separation'][0]:.3f}")
    print(f"-> {args.out / 'contacts_fit.json'}")


if __name__ == "__main__":
    main()
