"""Instruction tuning (``sft``) and preference tuning (``dpo``) as registered objectives.

Unlike mlm/clm/fim, which corrupt packed pretraining batches, these objectives read their own
rows and build their own batches (``batch_kind``), so each brings, beside the loss:

- ``read(path, context)``: the JSONL rows as examples, every bad row an error naming file and line;
- ``stream(examples, cfg)``: a resumable training stream (``next_for_rank``, ``state_dict``);
- ``eval_batches(examples, cfg)``: fixed validation batches;
- ``batch_loss(model, batch, device, reference)``: the loss and the numbers to log, as sums
  over the batch (``summarize`` turns summed numbers into the reported ones).

``foundry.tuning.TuningWorkload`` runs any such objective on the one loop. ``reference`` is
``None`` unless the objective sets ``needs_reference``: then a callable ``(tokens, document_ids)
-> logits`` of the frozen starting model (a copy, or with LoRA the adapter-disabled trunk).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from .chat import Encoded, encode_pieces, encode_sft_row, prompt_completion_pieces, read_jsonl, text_field
from .data.packing import PackedStream, Piece, materialize
from .errors import DataError
from .objectives import IGNORE_INDEX, Objective, causal_labels


@dataclass
class ReadContext:
    """What reading rows needs beyond the file: the context length, the chat template, and the
    sentence an error about a missing template should end with."""

    max_len: int
    template: Any = None
    no_template_hint: str = "the model has none"


@dataclass
class TuneLoss:
    loss: torch.Tensor  # what backpropagates (a mean)
    tokens: int  # real tokens of the batch
    slots: int  # tokens including padding
    sums: dict[str, float]  # summed numbers for ``summarize`` (evaluation) ...
    logged: dict[str, float]  # ... and the batch's own numbers (training log)


class TuningObjective(Objective):
    """Base of objectives that read rows and build their own batches (see the module docstring)."""

    causal = True
    needs_reference: ClassVar[bool] = False
    metric: ClassVar[str] = "val_loss"
    higher_is_better: ClassVar[bool] = False
    #: the keys of ``TuneLoss.sums``, in a fixed order (summed across processes)
    sum_keys: ClassVar[tuple[str, ...]] = ()

    def read(self, path: Path, context: ReadContext) -> list: ...

    def stream(self, examples: list, cfg) -> Any: ...

    def eval_batches(self, examples: list, cfg) -> list: ...

    def batch_loss(self, model, batch, device, reference=None) -> TuneLoss: ...

    def summarize(self, sums: dict[str, float]) -> dict[str, float]: ...

    def describe(self, result: dict[str, float]) -> str: ...


# -- SFT -----------------------------------------------------------------------------------------


class _Rows:
    """A list of 1-D arrays with the ``TokenDataset`` face the packer reads (``lengths``, items)."""

    def __init__(self, arrays: list[np.ndarray]):
        self.arrays, self.lengths = arrays, np.asarray([len(a) for a in arrays], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.arrays)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.arrays[i]


@dataclass
class SftBatch:
    tokens: torch.Tensor  # (rows, max_len)
    document_ids: torch.Tensor  # (rows, max_len): 1, 2, … per example in a row, 0 on padding
    targets: torch.Tensor  # (rows, max_len) bool: the token is an answer token (scored)
    real_tokens: int
    index: int


class SftStream(PackedStream):
    """The engine's packer over whole examples: several conversations share a row (attention
    never crosses them), none is ever cut (examples are at most ``max_len`` already)."""

    def __init__(self, examples: list[Encoded], **kwargs):
        super().__init__(_Rows([e.ids for e in examples]), random_crop=False, **kwargs)
        self.targets = _Rows([e.target.astype(np.int64) for e in examples])
        self.min_piece = self.max_len + 1  # never fill a row's tail with a crop of an example

    def materialize(self, rows, index: int) -> SftBatch:
        batch = materialize(self.dataset, rows, self.max_len, self.pad_id, index)
        targets = materialize(self.targets, rows, self.max_len, 0, index).tokens.bool()
        return SftBatch(batch.tokens, batch.document_ids, targets, batch.real_tokens, index)


def sft_labels(tokens: torch.Tensor, document_ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Next-token labels kept only where the predicted token is an answer token: ``IGNORE_INDEX``
    on every prompt (system/user/template) position, across documents and on padding."""
    labels = causal_labels(tokens, document_ids, None)
    scored = torch.zeros_like(targets)
    scored[:, :-1] = targets[:, 1:]
    return torch.where(scored, labels, torch.full_like(labels, IGNORE_INDEX))


