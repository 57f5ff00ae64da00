"""The ``foundry protein`` command group: the shared pretrain/prepare/import/presets commands plus
the protein tools (fine-tuning, prediction, embeddings, contact maps, zero-shot variant scores)."""

from foundry.cli_common import modality_group

from .embed_cmd import contacts_command, embed_command
from .finetune_cmd import add_finetune_commands
from .fold_cmd import fold_command
from .variants_cmd import score_variants_command


def add_protein_commands(cli):
    group = modality_group("protein")
    add_finetune_commands(group)
    for command in (embed_command, contacts_command, score_variants_command, fold_command):
        group.add_command(command)
    cli.add_command(group)
