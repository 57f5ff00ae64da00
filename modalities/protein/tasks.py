"""Protein fine-tuning tasks, registered with the engine through the ``register_tasks`` hook.

    variant-effect   one score per mutant of a wild type     pooled embedding -> MLP -> 1
                     (a table with a mutation column: A24G, A24G:T50S)
    contact          residue pairs in contact                 pairwise head on token embeddings, or
                     ("3-17;5-40", 1-based)                   ESM's regression on APC-corrected attention

The wild type and the mutation strings go through this plugin's one reader and one parser, the
ones ``protein score-variants`` uses; precision at L/5 is this plugin's one implementation, the
one ``protein contacts`` reports.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch.nn.functional as F

from foundry.errors import DataError
from foundry.finetune.data import Record, is_table, read_table, table_column
from foundry.finetune.tasks import IGNORE, LabelInfo, SequenceRegression, Task, TaskOption

MUTATION_COLUMNS = ("mutation", "mutations", "mutant", "variant")


class VariantEffect(SequenceRegression):
    """Supervised variant-effect regression: each input row is a mutation list of one wild type."""

    name = "variant-effect"
    options = (
        TaskOption("wildtype", str, None, "the wild-type sequence, or a file holding it (FASTA with one record, or plain text)", required=True),
        TaskOption("wildtype_start", int, 1, "the number of the wild type's first residue in the mutation strings (0 for 0-based tables)"),
        TaskOption("mutation_column", str, "mutation", "the table column of mutations like A24G:T50S"),
    )

    def setup(self, readers):
        from .wildtype import read_wildtype

        # Keep the sequence itself, not the path: a saved model predicts without the file.
        self.values["wildtype"] = read_wildtype(self.values["wildtype"])

    def read_split(self, path: Path, labels_path, columns, readers, labelled: bool = True) -> list[Record]:
        from .mutations import apply_mutations, parse_mutations

        if not is_table(path):
            raise DataError(f"{path}: variant-effect input must be a CSV/TSV table with a mutation column")
        wildtype, start = self.values["wildtype"], self.values["wildtype_start"]
        names, rows = read_table(path)
        wanted = self.values["mutation_column"]
        mutation_column = table_column(path, names, wanted, "mutation", [c for c in MUTATION_COLUMNS if c != wanted])
        label_column = table_column(path, names, columns.label, "label") if labelled else None
        records = []
        for line, row in rows:
            where = f"{path}: line {line}"
            mutations = row[mutation_column].strip()
            sequence = apply_mutations(wildtype, parse_mutations(mutations, where), start, where, option="--wildtype-start")
            rid = row.get(columns.id, "").strip() or mutations
            records.append(Record(rid, sequence, row[label_column] if label_column else None, where))
        if not records:
            raise DataError(f"{path}: no rows (an empty split)")
        return records


class Contact(Task):
    """Residue-residue contacts. Label: the contacting pairs, 1-based, ``"3-17;5-40"``; every other
    pair with sequence separation >= ``min_separation`` is a negative. Metric: long-range
    precision at L/5 (|i-j| >= 24), as ESM reports it."""

    name = "contact"
    level = "pair"
    default_metric = "p_at_l5_long"
    min_separation = 6
    options = (TaskOption("contact_head", str, "pairwise",
                          "pairwise (a head on token embeddings) or attention (ESM's regression on APC-corrected attention maps)"),)

    def setup(self, readers):
        if self.values["contact_head"] not in ("pairwise", "attention"):
            raise DataError(f"--contact-head {self.values['contact_head']!r}: choose pairwise or attention")

    def build_head(self, trunk_config, n_outputs, *, pooling, dropout):
        from foundry.finetune.heads import head_for

        return head_for("pair", trunk_config.d_model, n_outputs, dropout=dropout, pair_head=self.values["contact_head"],
                        n_layer=trunk_config.n_layer, n_head=trunk_config.n_head)

    def fit(self, labels, where):
        return LabelInfo(["contact"])

    def n_outputs(self, info):
        return 1

    def encode(self, raw, n_residues, where, info):
        target = np.zeros((n_residues, n_residues), dtype=np.float32)
        for part in filter(None, (p.strip() for p in raw.replace(",", ";").split(";"))):
            try:
                i, j = (int(x) for x in part.split("-"))
            except ValueError:
                raise DataError(f"{where}: contact {part!r} is not of the form i-j (1-based residue numbers)") from None
            if not (1 <= i <= n_residues and 1 <= j <= n_residues):
                raise DataError(f"{where}: contact {part!r} is outside the sequence (1..{n_residues})")
            target[i - 1, j - 1] = target[j - 1, i - 1] = 1.0
        near = np.abs(np.subtract.outer(np.arange(n_residues), np.arange(n_residues))) < self.min_separation
        target[near] = IGNORE
        return target

    def loss(self, logits, targets, info):
        keep = targets != IGNORE
        if not keep.any():
            return logits.sum() * 0.0
        return F.binary_cross_entropy_with_logits(logits[keep].float(), targets[keep].float())

    def metrics(self, logits, targets, info):
        # ESM's convention: L counts residues with labels, not special tokens; missing pairs count as wrong.
        from .contact_metrics import contact_precisions

        precisions = [contact_precisions(lg, t, ranges={"long": (24, None)})["long_P@L5"] for lg, t in zip(logits, targets)]
        precisions = [p for p in precisions if not math.isnan(p)]
        return {"p_at_l5_long": float(np.mean(precisions)) if precisions else float("nan")}

    def describe(self, logits, info):
        n = logits.shape[0]
        probs = 1.0 / (1.0 + np.exp(-np.asarray(logits, np.float64)))
        i, j = np.triu_indices(n, self.min_separation)
        order = np.argsort(-probs[i, j])[: max(1, n // 5)]
        return {"prediction": ";".join(f"{i[k] + 1}-{j[k] + 1}" for k in order)}


PROTEIN_TASKS = (VariantEffect, Contact)
