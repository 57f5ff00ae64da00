"""Text CLI commands (placeholder; the lead may replace this file)."""


def add_text_commands(cli):
    from foundry.cli_common import modality_group

    from .train_tokenizer_cmd import train_tokenizer_command

    group = modality_group("text")
    group.add_command(train_tokenizer_command("text"))
    __import__("modalities.text.finetune_cmd", fromlist=["_"]).add_finetune_commands(group)
    cli.add_command(group)
