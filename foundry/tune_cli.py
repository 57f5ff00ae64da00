"""``foundry <modality> sft`` and ``foundry <modality> dpo``: one command factory for the tuning
objectives (``foundry.tuning``). Flags map to config keys; ``--config`` and ``--set`` reach every
key; ``--resume OUT`` continues a run from its latest checkpoint.

    foundry text sft --from M --data chats.jsonl --out OUT --max-steps N     # OUT/final
    foundry text dpo --from M --data pairs.jsonl --out OUT --max-steps N     # metrics.jsonl logs "accuracy"
"""

from __future__ import annotations

from pathlib import Path

import click

from .errors import FoundryError

#: defaults of a tuning run (before --config/--set/flags): short, gentle, evaluated often
DEFAULTS = {
    "sft": {"train.max_steps": 200, "train.lr": 1e-4, "train.warmup_steps": 10, "train.eval_every": 50, "train.save_every": 50,
            "data.batch_tokens": 4096},
    "dpo": {"train.max_steps": 200, "train.lr": 1e-5, "train.warmup_steps": 10, "train.eval_every": 50, "train.save_every": 50,
            "train.weight_decay": 0.0, "data.batch_tokens": 4096},
}

#: adapters start at zero and are few: they take a larger step (as fine-tuning's DEFAULT_LR)
LORA_LR = {"sft": 1e-3, "dpo": 1e-4}

HELP = {
    "sft": "Instruction-tune a causal model: loss on assistant/completion tokens only.\n\n"
           "--data rows: {\"messages\": [{\"role\": \"system\"|\"user\"|\"assistant\", \"content\": ...}, ...]} "
           "(rendered with the model's chat template, or foundry's default) or {\"prompt\", \"completion\"} (plain text).",
    "dpo": "Preference-tune a causal model with DPO against its frozen starting point.\n\n"
           "--data rows: {\"prompt\", \"chosen\", \"rejected\"}; the loss compares the completions' log-probabilities "
           "under the model and the reference (--beta, default 0.1).",
}


def tune_command(modality_name: str, objective: str) -> click.Command:
    @click.command(name=objective, help=HELP[objective])
    @click.option("--from", "init_from", help="The model to tune: a model dir (pretrain/sft output) or a transformers directory.")
    @click.option("--data", type=click.Path(path_type=Path), help="Training rows (JSONL).")
    @click.option("--valid", type=click.Path(path_type=Path), help="Validation rows (JSONL); default: hold out tune.valid_fraction of --data.")
    @click.option("--out", type=click.Path(path_type=Path), help=f"Run directory (default runs/{modality_name}-{objective}).")
    @click.option("--max-steps", type=int, help="Optimizer steps to train.")
    @click.option("--lr", type=float, help=f"Peak learning rate (default {DEFAULTS[objective]['train.lr']:g}; "
                                           f"{LORA_LR[objective]:g} with --strategy lora).")
    @click.option("--max-len", type=int, help="Tokens per sequence (data.max_len); a longer prompt is an error, a longer answer is cut.")
    @click.option("--strategy", type=click.Choice(["full", "lora"]), help="full (default) or lora adapters (peft).")
    @click.option("--chat-template", type=click.Path(path_type=Path), help="A Jinja chat template file (default: the model's own, else foundry's).")
    @click.option("--no-default-template", is_flag=True, default=None, help="Refuse conversations when the model has no chat template of its own.")
    @click.option("--beta", type=float, help="DPO: strength of the pull toward the reference (tune.beta, default 0.1).")
    @click.option("--save-every", type=int, help="Checkpoint every N steps.")
    @click.option("--seed", type=int, help="Random seed (data order, validation split).")
    @click.option("--config", "config_file", type=click.Path(path_type=Path), help="YAML run config.")
    @click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config key, e.g. --set tune.batch_size=4.")
    @click.option("--resume", type=click.Path(path_type=Path), help="Continue the run in this directory from its latest checkpoint.")
    @click.option("--quiet", is_flag=True, help="No progress bar.")
    @click.option("--processes", type=click.IntRange(min=1), default=1, help="Data-parallel processes on this machine (torchrun).")
    def command(init_from, data, valid, out, max_steps, lr, max_len, strategy, chat_template, no_default_template, beta, save_every,
                seed, config_file, overrides, resume, quiet, processes):
        from .distributed import process_state, relaunch_with_torchrun
        from .plugins import get_manager
        from .runconfig import resolve
        from .tuning import tune

        if processes > 1:
            relaunch_with_torchrun(processes)
        if beta is not None and objective != "dpo":
            raise FoundryError("--beta is a DPO setting")
        if resume and (init_from or data or out or valid):
            raise FoundryError("--resume continues the run as configured; --from, --data, --valid and --out cannot change")
        if not resume and not (init_from and data):
            raise FoundryError(f"`foundry {modality_name} {objective}` needs --from MODEL and --data FILE.jsonl (or --resume OUT)")
        modality = get_manager().modality(modality_name)
        defaults = {**DEFAULTS[objective], "objective.name": objective, "out": f"runs/{modality_name}-{objective}"}
        if strategy == "lora":
            defaults["train.lr"] = LORA_LR[objective]
        if "data.max_len" in modality.config_defaults:
            defaults["data.max_len"] = modality.config_defaults["data.max_len"]
        flags = {
            "model.init_from": str(init_from) if init_from else None, "tune.data": str(data) if data else None,
            "tune.valid": str(valid) if valid else None, "out": str(out) if out else None, "train.max_steps": max_steps,
            "train.lr": lr, "data.max_len": max_len, "tune.strategy": strategy,
            "tune.chat_template": str(chat_template) if chat_template else None,
            "tune.default_template": False if no_default_template else None, "tune.beta": beta, "train.save_every": save_every,
            "train.seed": seed, "train.progress": False if quiet else None,
        }
        cfg = resolve(modality_name, defaults=defaults, config_file=config_file, overrides=overrides, flags=flags, resume=resume)
        if cfg.objective.name != objective:
            raise FoundryError(f"this is `foundry {modality_name} {objective}` but the config says objective.name: {cfg.objective.name}")
        summary = tune(cfg, resume=resume)
        if process_state().is_main_process:
            click.echo(_report(summary))

    return command


def _report(summary: dict) -> str:
    initial = summary.get("initial") or {}
    lines = []
    if summary["objective"] == "dpo":
        before = f" (start {initial['accuracy']:.3f})" if "accuracy" in initial else ""
        lines.append(f"valid preference accuracy {summary['accuracy']:.3f}{before}, reward margin {summary['margin']:.4f}, "
                     f"DPO loss {summary['val_loss']:.4f} on {summary['pairs']} pairs after {summary['step']} steps")
    else:
        before = f" (start {initial['val_loss']:.4f})" if "val_loss" in initial else ""
        lines.append(f"valid answer loss {summary['val_loss']:.4f}{before} on {summary['val_targets']} answer tokens "
                     f"after {summary['step']} steps")
    lines.append(f"model: {summary['final_model']}")
    return "\n".join(lines)
