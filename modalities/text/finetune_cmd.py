"""``foundry text finetune`` / ``foundry text predict``: sequence-level tasks on text.

    foundry text finetune --from runs/text/final --task sequence-classification \
        --train reviews_train.csv --valid reviews_valid.csv --sequence-column text

Text trunks are causal, so a sequence is summarised by its last real token (``--pooling last``,
the default for causal trunks) unless ``--pooling mean`` is asked for.
"""

from __future__ import annotations

from foundry.finetune.cli import finetune_command, predict_command

def add_finetune_commands(group) -> None:
    # Sequence-level tasks only: a BPE piece is no residue, so per-token labels cannot be written.
    group.add_command(finetune_command("text", levels=("sequence",)))
    group.add_command(predict_command("text"))
