"""Embedding extraction: ``foundry protein embed``'s loop against fair-esm's scripts/extract.py loop.

    .venv/bin/python bench/embed_vs_esm_extract.py                      # 1,000 UniProt sequences, CPU
    .venv/bin/python bench/embed_vs_esm_extract.py --limit 2000 --device cuda --layers 6

One model, one process: an ESM-2 with the 8M shape (6 layers, 320 wide, 20 heads; random
weights, none are downloaded) is built with fair-esm, saved as a fair-esm checkpoint and imported
by foundry. Both sides embed the same sequences (cropped to 1022 residues, esm-extract's default)
with the same token budget per batch and keep per-residue and mean representations of the chosen
layers in memory (no disk writes on either side, so the file format is not what is timed):

- fair-esm: ``FastaBatchedDataset.get_batch_indices`` + ``BatchConverter`` + ``ESM2(repr_layers=...)``
  then ``t[i, 1:len+1].clone()`` and its mean, as extract.py does;
- foundry: ``modalities.protein.embed.embed_sequences`` (length-sorted batches, padded).

The means are checked to agree before timings are reported. Each side runs once after a warm-up
on a few batches (2 shared CPU cores: long repeats cost more than they tell). The last line of
output is one JSON object.
"""

from __future__ import annotations

import argparse
import gzip
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
from Bio.SeqIO.FastaIO import SimpleFastaParser

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from modalities.protein.embed import embed_sequences, length_batches, load_protein_model  # noqa: E402

SHARED = Path("/work/shared/data/protein_sequences/mmseqs2_uniprot_DB.fasta.gz")
BUNDLED = ROOT / "modalities" / "protein" / "data" / "uniprot_sample.fasta.gz"


def read_records(path: Path, limit: int, crop: int) -> list[tuple[str, str]]:
    opener = gzip.open if path.read_bytes()[:2] == b"\x1f\x8b" else open
    out = []
    with opener(path, "rt") as handle:
        for title, seq in SimpleFastaParser(handle):
            seq = seq.replace("J", "X")  # not in the ESM alphabet (neither side accepts it)
            out.append((title.split()[0], seq[:crop]))
            if len(out) == limit:
                break
    return out


def build_fair_esm(directory: Path):
    import esm
    from esm.model.esm2 import ESM2
    from test_convert_esm import save_fair_esm

    torch.manual_seed(0)
    alphabet = esm.data.Alphabet.from_architecture("ESM-1b")
    model = ESM2(num_layers=6, embed_dim=320, attention_heads=20, alphabet=alphabet, token_dropout=True).eval()
    return model, alphabet, save_fair_esm(model, directory / "esm2_t6_8M_random.pt")


def fair_esm_extract(model, alphabet, records, layers, toks_per_batch, device):
    """scripts/extract.py's loop, results kept in memory."""
    from esm import FastaBatchedDataset

    dataset = FastaBatchedDataset([r for r, _ in records], [s for _, s in records])
    batches = dataset.get_batch_indices(toks_per_batch, extra_toks_per_seq=1)
    loader = torch.utils.data.DataLoader(dataset, collate_fn=alphabet.get_batch_converter(1022), batch_sampler=batches)
    per_tok, means, padded = {}, {}, 0
    with torch.no_grad():
        for labels, strs, toks in loader:
            toks = toks.to(device, non_blocking=True)
            padded += toks.numel()
            out = model(toks, repr_layers=layers, return_contacts=False)
            reps = {k: v.to("cpu") for k, v in out["representations"].items()}
            for i, label in enumerate(labels):
                n = min(1022, len(strs[i]))
                per_tok[label] = {k: t[i, 1 : n + 1].clone() for k, t in reps.items()}
                means[label] = {k: t[i, 1 : n + 1].mean(0).clone() for k, t in reps.items()}
    return per_tok, means, padded, len(batches)


def foundry_embed(pm, records, layers, batch_tokens):
    seqs = [s for _, s in records]
    per_tok, means = {}, {}
    for i, reps in embed_sequences(pm, seqs, layers, batch_tokens):
        label = records[i][0]
        per_tok[label] = reps
        means[label] = {k: v.mean(0) for k, v in reps.items()}
    return per_tok, means


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=SHARED if SHARED.exists() else BUNDLED)
    parser.add_argument("--limit", type=int, default=1000)
    parser.add_argument("--batch-tokens", type=int, default=4096)
    parser.add_argument("--layers", type=int, nargs="+", default=[6])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)

    records = read_records(args.data, args.limit, 1022)
    n_res = sum(len(s) for _, s in records)
    with tempfile.TemporaryDirectory() as tmp:
        ref, alphabet, path = build_fair_esm(Path(tmp))
        ref = ref.to(device)
        pm = load_protein_model(path, device)
    print(f"data: {args.data} ({len(records)} sequences, {n_res} residues), device {device}, "
          f"{torch.get_num_threads()} threads, batch tokens {args.batch_tokens}, layers {args.layers}")

    warm = records[:64]
    fair_esm_extract(ref, alphabet, warm, args.layers, args.batch_tokens, device)
    foundry_embed(pm, warm, args.layers, args.batch_tokens)

    sync(device)
    start = time.perf_counter()
    _, fair_means, fair_padded, fair_batches = fair_esm_extract(ref, alphabet, records, args.layers, args.batch_tokens, device)
    sync(device)
    t_fair = time.perf_counter() - start
    print(f"fair-esm extract loop: {t_fair:.2f} s ({n_res / t_fair:,.0f} residues/s, {fair_batches} batches)")

    start = time.perf_counter()
    _, ours_means = foundry_embed(pm, records, args.layers, args.batch_tokens)
    sync(device)
    t_ours = time.perf_counter() - start
    batches = length_batches([len(s) for _, s in records], args.batch_tokens)
    ours_padded = sum(len(b) * (max(len(records[i][1]) for i in b) + 2) for b in batches)
    print(f"foundry embed:         {t_ours:.2f} s ({n_res / t_ours:,.0f} residues/s, {len(batches)} batches)")

    diff = max(float((ours_means[r][k] - fair_means[r][k]).abs().max()) for r, _ in records for k in args.layers)
    tol = 1e-4 if device.type == "cpu" else 1e-2
    if diff > tol:
        raise SystemExit(f"mean embeddings differ from fair-esm by {diff:.2e} (> {tol})")
    print(f"mean embeddings agree with fair-esm (max abs diff {diff:.1e})")
    ratio = t_fair / t_ours
    print(f"foundry embed is {ratio:.2f}x the speed of fair-esm's extract loop")
    tokens = n_res + 2 * len(records)
    print(json.dumps({
        "benchmark": "embed_vs_esm_extract", "model": "esm2_t6_8M shape, random weights",
        "data": str(args.data), "sequences": len(records), "residues": n_res, "device": str(device),
        "threads": torch.get_num_threads(), "batch_tokens": args.batch_tokens, "layers": args.layers,
        "max_abs_diff": diff,
        "fair_esm": {"seconds": round(t_fair, 3), "residues_per_s": round(n_res / t_fair), "batches": fair_batches,
                     "padding_fraction": round(1 - tokens / fair_padded, 4)},
        "foundry": {"seconds": round(t_ours, 3), "residues_per_s": round(n_res / t_ours), "batches": len(batches),
                    "padding_fraction": round(1 - tokens / ours_padded, 4)},
        "ratio": round(ratio, 3),
        "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
    }))


if __name__ == "__main__":
    main()
