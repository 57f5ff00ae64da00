"""The ``foundry text`` command group: shared commands plus tokenizer training and fine-tuning."""

from foundry.cli_common import modality_group
from foundry.tune_cli import tune_command

from .finetune_cmd import add_finetune_commands
from .generate_cmd import generate_command
from .train_tokenizer_cmd import train_tokenizer_command


def add_text_commands(cli):
    group = modality_group("text")
    group.add_command(train_tokenizer_command("text"))
    group.add_command(generate_command("text"))
    add_finetune_commands(group)
    for objective in ("sft", "dpo"):
        group.add_command(tune_command("text", objective))
    cli.add_command(group)
