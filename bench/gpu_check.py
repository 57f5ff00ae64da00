"""One script that proves foundry's GPU path, and a dry run of every step on CPU.

    python bench/gpu_check.py             # one CUDA GPU (H100/H200 class): under 8 minutes
    python bench/gpu_check.py --dry-run   # anywhere, tiny sizes on CPU (CI runs this)

Steps (each one a key of the JSON object printed as the last line of output):
1. ``correctness``: every attention path (documents, varlen, compiled flex) equals the dense-mask
   SDPA reference in bf16 over packed rows, forward and gradients, within stated tolerances; then
   ``foundry protein pretrain`` (the real loop: accelerate, bf16 autocast, compiled blocks) for a few
   hundred steps of esm2_t6_8M without a NaN. On CPU, paths that cannot run are listed as skipped
   with the reason.
2. ``speed``: training tokens/s and MFU (model FLOP/s over the GPU's dense bf16 peak; 989 TFLOP/s
   for H100/H200 SXM) for the ESM-2 650M shape (packed rows of real UniProt lengths from the bundled
   sample, masked LM) against transformers' EsmForMaskedLM (SDPA, padded to the longest of each
   batch), and for a Llama ~1B shape (TinyLlama 1.1B: causal LM on the same lengths, random token
   ids) against LlamaForCausalLM, same GPU, same process, bf16 autocast on both sides.
3. ``embeddings``: ``foundry protein embed``'s path (``modalities.protein.embed``) against
   fair-esm's extract loop, same random ESM-2 650M-shaped model, residues/s and agreement.
4. ``memory``: peak GPU memory of LoRA fine-tuning (per-residue head) on the ESM-2 650M shape at
   8 x 1024 tokens in bf16, with and without activation checkpointing.

Models are random (no weights are downloaded); throughput does not depend on the values.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from common import BUNDLED, ROOT, load_corpus, machine, print_json, seed_all

sys.path.insert(0, str(ROOT / "tests"))  # test_convert_esm.save_fair_esm: a fair-esm checkpoint file

# Dense bf16 tensor-core peaks from NVIDIA datasheets (FLOP/s, without sparsity); "H100 PCIe" first.
BF16_PEAKS = {"H200": 989e12, "H100 PCIe": 756e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12}
# bf16 keeps 8 bits of mantissa: outputs of O(1) agree to ~1e-2, summed gradients a little worse.
TOLERANCE = {"forward": 2e-2, "gradient": 5e-2}
LLAMA_1B = dict(n_layer=22, d_model=2048, n_head=32, n_kv_heads=4, d_ff=5632, vocab_size=32000)  # TinyLlama 1.1B

SIZES = {
    "gpu": dict(attn=(4, 2048, 16, 64), train_preset="esm2_t6_8M", train_steps=300, esm="esm2_t33_650M", llama=LLAMA_1B,
                max_len=1024, batch_tokens=16384, warmup=3, steps=10, embed_sequences=500, embed_layers=33,
                lora_rows=8, lora_len=1024),
    "dry": dict(attn=(2, 96, 4, 16), train_preset="esm2_tiny", train_steps=3, esm="esm2_tiny",
                llama=dict(n_layer=2, d_model=64, n_head=4, n_kv_heads=2, d_ff=128, vocab_size=512),
                max_len=128, batch_tokens=512, warmup=1, steps=2, embed_sequences=12, embed_layers=2, lora_rows=2, lora_len=64),
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bf16_peak(name: str | None) -> tuple[float | None, str]:
    if name is None:
        return None, "no GPU"
    for key, peak in BF16_PEAKS.items():
        if key in name:
            return peak, f"datasheet ({key})"
    from common import matmul_peak

    return matmul_peak(torch.bfloat16, "cuda", n=8192), "measured bf16 matmul (8192^3)"


# -- 1. correctness ----------------------------------------------------------------------------


def packed_document_ids(b: int, t: int, rng: np.random.Generator) -> torch.Tensor:
    """(B, T) document ids of packed rows: runs of random lengths, 0 = padding at the row's end."""
    ids = np.zeros((b, t), dtype=np.int64)
    for r in range(b):
        pos, doc = 0, 1
        while pos < t - t // 8:
            n = int(rng.integers(max(2, t // 16), t // 2))
            ids[r, pos : pos + n] = doc
            pos, doc = pos + n, doc + 1
    return torch.from_numpy(ids)


def check_attention(size, device: torch.device) -> dict:
    """Each backend against dense-mask SDPA, all in bf16: max |difference| of output and q/k/v grads."""
    from foundry.model import attention, masks

    b, t, h, d = size
    docs = packed_document_ids(b, t, np.random.default_rng(0)).to(device)
    g = torch.Generator(device="cpu").manual_seed(0)
    base = [torch.randn(b, t, n, d, generator=g).to(device, torch.bfloat16) for n in (h, h // 2, h // 2)]  # GQA: 2 q per kv
    upstream = torch.randn(b, t, h, d, generator=g).to(device, torch.bfloat16)
    out: dict = {"shape": {"batch": b, "tokens": t, "heads": h, "head_dim": d}, "tolerance": TOLERANCE}
    for causal in (False, True):
        def run(impl):
            q, k, v = (x.clone().requires_grad_(True) for x in base)
            spec = masks.AttentionSpec(docs != 0, docs, causal, t, device, None, impl)
            y = attention.attend(q, k, v, spec)
            y.backward(upstream)
            return y.detach().float(), [x.grad.float() for x in (q, k, v)]

        ref_y, ref_grads = run("sdpa")
        for impl in ("documents", "varlen", "flex"):
            key = f"{impl}_{'causal' if causal else 'bidirectional'}"
            reason = skip_reason(impl, device)
            if reason:
                out[key] = {"skipped": reason}
                if impl == "flex" and device.type == "cpu":
                    out[key].update(flex_forward_only(base, docs, causal, t, device, ref_y))
                continue
            y, grads = run(impl)
            fwd = float((y - ref_y).abs().max())
            grad = max(float((a - r).abs().max()) for a, r in zip(grads, ref_grads))
            out[key] = {"forward_max_err": fwd, "gradient_max_err": grad,
                        "ok": fwd <= TOLERANCE["forward"] and grad <= TOLERANCE["gradient"]}
    return out


def skip_reason(impl: str, device: torch.device) -> str | None:
    if device.type == "cuda":
        return None
    if impl == "varlen":
        return "varlen_attn (FlashAttention/cuDNN) needs CUDA"
    if impl == "flex":
        return "flex_attention has no CPU backward in this torch, and compiling it on CPU takes minutes; forward checked eagerly"
    return None


def flex_forward_only(base, docs, causal, t, device, ref_y) -> dict:
    from foundry.model import attention, masks

    import warnings

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "flex_attention called without torch.compile()": on purpose here
        spec = masks.AttentionSpec(docs != 0, docs, causal, t, device, None, "flex")
        y = attention.attend(*base, spec).float()
    err = float((y - ref_y).abs().max())
    return {"forward_max_err": err, "ok": err <= TOLERANCE["forward"]}


def check_training(dry: bool, size: dict, workdir: Path) -> dict:
    """The real command in this process: accelerate, bf16 autocast, compiled blocks (GPU)."""
    from foundry.testing import run_cli

    out = workdir / "train"
    args = ["protein", "pretrain", "--data", str(BUNDLED), "--out", str(out), "--model", size["train_preset"],
            "--max-steps", str(size["train_steps"]), "--quiet", "--set", "train.mixed_precision=bf16",
            "--set", f"train.save_every={size['train_steps']}", "--set", f"train.eval_every={size['train_steps']}",
            "--set", "train.log_every=1", "--set", "train.eval_batches=4"]
    if dry:
        args += ["--set", "data.max_len=128", "--set", "data.batch_tokens=1024", "--set", "data.max_train_docs=200",
                 "--set", "data.max_valid_docs=20", "--set", "train.warmup_steps=1"]
    else:
        args += ["--set", "train.compile=true", "--set", "data.batch_tokens=32768"]
    start = time.perf_counter()
    result = run_cli(*args)
    seconds = time.perf_counter() - start
    if result.exit_code != 0:
        return {"ok": False, "error": result.output.strip().splitlines()[-1:]}
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "lr" in r]
    finite = all(x is not None and math.isfinite(x) for x in losses)
    return {"preset": size["train_preset"], "steps": len(losses), "first_loss": losses[0], "last_loss": losses[-1],
            "val_loss": next((r["val_loss"] for r in reversed(rows) if "val_loss" in r), None), "seconds": round(seconds, 1),
            "compiled": not dry, "ok": finite and len(losses) == size["train_steps"]}


# -- 2. speed ----------------------------------------------------------------------------------


def mean_context(lengths) -> float:
    """Mean over tokens of the length of the document a token attends within: sum(l^2) / sum(l)."""
    lengths = np.asarray(lengths, dtype=np.float64)
    return float((lengths**2).sum() / max(1.0, lengths.sum()))


class Timer:
    def __init__(self, device):
        self.device, self.seconds, self.real, self.slots, self.lengths = device, 0.0, 0, 0, []

    def measure(self, step, count: bool) -> None:
        sync(self.device)
        start = time.perf_counter()
        real, slots, lengths = step()
        sync(self.device)
        if count:
            self.seconds += time.perf_counter() - start
            self.real, self.slots, self.lengths = self.real + real, self.slots + slots, self.lengths + lengths


def _optimizer(model):
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=1e-5, fused=params[0].is_cuda)


def _train_step(model, optimizer, loss_fn, device):
    with torch.autocast(device.type, dtype=torch.bfloat16):
        loss = loss_fn()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def padded_rows(dataset, rows: int, max_len: int, cursor: int, pad_id: int, rng) -> tuple[torch.Tensor, list[int]]:
    docs = []
    for i in range(rows):
        doc = np.asarray(dataset[(cursor + i) % len(dataset)], dtype=np.int64)
        if len(doc) > max_len:  # random window, as ESM and foundry crop
            start = int(rng.integers(0, len(doc) - max_len + 1))
            doc = doc[start : start + max_len]
        docs.append(doc)
    tokens = np.full((rows, max(len(d) for d in docs)), pad_id, dtype=np.int64)
    for r, d in enumerate(docs):
        tokens[r, : len(d)] = d
    return torch.from_numpy(tokens), [len(d) for d in docs]


def compare_training(kind: str, dataset, tokenizer, size: dict, device: torch.device, peak: float | None) -> dict:
    """foundry (packed rows) vs transformers (padded rows), alternating steps, the same model shape."""
    from foundry.config import ObjectiveSection
    from foundry.data.packing import PackedStream
    from foundry.model import Transformer, from_name
    from foundry.model.masks import document_runs
    from foundry.objectives import build_objective, mask_tokens

    causal = kind == "llama"
    seed_all(0)
    if causal:
        cfg = from_name("llama-tiny", **size["llama"], pad_id=tokenizer.pad_id, max_position=size["max_len"] + 2)
        vocab_map = torch.randint(4, cfg.vocab_size, (tokenizer.vocab_size,), generator=torch.Generator().manual_seed(1))
        vocab_map[tokenizer.pad_id] = tokenizer.pad_id  # protein lengths, text-sized vocabulary
    else:
        cfg = from_name(size["esm"], vocab_size=tokenizer.vocab_size, pad_id=tokenizer.pad_id, mask_id=tokenizer.mask_id)
    ours = Transformer(cfg).to(device)
    objective = build_objective("clm" if causal else "mlm", tokenizer, ObjectiveSection())
    stream = PackedStream(dataset, max_len=size["max_len"], batch_tokens=size["batch_tokens"], pad_id=tokenizer.pad_id, seed=0)
    batches, opt = stream.batches(), _optimizer(ours)

    def foundry_step():
        batch = next(batches)
        tokens = vocab_map[batch.tokens] if causal else batch.tokens
        generator = torch.Generator().manual_seed(batch.index)
        _train_step(ours, opt, lambda: objective(ours, tokens, batch.document_ids, generator=generator, device=device)[0], device)
        runs = document_runs(batch.document_ids, batch.document_ids != 0)
        return batch.real_tokens, batch.tokens.numel(), runs.lengths[runs.attend].tolist()

    theirs = hf_model(cfg, causal).to(device).train()
    hf_opt, rows, rng, state = _optimizer(theirs), max(1, size["batch_tokens"] // size["max_len"]), np.random.default_rng(8), {"cursor": 0}

    def hf_step():
        tokens, lengths = padded_rows(dataset, rows, size["max_len"], state["cursor"], tokenizer.pad_id, rng)
        state["cursor"] += rows
        attention_mask = tokens.ne(tokenizer.pad_id)
        if causal:
            inputs = vocab_map[tokens]
            labels = inputs.masked_fill(~attention_mask, -100)
        else:
            t = tokenizer
            inputs, labels = mask_tokens(tokens, special_ids=t.special_ids, maskable_ids=t.maskable_ids, mask_id=t.mask_id,
                                         generator=torch.Generator().manual_seed(state["cursor"]))
        inputs, attention_mask, labels = (x.to(device) for x in (inputs, attention_mask, labels))
        _train_step(theirs, hf_opt, lambda: theirs(input_ids=inputs, attention_mask=attention_mask, labels=labels).loss, device)
        return int(attention_mask.sum()), inputs.numel(), lengths

    timers = {"foundry": Timer(device), "transformers": Timer(device)}
    for i in range(size["warmup"] + size["steps"]):
        timers["foundry"].measure(foundry_step, i >= size["warmup"])
        timers["transformers"].measure(hf_step, i >= size["warmup"])
    result = {"shape": {k: getattr(cfg, k) for k in ("n_layer", "d_model", "n_head", "d_ff", "vocab_size")},
              "parameters": ours.num_parameters(), "max_len": size["max_len"], "batch_tokens": size["batch_tokens"], "steps": size["steps"]}
    for name, timer in timers.items():
        tps = timer.real / timer.seconds
        flops = tps * ours.flops_per_token(seq_len=mean_context(timer.lengths))
        result[name] = {"tokens_per_s": round(tps, 1), "padding_fraction": round(1 - timer.real / timer.slots, 4),
                        "model_tflops": round(flops / 1e12, 3), "mfu": round(flops / peak, 4) if peak else None}
    result["ratio"] = round(result["foundry"]["tokens_per_s"] / result["transformers"]["tokens_per_s"], 3)
    return result  # models and optimizers go with this frame; main() empties the CUDA cache


def hf_model(cfg, causal: bool):
    if causal:
        from transformers import LlamaForCausalLM

        from foundry.convert.hf_llama import hf_config

        config = hf_config(cfg)
        config._attn_implementation = "sdpa"
        return LlamaForCausalLM(config)
    from transformers import EsmForMaskedLM

    from foundry.convert.hf_esm import hf_config

    config = hf_config(cfg)
    config._attn_implementation = "sdpa"
    return EsmForMaskedLM(config)


# -- 3. embeddings ------------------------------------------------------------------------------


def compare_embeddings(size: dict, device: torch.device, workdir: Path) -> dict:
    import esm
    from esm.model.esm2 import ESM2
    from test_convert_esm import save_fair_esm

    from embed_vs_esm_extract import fair_esm_extract, foundry_embed, read_records
    from foundry.model import from_name
    from modalities.protein.embed import load_protein_model

    shape = from_name(size["esm"])
    torch.manual_seed(0)
    alphabet = esm.data.Alphabet.from_architecture("ESM-1b")
    ref = ESM2(num_layers=shape.n_layer, embed_dim=shape.d_model, attention_heads=shape.n_head, alphabet=alphabet, token_dropout=True).eval()
    path = save_fair_esm(ref, workdir / "esm2_random.pt")
    ref = ref.to(device)
    ours = load_protein_model(path, device)
    records = read_records(BUNDLED, size["embed_sequences"], 1022)
    layers, batch_tokens = [shape.n_layer], 4096
    residues = sum(len(s) for _, s in records)
    fair_esm_extract(ref, alphabet, records[:8], layers, batch_tokens, device)  # warm-up
    foundry_embed(ours, records[:8], layers, batch_tokens)
    timings = {}
    for name, run in (("fair_esm", lambda: fair_esm_extract(ref, alphabet, records, layers, batch_tokens, device)[1]),
                      ("foundry", lambda: foundry_embed(ours, records, layers, batch_tokens)[1])):
        sync(device)
        start = time.perf_counter()
        means = run()
        sync(device)
        timings[name] = (time.perf_counter() - start, means)
    diff = max(float((timings["foundry"][1][k][layers[0]].cpu() - timings["fair_esm"][1][k][layers[0]].cpu()).abs().max())
               for k in timings["fair_esm"][1])
    return {"sequences": len(records), "residues": residues, "layer": layers[0], "batch_tokens": batch_tokens, "dtype": "fp32",
            "fair_esm_residues_per_s": round(residues / timings["fair_esm"][0], 1),
            "foundry_residues_per_s": round(residues / timings["foundry"][0], 1),
            "ratio": round(timings["fair_esm"][0] / timings["foundry"][0], 3), "mean_embedding_max_diff": diff, "ok": diff < 1e-3}


# -- 4. memory ----------------------------------------------------------------------------------


def lora_memory(size: dict, device: torch.device, tokenizer) -> dict:
    from foundry.finetune.strategies import apply_strategy
    from foundry.model import Transformer, from_name

    out = {"preset": size["esm"], "batch": [size["lora_rows"], size["lora_len"]], "dtype": "bf16 autocast", "lora_rank": 8}
    for checkpointing in (False, True):
        seed_all(0)
        base = Transformer(from_name(size["esm"], vocab_size=tokenizer.vocab_size, pad_id=tokenizer.pad_id, mask_id=tokenizer.mask_id))
        base.activation_checkpointing = checkpointing
        trunk = apply_strategy(base.to(device), "lora").train()
        head = torch.nn.Linear(base.config.d_model, 3).to(device)
        opt = torch.optim.AdamW([p for p in trunk.parameters() if p.requires_grad] + list(head.parameters()), lr=1e-4)
        tokens = torch.randint(4, 24, (size["lora_rows"], size["lora_len"]), device=device)
        labels = torch.randint(0, 3, tokens.shape, device=device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        for _ in range(2):
            with torch.autocast(device.type, dtype=torch.bfloat16):
                hidden = trunk(tokens, need_hidden=(base.config.n_layer,), need_logits=False).hidden_states[base.config.n_layer]
                loss = torch.nn.functional.cross_entropy(head(hidden).flatten(0, 1).float(), labels.flatten())
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        key = "activation_checkpointing" if checkpointing else "plain"
        out[key] = {"peak_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None,
                    "loss_finite": bool(torch.isfinite(loss))}
        del base, trunk, head, opt
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if device.type != "cuda":
        out["skipped"] = "peak memory is measured by the CUDA allocator; on CPU the steps only run"
    out["ok"] = out["plain"]["loss_finite"] and out["activation_checkpointing"]["loss_finite"]
    return out


# -- main ---------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="every step at tiny sizes on CPU (for CI)")
    args = parser.parse_args()
    if not args.dry_run and not torch.cuda.is_available():
        print("error: gpu_check: no CUDA device visible to torch; run with --dry-run to check the steps on CPU", file=sys.stderr)
        sys.exit(2)
    device = torch.device("cpu" if args.dry_run else "cuda")
    size = SIZES["dry" if args.dry_run else "gpu"]
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    peak, peak_source = bf16_peak(gpu)
    started = time.perf_counter()
    result = {"benchmark": "gpu_check", "dry_run": args.dry_run, "device": str(device), "gpu": gpu, "torch": torch.__version__,
              "cuda": torch.version.cuda, "bf16_peak_tflops": round(peak / 1e12, 1) if peak else None, "peak_source": peak_source,
              "machine": machine()}
    dataset, tokenizer = load_corpus(BUNDLED, limit=400 if args.dry_run else None)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        steps = {
            "correctness": lambda: {"attention": check_attention(size["attn"], device), "training": check_training(args.dry_run, size, workdir)},
            "speed": lambda: {"esm2_650M": compare_training("esm", dataset, tokenizer, size, device, peak),
                              "llama_1B": compare_training("llama", dataset, tokenizer, size, device, peak)},
            "embeddings": lambda: compare_embeddings(size, device, workdir),
            "memory": lambda: lora_memory(size, device, tokenizer),
        }
        for name, step in steps.items():
            start = time.perf_counter()
            try:
                result[name] = step()
            except Exception as exc:  # noqa: BLE001 - one failed step must not hide the others' numbers
                result[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:500]}
            if device.type == "cuda":
                torch.cuda.empty_cache()
            print(f"{name}: {time.perf_counter() - start:.1f} s", flush=True)
            print(json.dumps(result[name], default=str)[:2000], flush=True)
    result["seconds"] = round(time.perf_counter() - started, 1)
    result["ok"] = all_ok(result)
    print_json(result)


def all_ok(tree) -> bool:
    """False if any ``ok`` key anywhere in the result is False."""
    if isinstance(tree, dict):
        return tree.get("ok", True) is not False and all(all_ok(v) for v in tree.values())
    return True


if __name__ == "__main__":
    main()
