"""A fine-tuned ``--task fold`` model as a ``Folder`` (``prediction.py``): sequences in, structures out.

    folder = load_folder(Path("runs/fold/best"), "cpu")
    [prediction] = folder.fold(["my_protein"], ["MKTAYIAKQR..."])    # FoldPrediction: atoms, pLDDT, distogram

``foundry protein fold --model OUT/best`` calls ``load_folder``. A sequence longer than the model
reads at once (``max_length`` residues: the trunk's positions less <cls> and <eos>, at most
``MAX_SCORED``) is refused with its id and both lengths; it is never cut.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from foundry.errors import CheckpointError, DataError

from .head import unpack
from .prediction import FoldPrediction
from .task import MAX_SCORED


class FoundryFolder:
    """The folding head and its trunk, as loaded from a fine-tuned model directory."""

    def __init__(self, finetuned, device="cpu"):
        from foundry.finetune.data import special_layout
        from foundry.finetune.evaluation import model_window

        self.model, self.tokenizer, self.device = finetuned.model.to(device).eval(), finetuned.tokenizer, torch.device(device)
        self.front, self.back = special_layout(self.tokenizer)
        # folded whole, as validation scored it: the trunk's positions are the limit, not the run's
        # --max-len (its training windows)
        window = model_window(self.model, None)
        self.max_length = min(MAX_SCORED, int(window) - self.front - self.back) if window else MAX_SCORED

    @property
    def chunk_size(self) -> int | None:
        return self.model.head.chunk_size

    @chunk_size.setter
    def chunk_size(self, value: int | None) -> None:
        self.model.head.chunk_size = value  # ``protein fold --chunk-size``: long sequences in less memory

    @torch.no_grad()
    def fold(self, ids: list[str], sequences: list[str]) -> list[FoldPrediction]:
        return [self._fold_one(i, s) for i, s in zip(ids, sequences)]

    def _fold_one(self, rid: str, sequence: str) -> FoldPrediction:
        from .losses import DISTOGRAM_BINS, DISTOGRAM_MAX, DISTOGRAM_MIN, plddt_from_logits

        try:
            tokens = np.asarray(self.tokenizer.encode(sequence, add_special_tokens=True), dtype=np.int64)
        except DataError as exc:
            raise DataError(f"{rid}: {exc}") from None
        n = len(tokens) - self.front - self.back
        if n < 1:
            raise DataError(f"{rid}: empty sequence")
        if n > self.max_length:
            raise DataError(f"{rid}: {n} residues; this model folds at most {self.max_length}; "
                            "split the sequence into domains")
        out = self.model(torch.from_numpy(tokens)[None].to(self.device)).float().cpu()
        distogram, atoms, plddt_logits = unpack(out)
        body = slice(self.front, self.front + n)
        atoms = atoms[0, body].numpy().astype(np.float32)
        atoms[[c == "G" for c in sequence.upper()[:n]], 4] = np.nan  # glycine has no Cβ (the head's is the ideal one)
        probs = distogram[0, body, body].softmax(-1).numpy()
        edges = np.linspace(DISTOGRAM_MIN, DISTOGRAM_MAX, DISTOGRAM_BINS - 1)
        plddt = plddt_from_logits(plddt_logits[0, body]).numpy()
        # the residues as the tokenizer read them (upper case, whitespace removed), one per input residue
        letters = self.tokenizer.decode(tokens[body].tolist())
        letters = letters if len(letters) == n else "X" * n  # inline special tokens (<mask>) have no residue letter
        return FoldPrediction(rid, letters, atoms, plddt, probs, edges)


def load_folder(path: Path, device="cpu") -> FoundryFolder:
    """The ``Folder`` of a ``finetune --task fold`` model directory (``OUT/best``)."""
    from foundry.finetune.store import load_finetuned

    finetuned = load_finetuned(Path(path))
    if finetuned.task.name != "fold":
        raise CheckpointError(f"{path}: a fine-tuned --task {finetuned.task.name} model, not a folding model "
                              "(train one with `foundry protein finetune --task fold`)")
    return FoundryFolder(finetuned, device)
