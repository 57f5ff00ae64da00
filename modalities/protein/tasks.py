"""Protein fine-tuning tasks, registered with the engine through the ``register_tasks`` hook.

    variant-effect   one score per mutant of a wild type     pooled embedding -> MLP -> 1
                     (a table with a mutation column: A24G, A24G:T50S)
    contact          residue pairs in contact                 pairwise head on token embeddings, or
                     (PDB/mmCIF files or folders: Cβ–Cβ       ESM's regression on APC-corrected attention
                     < 8 Å; or tables "3-17;5-40", 1-based)   (contact_head.py)

The wild type and the mutation strings go through this plugin's one reader and one parser, the
ones ``protein score-variants`` uses; precision at L/5 is this plugin's one implementation, the
one ``protein contacts`` reports.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch.nn.functional as F

from foundry.errors import DataError
from foundry.finetune.data import Record, is_table, read_table, table_column
from foundry.finetune.tasks import IGNORE, LabelInfo, SequenceRegression, Task, TaskOption

from .contact_head import ContactRegression

MUTATION_COLUMNS = ("mutation", "mutations", "mutant", "variant")


class VariantEffect(SequenceRegression):
    """Supervised variant-effect regression: each input row is a mutation list of one wild type."""

    name = "variant-effect"
    modalities = ("protein",)
    options = (
        TaskOption("wildtype", str, None, "the wild-type sequence, or a file holding it (FASTA, or plain text)", required=True),
        TaskOption("wildtype_id", str, None, "the record of a --wildtype FASTA file with several"),
        TaskOption("wildtype_start", int, 1, "the number the mutation strings give the wild type's first residue: "
                   "1 for usual 1-based tables, 0 for 0-based ones, 126 if the sequence starts at residue 126"),
        TaskOption("mutation_column", str, "mutation", "the table column of mutations like A24G:T50S"),
        TaskOption("skip_invalid", bool, False, "drop rows whose mutations cannot be used (malformed, nonsense K78*: ESM has "
                   "no stop token, or not matching the wild type), with a count and the first few named; default: an error"),
    )

    def setup(self, readers):
        from .wildtype import read_wildtype

        # Keep the sequence itself, not the path: a saved model predicts without the file.
        self.values["wildtype"] = read_wildtype(self.values["wildtype"], record_id=self.values["wildtype_id"])
        self.values["wildtype_id"] = None  # the record is read; the saved sequence needs no id

    def read_split(self, path: Path, labels_path, columns, readers, labelled: bool = True) -> list[Record]:
        from .mutations import apply_mutations, skipped_note, usable_variants

        if not is_table(path):
            raise DataError(f"{path}: variant-effect input must be a CSV/TSV table with a mutation column")
        if getattr(columns, "mask", None):
            raise DataError(f"{columns.mask}: a residue mask applies to per-residue labels, not to --task variant-effect")
        wildtype, start = self.values["wildtype"], self.values["wildtype_start"]
        names, rows = read_table(path)
        if not rows:
            raise DataError(f"{path}: no rows (an empty split)")
        wanted = self.values["mutation_column"]
        mutation_column = table_column(path, names, wanted, "mutation", [c for c in MUTATION_COLUMNS if c != wanted])
        label_column = table_column(path, names, columns.label, "label") if labelled else None
        wheres = [f"{path}: line {line}" for line, _ in rows]
        kept, skipped = usable_variants([row[mutation_column].strip() for _, row in rows], wheres, wildtype, start,
                                        skip_invalid=bool(self.values.get("skip_invalid")), option="--wildtype-start", source=str(path))
        if skipped:
            _notice(f"{path}: " + skipped_note([m.removeprefix(f"{path}: ") for m in skipped], len(rows)))
        records = []
        for k, mutations in kept:
            row = rows[k][1]
            sequence = apply_mutations(wildtype, mutations, start, wheres[k], option="--wildtype-start")
            rid = row.get(columns.id, "").strip() or row[mutation_column].strip()
            # Training reads a random window of a wild type longer than --max-len: every window of a
            # variant must hold all its mutated positions (one token per residue), else it would
            # train on wild-type residues with the variant's score.
            positions = [m.position - start for m in mutations]
            focus = (min(positions), max(positions) + 1) if positions else None
            records.append(Record(rid, sequence, row[label_column] if label_column else None, wheres[k], focus))
        return records


def _notice(message: str) -> None:
    """A line on stderr, once (the main process) when several processes read the same split."""
    import sys

    from foundry.distributed import process_state

    if process_state().is_main_process:
        print(message, file=sys.stderr)


class Contact(Task):
    """Residue-residue contacts. Input: PDB/mmCIF files, or folders of them (one example per
    chain, labels from ``structures.py``: Cβ–Cβ < 8 Å, residues without coordinates unlabelled),
    or tables whose label is the contacting pairs, 1-based, ``"3-17;5-40"`` (every other pair is a
    negative). Pairs closer than ``min_separation`` in sequence are not scored. Metric: long-range
    precision at L/5 (|i-j| >= 24), as ESM reports it, beside the random rate of those pairs."""

    name = "contact"
    modalities = ("protein",)
    level = "pair"
    default_metric = "p_at_l5_long"
    min_separation = 6
    heads = (ContactRegression,)  # found by the head registry when a saved model reloads
    options = (TaskOption("contact_head", str, "pairwise",
                          "pairwise (a head on token embeddings) or attention (ESM's regression on APC-corrected attention maps)"),)

    def setup(self, readers):
        if self.values["contact_head"] not in ("pairwise", "attention"):
            raise DataError(f"--contact-head {self.values['contact_head']!r}: choose pairwise or attention")

    def build_head(self, trunk_config, n_outputs, *, pooling, dropout):
        from foundry.finetune.heads import head_for

        if self.values["contact_head"] == "attention":
            return ContactRegression(trunk_config.n_layer, trunk_config.n_head, n_outputs)
        return head_for("pair", trunk_config.d_model, n_outputs, dropout=dropout)

    def read_split(self, path: Path, labels_path, columns, readers, labelled: bool = True) -> list[Record]:
        from .structures import is_structure_file

        if Path(path).is_dir() or is_structure_file(path):
            if labels_path is not None:
                raise DataError(f"{labels_path}: structures carry their own contacts; drop the labels file")
            return structure_records(path, labelled)
        return super().read_split(path, labels_path, columns, readers, labelled)

    def fit(self, labels, where):
        return LabelInfo(["contact"])

    def n_outputs(self, info):
        return 1

    def encode(self, raw, n_residues, where, info):
        if isinstance(raw, np.ndarray):  # from a structure: 1 / 0 / -1 unknown
            if raw.shape != (n_residues, n_residues):
                raise DataError(f"{where}: the contact map is {raw.shape[0]} residues but the sequence has {n_residues}")
            target = raw.astype(np.float32)
            target[raw < 0] = IGNORE
            return self._ignore_near(target)
        target = np.zeros((n_residues, n_residues), dtype=np.float32)
        for part in filter(None, (p.strip() for p in raw.replace(",", ";").split(";"))):
            try:
                i, j = (int(x) for x in part.split("-"))
            except ValueError:
                raise DataError(f"{where}: contact {part!r} is not of the form i-j (1-based residue numbers)") from None
            if not (1 <= i <= n_residues and 1 <= j <= n_residues):
                raise DataError(f"{where}: contact {part!r} is outside the sequence (1..{n_residues})")
            target[i - 1, j - 1] = target[j - 1, i - 1] = 1.0
        return self._ignore_near(target)

    def _ignore_near(self, target: np.ndarray) -> np.ndarray:
        n = target.shape[0]
        target[np.abs(np.subtract.outer(np.arange(n), np.arange(n))) < self.min_separation] = IGNORE
        return target

    def loss(self, logits, targets, info):
        keep = targets != IGNORE
        if not keep.any():
            return logits.sum() * 0.0
        return F.binary_cross_entropy_with_logits(logits[keep].float(), targets[keep].float())

    def metrics(self, logits, targets, info):
        # ESM's convention: L counts residues with labels, not special tokens; missing pairs count as wrong.
        # Beside it, what a random ranking scores (the share of contacts among the long-range pairs),
        # so a precision can be judged: 0.10 is good on long chains and chance on short ones.
        from .contact_metrics import RANGES, contact_precisions, finite_mean, random_rate

        long = {"long": RANGES["long"]}
        return {"p_at_l5_long": finite_mean(contact_precisions(lg, t, ranges=long)["long_P@L5"] for lg, t in zip(logits, targets)),
                "random_long": finite_mean(random_rate(t) for t in targets)}

    def describe(self, logits, info):
        n = logits.shape[0]
        probs = 1.0 / (1.0 + np.exp(-np.asarray(logits, np.float64)))
        i, j = np.triu_indices(n, self.min_separation)
        order = np.argsort(-probs[i, j])[: max(1, n // 5)]
        return {"prediction": ";".join(f"{i[k] + 1}-{j[k] + 1}" for k in order)}


def structure_records(path: Path, labelled: bool = True) -> list[Record]:
    """One record per structure file (its first protein chain): sequence and contact map."""
    from .structures import read_structures

    records = []
    for labels in read_structures(path):
        where = f"{labels.path}: chain {labels.chain}"
        records.append(Record(labels.name, labels.sequence, labels.contacts if labelled else None, where))
    return records


PROTEIN_TASKS = (VariantEffect, Contact)
