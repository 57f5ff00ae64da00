"""Protein model inference over many sequences: embeddings (the job of fair-esm's ``esm-extract``)
and attention contact maps. The commands are in ``embed_cmd.py``.

    pm = load_protein_model("esm2_t6_8M.pt")              # fair-esm .pt, HF ESM dir or foundry dir
    for i, reps in embed_sequences(pm, seqs, layers=[-1], batch_tokens=4096):
        reps[6]                                           # (L, D) per-residue, <cls>/<eos> dropped

Batching: sequences are sorted by length and cut into batches of at most ``batch_tokens`` padded
tokens (count x longest, <cls> and <eos> included), as fair-esm's ``get_batch_indices`` does, so
neighbours in a batch have nearly the same length and padding stays small. Results come back in
input order of each batch's members; padding never changes them (the trunk masks padded keys).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from foundry.errors import CheckpointError, FoundryError
from foundry.images import pair_map_image, safe_names, write_png

from .alphabet import EsmTokenizer


@dataclass
class ProteinModel:
    model: torch.nn.Module  # foundry Transformer, eval mode, on ``device``
    tokenizer: EsmTokenizer
    source: str
    device: torch.device


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise FoundryError(f"--device {device}: CUDA is not available on this machine (use --device cpu)")
    try:
        return torch.device(device)
    except RuntimeError as exc:
        raise FoundryError(f"--device {device!r}: {exc}") from None


def load_protein_model(spec, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> ProteinModel:
    """A protein LM from a foundry model dir, a fair-esm ``.pt`` or an HF ESM dir, with its tokenizer."""
    from foundry.convert import detect_format, import_model, resolve_model_path

    path = resolve_model_path(spec)
    tokenizer = None
    if detect_format(path) == "foundry":
        from foundry.model.store import load_model

        loaded = load_model(path)
        if loaded.modality != "protein":
            raise CheckpointError(f"{path}: a {loaded.modality!r} model, expected a protein model")
        model, tokenizer = loaded.model, loaded.tokenizer
    else:
        model = import_model(path).model
    tokenizer = tokenizer or EsmTokenizer()
    if not isinstance(tokenizer, EsmTokenizer) or model.config.vocab_size != tokenizer.vocab_size:
        raise CheckpointError(f"{path}: not an ESM-alphabet protein model (vocab {model.config.vocab_size})")
    device = pick_device(device) if isinstance(device, str) else device
    model = model.to(device=device, dtype=dtype).eval()
    return ProteinModel(model, tokenizer, str(path), device)


def resolve_layers(layers: Sequence[int], n_layer: int) -> list[int]:
    """fair-esm's convention: 0 = embeddings, n_layer = last (after the final norm), -1 = last."""
    out = []
    for layer in layers:
        if not -(n_layer + 1) <= layer <= n_layer:
            raise FoundryError(f"--layers {layer}: this model has layers 0..{n_layer} (or -1..-{n_layer + 1})")
        absolute = layer % (n_layer + 1)
        if absolute not in out:
            out.append(absolute)
    return out


def length_batches(lengths: Sequence[int], batch_tokens: int, extra: int = 2) -> list[list[int]]:
    """Indices grouped by sorted length so that count * (longest + extra) <= batch_tokens.

    A sequence longer than the budget gets a batch of its own.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches, current = [], []
    for i in order:
        width = lengths[i] + extra  # ascending order: the newest member is the longest
        if current and width * (len(current) + 1) > batch_tokens:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def _tokens(pm: ProteinModel, sequences: Sequence[str]) -> tuple[torch.Tensor, list[int]]:
    from foundry.tokenizer import pad_batch

    ids = pm.tokenizer.encode_batch(sequences)
    tokens = torch.from_numpy(pad_batch(ids, pm.tokenizer.pad_id)).to(pm.device)
    return tokens, [len(x) - 2 for x in ids]


@torch.no_grad()
def embed_sequences(pm: ProteinModel, sequences: Sequence[str], layers: Sequence[int] = (-1,),
                    batch_tokens: int = 4096) -> Iterator[tuple[int, dict[int, torch.Tensor]]]:
    """Yield (input index, {layer: (L, D) float32 CPU tensor}) for every sequence, batch by batch."""
    layer_ids = resolve_layers(layers, pm.model.config.n_layer)
    lengths = [len(s) for s in sequences]
    for batch in length_batches(lengths, batch_tokens):
        tokens, residues = _tokens(pm, [sequences[i] for i in batch])
        out = pm.model(tokens, need_hidden=layer_ids, need_logits=False)
        hidden = {k: v.float().cpu() for k, v in out.hidden_states.items()}
        for row, i in enumerate(batch):
            n = residues[row]
            yield i, {k: hidden[k][row, 1 : n + 1] for k in layer_ids}


@torch.no_grad()
def predict_contacts(pm: ProteinModel, sequences: Sequence[str], batch_tokens: int = 4096) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (input index, (L, L) float32 contact probabilities) through the attached contact head."""
    from .contact_head import contact_head_of, predict_contacts as head_contacts

    if contact_head_of(pm.model) is None:
        raise CheckpointError(
            f"{pm.source}: this model has no contact head: fit one on a few structures "
            "(foundry protein contacts --model MODEL_DIR --fit STRUCTURES), or import a fair-esm checkpoint with its "
            "-contact-regression.pt beside it, or an HF EsmForMaskedLM with contact_head weights"
        )
    lengths = [len(s) for s in sequences]
    for batch in length_batches(lengths, batch_tokens):
        tokens, residues = _tokens(pm, [sequences[i] for i in batch])
        probs = head_contacts(pm.model, tokens).float().cpu().numpy()
        for row, i in enumerate(batch):
            n = residues[row]
            yield i, probs[row, :n, :n]


