"""Masked-LM training throughput on CPU: foundry (packed rows) vs HF ESM (padded batches).

    .venv/bin/python bench/train_throughput.py                       # 8192-token batches, crop 1024
    .venv/bin/python bench/train_throughput.py --max-len 512 --steps 12
    .venv/bin/python bench/train_throughput.py --also documents      # + foundry, per-document attention

Both sides train ESM-2 8M (``esm2_t6_8M``; HF ``EsmForMaskedLM`` built from the same config,
``attn_implementation="sdpa"``, random init) on UniProt sequences (the shared mmseqs2 DB,
tokenized with the protein plugin's EsmTokenizer), ``--batch-tokens`` per batch, sequences longer
than ``--max-len`` cropped to a random window, AdamW with the same settings, grad clipping at 1.0.

- foundry: the real training step — ``PackedStream`` batches (documents packed into rows,
  ``document_ids``), the ``mlm`` objective (MLM 80/10/10 + ESM token dropout), backward, clip, AdamW.
- HF: the usual recipe — batch_tokens // max_len sequences per batch, padded to the longest
  (dynamic padding), the same MLM corruption, ``labels=`` loss, backward, clip, AdamW.

Steps alternate between the two (foundry, HF, foundry, …) in one process so load from other
users of a shared machine hits both alike; warm-up steps are not timed. Throughput counts real
(non-padding) tokens. Model FLOP/s = tokens/s x (6 N + 12 L D c), c the mean attention context a
real token needs (its document's length), against the fp32 matmul peak measured here.
The last line of output is one JSON object.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from common import default_data, load_corpus, machine, matmul_peak, print_json, reuse_freed_memory, seed_all

from foundry.config import RunConfig
from foundry.data.packing import PackedStream
from foundry.model import Transformer, from_name
from foundry.model.masks import document_runs
from foundry.objectives import mask_tokens
from foundry.objectives import build_objective
from foundry.train import param_groups


def mean_context(lengths) -> float:
    """Mean over tokens of the length of the document a token attends within: sum(l^2) / sum(l)."""
    lengths = np.asarray(lengths, dtype=np.float64)
    return float((lengths**2).sum() / max(1.0, lengths.sum()))


def _autocast(device: torch.device, dtype):
    """Mixed precision the way accelerate applies it (autocast around forward and loss), or off."""
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def run_config() -> RunConfig:
    cfg = RunConfig(modality="protein")
    cfg.train.lr = 1e-4  # a warm-up-sized rate: the benchmark times steps, it does not train to a goal
    return cfg


class FoundrySide:
    """The trainer's step: PackedStream -> MLM objective -> forward/backward -> clip -> AdamW."""

    def __init__(self, dataset, tokenizer, args, attn_impl: str, device="cpu", autocast=None):
        seed_all(args.seed)
        self.device, self.autocast = torch.device(device), autocast
        self.model = Transformer(from_name(
            "esm2_t6_8M", vocab_size=tokenizer.vocab_size, pad_id=tokenizer.pad_id, mask_id=tokenizer.mask_id, attn_impl=attn_impl,
        )).to(self.device)
        cfg = run_config()
        t = cfg.train
        self.optimizer = torch.optim.AdamW(param_groups(self.model.named_parameters(), t.weight_decay), lr=t.lr, betas=(t.beta1, t.beta2), eps=t.eps)
        self.objective = build_objective("mlm", tokenizer, cfg.objective)
        stream = PackedStream(dataset, max_len=args.max_len, batch_tokens=args.batch_tokens, pad_id=tokenizer.pad_id, seed=args.seed)
        self.batches = stream.batches()
        self.seed = args.seed

    def step(self) -> tuple[int, int, list[int]]:
        batch = next(self.batches)
        with _autocast(self.device, self.autocast):
            generator = torch.Generator().manual_seed(self.seed)
            loss, _ = self.objective(self.model, batch.tokens, batch.document_ids, generator=generator, device=self.device)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        runs = document_runs(batch.document_ids, batch.document_ids != 0)
        return batch.real_tokens, batch.tokens.numel(), runs.lengths[runs.attend].tolist()


