"""Masked-LM training throughput on one CUDA GPU, bf16: foundry (packed rows, varlen/flex
attention) vs HF ``EsmForMaskedLM`` (sdpa, padded batches), same process, same GPU.

    .venv/bin/python bench/train_throughput_gpu.py                         # 65,536-token batches, crop 1024
    .venv/bin/python bench/train_throughput_gpu.py --also flex --also sdpa # more foundry attention paths
    .venv/bin/python bench/train_throughput_gpu.py --batch-tokens 16384 --max-len 512

The same two training steps as ``bench/train_throughput.py`` (read its docstring), on CUDA under
bf16 autocast (as ``train.mixed_precision=bf16`` gives through accelerate); foundry's attention is
``model.attn_impl=auto`` = ``torch.nn.attention.varlen.varlen_attn`` over the document runs.
MFU = model FLOP/s (tokens/s x (6 N + 12 L D c), c = mean document length a token attends
within) / the GPU's dense bf16 peak: the datasheet figure for known GPUs (H100/H200 SXM: 989
TFLOP/s), otherwise a measured bf16 matmul. Exits with a message when no CUDA device is present.
The last line of output is one JSON object.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from common import default_data, load_corpus, machine, matmul_peak, print_json

# Dense bf16 tensor-core peaks from NVIDIA datasheets (FLOP/s, without sparsity).
BF16_PEAKS = {"H200": 989e12, "H100 PCIe": 756e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10G": 70e12}


def bf16_peak(name: str) -> tuple[float, str]:
    for key, peak in BF16_PEAKS.items():  # ordered: "H100 PCIe" before "H100"
        if key in name:
            return peak, f"datasheet ({key})"
    return matmul_peak(torch.bfloat16, "cuda", n=8192), "measured bf16 matmul (8192^3)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(default_data()))
    parser.add_argument("--max-len", type=int, default=1024)
    parser.add_argument("--batch-tokens", type=int, default=65536)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--attn", default="auto")
    parser.add_argument("--also", action="append", default=[], metavar="ATTN", help="also time foundry with this attn_impl")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("train_throughput_gpu: no CUDA device visible to torch; run bench/train_throughput.py for CPU")

    from train_throughput import FoundrySide, HFSide, mean_context

    device = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = True
    name = torch.cuda.get_device_name(device)
    peak, peak_source = bf16_peak(name)
    info = {**machine(), "gpu": name, "cuda": torch.version.cuda}
    print(f"machine: {info}")
    print(f"bf16 peak: {peak / 1e12:.0f} TFLOP/s ({peak_source})")
    dataset, tokenizer = load_corpus(Path(args.data))
    print(f"data: {len(dataset)} sequences, batches of {args.batch_tokens} tokens, crop {args.max_len}")

    bf16 = torch.bfloat16
    sides = {"foundry": FoundrySide(dataset, tokenizer, args, args.attn, device, bf16)}
    for impl in args.also:
        sides[f"foundry_{impl}"] = FoundrySide(dataset, tokenizer, args, impl, device, bf16)
    sides["hf"] = HFSide(dataset, tokenizer, args, sides["foundry"].model.config, device, bf16)
    flops_model = sides["foundry"].model
    totals = {n: {"seconds": 0.0, "real": 0, "slots": 0, "lengths": []} for n in sides}
    for i in range(args.warmup + args.steps):  # alternate the contestants, as on CPU
        for n, side in sides.items():
            torch.cuda.synchronize()
            start = time.perf_counter()
            real, slots, lengths = side.step()
            torch.cuda.synchronize()
            if i >= args.warmup:
                t = totals[n]
                t["seconds"] += time.perf_counter() - start
                t["real"], t["slots"], t["lengths"] = t["real"] + real, t["slots"] + slots, t["lengths"] + lengths

    result = {"benchmark": "train_throughput_gpu", "model": "esm2_t6_8M", "dtype": "bf16", "max_len": args.max_len,
              "batch_tokens": args.batch_tokens, "steps": args.steps, "machine": info,
              "bf16_peak_tflops": round(peak / 1e12, 1), "peak_source": peak_source}
    for n, t in totals.items():
        tps = t["real"] / t["seconds"]
        flops = tps * flops_model.flops_per_token(seq_len=mean_context(t["lengths"]))
        result[n] = {"tokens_per_s": round(tps), "seconds_per_step": round(t["seconds"] / args.steps, 4),
                     "padding_fraction": round(1 - t["real"] / t["slots"], 4), "model_tflops": round(flops / 1e12, 2),
                     "mfu": round(flops / peak, 4)}
        print(f"{n:>16}: {tps:12,.0f} real tokens/s  {t['seconds'] / args.steps * 1e3:7.1f} ms/step  MFU {flops / peak:.1%}")
    result["ratio"] = round(result["foundry"]["tokens_per_s"] / result["hf"]["tokens_per_s"], 3)
    for impl in args.also:
        result[f"ratio_{impl}"] = round(result[f"foundry_{impl}"]["tokens_per_s"] / result["hf"]["tokens_per_s"], 3)
    print(f"foundry / HF: {result['ratio']:.2f}x real tokens/s")
    print_json(result)


if __name__ == "__main__":
    main()
