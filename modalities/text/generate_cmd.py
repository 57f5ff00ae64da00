"""``foundry text generate`` (and ``foundry code generate``): sample continuations from a causal model.

    foundry text generate --model runs/text/final --temperature 0 --max-new-tokens 40 "ROMEO:"
    foundry text generate --model M --prompts prompts.jsonl > completions.jsonl

The single-prompt form writes the continuation only to stdout (no newline added unless stdout is a
terminal); tokens/s and the finish reason go to stderr. ``--prompts`` reads JSONL lines with a
"prompt" field and writes one JSON line per prompt: {"prompt", "completion", "finish_reason"}
(and the input line's "id" / "task_id" when present).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from foundry.errors import DataError, FoundryError

SAMPLING_OPTIONS = [
    click.option("--model", "model_spec", required=True, help="Model directory (RUN/final), imported or transformers directory."),
    click.option("--max-new-tokens", type=int, default=64, show_default=True, help="Tokens to generate at most."),
    click.option("--temperature", type=float, default=0.8, show_default=True, help="0 = greedy (argmax)."),
    click.option("--top-k", type=int, help="Sample among the k most likely tokens."),
    click.option("--top-p", type=float, help="Nucleus sampling: the smallest set with probability >= p."),
    click.option("--repetition-penalty", type=float, default=1.0, show_default=True, help="> 1 discourages repeating tokens."),
    click.option("--stop", multiple=True, help="Stop at this string (not included in the output); repeatable."),
    click.option("--seed", type=int, help="Seed for sampling (reproducible on the same device)."),
    click.option("--batch-size", type=int, default=16, show_default=True, help="Prompts decoded together (--prompts)."),
    click.option("--device", default="auto", show_default=True, help="cpu, cuda, … (auto: cuda when available)."),
]


def with_sampling_options(function):
    for option in reversed(SAMPLING_OPTIONS):
        function = option(function)
    return function


def sampling_from(options: dict):
    """``SamplingOptions`` from the CLI's option values."""
    from foundry.generation import SamplingOptions

    return SamplingOptions(max_new_tokens=options["max_new_tokens"], temperature=options["temperature"], top_k=options["top_k"],
                           top_p=options["top_p"], repetition_penalty=options["repetition_penalty"], stop=tuple(options["stop"]),
                           seed=options["seed"])


def load_causal(modality_name: str, spec: str, device: str | None):
    """(model on device, tokenizer) for generation; a masked model is refused by name."""
    from foundry.evaluate import pick_device
    from foundry.loading import load_for_modality
    from foundry.plugins import get_manager

    model, tokenizer, _ = load_for_modality(spec, get_manager().modality(modality_name))
    if not model.config.causal:
        raise FoundryError(f"{spec}: a masked (BERT/ESM-style) model cannot generate; use a causal (GPT/Llama-style) model")
    return model.to(pick_device(device)).eval(), tokenizer


def read_prompts(path: Path) -> list[tuple[str, dict]]:
    """("file:line", record) for JSONL records with a non-empty string "prompt"; errors name file and line."""
    from foundry.jsonl import read_jsonl, string_field

    records = []
    for line_no, record in read_jsonl(path):
        string_field(record, "prompt", f"{path}:{line_no}")
        records.append((f"{path}:{line_no}", record))
    if not records:
        raise DataError(f"{path}: no prompts")
    return records


def report(result) -> None:
    """tokens/s (and why generation stopped, for one prompt) on stderr."""
    reasons = ", ".join(sorted(set(result.finish_reasons)))
    click.echo(f"{result.new_tokens} tokens in {result.seconds:.2f} s ({result.tokens_per_s:.1f} tokens/s); stopped: {reasons}",
               err=True)


def emit_continuation(text: str) -> None:
    sys.stdout.write(text + ("\n" if sys.stdout.isatty() else ""))
    sys.stdout.flush()


def run_generation(modality_name: str, prompt: str | None, prompts_file: Path | None, options: dict, build_ids=None) -> None:
    """Shared by ``generate`` and ``code complete``: one prompt -> its continuation on stdout;
    ``--prompts`` -> JSONL on stdout. ``build_ids(tokenizer)``: prompt ids made another way (infill)."""
    from foundry.generation import complete, complete_ids

    if (prompt is None) == (prompts_file is None) and build_ids is None:
        raise FoundryError("give one PROMPT argument or --prompts FILE.jsonl (not both)")
    if prompt == "-":  # multi-line prompts from a pipe or a file: `foundry text generate --model M - < prompt.txt`
        prompt = sys.stdin.read()
    if prompt is not None and prompt == "":
        raise FoundryError("the prompt is empty: give text to continue")
    opts = sampling_from(options)
    if options["batch_size"] < 1:
        raise FoundryError(f"--batch-size: must be at least 1, got {options['batch_size']}")
    records = read_prompts(prompts_file) if prompts_file is not None else None  # bad input fails before loading
    model, tokenizer = load_causal(modality_name, options["model_spec"], options["device"])
    if build_ids is not None:
        result = complete_ids(model, tokenizer, [build_ids(tokenizer)], opts, names=["the prompt"])
    elif records is None:
        result = complete(model, tokenizer, [prompt], opts, names=["the prompt"])
    else:
        result = complete(model, tokenizer, [r["prompt"] for _, r in records], opts, batch_size=options["batch_size"],
                          names=[where for where, _ in records])
        for (_, record), text, reason in zip(records, result.texts, result.finish_reasons):
            keys = {k: record[k] for k in ("id", "task_id") if k in record}
            click.echo(json.dumps({**keys, "prompt": record["prompt"], "completion": text, "finish_reason": reason}))
        report(result)
        return
    emit_continuation(result.texts[0])
    report(result)


def generate_command(modality_name: str) -> click.Command:
    @click.command(name="generate")
    @click.argument("prompt", required=False)
    @click.option("--prompts", "prompts_file", type=click.Path(path_type=Path), help="JSONL with a \"prompt\" per line.")
    @with_sampling_options
    def generate(prompt, prompts_file, **options):
        """Continue PROMPT ("-": read it from stdin), or each prompt of --prompts, with a causal model (KV-cached)."""
        run_generation(modality_name, prompt, prompts_file, options)

    return generate
