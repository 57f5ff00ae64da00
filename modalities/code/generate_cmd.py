"""``foundry code generate | complete | infill``: sample code from a causal code model.

    foundry code complete --model runs/code/final --temperature 0 "def fibonacci(n):"
    foundry code complete --model M --file prefix.py          # the file's text is the prefix
    foundry code infill --model M --prefix "def f(x):\n" --suffix "    return y\n"

``complete`` continues a prefix (``generate`` is the same verb as for text). ``infill`` writes the
middle between a prefix and a suffix with the fill-in-the-middle sentinels the code tokenizer
reserves, in PSM order as ``code pretrain`` trains them (``foundry.fim``); a model whose tokenizer
has none (an imported GPT-2) is refused with that reason. stdout: the generated code only.
"""

from __future__ import annotations

from pathlib import Path

import click

from foundry.errors import FoundryError
from modalities.text.generate_cmd import generate_command, run_generation, with_sampling_options


def _text(value: str | None, file: Path | None, name: str) -> str | None:
    if value is not None and file is not None:
        raise FoundryError(f"give --{name} or --{name}-file, not both")
    if file is not None:
        if not file.is_file():
            raise FoundryError(f"--{name}-file {file}: file not found")
        return file.read_text(encoding="utf-8")
    return value


def complete_command() -> click.Command:
    @click.command(name="complete")
    @click.argument("prefix", required=False)
    @click.option("--file", "prefix_file", type=click.Path(path_type=Path), help="Read the prefix from this file.")
    @click.option("--prompts", "prompts_file", type=click.Path(path_type=Path), help="JSONL with a \"prompt\" (prefix) per line.")
    @with_sampling_options
    def complete(prefix, prefix_file, prompts_file, **options):
        """Continue the code PREFIX (or --file, or each prompt of --prompts)."""
        if prefix is not None and prefix_file is not None:
            raise FoundryError("give the PREFIX argument or --file, not both")
        if prefix_file is not None:
            prefix = _text(None, prefix_file, "prefix")
        run_generation("code", prefix, prompts_file, options)

    return complete


def infill_command() -> click.Command:
    @click.command(name="infill")
    @click.option("--prefix", help="Code before the gap.")
    @click.option("--suffix", help="Code after the gap.")
    @click.option("--prefix-file", type=click.Path(path_type=Path), help="Read the prefix from a file.")
    @click.option("--suffix-file", type=click.Path(path_type=Path), help="Read the suffix from a file.")
    @with_sampling_options
    def infill(prefix, suffix, prefix_file, suffix_file, **options):
        """Write the code between --prefix and --suffix (fill-in-the-middle, PSM order)."""
        from foundry.generation import infill_prompt

        prefix, suffix = _text(prefix, prefix_file, "prefix"), _text(suffix, suffix_file, "suffix")
        if prefix is None or suffix is None:
            raise FoundryError("infill needs both --prefix and --suffix (either may be an empty string)")
        if not prefix and not suffix:
            raise FoundryError("infill: --prefix and --suffix are both empty: nothing to fill in between")
        run_generation("code", None, None, options, build_ids=lambda tokenizer: infill_prompt(tokenizer, prefix, suffix))

    return infill


def add_generation_commands(group: click.Group) -> None:
    """generate, complete, infill; and ``evaluate`` with pass@k, in place of the shared one."""
    from .evaluate_cmd import code_evaluate

    group.add_command(code_evaluate)
    group.add_command(generate_command("code"))
    group.add_command(complete_command())
    group.add_command(infill_command())
