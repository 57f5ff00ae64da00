"""``foundry <modality> evaluate``: the pretraining objective of a model on held-out files.

Shared by every modality (``cli_common.modality_group`` adds it); a modality may replace it with a
command that does more (``foundry code evaluate`` adds pass@k) and reuse ``EVALUATE_OPTIONS``.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

EVALUATE_OPTIONS = [
    click.option("--model", "model_spec", required=True, help="Model directory (RUN/final), imported or transformers directory."),
    click.option("--max-len", type=int, help="Tokens per window (default: the model's positions, at most 1024)."),
    click.option("--batch-size", type=int, default=8, show_default=True, help="Windows (or masked copies) per forward pass."),
    click.option("--seed", type=int, default=0, show_default=True, help="Masking seed for masked models (fixed: comparable runs)."),
    click.option("--pseudo-perplexity", is_flag=True, help="Masked models: also mask each position in turn (n passes per window)."),
    click.option("--max-docs", type=int, help="Score only the first N documents."),
    click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:1, … (auto: cuda when available)."),
    click.option("--on-decode-error", type=click.Choice(["error", "skip"]), default="error", show_default=True,
                 help="A file that is not UTF-8 text: stop, or leave it out."),
]


def with_evaluate_options(function):
    for option in reversed(EVALUATE_OPTIONS):
        function = option(function)
    return function


def score_files(modality_name: str, files, model_spec, max_len, batch_size, seed, pseudo_perplexity, max_docs, device, on_decode_error) -> None:
    """Score ``files`` and print the results as the last stdout line (one JSON object)."""
    from .evaluate import run_evaluate

    result = run_evaluate(modality_name, model_spec, [Path(f) for f in files], max_len=max_len, batch_size=batch_size, seed=seed,
                          device=device, pseudo_perplexity=pseudo_perplexity, max_docs=max_docs, on_decode_error=on_decode_error)
    click.echo(json.dumps(result))


def evaluate_command(modality_name: str) -> click.Command:
    @click.command(name="evaluate")
    @click.argument("files", nargs=-1, type=click.Path(path_type=Path))
    @with_evaluate_options
    def evaluate(files, **options):
        """Loss and perplexity of a model on held-out FILES (bits per byte for causal models), or on
        the validation split of a prepared dataset (one folder written by `prepare`).

        The last stdout line is one JSON object: loss, perplexity, tokens, documents, objective
        (and bits_per_byte, pseudo_perplexity where they apply)."""
        score_files(modality_name, files, **options)

    return evaluate
