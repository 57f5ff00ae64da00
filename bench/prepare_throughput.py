"""Throughput of ``foundry protein prepare``: FASTA.gz → memory-mapped shards, 1 and 2 workers.

    .venv/bin/python bench/prepare_throughput.py [FASTA ...] [--workers 1 2] [--repeat 3]

Default input: the 20,000 UniProtKB sequences of the mmseqs2 example DB. For each worker count it
runs ``prepare`` (fresh output folder, progress bar off, fsync on: the real thing) ``--repeat``
times and reports the best wall time as residues/s and tokens/s, plus a reference row: the same
file only read and tokenized in this process (no shards), i.e. the cost of the work itself.

Two layouts, because they parallelize differently: ``single`` (the one .fasta.gz as given: the
parent reads and parses, workers only tokenize) and ``parts`` (the same records re-written as
``--parts`` .fasta.gz files, as large corpora usually ship: each worker reads, parses and
tokenizes whole files). The last line of output is one JSON object with every figure.
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


def split_into_parts(inputs, readers, folder: Path, parts: int) -> list[Path]:
    """Re-write the records round-robin into ``parts`` gzipped FASTA files."""
    import gzip

    from foundry.readers import read_documents

    folder.mkdir(parents=True)
    paths = [folder / f"part-{i:03d}.fasta.gz" for i in range(parts)]
    handles = [gzip.open(p, "wt") for p in paths]
    for i, doc in enumerate(read_documents(inputs, readers)):
        handles[i % parts].write(f">{doc.id}\n{doc.text}\n")
    for h in handles:
        h.close()
    return paths


def run_prepare(inputs, readers, tokenizer, out_root: Path, workers: int, repeat: int) -> dict:
    times = []
    for r in range(repeat):
        out = out_root / str(r)
        t0 = time.perf_counter()
        manifest = prepare(inputs, readers, tokenizer, out, workers=workers, progress=False)
        times.append(time.perf_counter() - t0)
    data = open_prepared(out, expected_fingerprint=tokenizer.fingerprint())
    res = manifest.train.chars + manifest.valid.chars
    tok = manifest.train.tokens + manifest.valid.tokens
    t = min(times)
    return {
        "files": len(inputs), "seconds": round(t, 3), "docs": len(data.train) + len(data.valid), "residues": res,
        "tokens": tok, "residues_per_s": round(res / t), "tokens_per_s": round(tok / t),
        "shard_bytes": sum(p.stat().st_size for p in out.rglob("tokens.bin")),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("inputs", nargs="*", type=Path, default=[DEFAULT_INPUT])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--parts", type=int, default=8)
    args = ap.parse_args()

    _, readers, tokenizer = protein_parts()
    results = {"inputs": [str(p) for p in args.inputs], "cpus": os.cpu_count(), "python": platform.python_version()}

    best = min(read_and_tokenize(args.inputs, readers, tokenizer)[0] for _ in range(args.repeat))
    _, residues, tokens = read_and_tokenize(args.inputs, readers, tokenizer)
    results["read_tokenize_only"] = {"seconds": round(best, 3), "residues_per_s": round(residues / best)}
    print(f"read+tokenize only (no shards): {best:.2f} s, {residues / best:,.0f} residues/s")

    scratch = Path(tempfile.mkdtemp(prefix="foundry-bench-"))
    try:
        parts = split_into_parts(args.inputs, readers, scratch / "parts", args.parts)
        layouts = {"single": args.inputs, "parts": parts}
        for layout, inputs in layouts.items():
            for workers in args.workers:
                key = f"{layout}_workers_{workers}"
                results[key] = run_prepare(inputs, readers, tokenizer, scratch / key, workers, args.repeat)
                r = results[key]
                print(f"prepare [{layout}, {len(inputs)} file(s)], {workers} worker(s): {r['docs']} docs, "
                      f"{r['residues']:,} residues in {r['seconds']:.2f} s = {r['residues_per_s']:,} residues/s")
            if len(args.workers) > 1:
                w0, w1 = args.workers[0], args.workers[-1]
                results[f"{layout}_speedup_{w1}_vs_{w0}"] = round(
                    results[f"{layout}_workers_{w0}"]["seconds"] / results[f"{layout}_workers_{w1}"]["seconds"], 2)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