class HFSide:
    """transformers' EsmForMaskedLM on padded batches of whole (cropped) sequences."""

    def __init__(self, dataset, tokenizer, args, model_cfg, device="cpu", autocast=None):
        from transformers import EsmForMaskedLM

        from foundry.convert.hf_esm import hf_config

        seed_all(args.seed)
        config = hf_config(model_cfg)
        config._attn_implementation = "sdpa"
        self.device, self.autocast = torch.device(device), autocast
        self.model = EsmForMaskedLM(config).train().to(self.device)
        t = run_config().train  # the same AdamW settings as foundry's (foundry skips decay on norms/biases)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=t.lr, betas=(t.beta1, t.beta2), eps=t.eps, weight_decay=t.weight_decay)
        self.dataset, self.tokenizer, self.args = dataset, tokenizer, args
        self.order = np.random.default_rng([args.seed, 7]).permutation(len(dataset))
        self.rows = max(1, args.batch_tokens // args.max_len)
        self.cursor, self.index = 0, 0
        self.rng = np.random.default_rng([args.seed, 8])

    def _batch(self):
        docs = []
        for _ in range(self.rows):
            doc = np.asarray(self.dataset[int(self.order[self.cursor % len(self.order)])], dtype=np.int64)
            self.cursor += 1
            if len(doc) > self.args.max_len:  # random window, as ESM and foundry crop
                start = int(self.rng.integers(0, len(doc) - self.args.max_len + 1))
                doc = doc[start : start + self.args.max_len]
            docs.append(doc)
        longest = max(len(d) for d in docs)
        tokens = np.full((len(docs), longest), self.tokenizer.pad_id, dtype=np.int64)
        for r, d in enumerate(docs):
            tokens[r, : len(d)] = d
        tokens = torch.from_numpy(tokens)
        generator = torch.Generator().manual_seed(self.args.seed * 1_000_000_007 + self.index)
        self.index += 1
        t = self.tokenizer
        inputs, labels = mask_tokens(tokens, special_ids=t.special_ids, maskable_ids=t.maskable_ids, mask_id=t.mask_id, generator=generator)
        return inputs, tokens.ne(t.pad_id), labels, [len(d) for d in docs]

    def step(self) -> tuple[int, int, list[int]]:
        inputs, attention_mask, labels, lengths = self._batch()
        inputs, attention_mask, labels = (x.to(self.device) for x in (inputs, attention_mask, labels))
        with _autocast(self.device, self.autocast):
            loss = self.model(input_ids=inputs, attention_mask=attention_mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return int(attention_mask.sum()), inputs.numel(), lengths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(default_data()))
    parser.add_argument("--limit", type=int, default=None, help="use the first N sequences")
    parser.add_argument("--max-len", type=int, default=1024)
    parser.add_argument("--batch-tokens", type=int, default=8192)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per side")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--attn", default="auto", help="foundry's model.attn_impl")
    parser.add_argument("--also", action="append", default=[], metavar="ATTN",
                        help="also time foundry with this model.attn_impl (sdpa, documents); repeatable")
    parser.add_argument("--default-malloc", action="store_true", help="leave glibc's malloc settings alone")
    args = parser.parse_args()
    kept = False if args.default_malloc else reuse_freed_memory()

    from pathlib import Path

    dataset, tokenizer = load_corpus(Path(args.data), args.limit)
    info = {**machine(), "malloc_keeps_freed_memory": kept}
    print(f"machine: {info}")
    peak = matmul_peak()
    print(f"fp32 matmul peak (2048^3, best of 3 s): {peak / 1e9:.1f} GFLOP/s")
    print(f"data: {len(dataset)} sequences from {args.data}, mean {dataset.lengths.mean():.0f} tokens; "
          f"batches of {args.batch_tokens} tokens, crop {args.max_len}")

    sides = {"foundry": FoundrySide(dataset, tokenizer, args, args.attn)}
    for impl in args.also:
        sides[f"foundry_{impl}"] = FoundrySide(dataset, tokenizer, args, impl)
    sides["hf"] = HFSide(dataset, tokenizer, args, sides["foundry"].model.config)
    flops_model = sides["foundry"].model
    totals = {name: {"seconds": 0.0, "real": 0, "slots": 0, "lengths": []} for name in sides}
    for i in range(args.warmup + args.steps):
        for name, side in sides.items():
            start = time.perf_counter()
            real, slots, lengths = side.step()
            took = time.perf_counter() - start
            if i >= args.warmup:
                t = totals[name]
                t["seconds"] += took
                t["real"] += real
                t["slots"] += slots
                t["lengths"] += lengths
        if i >= args.warmup:
            print(f"step {i - args.warmup + 1}/{args.steps}: " + ", ".join(
                f"{n} {totals[n]['real'] / totals[n]['seconds']:,.0f} tok/s" for n in sides))

    result = {"benchmark": "train_throughput", "model": "esm2_t6_8M", "max_len": args.max_len,
              "batch_tokens": args.batch_tokens, "steps": args.steps, "machine": info,
              "fp32_matmul_peak_gflops": round(peak / 1e9, 1)}
    for name, t in totals.items():
        tps = t["real"] / t["seconds"]
        context = mean_context(t["lengths"])
        flops = tps * flops_model.flops_per_token(seq_len=context)
        result[name] = {
            "tokens_per_s": round(tps, 1), "seconds_per_step": round(t["seconds"] / args.steps, 3),
            "padding_fraction": round(1 - t["real"] / t["slots"], 4), "mean_attention_context": round(context, 1),
            "model_gflops": round(flops / 1e9, 2), "fraction_of_peak": round(flops / peak, 4),
        }
        print(f"{name:>14}: {tps:10,.0f} real tokens/s  {t['seconds'] / args.steps:6.2f} s/step  "
              f"padding {1 - t['real'] / t['slots']:.1%}  {flops / 1e9:6.1f} GFLOP/s = {flops / peak:.1%} of peak")
    result["ratio"] = round(result["foundry"]["tokens_per_s"] / result["hf"]["tokens_per_s"], 3)
    for impl in args.also:
        result[f"ratio_{impl}"] = round(result[f"foundry_{impl}"]["tokens_per_s"] / result["hf"]["tokens_per_s"], 3)
    print(f"foundry / HF: {result['ratio']:.2f}x real tokens/s")
    print_json(result)


if __name__ == "__main__":
    main()
