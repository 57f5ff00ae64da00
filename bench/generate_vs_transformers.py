"""Greedy decoding: ``foundry.generation`` against transformers' ``generate`` on the same model.

    OMP_NUM_THREADS=1 .venv/bin/python bench/generate_vs_transformers.py                 # CPU
    .venv/bin/python bench/generate_vs_transformers.py --device cuda --batch 16 --new-tokens 256

One model, one process: a Llama (random weights, none downloaded; 8 layers, 512 wide, 8 heads,
4 key/value heads, vocabulary 8,192) is built with transformers, saved, and imported by foundry.
Both sides decode the same random prompts greedily with their KV caches, eos disabled so every row
runs the full budget; the generated ids are checked to be equal before timings are reported. Each
side runs once after a short warm-up (shared CPU cores: long repeats cost more than they tell).
The last line of output is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from foundry.convert import import_model  # noqa: E402
from foundry.generation import SamplingOptions, generate_ids  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=8192, hidden_size=512, intermediate_size=1376, num_hidden_layers=8, num_attention_heads=8,
                         num_key_value_heads=4, max_position_embeddings=1024, bos_token_id=None, eos_token_id=None, pad_token_id=0)
    hf = LlamaForCausalLM(config).eval()
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        ours = import_model(tmp).model.eval()
    device = torch.device(args.device)
    hf, ours = hf.to(device), ours.to(device)
    prompts = torch.randint(1, 8192, (args.batch, args.prompt_len), generator=torch.Generator().manual_seed(1))
    opts = SamplingOptions(max_new_tokens=args.new_tokens, temperature=0)

    def run_hf(n):
        with torch.no_grad():
            out = hf.generate(prompts.to(device), attention_mask=torch.ones_like(prompts).to(device), do_sample=False,
                              max_new_tokens=n, min_new_tokens=n, pad_token_id=0)
        return out[:, args.prompt_len:].tolist()

    def run_ours(n):
        return generate_ids(ours, prompts.tolist(), SamplingOptions(max_new_tokens=n, temperature=0))[0]

    run_hf(4), run_ours(4)  # warm-up
    timings, outputs = {}, {}
    for name, fn in (("transformers", run_hf), ("foundry", run_ours)):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        outputs[name] = fn(opts.max_new_tokens)
        if device.type == "cuda":
            torch.cuda.synchronize()
        timings[name] = time.perf_counter() - start
    same = outputs["transformers"] == outputs["foundry"]
    tokens = args.batch * args.new_tokens
    for name, seconds in timings.items():
        print(f"{name:13s} {seconds:7.2f} s  {tokens / seconds:9.1f} tokens/s")
    ratio = timings["transformers"] / timings["foundry"]
    print(f"foundry / transformers speed: {ratio:.2f}x; identical greedy ids: {same}")
    print(json.dumps({"batch": args.batch, "prompt_len": args.prompt_len, "new_tokens": args.new_tokens, "device": str(device),
                      "threads": torch.get_num_threads(), "seconds": timings, "ratio": ratio, "identical": same,
                      "torch": torch.__version__, "machine": platform.processor() or platform.machine()}))
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
