"""``foundry code evaluate``: held-out loss on source files (as every modality), or pass@k.

    foundry code evaluate --model runs/code/final held_out/           # loss, perplexity, bits/byte
    foundry code evaluate --problems P.jsonl.gz --completions C.jsonl  # score given completions
    foundry code evaluate --problems P.jsonl --model M --samples 10   # sample, run, score

The last stdout line is one JSON object ("loss"/"perplexity", or "pass@1", "pass@k" …); a
per-completion report (``--results``) says why each failed. See ``passk.py`` and ``execution.py``
for the estimator and what the subprocess limits enforce.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from foundry.errors import FoundryError
from foundry.evaluate_cmd import score_files


def _generate(problems, options: dict, samples: int) -> list[tuple[str, str]]:
    """``samples`` completions of every problem's prompt with the model, human-eval style."""
    from foundry.generation import SamplingOptions, complete
    from modalities.text.generate_cmd import load_causal, report

    from .passk import HUMANEVAL_STOP

    temperature = options["temperature"]
    if temperature is None:
        temperature = 0.0 if samples == 1 else 0.8
    if temperature == 0 and samples > 1:
        raise FoundryError(f"--samples {samples} with --temperature 0: greedy decoding gives the same completion every time")
    opts = SamplingOptions(max_new_tokens=options["max_new_tokens"], temperature=temperature, top_p=options["top_p"],
                           stop=tuple(options["stop"]) or HUMANEVAL_STOP, seed=options["seed"])
    model, tokenizer = load_causal("code", options["model_spec"], options["device"])
    tasks = [task for task in problems for _ in range(samples)]
    result = complete(model, tokenizer, [problems[t].prompt for t in tasks], opts, batch_size=options["batch_size"],
                      names=[f"task {t}" for t in tasks])
    report(result)
    return list(zip(tasks, result.texts))


@click.command(name="evaluate")
@click.argument("files", nargs=-1, type=click.Path(path_type=Path))
@click.option("--model", "model_spec", help="Model directory (RUN/final), imported or transformers directory.")
@click.option("--problems", type=click.Path(path_type=Path), help="HumanEval-format problems (.jsonl or .jsonl.gz): pass@k mode.")
@click.option("--completions", type=click.Path(path_type=Path), help="JSONL of {task_id, completion} to score (several per task allowed).")
@click.option("--samples", type=click.IntRange(min=1), default=1, show_default=True, help="With --model: completions generated per problem.")
@click.option("--k", "ks", multiple=True, type=int, help="pass@k to report (repeatable; default 1, 10, 100 where there are enough samples).")
@click.option("--timeout", type=float, default=10.0, show_default=True, help="Wall-clock seconds per completion's run.")
@click.option("--memory-mb", type=int, default=1024, show_default=True, help="Address-space limit per run (MiB).")
@click.option("--workers", type=click.IntRange(min=1), help="Completions run at once (default: min(4, CPUs)).")
@click.option("--results", type=click.Path(path_type=Path), help="Write each completion's result (passed, reason) as JSONL.")
@click.option("--save-completions", type=click.Path(path_type=Path), help="With --model: write the generated completions as JSONL.")
@click.option("--temperature", type=float, help="Sampling temperature (default 0 for one sample, else 0.8).")
@click.option("--top-p", type=float, default=0.95, show_default=True, help="Nucleus sampling for --samples > 1.")
@click.option("--max-new-tokens", type=int, default=256, show_default=True)
@click.option("--stop", multiple=True, help="Stop strings (default: human-eval's: a new top-level def/class/if/print/#).")
@click.option("--seed", type=int, default=0, show_default=True, help="Sampling seed; masking seed in loss mode.")
@click.option("--max-len", type=int, help="Loss mode: tokens per window.")
@click.option("--batch-size", type=int, default=8, show_default=True, help="Windows, or prompts generated together.")
@click.option("--max-docs", type=int, help="Loss mode: score only the first N documents.")
@click.option("--pseudo-perplexity", is_flag=True, help="Loss mode, masked models only.")
@click.option("--device", default="auto", show_default=True)
@click.option("--on-decode-error", type=click.Choice(["error", "skip"]), default="error", show_default=True)
def code_evaluate(files, model_spec, problems, completions, samples, ks, timeout, memory_mb, workers, results, save_completions, **options):
    """Loss on held-out FILES, or pass@k on --problems (given --completions, or sampled with --model)."""
    if problems is None:
        if completions is not None:
            raise FoundryError("--completions needs --problems (the tests they are run against)")
        if model_spec is None:
            raise FoundryError("evaluate needs --model (and held-out FILES), or --problems for pass@k")
        keep = ("max_len", "batch_size", "seed", "pseudo_perplexity", "max_docs", "device", "on_decode_error")
        score_files("code", files, model_spec, **{k: options[k] for k in keep})
        return
    _pass_at_k(files, model_spec, problems, completions, samples, ks, timeout, memory_mb, workers, results, save_completions, options)


def _pass_at_k(files, model_spec, problems_path, completions, samples, ks, timeout, memory_mb, workers, results, save_completions, options):
    from .execution import Limits
    from .passk import check_ks, execute, read_completions, read_problems, summarize, write_results

    if files:
        raise FoundryError("pass@k mode (--problems) takes no FILES")
    if (completions is None) == (model_spec is None):
        raise FoundryError("with --problems give either --completions FILE or --model M (to generate them), not both")
    if timeout <= 0 or memory_mb < 64:
        raise FoundryError("--timeout must be positive and --memory-mb at least 64")
    ks = check_ks(ks or (1, 10, 100))
    problems = read_problems(problems_path)
    if completions is not None:
        pairs = read_completions(completions, problems)
    else:
        pairs = _generate(problems, {**options, "model_spec": model_spec}, samples)
        if save_completions is not None:
            from foundry.atomic import atomic_write_text

            atomic_write_text(save_completions, "".join(json.dumps({"task_id": t, "completion": c}) + "\n" for t, c in pairs))
    outcomes = execute(problems, pairs, Limits(timeout=timeout, memory=memory_mb << 20), workers)
    if results is not None:
        write_results(results, pairs, outcomes)
    summary = summarize(pairs, outcomes, ks)
    shown = ", ".join(f"{k} {v:.4f}" for k, v in summary.items() if k.startswith("pass@"))
    print(f"{summary['passed']} of {summary['samples']} completions passed on {summary['tasks']} tasks: {shown}", file=sys.stderr)
    click.echo(json.dumps(summary))
