"""Throughput of ``foundry protein prepare``: FASTA.gz → memory-mapped shards, 1 and 2 workers.

    .venv/bin/python bench/prepare_throughput.py [FASTA ...] [--workers 1 2] [--repeat 3]

Default input: the 20,000 UniProtKB sequences of the mmseqs2 example DB. For each worker count it
runs ``prepare`` (fresh output folder, progress bar off, fsync on: the real thing) ``--repeat``
times and reports the best wall time as residues/s and tokens/s, plus a reference row: the same
file only read and tokenized in this process (no shards), i.e. the cost of the work itself.
The last line of output is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from foundry.data.prepare import open_prepared, prepare  # noqa: E402
from foundry.plugins import get_manager  # noqa: E402

DEFAULT_INPUT = Path("/work/shared/data/protein_sequences/mmseqs2_uniprot_DB.fasta.gz")


def protein_parts():
    manager = get_manager()
    if "protein" not in manager.modalities:
        # foundry not pip-installed (no entry points): register the built-in plugin the same way
        from modalities.protein import plugin

        manager.register_plugin(plugin, "protein")
    modality = manager.modality("protein")
    return modality, manager.reader_objects(modality.readers), modality.build_tokenizer([], {})


def read_and_tokenize(inputs, readers, tokenizer) -> tuple[float, int, int]:
    from foundry.readers import read_documents

    t0 = time.perf_counter()
    residues = tokens = 0
    batch = []
    for doc in read_documents(inputs, readers):
        batch.append(doc.text)
        residues += len(doc.text)
        if len(batch) == 2048:
            tokens += sum(len(x) for x in tokenizer.encode_batch(batch))
            batch = []
    tokens += sum(len(x) for x in tokenizer.encode_batch(batch))
    return time.perf_counter() - t0, residues, tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("inputs", nargs="*", type=Path, default=[DEFAULT_INPUT])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    _, readers, tokenizer = protein_parts()
    results = {"inputs": [str(p) for p in args.inputs], "cpus": os.cpu_count(), "python": platform.python_version()}

    best = min(read_and_tokenize(args.inputs, readers, tokenizer)[0] for _ in range(args.repeat))
    _, residues, tokens = read_and_tokenize(args.inputs, readers, tokenizer)
    results["read_tokenize_only"] = {"seconds": round(best, 3), "residues_per_s": round(residues / best)}
    print(f"read+tokenize only (no shards): {best:.2f} s, {residues / best:,.0f} residues/s")

    scratch = Path(tempfile.mkdtemp(prefix="foundry-bench-"))
    try:
        for workers in args.workers:
            times = []
            for r in range(args.repeat):
                out = scratch / f"w{workers}-{r}"
                t0 = time.perf_counter()
                manifest = prepare(args.inputs, readers, tokenizer, out, workers=workers, progress=False)
                times.append(time.perf_counter() - t0)
            data = open_prepared(out, expected_fingerprint=tokenizer.fingerprint())
            docs = len(data.train) + len(data.valid)
            res = manifest.train.chars + manifest.valid.chars
            tok = manifest.train.tokens + manifest.valid.tokens
            t = min(times)
            results[f"workers_{workers}"] = {
                "seconds": round(t, 3), "docs": docs, "residues": res, "tokens": tok,
                "residues_per_s": round(res / t), "tokens_per_s": round(tok / t),
                "shard_bytes": sum(p.stat().st_size for p in out.rglob("tokens.bin")),
            }
            print(f"prepare, {workers} worker(s): {docs} docs, {res:,} residues in {t:.2f} s "
                  f"= {res / t:,.0f} residues/s, {tok / t:,.0f} tokens/s")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if "workers_1" in results and "workers_2" in results:
        results["speedup_2_vs_1"] = round(results["workers_1"]["seconds"] / results["workers_2"]["seconds"], 2)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
