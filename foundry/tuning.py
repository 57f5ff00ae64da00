"""Instruction and preference tuning on the one loop: ``tune(cfg)`` runs any objective that reads
its own rows (``foundry.objectives_tuning.TuningObjective``: ``sft``, ``dpo``, or a plugin's) as a
``Workload`` of ``foundry.train.run_training``, so resume, gradient accumulation, several
processes, checkpoints and metrics.jsonl come from the loop, as for pretraining.

    OUT/config.yaml      the resolved run config (objective.name = sft | dpo, the tune section)
    OUT/metrics.jsonl    step 0: the starting model on the validation rows; training steps (DPO:
                         accuracy, margin, chosen/rejected rewards); validation evaluations
    OUT/checkpoints/     model dir + optimizer + data position (LoRA: the adapter beside the merged model)
    OUT/final/           the tuned model: a plain model dir (LoRA merged), its chat template in model.json
    OUT/summary.json     written last

Strategies: ``full`` trains every weight (DPO's reference is a frozen copy of the start);
``lora`` trains low-rank adapters (``peft``) and DPO's reference is the same trunk with the
adapters switched off: no second copy of the model in memory.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .atomic import atomic_write_text
from .chat import find_template
from .config import RunConfig, validate
from .distributed import check_mixed_precision, process_state
from .errors import ConfigError, FoundryError
from .metrics import MetricsLog
from .objectives import objective_class
from .objectives_tuning import ReadContext, TuningObjective
from .plugins import get_manager
from .rundir import checkpoint_to_resume, writing
from .train import StepLoss, StreamWorkload, run_training

ADAPTER_FILE = "lora_adapter.safetensors"


class TuningWorkload(StreamWorkload):
    """A ``Workload`` for objectives that build their own batches (SFT, DPO)."""

    def __init__(self, cfg: RunConfig, model, tokenizer, objective: TuningObjective, train: list, valid: list, modality: str,
                 template, reference=None):
        self.cfg, self.model, self.tokenizer, self.objective = cfg, model, tokenizer, objective
        self.modality, self.template, self.reference = modality, template, reference
        self.metric, self.higher_is_better = objective.metric, objective.higher_is_better
        self.stream = objective.stream(train, cfg)
        self.eval_batches = objective.eval_batches(valid, cfg)
        self.lora = cfg.tune.strategy == "lora"
        self.weight_decay = cfg.train.weight_decay

    def loss(self, model, batch, seed: int, device) -> StepLoss:
        torch.manual_seed(seed * self.objective.seed_stride + batch.index)  # dropout: a function of (seed, batch)
        out = self.objective.batch_loss(model, batch, device, self.reference)
        return StepLoss(out.loss, out.tokens, out.slots, out.logged)

    @torch.no_grad()
    def scores(self, model, rank: int = 0, world: int = 1, reduce=None) -> dict[str, float]:
        """The objective's validation numbers (this process's share of the batches, summed over processes)."""
        model.eval()
        device = next(model.parameters()).device
        totals: dict[str, float] = {}
        for i, batch in enumerate(self.eval_batches):
            if i % world == rank:
                for key, value in self.objective.batch_loss(model, batch, device, self.reference).sums.items():
                    totals[key] = totals.get(key, 0.0) + value
        if reduce is not None:
            keys = self.objective.sum_keys
            summed = reduce(torch.tensor([totals.get(k, 0.0) for k in keys], dtype=torch.float64, device=device))
            totals = dict(zip(keys, summed.tolist()))
        return self.objective.summarize(totals)

    def evaluate(self, model, accelerator) -> dict[str, float]:
        reduce = (lambda t: accelerator.reduce(t, reduction="sum")) if accelerator.num_processes > 1 else None
        return self.scores(model, accelerator.process_index, accelerator.num_processes, reduce)

    def describe_evaluation(self, step: int, result: dict[str, float]) -> str:
        return f"step {step}: {self.objective.describe(result)}"

    def save_model(self, model, directory: Path) -> None:
        from .model.store import save_model

        model = getattr(model, "module", model)
        extras = {"tuned_with": self.objective.name, "from": self.cfg.model.init_from}
        if self.template is not None:
            extras["chat_template"] = self.template.text
        if not self.lora:
            save_model(directory, model, self.tokenizer, self.modality, extras=extras)
            return
        from safetensors.torch import save_file

        merged = copy.deepcopy(model).merge_and_unload()  # a plain model dir, loadable without peft
        save_model(directory, merged, self.tokenizer, self.modality, extras={**extras, "lora_merged": True})
        adapter = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items() if "lora_" in k}
        save_file(adapter, str(Path(directory) / ADAPTER_FILE))

    def restore_model(self, model, directory: Path) -> None:
        from .model.store import load_model

        if not self.lora:
            model.load_state_dict(load_model(directory).model.state_dict())
            return
        from .weights import read_safetensors

        adapter, _ = read_safetensors(Path(directory) / ADAPTER_FILE, "cpu")
        missing = [k for k in model.state_dict() if "lora_" in k and k not in adapter]
        if missing:
            raise FoundryError(f"{directory / ADAPTER_FILE}: adapter weights missing, e.g. {missing[0]}")
        model.load_state_dict(adapter, strict=False)


def _reference(model, lora: bool):
    """``(tokens, document_ids) -> logits`` of the starting model, never trained."""
    if lora:
        def adapters_off(tokens, document_ids):
            with model.disable_adapter():
                return model(tokens, document_ids=document_ids).logits
        return adapters_off
    frozen = copy.deepcopy(model).requires_grad_(False).eval()

    def frozen_copy(tokens, document_ids):
        return frozen.to(tokens.device)(tokens, document_ids=document_ids).logits
    return frozen_copy


def _split(rows: list, fraction: float, limit: int, seed: int, path: str) -> tuple[list, list]:
    """Hold out ``fraction`` of ``rows`` (at least one, at most ``limit``), drawn from the seed."""
    if len(rows) < 2:
        raise FoundryError(f"{path}: {len(rows)} row(s): too few to hold out validation rows; pass --valid FILE")
    count = min(limit, max(1, int(round(fraction * len(rows)))), len(rows) - 1)
    held = set(np.random.default_rng([seed, 7]).permutation(len(rows))[:count].tolist())
    return [r for i, r in enumerate(rows) if i not in held], [r for i, r in enumerate(rows) if i in held]


def build_workload(cfg: RunConfig, modality) -> tuple[TuningWorkload, dict[str, Any]]:
    """Everything that can fail on input (model, template, rows), before the run directory is written."""
    from .convert.hub import resolve_model_path
    from .finetune.strategies import apply_strategy, count_trainable
    from .loading import load_for_modality

    t = cfg.tune
    if not cfg.model.init_from:
        raise ConfigError("model.init_from: tuning starts from a model; pass --from MODEL (a model dir or a transformers directory)")
    if not t.data:
        raise ConfigError("tune.data: no training rows; pass --data FILE.jsonl")
    objective_type = objective_class(cfg.objective.name)
    if not issubclass(objective_type, TuningObjective):
        raise ConfigError(f"objective {cfg.objective.name}: trains on {objective_type.batch_kind} batches, "
                          f"not rows of its own; use `foundry {modality.name} pretrain --set objective.name={cfg.objective.name}`")
    path = resolve_model_path(cfg.model.init_from)
    model, tokenizer, _ = load_for_modality(path, modality)
    if not model.config.causal:
        raise ConfigError(f"{path}: a masked (BERT/ESM-style) model; {cfg.objective.name} tunes causal (GPT/Llama-style) models")
    if cfg.data.max_len > model.config.max_position:
        raise ConfigError(f"data.max_len {cfg.data.max_len}: the model has {model.config.max_position} positions; "
                          f"set data.max_len <= {model.config.max_position}")
    objective = objective_type(tokenizer, t)
    template = find_template(path, t.chat_template, t.default_template)
    hint = (f"{path} has none and tune.default_template is false; pass --chat-template FILE (a Jinja template) "
            "or allow foundry's default")
    context = ReadContext(cfg.data.max_len, template, hint)
    train = objective.read(Path(t.data), context)
    if t.valid:
        valid = objective.read(Path(t.valid), context)[: t.max_valid]
    else:
        train, valid = _split(train, t.valid_fraction, t.max_valid, cfg.train.seed, t.data)
    torch.manual_seed(cfg.train.seed)  # the adapters' initial weights are part of what the seed fixes
    reference = None
    if t.strategy == "lora":
        model = apply_strategy(model, "lora", lora_rank=t.lora_rank, lora_alpha=t.lora_alpha)
    if objective.needs_reference:
        reference = _reference(model, t.strategy == "lora")
    workload = TuningWorkload(cfg, model, tokenizer, objective, train, valid, modality.name, template, reference)
    trainable, total = count_trainable(model)
    info = {"from": str(path), "train_rows": len(train), "valid_rows": len(valid), "trainable_parameters": trainable,
            "parameters": total, "chat_template": None if template is None else template.source}
    return workload, info


def tune(cfg: RunConfig, resume: Path | None = None) -> dict[str, Any]:
    from .checkpoint import latest_checkpoint
    from .pretrain import _publish_final

    validate(cfg)
    check_mixed_precision(cfg.train.mixed_precision)
    modality = get_manager().modality(cfg.modality)
    run_dir = Path(resume or cfg.out)
    main_process = process_state().is_main_process
    workload, info = build_workload(cfg, modality)
    checkpoint = checkpoint_to_resume(run_dir, resume, main_process)
    with writing(run_dir, fresh=checkpoint is None, main_process=main_process):
        initial = None
        if main_process:
            atomic_write_text(run_dir / "config.yaml", cfg.to_yaml())
        if checkpoint is None:
            initial = workload.scores(workload.model)  # the starting model, on every process alike
            if main_process:
                log = MetricsLog(run_dir / "metrics.jsonl")
                log.write({"step": 0, "split": "valid", **initial})
                log.close()
        result = run_training(workload, cfg.train, run_dir, resume_from=checkpoint, tracker_config=cfg.to_dict())
        summary = {**result, "objective": cfg.objective.name, "modality": modality.name, "strategy": cfg.tune.strategy,
                   "initial": initial, **info, "final_model": str(run_dir / "final"),
                   "checkpoint": str(latest_checkpoint(run_dir).relative_to(run_dir))}
        if main_process:
            _publish_final(run_dir)
            atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=1, default=str) + "\n")
    return summary
