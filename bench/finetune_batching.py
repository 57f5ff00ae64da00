"""Fine-tuning batches: fixed rows padded to the longest (``--batch-size 16``, the default) vs a
token budget with length bucketing (``--batch-tokens``), on real FLIP secondary-structure chains.

    .venv/bin/python bench/finetune_batching.py                      # 320 SS3 chains, 1 epoch, 1 thread, ~2 min
    .venv/bin/python bench/finetune_batching.py --examples 1000 --repeats 2 --batch-tokens 4096

Both sides run the real command, ``foundry protein finetune --task residue-classification``, in
this process, on the same examples for the same number of epochs: a random sample (seed 0) of
FLIP's SS3 training split (``SET=train VALIDATION=False``, 9,712 PDB chains of 20-1,632 residues,
unresolved residues unlabelled as its mask says), 32 validation chains, ``max_len`` 1024 (the
default), an ``esm2_tiny`` model from scratch (4 layers, d 128). The budget's default, 16 x the
mean token count, makes the two sides take about the same number of optimizer steps.

Data: FLIP's ``splits.zip`` (``--flip``, by default the copy under /work/shared/data; github
J-SNACKKB/FLIP ``splits/secondary_structure/splits.zip`` @ 62cace8, AFL-3.0, NetSurfP-2.0 data).
Without it, ``bench/data/flip_ss3_train_lengths.txt`` (the same split's lengths, taken from that
file) gives the lengths, with random residues and labels: the same shapes, hence the same cost.

Numbers, from the run's own ``metrics.jsonl`` (one record per step): real tokens and the padding
fraction (1 - real / padded slots, over the whole run), training tokens/s (real tokens / the
summed step times; with several epochs a step after an evaluation includes it, on both sides
alike), and the wall time of the whole command (reading, training, evaluation, saving). Runs alternate (rows, tokens, tokens, rows, …) so load from other users of a shared
machine hits both alike. The last line of output is one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import torch

from common import ROOT, machine, print_json

from foundry.cli import main as foundry_main

FLIP = Path("/work/shared/data/protein_labelled/secondary_structure/flip_ss3_splits.zip")
LENGTHS = ROOT / "bench" / "data" / "flip_ss3_train_lengths.txt"
AMINO = "ACDEFGHIKLMNPQRSTVWY"


def _fasta(text: str) -> tuple[dict[str, str], dict[str, str]]:
    """({id: string}, {id: header}) of a FASTA file's text."""
    strings, headers, current = {}, {}, None
    for line in text.splitlines():
        if line.startswith(">"):
            current = line[1:].split()[0]
            strings[current], headers[current] = "", line[1:]
        elif current is not None:
            strings[current] += line.strip()
    return strings, headers


def flip_ss3(path: Path) -> dict[str, list[tuple[str, str, str]]]:
    """{"train"/"valid": [(id, sequence, 3-state label with '.' where the mask says 0)]}."""
    with zipfile.ZipFile(path) as z:
        read = {Path(n).name: z.read(n).decode() for n in z.namelist() if n.endswith(".fasta")}
    sequences, _ = _fasta(read["sequences.fasta"])
    labels, headers = _fasta(read["sampled.fasta"])
    masks, _ = _fasta(read["mask.fasta"])
    splits: dict[str, list] = {"train": [], "valid": []}
    for rid, label in labels.items():
        words = headers[rid].split()
        if "SET=train" not in words:
            continue
        label = "".join(c if m == "1" else "." for c, m in zip(label, masks[rid]))
        splits["valid" if "VALIDATION=True" in words else "train"].append((rid, sequences[rid], label))
    return splits


def from_lengths(path: Path, rng: np.random.Generator) -> dict[str, list[tuple[str, str, str]]]:
    """Random residues and labels at FLIP SS3's real training lengths (no FLIP zip at hand)."""
    lengths = [int(x) for line in path.read_text().splitlines() if not line.startswith("#") for x in line.split()]
    rows = [(f"chain{i}", "".join(rng.choice(list(AMINO), n)), "".join(rng.choice(list("HEC"), n))) for i, n in enumerate(lengths)]
    return {"train": rows, "valid": rows[:64]}


def write_table(rows, path: Path) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "sequence", "label"])
        writer.writerows(rows)
    return path


def finetune(train: Path, valid: Path, out: Path, epochs: int, batching: list[str]) -> dict:
    """One ``foundry protein finetune`` run; its step records and wall time."""
    args = ["protein", "finetune", "--model", "esm2_tiny", "--task", "residue-classification", "--train", str(train),
            "--valid", str(valid), "--out", str(out), "--epochs", str(epochs), "--no-forgetting", "--quiet", *batching]
    start = time.perf_counter()
    printed = io.StringIO()  # the command's own report: not this benchmark's output
    try:
        with contextlib.redirect_stdout(printed):
            foundry_main(args)
    except SystemExit as exc:
        if exc.code:
            raise RuntimeError(f"foundry {' '.join(args)} exited {exc.code}:\n{printed.getvalue()}") from None
    wall = time.perf_counter() - start
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "lr" in r]
    final = [r for r in records if r.get("final") and r.get("split") == "valid"]
    return {"steps": steps, "wall_s": wall, "valid": final[-1] if final else {}}


