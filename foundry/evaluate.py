"""The pretraining objective on held-out files: loss, perplexity, bits per byte.

    foundry text evaluate --model runs/text/final held_out.txt      # last stdout line: JSON
    foundry protein evaluate --model runs/protein/final test.fasta --pseudo-perplexity

Files are read with the modality's readers and encoded as pretraining encodes them (bos/eos
included). What is scored is the objective the model was pretrained with, as validation scores it:

- causal models (clm, fim): every token after the first of each document is predicted once.
  Documents longer than ``max_len`` are cut into windows that overlap by one token, so no target
  is skipped (a window's first tokens see less context than a sliding window would give them).
  FIM is off, as in validation. ``bits_per_byte`` = total nats / ln 2 / UTF-8 bytes of the
  documents' text: comparable across tokenizers.
- masked models (mlm): the masked-LM loss with the objective's corruption drawn from ``seed``
  (fixed, so two models are scored on the same targets), over non-overlapping windows.
  ``pseudo_perplexity`` (optional, n forward passes per window of n tokens): every non-special
  position masked in turn (Salazar et al. 2020), batched ``batch_size`` masked copies at a time.

A prepared dataset (``foundry <modality> prepare``) given as the only path is scored on its
validation split, as ids (it keeps no text: no bits per byte); its tokenizer must be the model's.

``loss`` is the mean negative log-likelihood in nats per scored token, ``perplexity`` its exp.
The objective's settings (mask_prob, ...) are the pretraining run's when the model directory sits
in its run (``RUN/final``), else the defaults.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .errors import FoundryError
from .objectives import IGNORE_INDEX, build_objective
from .tokenizer import pad_batch

DEFAULT_MAX_LEN = 1024


def windows(ids: np.ndarray, max_len: int, overlap: int) -> list[np.ndarray]:
    """Consecutive windows of at most ``max_len`` tokens; each starts ``overlap`` tokens before the
    previous one ends (causal: 1, so the token a window ends on is predicted by the next one)."""
    if len(ids) <= max_len:
        return [ids]
    step = max_len - overlap
    out = []
    for start in range(0, len(ids), step):
        out.append(ids[start : start + max_len])
        if start + max_len >= len(ids):
            break
    return out


def _objective(model, tokenizer, modality, model_path):
    """The model's pretraining objective, with its run's settings when recorded."""
    from .config import ObjectiveSection
    from .finetune.forgetting import pretraining_run

    run = pretraining_run(model_path) if model_path is not None else None
    settings = run[0].objective if run is not None else ObjectiveSection()
    name = settings.name or modality.objective
    settings.fim_rate = 0.0  # evaluation scores plain next-token prediction, as validation does
    objective = build_objective(name, tokenizer, settings)
    if objective.causal != bool(model.config.causal):
        kind = "causal" if model.config.causal else "masked"
        raise FoundryError(f"{model_path}: a {kind} model cannot be scored with the {name} objective of the {modality.name} modality")
    return objective


@torch.no_grad()
def score_windows(model, objective, rows: Sequence[np.ndarray], pad_id: int, *, batch_size: int, seed: int, device) -> tuple[float, int]:
    """Sum of NLL (nats) and number of targets of the objective over ``rows`` (token windows)."""
    generator = torch.Generator().manual_seed(seed)
    total, count = 0.0, 0
    for s in range(0, len(rows), batch_size):
        chunk = rows[s : s + batch_size]
        tokens = torch.from_numpy(pad_batch(chunk, pad_id))
        lengths = torch.tensor([len(r) for r in chunk])
        real = torch.arange(tokens.shape[1])[None] < lengths[:, None]  # by length: pad may equal eos
        document_ids = real.long()  # one document per row, padding is document 0
        inputs, labels = objective.corrupt(tokens, document_ids, generator, False)
        labels = torch.where(real, labels, torch.full_like(labels, IGNORE_INDEX))
        out = model(inputs.to(device), attention_mask=real.to(device), document_ids=document_ids.to(device))
        keep = labels != IGNORE_INDEX
        if keep.any():
            logits = out.logits[keep.to(device)].float()
            total += float(F.cross_entropy(logits, labels[keep].to(device), reduction="sum"))
            count += int(keep.sum())
    return total, count


@torch.no_grad()
def pseudo_log_likelihood(model, tokenizer, rows: Sequence[np.ndarray], *, batch_size: int, device) -> tuple[float, int]:
    """Sum of -log p(x_i | x with i masked) over every non-special position, and their number."""
    special = set(int(i) for i in tokenizer.special_ids)
    total, count = 0.0, 0
    for ids in rows:
        positions = [i for i, t in enumerate(ids.tolist()) if t not in special]
        base = torch.as_tensor(ids, dtype=torch.long)
        for s in range(0, len(positions), batch_size):
            chunk = torch.tensor(positions[s : s + batch_size])
            batch = base.repeat(len(chunk), 1)
            batch[torch.arange(len(chunk)), chunk] = tokenizer.mask_id
            logits = model(batch.to(device)).logits  # (n, T, V)
            picked = logits[torch.arange(len(chunk)), chunk.to(device)].float().log_softmax(-1)  # (n, V)
            total -= float(picked.gather(1, base[chunk].to(device)[:, None]).sum())
            count += len(chunk)
    return total, count


def evaluate_texts(model, tokenizer, objective, texts: Sequence[str], **settings) -> dict[str, Any]:
    """Score ``texts`` (held-out documents) with ``objective``; returns the JSON-able results.
    ``settings``: those of ``evaluate_ids``."""
    encoded = [np.asarray(e, dtype=np.int64) for e in tokenizer.encode_batch(list(texts))]
    return evaluate_ids(model, tokenizer, objective, encoded, n_bytes=sum(len(t.encode("utf-8")) for t in texts), **settings)


def evaluate_ids(model, tokenizer, objective, encoded: Sequence[np.ndarray], *, n_bytes: int | None, max_len: int, batch_size: int = 8,
                 seed: int = 0, device="cpu", pseudo_perplexity: bool = False) -> dict[str, Any]:
    """Score documents given as token ids (``n_bytes``: their UTF-8 size, None when unknown)."""
    if max_len < 2:
        raise FoundryError(f"--max-len: must be at least 2, got {max_len}")
    if max_len > model.config.max_position:
        raise FoundryError(f"--max-len {max_len}: the model has {model.config.max_position} positions")
    causal = bool(model.config.causal)
    rows = [w for ids in encoded for w in windows(ids, max_len, 1 if causal else 0) if len(w) > (1 if causal else 0)]
    if not rows:
        raise FoundryError("nothing to score: the documents encode to fewer than 2 tokens each")
    was_training = model.training
    model.eval()
    try:
        total, count = score_windows(model, objective, rows, tokenizer.pad_id, batch_size=batch_size, seed=seed, device=device)
        if count == 0:
            raise FoundryError("nothing to score: the objective selected no targets in these documents")
        loss = total / count
        result: dict[str, Any] = {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "tokens": count,
                                  "documents": len(encoded), "objective": objective.name}
        if causal and n_bytes is not None:
            result["bytes"] = n_bytes
            result["bits_per_byte"] = total / math.log(2) / n_bytes if n_bytes else None
        if pseudo_perplexity:
            if causal or tokenizer.mask_id is None:
                raise FoundryError("--pseudo-perplexity is for masked models (it masks each position in turn); this model is causal")
            nll, n = pseudo_log_likelihood(model, tokenizer, rows, batch_size=batch_size, device=device)
            result["pseudo_loss"] = nll / max(1, n)
            result["pseudo_perplexity"] = math.exp(min(nll / max(1, n), 700.0))
            result["pseudo_tokens"] = n
    finally:
        model.train(was_training)
    return result


def pick_device(name: str | None) -> torch.device:
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise FoundryError(f"--device {name!r}: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise FoundryError(f"--device {name}: no CUDA device is available here (use cpu)")
    return device


def run_evaluate(modality_name: str, model_spec: str, files: Sequence[Path], *, max_len: int | None, batch_size: int, seed: int,
                 device: str | None, pseudo_perplexity: bool, max_docs: int | None, on_decode_error: str = "error") -> dict[str, Any]:
    """What ``foundry <modality> evaluate`` runs: load, read, score; a summary line on stderr."""
    from .loading import load_for_modality
    from .plugins import get_manager
    from .readers import read_documents

    from .data.manifest import is_prepared

    if not files:
        raise FoundryError("evaluate: give one or more held-out files or folders to score")
    if batch_size < 1:
        raise FoundryError(f"--batch-size: must be at least 1, got {batch_size}")
    manager = get_manager()
    modality = manager.modality(modality_name)
    prepared = len(files) == 1 and is_prepared(files[0])
    if not prepared:
        texts = [d.text for d in read_documents(list(files), manager.reader_objects(modality.readers), on_decode_error) if d.text.strip()]
        if not texts:
            raise FoundryError(f"{', '.join(map(str, files))}: no documents to score")
        texts = texts[:max_docs] if max_docs else texts
    model, tokenizer, _ = load_for_modality(model_spec, modality)
    dev = pick_device(device)
    model.to(dev)
    objective = _objective(model, tokenizer, modality, Path(model_spec))
    settings = dict(max_len=max_len or min(model.config.max_position, DEFAULT_MAX_LEN), batch_size=batch_size, seed=seed, device=dev,
                    pseudo_perplexity=pseudo_perplexity)
    if prepared:
        result = evaluate_ids(model, tokenizer, objective, _prepared_valid(files[0], tokenizer, max_docs), n_bytes=None, **settings)
    else:
        result = evaluate_texts(model, tokenizer, objective, texts, **settings)
    result = {"model": str(model_spec), **result}
    line = f"{result['documents']} documents, {result['tokens']:,} targets: {objective.loss_name} {result['loss']:.4f}, perplexity {result['perplexity']:.2f}"
    if result.get("bits_per_byte") is not None:
        line += f", {result['bits_per_byte']:.4f} bits/byte"
    if "pseudo_perplexity" in result:
        line += f", pseudo-perplexity {result['pseudo_perplexity']:.2f}"
    print(line, file=sys.stderr)
    return result


def _prepared_valid(path: Path, tokenizer, max_docs: int | None) -> list[np.ndarray]:
    """The validation split of a prepared dataset (``foundry <modality> prepare``), as token ids;
    refused when it was tokenized with another vocabulary than the model's."""
    from .data.manifest import open_prepared

    data = open_prepared(path, expected_fingerprint=tokenizer.fingerprint(), checksums=False)
    n = len(data.valid) if not max_docs else min(max_docs, len(data.valid))
    if n == 0:
        raise FoundryError(f"{path}: the prepared dataset has no validation documents to score")
    print(f"scoring the validation split of prepared dataset {path} ({n} documents; no text, so no bits per byte)", file=sys.stderr)
    return [np.asarray(data.valid[i], dtype=np.int64) for i in range(n)]