class SupervisedFineTuning(TuningObjective):
    name = "sft"
    description = "instruction tuning: next-token loss on assistant/completion tokens only, packed conversations"
    batch_kind = "chat-tokens"
    loss_name = "response loss"
    sum_keys = ("loss_sum", "targets")
    seed_stride = 1_000_000_021

    def read(self, path: Path, context: ReadContext) -> list[Encoded]:
        examples = []
        for number, row in read_jsonl(path):
            where = f"{path} line {number}"
            examples.append(encode_sft_row(row, where, self.tokenizer, context.template, context.max_len, context.no_template_hint))
        if not examples:
            raise DataError(f"{path}: no rows")
        return examples

    def stream(self, examples: list[Encoded], cfg) -> SftStream:
        return SftStream(examples, max_len=cfg.data.max_len, batch_tokens=cfg.data.batch_tokens, pad_id=self.tokenizer.pad_id,
                         seed=cfg.train.seed, pack=cfg.data.pack)

    def eval_batches(self, examples: list[Encoded], cfg) -> list[SftBatch]:
        """A fixed packing of the validation examples in file order (first fit, no shuffle)."""
        stream = SftStream(examples, max_len=cfg.data.max_len, batch_tokens=cfg.data.batch_tokens, pad_id=self.tokenizer.pad_id,
                           seed=0, pack=cfg.data.pack)
        batches, rows, free = [], [[] for _ in range(stream.rows)], [stream.max_len] * stream.rows
        for i, example in enumerate(examples):
            length = len(example.ids)
            fits = (lambda r: free[r] >= length) if stream.pack else (lambda r: free[r] == stream.max_len)
            target = next((r for r in range(stream.rows) if fits(r)), None)
            if target is None:
                batches.append(stream.materialize([r for r in rows if r], len(batches)))
                rows, free, target = [[] for _ in range(stream.rows)], [stream.max_len] * stream.rows, 0
            rows[target].append(Piece(i, 0, length))
            free[target] -= length
        if any(rows):
            batches.append(stream.materialize([r for r in rows if r], len(batches)))
        return batches

    def batch_loss(self, model, batch: SftBatch, device, reference=None) -> TuneLoss:
        labels = sft_labels(batch.tokens, batch.document_ids, batch.targets).to(device)
        out = model(batch.tokens.to(device), document_ids=batch.document_ids.to(device))
        keep = labels != IGNORE_INDEX
        count = int(keep.sum())
        if count == 0:  # a micro-batch of answers cut away entirely (cannot happen after read's checks)
            loss = out.logits.sum() * 0.0
        else:
            loss = F.cross_entropy(out.logits[keep].float(), labels[keep])
        value = float(loss.detach())
        return TuneLoss(loss, batch.real_tokens, batch.tokens.numel(), {"loss_sum": value * count, "targets": count},
                        {"targets": count})

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        import math

        count = max(1.0, sums.get("targets", 0.0))
        loss = sums.get("loss_sum", 0.0) / count
        return {"val_loss": loss, "val_perplexity": math.exp(min(loss, 50.0)), "val_targets": int(count)}

    def describe(self, result: dict[str, float]) -> str:
        return f"val_loss {result['val_loss']:.4f} on {result['val_targets']} answer tokens"


# -- DPO -----------------------------------------------------------------------------------------


@dataclass
class Pair:
    chosen: Encoded
    rejected: Encoded


@dataclass
class PairBatch:
    tokens: torch.Tensor  # (2B, T): the B chosen sequences, then the B rejected ones
    document_ids: torch.Tensor  # (2B, T): 1 on real tokens, 0 on padding
    targets: torch.Tensor  # (2B, T) bool: completion tokens (scored)
    real_tokens: int
    index: int


def collate_pairs(pairs: list[Pair], pad_id: int, index: int) -> PairBatch:
    sequences = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    width = max(len(s.ids) for s in sequences)
    tokens = np.full((len(sequences), width), pad_id, dtype=np.int64)
    docs = np.zeros((len(sequences), width), dtype=np.int64)
    targets = np.zeros((len(sequences), width), dtype=bool)
    for row, s in enumerate(sequences):
        tokens[row, : len(s.ids)], docs[row, : len(s.ids)], targets[row, : len(s.ids)] = s.ids, 1, s.target
    return PairBatch(torch.from_numpy(tokens), torch.from_numpy(docs), torch.from_numpy(targets), int(docs.sum()), index)


