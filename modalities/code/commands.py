"""The ``foundry code`` command group: shared commands plus tokenizer training."""

from foundry.cli_common import modality_group
from foundry.tune_cli import tune_command
from modalities.text.train_tokenizer_cmd import train_tokenizer_command

from .generate_cmd import add_generation_commands


def add_code_commands(cli):
    group = modality_group("code")
    group.add_command(train_tokenizer_command("code"))
    for objective in ("sft", "dpo"):
        group.add_command(tune_command("code", objective))
    add_generation_commands(group)
    cli.add_command(group)