# -- files: safe names and pictures live in foundry.images ---------------------------------------


def contact_picture(probs: np.ndarray, truth: np.ndarray | None = None) -> np.ndarray:
    """The contact map as a readable picture: residue numbers on the axes, a colour bar, true
    contacts (Cβ < 8 Å) marked in the lower triangle when the structure is known."""
    return pair_map_image(probs, truth, value_label="P(contact)", truth_label="true contact (Cb<8A)",
                          axis_label="residue")

# -- the two jobs behind the commands -----------------------------------------------------------


def _clean(text: str) -> str:
    seq = "".join(text.split())
    return seq[:-1] if seq.endswith("*") else seq


def read_records(path: Path, truncate: int | None = None) -> tuple[list[str], list[str]]:
    """(ids, sequences) of a FASTA file; duplicate ids are an error (outputs are keyed by id)."""
    from foundry.errors import DataError

    from .fasta import read_fasta

    ids, seqs, first = [], [], {}
    for number, doc in enumerate(read_fasta(path), start=1):
        if doc.id in first:
            raise DataError(f"{path}: record {number} has the id {doc.id!r} of record {first[doc.id]}; "
                            "outputs are keyed by record id, so ids must be unique")
        first[doc.id] = number
        seq = _clean(doc.text)
        ids.append(doc.id)
        seqs.append(seq[:truncate] if truncate else seq)
    return ids, seqs


def run_embed(pm: ProteinModel, fasta: Path, out: Path, layers: Sequence[int], fmt: str = "safetensors",
              per_residue: bool = True, batch_tokens: int = 4096, truncate: int | None = None,
              progress=None) -> dict:
    """Write embeddings of every record of ``fasta`` to the directory ``out`` (atomically).

    out/index.json                 model, layers, format, records [{id, file, length}] (written last)
    out/mean.safetensors           key = record id -> (n_layers, D) mean over residues
      or mean.npy                  (N, n_layers, D), rows in index.json order
    out/per_residue/<file>.safetensors   keys "layer_<n>" -> (L, D)      (--per-residue)
      or per_residue/<file>.npy          (n_layers, L, D)
    """
    import json

    from foundry.atomic import atomic_directory

    ids, seqs = read_records(fasta, truncate)
    layer_ids = resolve_layers(layers, pm.model.config.n_layer)
    names = safe_names(ids)
    dim = pm.model.config.d_model
    means = np.zeros((len(ids), len(layer_ids), dim), dtype=np.float32)
    lengths = [0] * len(ids)
    # float32 (n_layers, D) per record and per residue: what a full disk message reports as needed
    rows = len(ids) + (sum(len(s) for s in seqs) if per_residue else 0)
    with atomic_directory(out, needed=rows * len(layer_ids) * dim * 4) as tmp:
        if per_residue:
            (tmp / "per_residue").mkdir()
        for i, reps in embed_sequences(pm, seqs, layer_ids, batch_tokens):
            stacked = torch.stack([reps[k] for k in layer_ids])  # (n_layers, L, D)
            lengths[i] = stacked.shape[1]
            means[i] = stacked.mean(dim=1).numpy()
            if per_residue:
                _save(tmp / "per_residue" / names[i], {f"layer_{k}": reps[k] for k in layer_ids}, stacked, fmt)
            if progress is not None:
                progress(1)
        if fmt == "safetensors":
            from safetensors.numpy import save_file

            save_file({rid: means[i] for i, rid in enumerate(ids)}, str(tmp / "mean.safetensors"),
                      metadata={"layers": json.dumps(layer_ids)})
        else:
            np.save(tmp / "mean.npy", means)
        index = {
            "model": pm.source, "layers": layer_ids, "dim": dim, "format": fmt, "per_residue": per_residue,
            "truncate": truncate,
            "records": [{"id": rid, "file": names[i], "length": lengths[i]} for i, rid in enumerate(ids)],
        }
        (tmp / "index.json").write_text(json.dumps(index, indent=1) + "\n")
    return index


def _save(stem: Path, tensors: dict[str, torch.Tensor], stacked: torch.Tensor, fmt: str) -> None:
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in tensors.items()}, str(stem) + ".safetensors")
    else:
        np.save(str(stem) + ".npy", stacked.numpy())


