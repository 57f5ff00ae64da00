"""Code CLI commands (placeholder; the lead may replace this file)."""


def add_code_commands(cli):
    from foundry.cli_common import modality_group
    from modalities.text.train_tokenizer_cmd import train_tokenizer_command

    group = modality_group("code")
    group.add_command(train_tokenizer_command("code"))
    cli.add_command(group)
