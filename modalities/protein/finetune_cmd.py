"""``foundry protein finetune`` / ``foundry protein predict``: the engine's fine-tuning commands
with the protein tasks.

    foundry protein finetune --from runs/protein/final --task residue-classification \
        --train ss3_train.csv --valid ss3_valid.csv --test ss3_test.csv --out runs/ss3
    foundry protein finetune --from esm2_t6_8M_UR50D.pt --task variant-effect \
        --wildtype WT.fasta --train dms_train.csv --valid dms_valid.csv --strategy lora
    foundry protein predict --model runs/ss3/best proteins.fasta -o ss3.csv
"""

from __future__ import annotations

from foundry.finetune.cli import finetune_command, predict_command

HELP = """Fine-tune a protein language model on labelled proteins (or train --model from scratch).

\b
Tables: CSV/TSV with `sequence` and `label` columns (optional `id`), or FASTA + --train-labels.
FLIP's files as they come: --train sequences.fasta --train-labels sampled.fasta --train-mask mask.fasta
(and the same for --valid/--test: SET= and VALIDATION= in the label headers pick each split).
sequence-regression / -classification: one label per protein ("a;b" = multi-label).
residue-classification: a label string as long as the sequence ('.' = unlabelled), e.g. SS3/SS8.
variant-effect: --wildtype SEQ|FASTA (--wildtype-id ID for one record of several) and a `mutation`
column (A24G, A24G:T50S). Positions are 1-based; --wildtype-start 0 for 0-based tables, 126 when the
wild type starts at residue 126. Nonsense (K78*: ESM has no stop token) or malformed rows are an
error, or dropped with --skip-invalid (counted, the first few named).
contact: PDB/mmCIF files or folders (labels: Cβ–Cβ < 8 Å), or tables of contacting pairs 'i-j;k-l' (1-based).
"""


def add_finetune_commands(group) -> None:
    # Every registered task that admits proteins: the engine's, this plugin's, and other plugins'.
    group.add_command(finetune_command("protein", HELP))
    group.add_command(predict_command("protein"))