def summarise(name: str, run: dict) -> dict:
    steps = run["steps"]
    real = np.diff([0] + [s["tokens"] for s in steps]).astype(float)
    slots = real / (1.0 - np.array([s["padding_fraction"] for s in steps]))
    seconds = real / np.array([s["tokens_per_s"] for s in steps])  # log_every 1: one step per window
    return {
        "batching": name, "steps": len(steps), "real_tokens": int(real.sum()), "padded_slots": int(round(slots.sum())),
        "padding_fraction": round(1.0 - real.sum() / slots.sum(), 4), "train_s": round(float(seconds.sum()), 2),
        "tokens_per_s": round(float(real.sum() / seconds.sum()), 1), "wall_s": round(run["wall_s"], 2),
        "valid_q3": round(run["valid"].get("q3", float("nan")), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flip", type=Path, default=FLIP, help="FLIP's secondary_structure/splits.zip")
    parser.add_argument("--examples", type=int, default=320, help="training chains sampled from the split (seed 0)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=16, help="rows per padded batch (the default fine-tuning batch)")
    parser.add_argument("--batch-tokens", type=int, default=None, help="token budget (default: batch size x mean tokens)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per side, alternating")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads; 0 = torch's default")
    args = parser.parse_args()
    if args.threads:
        # On shared cores, intra-op threads wait for each other at every op: a tiny model's step then
        # costs the same at any batch shape (measured here: 2 threads at load 8 were ~8x slower than 1)
        # and the comparison would measure scheduling, not the work.
        torch.set_num_threads(args.threads)

    rng = np.random.default_rng(0)
    source = str(args.flip) if args.flip.exists() else f"{LENGTHS.relative_to(ROOT)} (lengths only; random residues)"
    splits = flip_ss3(args.flip) if args.flip.exists() else from_lengths(LENGTHS, rng)
    train = [splits["train"][i] for i in sorted(rng.choice(len(splits["train"]), min(args.examples, len(splits["train"])), replace=False))]
    valid = [splits["valid"][i] for i in sorted(rng.choice(len(splits["valid"]), 32, replace=False))]
    tokens = [min(len(seq), 1022) + 2 for _, seq, _ in train]  # <cls> body <eos>, bodies cut at max_len 1024
    budget = args.batch_tokens or int(args.batch_size * np.mean(tokens))
    print(f"data: {source}; {len(train)} training chains, {np.mean(tokens):.0f} tokens on average "
          f"(min {min(tokens)}, median {int(np.median(tokens))}, max {max(tokens)}), {len(valid)} validation chains")
    print(f"sides: --batch-size {args.batch_size} (padded to the longest) vs --batch-tokens {budget}; {args.epochs} epoch(s); "
          f"esm2_tiny from scratch; torch threads {torch.get_num_threads()}")

    sides = {"rows": ["--batch-size", str(args.batch_size)], "tokens": ["--batch-tokens", str(budget)]}
    order = [name for r in range(args.repeats) for name in (("rows", "tokens") if r % 2 == 0 else ("tokens", "rows"))]
    results: dict[str, list[dict]] = {"rows": [], "tokens": []}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        train_csv, valid_csv = write_table(train, root / "train.csv"), write_table(valid, root / "valid.csv")
        # untimed: the first run in a process pays for imports and first allocations
        finetune(write_table(train[:8], root / "warm.csv"), write_table(valid[:2], root / "warm_valid.csv"), root / "warm", 1, sides["rows"])
        for i, name in enumerate(order):
            result = summarise(name, finetune(train_csv, valid_csv, root / f"run{i}", args.epochs, sides[name]))
            results[name].append(result)
            print(f"  {name:6s} steps {result['steps']:4d}  padding {result['padding_fraction']:6.1%}  "
                  f"{result['tokens_per_s']:8,.0f} real tok/s  train {result['train_s']:7.1f} s  wall {result['wall_s']:7.1f} s  "
                  f"valid Q3 {result['valid_q3']:.3f}")

    def best(name: str, key: str, pick=min) -> float:
        return pick(r[key] for r in results[name])

    ratio = {
        "tokens_per_s": round(best("tokens", "tokens_per_s", max) / best("rows", "tokens_per_s", max), 2),
        "train_time": round(best("rows", "train_s") / best("tokens", "train_s"), 2),
        "wall_time": round(best("rows", "wall_s") / best("tokens", "wall_s"), 2),
    }
    print(f"token budget vs padded rows (best of {args.repeats}): {ratio['tokens_per_s']}x real tokens/s, "
          f"{ratio['train_time']}x less training time, {ratio['wall_time']}x less wall time; padding "
          f"{results['rows'][0]['padding_fraction']:.1%} -> {results['tokens'][0]['padding_fraction']:.1%}")
    print_json({"bench": "finetune_batching", "data": source, "examples": len(train), "epochs": args.epochs,
                "batch_size": args.batch_size, "batch_tokens": budget, "runs": results, "ratio": ratio, "machine": machine()})


if __name__ == "__main__":
    main()
