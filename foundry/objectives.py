"""Self-supervised objectives: plain functions over token batches, and the registered ``Objective``
components the training loop runs (``register_objectives`` hook; built-ins: mlm, clm, fim).

- ``mask_tokens``: BERT/ESM masked-LM corruption (select ``mask_prob`` of the real tokens; of
  those 80% become <mask>, 10% a random token, 10% stay) with labels only at selected positions.
- ``causal_labels``: next-token targets that never cross a document boundary in packed rows.
- ``lm_loss``: cross-entropy over the positions that carry a label (label -100 is ignored).

Randomness comes from an explicit ``torch.Generator`` so a batch's corruption is a function of
(seed, batch index) alone: a resumed run masks exactly like an uninterrupted one.

An objective consumes packed token batches (``batch_kind = "packed-tokens"``: tokens plus per-row
document ids, 0 = padding) and returns ``(loss, labels)``; labels say which positions were scored,
so the loop can report a unigram baseline on the same targets. Objectives that read rows of
their own instead of a pretraining corpus (``sft``: conversations, ``batch_kind = "chat-tokens"``;
``dpo``: preference pairs, ``"preference-pairs"``) subclass
``foundry.objectives_tuning.TuningObjective``: they also bring the reader, the batch stream,
validation batches and a loss over a whole batch (with a frozen reference model when they ask
for one), and ``foundry.tuning.TuningWorkload`` runs any of them on the one loop. Pretraining
refuses them by their ``batch_kind``; the loop never names an objective. A plugin may register
objectives for data of its own the same way (a ``batch_kind`` its own command trains on).
"""

from __future__ import annotations

from typing import Any, ClassVar, Sequence

import torch
import torch.nn.functional as F

from .errors import ConfigError

IGNORE_INDEX = -100
#: the batches a pretraining corpus gives (tokens + per-row document ids); ``Objective.batch_kind``
PACKED_TOKENS = "packed-tokens"