def sequence_log_probs(logits: torch.Tensor, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(completion | prompt) per row: the sum of the completion tokens' log-probabilities."""
    log_probs = torch.log_softmax(logits[:, :-1].float(), dim=-1).gather(-1, tokens[:, 1:, None]).squeeze(-1)
    return (log_probs * targets[:, 1:]).sum(-1)


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, reference_chosen: torch.Tensor,
             reference_rejected: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rafailov et al. 2023: −log σ(β[(log πθ(y⁺|x) − log πref(y⁺|x)) − (log πθ(y⁻|x) − log πref(y⁻|x))]),
    per pair. Returns (losses, chosen rewards, rejected rewards), rewards β·(log πθ − log πref)."""
    chosen = beta * (policy_chosen - reference_chosen)
    rejected = beta * (policy_rejected - reference_rejected)
    return -F.logsigmoid(chosen - rejected), chosen.detach(), rejected.detach()


def _wins(chosen: torch.Tensor, rejected: torch.Tensor) -> float:
    """Pairs whose chosen reward beats the rejected one; a tie counts half (the starting model,
    equal to its reference, ties every pair: accuracy 0.5, a coin flip, not 0)."""
    return float((chosen > rejected).sum() + 0.5 * (chosen == rejected).sum())


class PairStream:
    """Training batches of ``batch_size`` pairs, a fresh shuffle per epoch drawn from (seed, epoch):
    (epoch, position) is the whole state."""

    def __init__(self, pairs: list[Pair], batch_size: int, pad_id: int, seed: int):
        self.pairs, self.batch_size, self.pad_id, self.seed = pairs, batch_size, pad_id, seed
        self.epoch, self.position, self.taken, self._plan = 0, 0, 0, None

    def _take(self) -> list[int]:
        from .finetune.data import batch_plan

        if self._plan is None:
            lengths = [len(p.chosen.ids) + len(p.rejected.ids) for p in self.pairs]
            self._plan = batch_plan(lengths, batch_size=self.batch_size, seed=self.seed, epoch=self.epoch)
        picked = self._plan[self.position]
        self.position, self.taken = self.position + 1, self.taken + 1
        if self.position == len(self._plan):
            self.epoch, self.position, self._plan = self.epoch + 1, 0, None
        return picked

    def next_for_rank(self, rank: int, world: int) -> PairBatch:
        mine = None
        for r in range(world):
            index, picked = self.taken, self._take()
            if r == rank:
                mine = collate_pairs([self.pairs[i] for i in picked], self.pad_id, index)
        return mine

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "taken": self.taken}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position, self.taken, self._plan = int(state["epoch"]), int(state["position"]), int(state["taken"]), None


class DirectPreference(TuningObjective):
    name = "dpo"
    description = "preference tuning (DPO): chosen over rejected completions against a frozen reference, tune.beta"
    batch_kind = "preference-pairs"
    loss_name = "DPO loss"
    sum_keys = ("loss_sum", "correct", "margin_sum", "chosen_sum", "rejected_sum", "pairs")
    needs_reference = True
    seed_stride = 1_000_000_033

    def read(self, path: Path, context: ReadContext) -> list[Pair]:
        pairs = []
        for number, row in read_jsonl(path):
            where = f"{path} line {number}"
            prompt = text_field(row, "prompt", where)
            chosen, rejected = text_field(row, "chosen", where), text_field(row, "rejected", where)
            if chosen == rejected:
                raise DataError(f"{where}: \"chosen\" equals \"rejected\": the pair prefers nothing")
            encoded = [encode_pieces(self.tokenizer, prompt_completion_pieces(prompt, c, self.tokenizer)) for c in (chosen, rejected)]
            if encoded[0].prompt_length >= context.max_len:
                raise DataError(f"{where}: the prompt is {encoded[0].prompt_length} tokens, longer than the context "
                                f"(data.max_len {context.max_len}) leaves room for")
            pairs.append(Pair(*(Encoded(e.ids[: context.max_len], e.target[: context.max_len]) for e in encoded)))
        if not pairs:
            raise DataError(f"{path}: no rows")
        return pairs

    def stream(self, pairs: list[Pair], cfg) -> PairStream:
        return PairStream(pairs, cfg.tune.batch_size, self.tokenizer.pad_id, cfg.train.seed)

    def eval_batches(self, pairs: list[Pair], cfg) -> list[PairBatch]:
        size = cfg.tune.batch_size
        return [collate_pairs(pairs[i : i + size], self.tokenizer.pad_id, i // size) for i in range(0, len(pairs), size)]

    def batch_loss(self, model, batch: PairBatch, device, reference=None) -> TuneLoss:
        tokens, docs, targets = batch.tokens.to(device), batch.document_ids.to(device), batch.targets.to(device)
        policy = sequence_log_probs(model(tokens, document_ids=docs).logits, tokens, targets)
        with torch.no_grad():
            ref = sequence_log_probs(reference(tokens, docs), tokens, targets)
        half = len(policy) // 2
        losses, chosen, rejected = dpo_loss(policy[:half], policy[half:], ref[:half], ref[half:], self.settings.beta)
        loss = losses.mean()
        n = float(half)
        sums = {"loss_sum": float(losses.detach().sum()), "correct": _wins(chosen, rejected),
                "margin_sum": float((chosen - rejected).sum()), "chosen_sum": float(chosen.sum()),
                "rejected_sum": float(rejected.sum()), "pairs": n}
        logged = {"accuracy": sums["correct"] / n, "margin": sums["margin_sum"] / n,
                  "chosen_reward": sums["chosen_sum"] / n, "rejected_reward": sums["rejected_sum"] / n}
        return TuneLoss(loss, batch.real_tokens, batch.tokens.numel(), sums, logged)

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        n = max(1.0, sums.get("pairs", 0.0))
        return {"val_loss": sums.get("loss_sum", 0.0) / n, "accuracy": sums.get("correct", 0.0) / n,
                "margin": sums.get("margin_sum", 0.0) / n, "chosen_reward": sums.get("chosen_sum", 0.0) / n,
                "rejected_reward": sums.get("rejected_sum", 0.0) / n, "pairs": int(n)}

    def describe(self, result: dict[str, float]) -> str:
        return (f"val_loss {result['val_loss']:.4f}, preference accuracy {result['accuracy']:.3f}, "
                f"reward margin {result['margin']:.4f} on {result['pairs']} pairs")
