"""Protein CLI commands (placeholder; the lead replaces this file)."""


def add_protein_commands(cli):
    from foundry.cli_common import modality_group

    cli.add_command(modality_group("protein"))
    __import__("modalities.protein.finetune_cmd", fromlist=["_"]).add_finetune_commands(cli.commands["protein"])
    cli.commands["protein"].add_command(__import__("modalities.protein.embed_cmd", fromlist=["_"]).embed_command)
    cli.commands["protein"].add_command(__import__("modalities.protein.embed_cmd", fromlist=["_"]).contacts_command)
    cli.commands["protein"].add_command(__import__("modalities.protein.variants_cmd", fromlist=["_"]).score_variants_command)
