"""Sampling from causal models: KV-cached decoding, greedy / temperature / top-k / top-p,
repetition penalty, stop strings, eos, batched prompts. Modality-agnostic: it sees token ids and a
tokenizer's ``encode``/``decode``.

    from foundry.generation import generate
    texts = generate(model, tokenizer, ["def add(a, b):"], max_new_tokens=32, temperature=0)

``complete`` returns the same plus token ids, why each row stopped and tokens/s; ``generate_ids``
works on token ids alone. ``temperature=0`` is greedy decoding (argmax), which equals
transformers' ``generate(do_sample=False)`` on the exported model (tested).

Batched prompts are left-padded; each row has its own positions (0 at its first real token) and
its padding is never attended to, so a row decodes exactly as it would alone. The logits
processors run in transformers' order: repetition penalty, then temperature, top-k, top-p.

A prompt longer than the model's context (``max_position``) is refused (``FoundryError``), never
silently cut; decoding stops early (finish reason "length") when the context is full.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

import torch

from .errors import FoundryError


@dataclass(frozen=True)
class SamplingOptions:
    """How each next token is chosen. ``temperature`` 0 means greedy."""

    max_new_tokens: int = 64
    temperature: float = 1.0
    top_k: int | None = None  # keep the k most likely tokens (None or 0: all)
    top_p: float | None = None  # keep the smallest set with probability >= p (None or 1: all)
    repetition_penalty: float = 1.0  # CTRL / transformers: > 1 discourages tokens already present
    stop: tuple[str, ...] = ()  # cut the text at the first of these and stop the row
    seed: int | None = None  # sampling is reproducible for a given seed (same device)

    def __post_init__(self):
        if self.max_new_tokens < 0:
            raise FoundryError(f"--max-new-tokens: must be >= 0, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise FoundryError(f"--temperature: must be >= 0 (0 = greedy), got {self.temperature}")
        if self.top_k is not None and self.top_k < 0:
            raise FoundryError(f"--top-k: must be >= 0, got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise FoundryError(f"--top-p: must be in (0, 1], got {self.top_p}")
        if self.repetition_penalty <= 0:
            raise FoundryError(f"--repetition-penalty: must be > 0, got {self.repetition_penalty}")
        if any(not s for s in self.stop):
            raise FoundryError("--stop: a stop string cannot be empty")


@dataclass
class Completion:
    """What ``complete`` returns for a batch of prompts."""

    texts: list[str]  # the continuation of each prompt (stop string and eos excluded)
    token_ids: list[list[int]]  # new token ids of each row (up to and including eos / the stop)
    finish_reasons: list[str]  # "eos", "stop" or "length" per row
    new_tokens: int = 0  # tokens generated, all rows
    seconds: float = 0.0
    prompt_tokens: list[int] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0


# -- the next-token choice ----------------------------------------------------------------------


def process_logits(logits: torch.Tensor, seen: torch.Tensor | None, opts: SamplingOptions) -> torch.Tensor:
    """(B, V) fp32 logits -> processed logits: repetition penalty over ``seen`` (B, V) bool, then
    temperature, top-k and top-p (filtered tokens get -inf). Greedy skips the warpers."""
    if opts.repetition_penalty != 1.0 and seen is not None:
        penalised = torch.where(logits > 0, logits / opts.repetition_penalty, logits * opts.repetition_penalty)
        logits = torch.where(seen, penalised, logits)
    if opts.temperature == 0:
        return logits
    logits = logits / opts.temperature
    if opts.top_k:
        k = min(opts.top_k, logits.shape[-1])
        kth = torch.topk(logits, k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if opts.top_p is not None and opts.top_p < 1.0:
        # transformers' TopPLogitsWarper: drop the low tail whose cumulative probability <= 1 - p;
        # the most likely token always stays.
        sorted_logits, order = torch.sort(logits, descending=False, dim=-1)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop_sorted = cumulative <= (1 - opts.top_p)
        drop_sorted[..., -1:] = False
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def choose_next(logits: torch.Tensor, opts: SamplingOptions, generator: torch.Generator | None) -> torch.Tensor:
    """(B, V) processed logits -> (B,) next token ids."""
    if opts.temperature == 0:
        return logits.argmax(dim=-1)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


# -- decoding -----------------------------------------------------------------------------------


def check_prompts(prompts: Sequence[Sequence[int]], context: int, names: Sequence[str] | None = None) -> None:
    """Refuse an empty prompt, or one that leaves no room to generate in the model's context
    (no silent truncation). ``names``: how to call each prompt in the message (default "prompt N")."""
    for i, ids in enumerate(prompts):
        name = names[i] if names is not None else f"prompt {i + 1}"
        if len(ids) == 0:
            raise FoundryError(f"{name}: empty (no tokens to continue)")
        if len(ids) >= context:
            raise FoundryError(f"{name}: {len(ids)} tokens, but the model's context is {context} tokens "
                               "(model.max_position); shorten the prompt")


@torch.no_grad()
def generate_ids(
    model,
    prompts: Sequence[Sequence[int]],
    opts: SamplingOptions,
    *,
    eos_ids: Sequence[int] = (),
    pad_id: int = 0,
    stop_check=None,  # stop_check(row, new_ids) -> True when the row should stop (stop strings)
) -> tuple[list[list[int]], list[str]]:
    """Continue each prompt (lists of token ids); returns (new ids per row, finish reason per row).

    One prefill over the left-padded batch, then one cached step per token. A row that has
    finished keeps being fed (its outputs are ignored) so the batch stays rectangular."""
    cfg = model.config
    if not cfg.causal:
        raise FoundryError("generation needs a causal (GPT/Llama-style) model; this one is masked (BERT/ESM-style)")
    context = cfg.max_position
    check_prompts(prompts, context)
    from .model.kv_cache import KVCache

    device = model.embed.weight.device
    b, longest = len(prompts), max(len(p) for p in prompts)
    steps = min(opts.max_new_tokens, context - longest)
    tokens = torch.full((b, longest), pad_id, dtype=torch.long)
    real = torch.zeros(b, longest, dtype=torch.bool)
    for r, ids in enumerate(prompts):  # left padding
        tokens[r, longest - len(ids):] = torch.as_tensor(list(ids), dtype=torch.long)
        real[r, longest - len(ids):] = True
    tokens, real = tokens.to(device), real.to(device)
    positions = (real.long().cumsum(-1) - 1).clamp(min=0)  # (B, T): 0 at each row's first real token
    seen = None
    if opts.repetition_penalty != 1.0:
        # counted, not scattered as bools: a padding slot must not clear a real token's mark
        seen = torch.zeros(b, cfg.vocab_size, dtype=torch.long, device=device).scatter_add_(1, tokens, real.long()) > 0
    generator = None
    if opts.seed is not None:
        generator = torch.Generator(device=device).manual_seed(opts.seed)
    eos = set(eos_ids)

    was_training = model.training
    model.eval()
    out: list[list[int]] = [[] for _ in range(b)]
    reasons = ["length"] * b
    done = [False] * b  # a Python list: no device sync per row and step
    try:
        cache = KVCache.for_model(model, b, longest + max(steps, 0))
        logits = model.forward_cached(tokens, cache, positions, real) if steps > 0 else None
        next_pos = positions[:, -1:] + 1
        for _ in range(steps):
            scores = process_logits(logits[:, -1].float(), seen, opts)
            nxt = choose_next(scores, opts, generator)  # (B,)
            for r, tid in enumerate(nxt.tolist()):
                if done[r]:
                    continue
                out[r].append(tid)
                if tid in eos:
                    reasons[r], done[r] = "eos", True
                elif stop_check is not None and stop_check(r, out[r]):
                    reasons[r], done[r] = "stop", True
            if all(done):
                break
            if seen is not None:
                seen[torch.arange(b, device=device), nxt] = True
            logits = model.forward_cached(nxt[:, None], cache, next_pos)
            next_pos = next_pos + 1
    finally:
        model.train(was_training)
    return out, reasons


def _decode(tokenizer, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=True)


def _cut(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """``text`` up to the earliest stop string, and whether one occurred."""
    cuts = [i for i in (text.find(s) for s in stop) if i >= 0]
    return (text[: min(cuts)], True) if cuts else (text, False)


def encode_prompt(tokenizer, text: str) -> list[int]:
    """Prompt ids: ``tokenizer.encode_prompt`` when it has one (bos, no eos, special-token strings
    recognised), else ``encode`` without the trailing eos."""
    if hasattr(tokenizer, "encode_prompt"):
        return [int(i) for i in tokenizer.encode_prompt(text)]
    ids = [int(i) for i in tokenizer.encode(text)]
    if ids and tokenizer.eos_id is not None and ids[-1] == tokenizer.eos_id:
        ids = ids[:-1]
    return ids


def complete_ids(model, tokenizer, prompts: Sequence[Sequence[int]], opts: SamplingOptions, batch_size: int = 16,
                 names: Sequence[str] | None = None) -> Completion:
    """Continue prompts given as token ids, ``batch_size`` rows at a time; texts decoded and cut at
    the stop strings. ``names``: what errors call each prompt (e.g. "file.jsonl:3")."""
    check_prompts(prompts, model.config.max_position, names)  # all of them, before any work
    eos_ids = [tokenizer.eos_id] if tokenizer.eos_id is not None else []
    texts, ids_out, reasons = [], [], []
    start, total = time.perf_counter(), 0
    for s in range(0, len(prompts), max(1, batch_size)):
        chunk = prompts[s : s + batch_size]

        def stop_check(row, new_ids, _stop=opts.stop):
            # Only the tail can hold a stop string that was not there one token ago.
            return bool(_stop) and _cut(_decode(tokenizer, new_ids[-64:]), _stop)[1]

        new, why = generate_ids(model, chunk, opts, eos_ids=eos_ids, pad_id=tokenizer.pad_id, stop_check=stop_check)
        for ids, reason in zip(new, why):
            total += len(ids)
            body = ids[:-1] if reason == "eos" else ids
            text, stopped = _cut(_decode(tokenizer, body), opts.stop)
            texts.append(text)
            ids_out.append(ids)
            reasons.append("stop" if stopped and reason != "eos" else reason)
    return Completion(texts, ids_out, reasons, total, time.perf_counter() - start, [len(p) for p in prompts])


def complete(model, tokenizer, prompts: Sequence[str], opts: SamplingOptions | None = None, batch_size: int = 16,
             names: Sequence[str] | None = None, **options) -> Completion:
    """Continue text prompts; ``options`` are ``SamplingOptions`` fields when ``opts`` is not given."""
    opts = opts or SamplingOptions(**_stop_tuple(options))
    return complete_ids(model, tokenizer, [encode_prompt(tokenizer, p) for p in prompts], opts, batch_size, names)


def generate(model, tokenizer, prompts: str | Sequence[str], batch_size: int = 16, **options) -> list[str] | str:
    """The continuations of ``prompts`` (one string for one string). ``options``: ``SamplingOptions``
    fields (max_new_tokens, temperature, top_k, top_p, repetition_penalty, stop, seed)."""
    single = isinstance(prompts, str)
    result = complete(model, tokenizer, [prompts] if single else list(prompts), batch_size=batch_size, **options)
    return result.texts[0] if single else result.texts


def _stop_tuple(options: dict) -> dict:
    if "stop" in options and options["stop"] is not None:
        stop = options["stop"]
        options = {**options, "stop": (stop,) if isinstance(stop, str) else tuple(stop)}
    return options


# -- fill in the middle -------------------------------------------------------------------------


def infill_prompt(tokenizer, prefix: str, suffix: str) -> list[int]:
    """PSM order, as ``foundry.fim`` trains: [bos] <fim_prefix> prefix <fim_suffix> suffix <fim_middle>;
    the model then writes the middle. Fails when the tokenizer reserves no FIM sentinels."""
    ids = getattr(tokenizer, "fim_ids", None) or {}
    missing = [k for k in ("fim_prefix", "fim_middle", "fim_suffix") if k not in ids]
    if missing:
        raise FoundryError(f"infill: the model's tokenizer has no fill-in-the-middle tokens ({', '.join(missing)} missing); "
                           "use a code model trained with FIM, or `complete` with the prefix only")
    bos = [tokenizer.bos_id] if getattr(tokenizer, "add_bos", True) and tokenizer.bos_id is not None else []
    body = lambda text: [int(i) for i in tokenizer.encode(text, add_special_tokens=False)]  # noqa: E731
    return bos + [ids["fim_prefix"]] + body(prefix) + [ids["fim_suffix"]] + body(suffix) + [ids["fim_middle"]]
