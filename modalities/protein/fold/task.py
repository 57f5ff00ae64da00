"""``finetune --task fold``: train the folding head (``head.py``) on PDB/mmCIF structures.

    foundry protein finetune --task fold --from RUN/final --train DIR --valid DIR [--test DIR] --out OUT

Every protein chain of every structure file is one example (``--chain B``: that chain only);
``data.py`` reads them. The language-model trunk stays frozen unless ``--strategy full`` or
``lora`` is given (ESMFold's setting). Training reads random windows of ``--crop-size`` residues.

Loss (AlphaFold2's terms, ``losses.py``):
    fape_weight * backbone FAPE (N, Cα, C, O in every residue frame; 10 Å clamp, length scale 10),
                  averaged over the structure module's blocks (AlphaFold2; the metric is the final block's)
  + distogram_weight * distogram cross-entropy (64 bins, Cβ; Cα for glycine)
  + plddt_weight * pLDDT cross-entropy (50 bins of per-residue lDDT-Cα)
  + violation_weight * peptide-bond geometry and backbone clashes of the prediction (``violations.py``)
Two stages by default (minifold's recipe): the first ``--distogram-steps`` training batches train
the distogram alone, without running the structure module; the structure terms join after.

Metrics on valid / test, one value per chain then averaged over chains: lDDT-Cα (the early-stopping
metric), TM-score, GDT-TS, Cα RMSD after Kabsch, FAPE, the distogram loss, the violation loss
(0 for a chemically sound backbone; a collapsed prediction scores high), and the contact precision
of the predicted structure (Cβ distances) at L, L/2, L/5 by range.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from foundry.errors import DataError
from foundry.finetune.data import Batch, Record
from foundry.finetune.tasks import IGNORE, LabelInfo, Task, TaskOption

from .head import CHANNELS, FoldHead, unpack, unpack_blocks
from .data import TARGET_WIDTH

MAX_SCORED = 1022  # residues of a valid/test chain: ESM-2's 1,024 tokens less <cls> and <eos>
CONTACT_KEYS = tuple(f"{r}_P@{k}" for r in ("long", "medium", "short") for k in ("L", "L2", "L5"))


class Fold(Task):
    name = "fold"
    level = "residue"  # targets: (T, 20) per token; the head's output carries its pairs (head.py)
    modalities = ("protein",)
    default_metric = "lddt_ca"
    default_strategy = "frozen"
    lower_is_better = ("rmsd_ca", "fape", "distogram_loss", "violation")
    scored_whole = True  # a structure is not an average of windows: valid/test chains are folded whole (read_split caps them)
    heads = (FoldHead,)
    options = (
        TaskOption("chain", str, None, "the chain of each structure file to use (default: every protein chain)"),
        TaskOption("crop_size", int, 128, "training reads a random window of this many residues of longer chains"),
        TaskOption("seq_dim", int, 64, "folding trunk: width of the per-residue state"),
        TaskOption("pair_dim", int, 32, "folding trunk: width of the pair state"),
        TaskOption("fold_blocks", int, 1, "folding trunk: triangular blocks"),
        TaskOption("structure_blocks", int, 4, "structure module: invariant-point-attention blocks"),
        TaskOption("recycles", int, 0, "extra passes through the folding trunk (ESMFold: 3; no gradient through them)"),
        TaskOption("distogram_steps", int, 100, "first stage: training batches that train the distogram alone (0: none)"),
        TaskOption("fape_weight", float, 1.0, "weight of the backbone FAPE loss"),
        TaskOption("distogram_weight", float, 0.3, "weight of the distogram loss"),
        TaskOption("plddt_weight", float, 0.01, "weight of the pLDDT loss"),
        TaskOption("violation_weight", float, 0.0, "weight of the peptide-bond and clash losses of the predicted backbone "
                   "(AlphaFold2: 1 when fine-tuning a model that already folds, 0 before)"),
        TaskOption("unclamped_fape", float, 0.1, "share of the FAPE loss without the 10 Å clamp (AlphaFold2: 10% of batches)"),
    )

    def setup(self, readers):
        for name in ("crop_size", "seq_dim", "pair_dim", "fold_blocks", "structure_blocks"):
            if self.values[name] < 1:
                raise DataError(f"--{name.replace('_', '-')} {self.values[name]}: must be at least 1")
        if not 0 <= self.values["unclamped_fape"] <= 1:
            raise DataError(f"--unclamped-fape {self.values['unclamped_fape']}: a share between 0 and 1")
        for name in ("recycles", "distogram_steps", "fape_weight", "distogram_weight", "plddt_weight", "violation_weight"):
            value = self.values[name]
            if not math.isfinite(value) or value < 0:
                raise DataError(f"--{name.replace('_', '-')} {value}: must be a number >= 0")
        if self.values["seq_dim"] % 8 or self.values["pair_dim"] % 8:
            raise DataError(f"--seq-dim {self.values['seq_dim']} / --pair-dim {self.values['pair_dim']}: must be multiples of 8 "
                            "(attention heads of width 8 or 16)")

    # -- data -------------------------------------------------------------------------------------

    def read_split(self, path: Path, labels_path, columns, readers, labelled: bool = True) -> list[Record]:
        from ..structures import is_structure_file
        from .data import read_chains

        path = Path(path)
        if labels_path is not None:
            raise DataError(f"{labels_path}: structures carry their own coordinates; drop the labels file")
        if not path.exists():
            raise DataError(f"{path}: no such file or folder")
        if not (path.is_dir() or is_structure_file(path)):
            raise DataError(f"{path}: --task fold reads PDB/mmCIF files (.pdb, .cif, optionally .gz) or folders of them")
        chains = read_chains(path, self.values.get("chain"))
        if getattr(columns, "split", None) in ("valid", "test"):  # scored whole: a structure is not averaged over windows
            for c in chains:
                if len(c.sequence) > MAX_SCORED:
                    raise DataError(f"{c.where}: {len(c.sequence)} residues; --{columns.split} chains are folded whole and ESM-2 "
                                    f"reads at most {MAX_SCORED} (cut the file into domains, or train on it: training crops)")
        return [Record(c.name, c.sequence, c.target() if labelled else None, c.where) for c in chains]

    def fit(self, labels, where):
        return LabelInfo([])

    def n_outputs(self, info):
        return CHANNELS

    def encode(self, raw, n_residues, where, info):
        raw = np.asarray(raw, dtype=np.float32)
        if raw.shape != (n_residues, TARGET_WIDTH):
            raise DataError(f"{where}: the structure has {raw.shape[0]} residues but the sequence has {n_residues}")
        return raw

    def build_head(self, trunk_config, n_outputs, *, pooling, dropout):
        from ..alphabet import EsmTokenizer
        from .head import restype_table

        v = self.values
        return FoldHead(trunk_config.d_model, trunk_config.n_layer, trunk_config.n_head, restype_table(list(EsmTokenizer().tokens)),
                        seq_dim=v["seq_dim"], pair_dim=v["pair_dim"], blocks=v["fold_blocks"], structure_blocks=v["structure_blocks"],
                        structure_dim=v["seq_dim"], recycles=v["recycles"], distogram_steps=v["distogram_steps"], dropout=dropout)

    def training_batch(self, batch: Batch) -> Batch:
        from ..alphabet import EsmTokenizer
        from .data import random_crop

        tokenizer = EsmTokenizer()
        tokens, targets = random_crop(batch.tokens, batch.targets, self.values["crop_size"], tokenizer.special_ids, tokenizer.pad_id,
                                      IGNORE)
        return Batch(tokens, targets, batch.index)

    # -- loss and metrics -------------------------------------------------------------------------

    def losses(self, logits: torch.Tensor, targets: torch.Tensor, violations: bool = True) -> dict[str, torch.Tensor]:
        """The loss terms of a batch: logits (B, T, W, 129) (W >= T), targets (B, T, 20);
        ``violations`` False leaves out the violation term (pairwise over backbone atoms)."""
        from .geometry import frames_from_backbone
        from .losses import backbone_fape, distogram_loss, plddt_loss
        from .violations import violation_loss

        b, t = targets.shape[:2]
        distogram, atoms, plddt_logits = unpack(logits.float(), t)
        true = targets[..., :15].float().reshape(b, t, 5, 3)
        present = targets[..., 15:] > 0.5  # IGNORE (-100) on special tokens and padding: absent
        terms = {"distogram": distogram_loss(distogram, true[:, :, 4], present[..., 4])}
        if torch.isfinite(atoms).all():  # NaN: the structure module did not run (first stage)
            frame_mask = present[..., :3].all(-1)
            true_rot, true_trans = frames_from_backbone(true[:, :, 0], true[:, :, 1], true[:, :, 2])
            # AlphaFold2: backbone FAPE averaged over every structure-module block (earlier blocks: N, Cα, C)
            blocks = unpack_blocks(logits.float(), t)
            fapes = []
            for k, block in enumerate(blocks):
                final = k == len(blocks) - 1  # the final block's O counts too (it places O by the ψ angle)
                pos, pos_mask = (atoms[:, :, :4], present[..., :4]) if final else (block, present[..., :3])
                pred_rot, pred_trans = frames_from_backbone(block[:, :, 0], block[:, :, 1], block[:, :, 2])
                args = (pred_rot, pred_trans, true_rot, true_trans, pos, true[:, :, : pos.shape[2]], frame_mask)
                clamped = backbone_fape(*args, atom_mask=pos_mask)
                # AlphaFold2 leaves the 10 Å clamp off in 10% of batches: beyond it a misplaced domain gets no gradient.
                # The expected loss, deterministically: a fixed mix.
                share = self.values["unclamped_fape"]
                trained = clamped if share == 0 else (1 - share) * clamped + share * backbone_fape(*args, clamp=None, atom_mask=pos_mask)
                fapes.append((clamped, trained))
            terms["fape"] = fapes[-1][0]
            terms["fape_blocks"] = torch.stack([trained for _, trained in fapes]).mean()
            terms["plddt"] = plddt_loss(plddt_logits, atoms[:, :, 1], true[:, :, 1], present[..., 1])
            if violations:  # every residue of the chain, observed or not
                terms["violation"] = violation_loss(atoms, targets[..., 15] != IGNORE)
        return terms

    def loss(self, logits, targets, info):
        # the clash term compares every pair of backbone atoms: a training step skips it at weight 0
        terms = self.losses(logits, targets, violations=self.values["violation_weight"] > 0)
        weights = {"fape_blocks": self.values["fape_weight"], "distogram": self.values["distogram_weight"],
                   "plddt": self.values["plddt_weight"], "violation": self.values["violation_weight"]}
        return sum(weights[k] * terms[k] for k in weights if k in terms)

    def metrics(self, logits, targets, info):
        from ..contact_metrics import finite_mean
        from .metrics import contact_labels, contact_precision, fold_metrics

        rows = []
        for lg, target in zip(logits, targets):
            keep = target[:, 15] != IGNORE  # residues, not special tokens
            lg = torch.from_numpy(np.asarray(lg))[keep][:, np.flatnonzero(keep)][None]
            y = torch.from_numpy(np.asarray(target))[keep][None]
            with torch.no_grad():
                terms = self.losses(lg, y)
            _, atoms, _ = unpack(lg)
            pred, true = atoms[0].numpy(), y[0, :, :15].reshape(-1, 5, 3).numpy()
            present = y[0, :, 15:].numpy() > 0.5
            row = fold_metrics(pred[:, 1], true[:, 1], present[:, 1])
            row.update({"fape": float(terms["fape"]), "distogram_loss": float(terms["distogram"]), "violation": float(terms["violation"])})
            contacts = contact_precision(pred[:, 4], contact_labels(true[:, 4], present[:, 4]))
            row.update({k: contacts.get(k, float("nan")) for k in CONTACT_KEYS})
            rows.append(row)
        return {k: finite_mean(r[k] for r in rows) for k in rows[0]} if rows else {}

    def describe(self, logits, info):
        from .losses import plddt_from_logits

        # rows are residues, columns tokens: each residue's own channels sit in one column (its diagonal)
        per_residue = np.nan_to_num(np.asarray(logits, np.float64)[..., 64:]).sum(1)
        plddt = plddt_from_logits(torch.from_numpy(per_residue[:, 15:65])).numpy()
        return {"mean_plddt": round(float(plddt.mean()), 2) if len(plddt) else float("nan")}
