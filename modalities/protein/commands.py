"""Protein CLI commands (placeholder; the lead replaces this file)."""


def add_protein_commands(cli):
    from foundry.cli_common import modality_group

    cli.add_command(modality_group("protein"))
