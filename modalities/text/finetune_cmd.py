"""``foundry text finetune`` / ``foundry text predict``: sequence-level tasks on text.

    foundry text finetune --from runs/text/final --task sequence-classification \
        --train reviews_train.csv --valid reviews_valid.csv --sequence-column text

Text trunks are causal, so a sequence is summarised by its last real token (``--pooling last``,
the default for causal trunks) unless ``--pooling mean`` is asked for.
"""

from __future__ import annotations

from foundry.finetune.cli import finetune_command, predict_command

TEXT_TASKS = ("sequence-classification", "sequence-regression")


def add_finetune_commands(group) -> None:
    group.add_command(finetune_command("text", TEXT_TASKS))
    group.add_command(predict_command("text"))
