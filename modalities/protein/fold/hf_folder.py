"""A ``Folder`` over a local transformers ``EsmForProteinFolding`` directory (ESMFold), offline.

    folder = HFEsmFolder(Path("esmfold_v1/"), device=torch.device("cpu"))
    predictions = folder.fold(["seq1"], ["MKTAYIAKQR"])

The model runs exactly as ``EsmForProteinFolding.infer`` runs it (same tokenisation of the
sequence, position ids 0..L-1, the config's number of recycles); records are folded one batch at a
time as given; this file only converts its
output into ``FoldPrediction``s:

- atoms: the last structure-module iteration's atom14 positions; atom14 slots 0-4 are N, CA, C,
  O, CB for every residue type (OpenFold's ``restype_name_to_atom14_names``), CB NaN for glycine.
  An unknown residue (X, B, Z, U, O map to X, as in ``infer``) has no atoms in ESMFold's output
  (transformers writes none to its PDB); here its N, CA, C and CB are placed from the predicted
  backbone frame with the ideal geometry of ``residue_constants`` (alanine's), O stays NaN, so
  the PDB still has one residue per input residue.
- plddt: ESMFold's per-atom pLDDT at CA, times 100 (transformers returns it in [0, 1]).
- distogram: softmax of ``distogram_logits``; bin edges = linspace(2.3125, 21.6875, 63) Å, the
  bins ESMFold was trained with (``losses.distogram_bins``).

``max_length`` is the language model's position limit less the two special tokens (1024 residues
for esmfold_v1); longer records are refused by the command, not truncated.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from foundry.errors import CheckpointError

from .losses import DISTOGRAM_BINS, DISTOGRAM_MAX, DISTOGRAM_MIN
from .prediction import FoldPrediction


def is_hf_esmfold(path: Path) -> bool:
    """True when ``path`` is a directory whose config.json names ``EsmForProteinFolding``."""
    config = Path(path) / "config.json"
    if not config.is_file():
        return False
    try:
        data = json.loads(config.read_text())
    except (OSError, ValueError):
        return False
    return "EsmForProteinFolding" in (data.get("architectures") or []) or bool(data.get("is_folding_model"))


class HFEsmFolder:
    """``Folder`` protocol over ``EsmForProteinFolding.from_pretrained(path)`` (local files only)."""

    def __init__(self, path: Path, device=None, chunk_size: int | None = None):
        import torch
        from transformers import EsmForProteinFolding

        from transformers.utils import logging as hf_logging

        bar_was_on = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # a "Loading weights" bar per run is noise on a command's stderr
        try:
            model = EsmForProteinFolding.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{path}: cannot load EsmForProteinFolding ({str(exc).splitlines()[0]})") from None
        finally:
            if bar_was_on:
                hf_logging.enable_progress_bar()
        self.device = device or torch.device("cpu")
        if self.device.type != "cuda":
            model = model.float()  # fp16_esm (esmfold_v1's 3B LM in half precision) is for GPUs; CPUs run fp32
        self.model = model.to(self.device).eval()
        if chunk_size is not None:
            self.model.trunk.set_chunk_size(chunk_size)
        self.max_length = int(model.config.max_position_embeddings) - 2

    def fold(self, ids: list[str], sequences: list[str]) -> list[FoldPrediction]:
        import torch

        with torch.no_grad():
            output = self.model.infer(sequences)
        return predictions_from_output(output, ids, sequences)


def _ideal_backbone_for_unknown(frames7: np.ndarray) -> np.ndarray:
    """(L, 7) quaternion + translation (Å) -> (L, 5, 3) N, CA, C, O=NaN, CB from alanine's ideal geometry."""
    import torch
    from transformers.models.esm.openfold_utils import residue_constants as rc
    from transformers.models.esm.openfold_utils.rigid_utils import Rigid

    ideal = {name: pos for name, group, pos in rc.rigid_group_atom_positions["ALA"] if group == 0}
    local = torch.tensor([ideal["N"], ideal["CA"], ideal["C"], [0.0, 0.0, 0.0], ideal["CB"]], dtype=torch.float64)
    rigid = Rigid.from_tensor_7(torch.as_tensor(frames7, dtype=torch.float64), normalize_quats=True)
    atoms = rigid[..., None].apply(local).numpy()
    atoms[:, 3] = np.nan
    return atoms


def predictions_from_output(output, ids: list[str], sequences: list[str]) -> list[FoldPrediction]:
    """EsmForProteinFolding output (a batch) -> one FoldPrediction per sequence, padding removed."""
    positions = output["positions"][-1].detach().cpu().double().numpy()  # (B, L, 14, 3)
    exists = output["atom14_atom_exists"].detach().cpu().numpy().astype(bool)  # (B, L, 14)
    plddt = output["plddt"][..., 1].detach().cpu().double().numpy() * 100.0  # CA's
    disto = output["distogram_logits"].detach().cpu().double().softmax(-1).numpy()
    frames = output["frames"][-1].detach().cpu().double().numpy()  # (B, L, 7)
    edges = np.linspace(DISTOGRAM_MIN, DISTOGRAM_MAX, DISTOGRAM_BINS - 1)
    result = []
    for b, (rid, seq) in enumerate(zip(ids, sequences)):
        n = len(seq)
        atoms = np.where(exists[b, :n, :5, None], positions[b, :n, :5], np.nan)
        unknown = ~exists[b, :n, 1]  # no CA: an unknown residue type
        if unknown.any():
            atoms[unknown] = _ideal_backbone_for_unknown(frames[b, :n][unknown])
        result.append(FoldPrediction(id=rid, sequence=seq, atoms=atoms, plddt=plddt[b, :n].copy(),
                                     distogram=disto[b, :n, :n].copy(), bin_edges=edges))
    return result
