"""``foundry <modality> finetune`` and ``foundry <modality> predict``, shared by every modality.

A modality attaches them to its group (``finetune_command(name)``), choosing which tasks it offers
and a sentence of help; everything else is the same engine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import click

from ..errors import FoundryError


def _overrides(items: Sequence[str]) -> dict:
    from ..config import parse_override

    return dict(parse_override(item) for item in items)


def finetune_command(modality_name: str, tasks: Sequence[str], help_text: str = "") -> click.Command:
    P = click.Path(path_type=Path)

    @click.command(name="finetune", help=help_text or None)
    @click.option("--from", "source", help="Pretrained model: a model dir, a fair-esm .pt, an HF directory (or cached hub id).")
    @click.option("--model", "preset", help="Train this preset from scratch instead (the baseline for --from).")
    @click.option("--model-set", "model_set", multiple=True, metavar="KEY=VALUE", help="Model config override for --model, e.g. n_layer=2.")
    @click.option("--tokenizer", help="Tokenizer dir, for trunks that do not carry one.")
    @click.option("--task", required=True, type=click.Choice(list(tasks)), help="What to predict.")
    @click.option("--train", required=True, type=P, help="Training split: CSV/TSV with sequence and label columns, or a sequence file + --train-labels.")
    @click.option("--valid", required=True, type=P, help="Validation split (early stopping, best model).")
    @click.option("--test", type=P, help="Test split, scored once with the best model.")
    @click.option("--train-labels", type=P, help="Labels for a sequence-file --train: table (id,label), '>id' file, or one per line.")
    @click.option("--valid-labels", type=P)
    @click.option("--test-labels", type=P)
    @click.option("--sequence-column", default="sequence", show_default=True)
    @click.option("--label-column", default="label", show_default=True)
    @click.option("--id-column", default="id", show_default=True)
    @click.option("--mutation-column", default="mutation", show_default=True, help="variant-effect: column of mutations like A24G:T50S.")
    @click.option("--wildtype", help="variant-effect: the wild-type sequence, or a file holding it.")
    @click.option("--wildtype-start", default=1, show_default=True, help="variant-effect: number of the wild type's first residue.")
    @click.option("--ignore-label", default=".", show_default=True, help="residue-classification: label character meaning 'no label here'.")
    @click.option("--out", type=P, help=f"Run directory (default runs/{modality_name}-finetune).")
    @click.option("--strategy", type=click.Choice(["full", "frozen", "lora"]), default="full", show_default=True)
    @click.option("--lora-rank", default=8, show_default=True)
    @click.option("--lora-alpha", default=16.0, show_default=True)
    @click.option("--merge", is_flag=True, help="LoRA: fold the adapters into the trunk when saving.")
    @click.option("--layer-decay", default=1.0, show_default=True, help="Layer-wise LR decay factor (1 = none).")
    @click.option("--lr", type=float, help="Peak learning rate (default 1e-4 full, 1e-3 frozen/lora).")
    @click.option("--epochs", default=10, show_default=True)
    @click.option("--max-steps", type=int, help="Optimizer steps (overrides --epochs).")
    @click.option("--batch-size", default=16, show_default=True)
    @click.option("--max-len", default=1024, show_default=True, help="Tokens per sequence; longer ones are cut.")
    @click.option("--pooling", type=click.Choice(["mean", "cls", "last"]), help="Sequence tasks (default: last token for causal trunks, else mean).")
    @click.option("--dropout", default=0.1, show_default=True, help="Head dropout.")
    @click.option("--contact-head", type=click.Choice(["pairwise", "attention"]), default="pairwise", show_default=True,
                  help="contact: a pairwise head on embeddings, or ESM's regression on APC-corrected attention maps.")
    @click.option("--weight-decay", default=0.01, show_default=True)
    @click.option("--metric", help="Early-stopping metric on valid (default: spearman for regression, accuracy otherwise).")
    @click.option("--patience", type=int, help="Stop after this many evaluations without improvement.")
    @click.option("--eval-every", type=int, help="Steps between evaluations (default: one epoch).")
    @click.option("--l2sp", default=0.0, show_default=True, help="L2-SP weight: pull toward the pretrained weights.")
    @click.option("--replay", default=0.0, show_default=True, help="Share of each batch that is pretraining data (MLM/CLM replay).")
    @click.option("--forgetting-data", multiple=True, type=P, help="Held-out pretraining files for the forgetting report (default: bundled corpus).")
    @click.option("--forgetting-docs", default=128, show_default=True)
    @click.option("--no-forgetting", is_flag=True, help="Skip the before/after pretraining-loss report.")
    @click.option("--seed", default=0, show_default=True)
    @click.option("--quiet", is_flag=True, help="No progress bar.")
    def finetune(**kw):
        """Fine-tune a pretrained model (or train a preset from scratch) on labelled sequences."""
        from .loop import LoopSettings
        from .run import DataOptions, ForgettingOptions, ModelOptions, finetune as run_finetune, format_report

        if not kw["source"] and not kw["preset"]:
            raise FoundryError("give --from MODEL (fine-tune a pretrained model) or --model PRESET (train from scratch)")
        strategy = kw["strategy"]
        if kw["preset"] and strategy != "full":
            raise FoundryError(f"--strategy {strategy} needs pretrained weights (--from); a model from scratch trains fully")
        lr = kw["lr"] if kw["lr"] is not None else (1e-4 if strategy == "full" else 1e-3)
        data = DataOptions(
            train=kw["train"], valid=kw["valid"], test=kw["test"], train_labels=kw["train_labels"], valid_labels=kw["valid_labels"],
            test_labels=kw["test_labels"], sequence_column=kw["sequence_column"], label_column=kw["label_column"], id_column=kw["id_column"],
            mutation_column=kw["mutation_column"], wildtype=kw["wildtype"], wildtype_start=kw["wildtype_start"],
            ignore_label=kw["ignore_label"], max_len=kw["max_len"],
        )
        model = ModelOptions(source=kw["source"], preset=kw["preset"], overrides=_overrides(kw["model_set"]), tokenizer=kw["tokenizer"],
                             strategy=strategy, lora_rank=kw["lora_rank"], lora_alpha=kw["lora_alpha"], merge=kw["merge"],
                             pooling=kw["pooling"], dropout=kw["dropout"], pair_head=kw["contact_head"])
        loop = LoopSettings(lr=lr, epochs=kw["epochs"], max_steps=kw["max_steps"], batch_size=kw["batch_size"], weight_decay=kw["weight_decay"],
                            layer_decay=kw["layer_decay"], l2sp=kw["l2sp"], replay=kw["replay"], metric=kw["metric"], patience=kw["patience"],
                            eval_every=kw["eval_every"], seed=kw["seed"], progress=not kw["quiet"])
        forgetting = ForgettingOptions(enabled=not kw["no_forgetting"], data=list(kw["forgetting_data"]), docs=kw["forgetting_docs"])
        out = kw["out"] or Path(f"runs/{modality_name}-finetune")
        summary = run_finetune(modality_name, kw["task"], data, model, loop, out, forgetting)
        click.echo(format_report(summary))

    return finetune


def predict_command(modality_name: str) -> click.Command:
    @click.command(name="predict")
    @click.option("--model", "model_dir", required=True, type=click.Path(path_type=Path), help="A fine-tuned model dir (OUT/best from finetune).")
    @click.argument("input_path", type=click.Path(path_type=Path))
    @click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="CSV to write: id,sequence,prediction[,p_<label>...].")
    @click.option("--sequence-column", help="Sequence column of a table input (default: the one used in training).")
    @click.option("--id-column", help="Id column of a table input.")
    @click.option("--batch-size", default=16, show_default=True)
    @click.option("--tokenizer", help="Tokenizer dir, for adapters over trunks that do not carry one.")
    def predict(model_dir, input_path, output, sequence_column, id_column, batch_size, tokenizer):
        """Predict with a fine-tuned model; writes id,sequence,prediction."""
        from .predict import predict_file

        n = predict_file(model_dir, input_path, output, sequence_column=sequence_column, id_column=id_column, batch_size=batch_size, tokenizer_path=tokenizer)
        click.echo(f"wrote {n} predictions to {output}")

    return predict