@dataclass
class ContactItem:
    name: str
    sequence: str
    labels: object | None = None  # StructureLabels when the input was a structure


def contact_inputs(path: Path, chain: str | None = None) -> list[ContactItem]:
    """FASTA records, or the chains of a structure file / folder (with their true contacts)."""
    from .structures import is_structure_file, read_structures

    if path.is_dir() or is_structure_file(path):
        return [ContactItem(lab.name, lab.sequence, lab) for lab in read_structures(path, chain=chain)]
    if chain is not None:
        raise FoundryError("--chain applies to structure input (PDB/mmCIF), not to FASTA")
    ids, seqs = read_records(path)
    return [ContactItem(n, s) for n, s in zip(safe_names(ids), seqs)]


def run_contacts(pm: ProteinModel, items: list[ContactItem], out: Path, batch_tokens: int = 4096,
                 echo=print) -> list[dict]:
    """Write <name>.npy (L, L) probabilities and <name>.png per item; metrics for structures."""
    from foundry.atomic import atomic_directory

    from .contact_metrics import format_metrics

    found: dict[int, dict] = {}
    with atomic_directory(out) as tmp:
        for i, probs in predict_contacts(pm, [it.sequence for it in items], batch_tokens):
            it = items[i]
            np.save(tmp / f"{it.name}.npy", probs.astype(np.float32))
            truth = it.labels.contacts if it.labels is not None else None
            write_png(tmp / f"{it.name}.png", contact_picture(probs, truth))
            if truth is not None:
                found[i] = score_structure(it, probs)
                reason = found[i].get("not_scored")
                echo(f"{it.name}  L={len(it.sequence)}  " + (f"not scored: {reason}" if reason else format_metrics(found[i])))
        rows = [found[i] for i in sorted(found)]  # input order (batches run shortest first)
        mean = write_contact_metrics(tmp, rows)
        scored = [r for r in rows if "not_scored" not in r]
        if len(scored) > 1:
            echo(f"mean over {len(scored)} structures  {format_metrics(mean)}")
        if len(scored) < len(rows):
            echo(f"{len(rows) - len(scored)} of {len(rows)} structures not scored (too few residues with coordinates)")
    return rows


#: the atom contacts are measured on, for messages (structures.py: Cβ, Cα for glycine)
_CONTACT_ATOM = "Cβ (Cα for glycine)"


def score_structure(item: ContactItem, probs: np.ndarray) -> dict:
    """{"name", "length", "long_P@L5", ..., "long_random"}, or {"name", "length", "not_scored": why}
    when fewer than 5 residues have the atom contacts are measured on: then even P@L/5 (k = L // 5)
    is undefined and the other precisions would be numbers about nothing.

    Beside each range's precisions, ``<range>_random``: the fraction of contacts among that range's
    scored pairs, what a random ranking scores on average (NaN: no pairs in the range), so a
    precision can be read against what it would be by chance."""
    from .contact_metrics import FRACTIONS, RANGES, contact_precisions, random_rate

    row = {"name": item.name, "length": len(item.sequence)}
    observed = int(np.asarray(item.labels.mask).sum())
    if observed < max(FRACTIONS.values()):
        row["not_scored"] = (f"{observed} of {len(item.sequence)} residues have coordinates for {_CONTACT_ATOM}; "
                             f"P@L/5 needs at least {max(FRACTIONS.values())}")
        return row
    precisions = contact_precisions(probs, item.labels.contacts)
    for name, (lo, hi) in RANGES.items():  # each range's random rate right after its precisions
        row.update({f"{name}_{k}": precisions[f"{name}_{k}"] for k in FRACTIONS})
        row[f"{name}_random"] = random_rate(item.labels.contacts, lo, hi)
    return row


def write_contact_metrics(folder: Path, rows: list[dict]) -> dict[str, float | None]:
    """metrics.tsv and metrics.json for the structures of a run; returns the mean over scored
    ones. An undefined value is NA in the TSV and null in the JSON (which allows no NaN)."""
    import json
    import math

    scored = [r for r in rows if "not_scored" not in r]
    if not rows:
        return {}
    keys = [k for k in scored[0] if k not in ("name", "length")] if scored else []

    def defined(v) -> float | None:
        return None if v is None or not math.isfinite(v) else float(v)

    mean = {}
    for k in keys:
        values = [r[k] for r in scored if defined(r[k]) is not None]
        mean[k] = float(np.mean(values)) if values else None
    lines = ["\t".join(["name", "length", *keys])]
    lines += ["\t".join([r["name"], str(r["length"]), *(("NA" if defined(r[k]) is None else f"{r[k]:.4f}") for k in keys)])
              for r in scored]
    if scored:
        (folder / "metrics.tsv").write_text("\n".join(lines) + "\n")
    doc = {"mean": mean, "structures": [{**r, **{k: defined(r[k]) for k in keys}} for r in scored],
           "not_scored": [r for r in rows if "not_scored" in r]}
    (folder / "metrics.json").write_text(json.dumps(doc, indent=1, allow_nan=False) + "\n")
    return mean