def mask_tokens(
    tokens: torch.Tensor,
    *,
    special_ids: Sequence[int],
    maskable_ids: Sequence[int],
    mask_id: int,
    generator: torch.Generator,
    mask_prob: float = 0.15,
    mask_replace: float = 0.8,
    random_replace: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(inputs, labels)`` for masked-LM training; ``tokens`` is (B, T) int64."""
    special = torch.isin(tokens, torch.as_tensor(list(special_ids), dtype=tokens.dtype))
    draw = torch.rand(tokens.shape, generator=generator)
    selected = (draw < mask_prob) & ~special
    # Guarantee at least one prediction per batch so the loss is always defined.
    if not selected.any():
        candidates = (~special).nonzero()
        if len(candidates):
            pick = candidates[torch.randint(len(candidates), (1,), generator=generator)][0]
            selected[pick[0], pick[1]] = True

    labels = torch.where(selected, tokens, torch.full_like(tokens, IGNORE_INDEX))
    action = torch.rand(tokens.shape, generator=generator)
    to_mask = selected & (action < mask_replace)
    to_random = selected & (action >= mask_replace) & (action < mask_replace + random_replace)
    choices = torch.as_tensor(list(maskable_ids), dtype=tokens.dtype)
    random_tokens = choices[torch.randint(len(choices), tokens.shape, generator=generator)]

    inputs = tokens.clone()
    inputs[to_mask] = mask_id
    inputs[to_random] = random_tokens[to_random]
    return inputs, labels


def causal_labels(tokens: torch.Tensor, document_ids: torch.Tensor | None, pad_id: int | None) -> torch.Tensor:
    """Targets aligned with ``tokens``: label[t] = tokens[t+1] within the same document.

    The last position of each document (and of each row) and padding get ``IGNORE_INDEX``.
    Padding is ``document_ids == 0`` when given, else ``tokens == pad_id``.
    """
    labels = torch.full_like(tokens, IGNORE_INDEX)
    labels[:, :-1] = tokens[:, 1:]
    valid = torch.ones_like(tokens, dtype=torch.bool)
    valid[:, -1] = False
    if document_ids is not None:
        # Packed rows say where padding is (document 0); the pad id may double as <eos> (GPT-2),
        # and <eos> must still be predicted.
        valid[:, :-1] &= (document_ids[:, 1:] == document_ids[:, :-1]) & (document_ids[:, :-1] != 0)
    elif pad_id is not None:
        valid[:, :-1] &= tokens[:, 1:] != pad_id
        valid &= tokens != pad_id
    return torch.where(valid, labels, torch.full_like(labels, IGNORE_INDEX))


def lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Mean cross-entropy over labelled positions and how many there were.

    Only labelled rows go through the softmax (MLM labels ~15% of positions), in fp32.
    """
    keep = labels != IGNORE_INDEX
    count = int(keep.sum())
    if count == 0:
        return logits.sum() * 0.0, 0
    selected = logits[keep].float()
    return F.cross_entropy(selected, labels[keep]), count


def unigram_log_probs(train_counts: torch.Tensor) -> torch.Tensor:
    """Log-probabilities of a model that always predicts the training-set token frequencies
    (add-one smoothed): the baseline every pretraining run must beat. It knows the composition,
    nothing about context."""
    smoothed = train_counts.double() + 1.0
    return (smoothed / smoothed.sum()).log()


# -- registered objectives -----------------------------------------------------------------------


class Objective:
    """What a self-supervised objective brings to the loop.

    ``check(tokenizer, settings)`` fails before training with a ``ConfigError`` when the tokenizer
    or ``objective.*`` settings cannot work; ``__call__`` corrupts/labels one batch, runs the model
    and returns ``(loss, labels)`` (labels: ``IGNORE_INDEX`` where nothing is scored).
    ``causal`` says which trunks fit (a causal objective needs a causal attention mask).
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    causal: ClassVar[bool] = False
    #: what the objective trains on: ``PACKED_TOKENS`` (a pretraining corpus), or a kind of its
    #: own (rows it reads itself, or a plugin's data); a command offers only objectives whose kind
    #: matches its data (``objectives_for``)
    batch_kind: ClassVar[str] = PACKED_TOKENS
    #: what the loss is called in reports ("masked-LM loss", "next-token loss")
    loss_name: ClassVar[str] = "loss"
    #: the loop seeds each batch's generator with ``seed * seed_stride + batch index``; objectives
    #: keep distinct strides so their random streams never coincide
    seed_stride: ClassVar[int] = 1_000_000_007

    def __init__(self, tokenizer, settings: Any):
        self.tokenizer, self.settings = tokenizer, settings
        self.check()

    def check(self) -> None:
        """Raise ``ConfigError`` naming the key when this tokenizer or these settings cannot work."""

    def corrupt(self, tokens: torch.Tensor, document_ids: torch.Tensor, generator: torch.Generator, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """``(inputs, labels)`` for one batch."""
        raise NotImplementedError

    def __call__(self, model, tokens: torch.Tensor, document_ids: torch.Tensor, *, generator: torch.Generator,
                 train: bool = True, device: Any = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        inputs, labels = self.corrupt(tokens, document_ids, generator, train)
        # Padding is its own "document" 0; the model masks it out of attention.
        out = model(inputs.to(device), document_ids=document_ids.to(device))
        loss, _ = lm_loss(out.logits, labels.to(device))
        return loss, labels


class MaskedLM(Objective):
    name = "mlm"
    description = "masked-token prediction (BERT/ESM-2: 80% <mask>, 10% random, 10% kept)"
    loss_name = "masked-LM loss"

    def check(self) -> None:
        if self.tokenizer.mask_id is None:
            raise ConfigError(f"objective {self.name}: the masked-LM objective needs a tokenizer with a mask token")

    def corrupt(self, tokens, document_ids, generator, train):
        s, t = self.settings, self.tokenizer
        return mask_tokens(tokens, special_ids=t.special_ids, maskable_ids=t.maskable_ids, mask_id=t.mask_id, generator=generator,
                           mask_prob=s.mask_prob, mask_replace=s.mask_replace, random_replace=s.random_replace)


class CausalLM(Objective):
    name = "clm"
    description = "next-token prediction (GPT/Llama); never across a document boundary in packed rows"
    causal = True
    loss_name = "next-token loss"

    def corrupt(self, tokens, document_ids, generator, train):
        return tokens, causal_labels(tokens, document_ids, self.tokenizer.pad_id)


class FillInTheMiddle(CausalLM):
    """Next-token prediction where ``objective.fim_rate`` of the training documents are rearranged
    prefix/suffix/middle (PSM) first; validation stays plain next-token."""

    name = "fim"
    seed_stride = 1_000_000_009
    description = "next-token prediction with fill-in-the-middle rearrangement (PSM) of objective.fim_rate of documents"

    def check(self) -> None:
        from .fim import fim_sentinels

        self.sentinels = fim_sentinels(self.tokenizer) if self.settings.fim_rate > 0 else None
        if self.sentinels is None:
            # The tokenizer has no sentinels (fim_sentinels said so): record what the run really
            # does, so the saved config.yaml does not claim a FIM rate.
            self.settings.fim_rate = 0.0

    def corrupt(self, tokens, document_ids, generator, train):
        if train and self.sentinels is not None:
            from .fim import apply_fim

            special = tuple(i for i in (self.tokenizer.bos_id, self.tokenizer.eos_id) if i is not None)
            tokens = apply_fim(tokens, document_ids, **self.sentinels, rate=self.settings.fim_rate, generator=generator, keep_ids=special)
        return super().corrupt(tokens, document_ids, generator, train)


def objective_class(name: str) -> type[Objective]:
    """The objective registered as ``name``: the engine's (mlm, clm, fim), then plugins'
    (``register_objectives`` hook); unknown names list the known ones."""
    from .plugins import get_manager

    return get_manager().objective_class(name)


def objectives_for(batch_kind: str) -> list[str]:
    """The registered objectives that train on ``batch_kind`` batches, in registration order: a
    command offers only these (pretraining a corpus: ``PACKED_TOKENS``; a plugin: its own kind)."""
    from .plugins import get_manager

    manager = get_manager()
    return [name for name in manager.objectives.names() if manager.objective_class(name).batch_kind == batch_kind]


def build_objective(name: str, tokenizer, settings: Any) -> Objective:
    return objective_class(name)(tokenizer, settings)
