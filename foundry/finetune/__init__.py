"""Fine-tuning: the pretraining engine with a task head, a strategy and a forgetting report.

    tasks.py        task registry: sequence-regression/-classification, residue-classification,
                    variant-effect, contact; labels, losses, metrics (register_task to add one)
    data.py         CSV/TSV or modality files + labels -> encoded examples; mutations; batching
    heads.py        pooled / per-token / pairwise heads; FinetuneModel = trunk + head
    strategies.py   full / frozen / LoRA (peft), layer-wise LR decay, L2-SP
    forgetting.py   pretraining loss on held-out pretraining data (fixed masking); replay
    loop.py         the training loop (same order as foundry.train), early stopping, best model
    store.py        OUT/best/: trunk or adapter + head.safetensors + finetune.json
    run.py          finetune(): everything above, checked before OUT is created
    predict.py      fine-tuned model + sequences -> CSV
    cli.py          `foundry <modality> finetune` / `predict`, attached by each modality
"""

__all__ = ["TASKS", "LabelInfo", "Task", "get_task", "register_task", "unregister_task"]


def __getattr__(name: str):
    # The task registry pulls in torch; resolve it on first use so that building the CLI (which
    # imports finetune.cli through every modality) stays fast.
    if name in __all__:
        from . import tasks

        return getattr(tasks, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
