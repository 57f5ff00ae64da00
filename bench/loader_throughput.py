"""Is the loader ever the bottleneck? Batches/s the data side delivers vs batches/s training eats.

    .venv/bin/python bench/loader_throughput.py                      # 8192-token batches, crop 1024
    .venv/bin/python bench/loader_throughput.py --max-len 512 --train-steps 3

Data side: ``PackedStream`` planning + reading tokens into packed rows + MLM corruption
(``mask_tokens`` with the trainer's seeding), on the UniProt sequences tokenized by the protein
plugin — everything the trainer does to a batch before the model sees it, in one thread.
Consumer side: the training step on those same batches (ESM-2 8M forward, backward, clip,
AdamW; ``model.attn_impl`` auto). The ratio is delivered / consumed batches per second; the
goal is >= 20x. The last line of output is one JSON object.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from common import default_data, load_corpus, machine, print_json, reuse_freed_memory, seed_all

from foundry.data.packing import PackedStream
from foundry.model import Transformer, from_name
from foundry.objectives import mask_tokens
from foundry.train import build_optimizer
from train_throughput import run_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(default_data()))
    parser.add_argument("--max-len", type=int, default=1024)
    parser.add_argument("--batch-tokens", type=int, default=8192)
    parser.add_argument("--loader-batches", type=int, default=200)
    parser.add_argument("--train-steps", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    reuse_freed_memory()

    dataset, tokenizer = load_corpus(Path(args.data))
    info = machine()
    print(f"machine: {info}")
    cfg = run_config()
    o = cfg.objective

    def produce(batch):
        generator = torch.Generator().manual_seed(args.seed * 1_000_000_007 + batch.index)
        inputs, labels = mask_tokens(
            batch.tokens, special_ids=tokenizer.special_ids, maskable_ids=tokenizer.maskable_ids,
            mask_id=tokenizer.mask_id, generator=generator, mask_prob=o.mask_prob,
            mask_replace=o.mask_replace, random_replace=o.random_replace,
        )
        return inputs, labels, batch.document_ids

    stream = PackedStream(dataset, max_len=args.max_len, batch_tokens=args.batch_tokens, pad_id=tokenizer.pad_id, seed=args.seed)
    batches = stream.batches()
    produce(next(batches))  # warm-up
    start = time.perf_counter()
    made = [produce(next(batches)) for _ in range(args.loader_batches)]
    loader_s = (time.perf_counter() - start) / args.loader_batches
    print(f"loader: {1 / loader_s:,.1f} batches/s ({loader_s * 1e3:.2f} ms per {args.batch_tokens}-token batch)")

    seed_all(args.seed)
    model = Transformer(from_name("esm2_t6_8M", vocab_size=tokenizer.vocab_size, pad_id=tokenizer.pad_id, mask_id=tokenizer.mask_id))
    optimizer = build_optimizer(model, cfg)

    def train_step(inputs, labels, document_ids):
        logits = model(inputs, document_ids=document_ids).logits
        keep = labels != -100
        loss = torch.nn.functional.cross_entropy(logits[keep].float(), labels[keep])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    train_step(*made[0])  # warm-up
    start = time.perf_counter()
    for i in range(args.train_steps):
        train_step(*made[1 + i])
    train_s = (time.perf_counter() - start) / args.train_steps
    ratio = train_s / loader_s
    print(f"trainer: {1 / train_s:,.3f} batches/s ({train_s:.2f} s per step)")
    print(f"loader delivers {ratio:,.0f}x what training consumes (goal >= 20x)")
    print_json({
        "benchmark": "loader_throughput", "max_len": args.max_len, "batch_tokens": args.batch_tokens, "machine": info,
        "loader_batches_per_s": round(1 / loader_s, 2), "trainer_batches_per_s": round(1 / train_s, 4),
        "ratio": round(ratio, 1), "goal": 20,
    })


if __name__ == "__main__":
    main()
