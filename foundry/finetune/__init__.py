"""Fine-tuning: the one training loop with a task head, a strategy and a forgetting report.

    tasks.py        the Task protocol and the engine's tasks: sequence-regression/-classification,
                    residue-classification (plugins add theirs with the register_tasks hook)
    data.py         CSV/TSV or modality files + labels -> encoded examples; batching
    heads.py        pooled / per-token / pairwise heads; FinetuneModel = trunk + head
    strategies.py   full / frozen / LoRA (peft), layer-wise LR decay, L2-SP
    forgetting.py   pretraining loss on held-out pretraining data (fixed masking); replay
    workload.py     fine-tuning as a Workload of foundry.train: batches, loss, evaluation
    store.py        OUT/best/: trunk or adapter + head.safetensors + finetune.json
    run.py          finetune(): everything above, checked before OUT is created
    predict.py      fine-tuned model + sequences -> CSV
    cli.py          `foundry <modality> finetune` / `predict`, attached by each modality
"""
