"""Generation: greedy equals transformers' generate (Llama and GPT-2 built here), the KV cache equals
full recomputation, batched left-padded rows equal single rows, seeded sampling repeats, stop strings
cut, and bad input is one line with exit 2."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from foundry.generation import SamplingOptions, complete, generate, generate_ids, infill_prompt
from foundry.loading import load_for_modality
from foundry.model import Transformer, from_name
from foundry.model.kv_cache import KVCache
from foundry.model.store import save_model
from foundry.plugins import get_manager
from foundry.testing import run_cli
from modalities.code.tokenizer import train_code_tokenizer
from modalities.text.bpe import BpeTokenizer

TEXT = ["To be, or not to be, that is the question:\n", "Whether 'tis nobler in the mind to suffer\n",
        "The slings and arrows of outrageous fortune,\n", "Or to take arms against a sea of troubles\n"] * 10


def _randomize(model: torch.nn.Module, seed: int = 0) -> None:
    """Weights large enough that the argmax is never a near-tie between implementations."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if p.dim() == 2:
                p.copy_(noise * min(p.shape) ** -0.5)
            elif "norm" in name or "ln_" in name:
                p.copy_(1 + 0.1 * noise) if name.endswith("weight") else p.copy_(0.1 * noise)
            else:
                p.copy_(0.1 * noise)


@pytest.fixture(scope="module")
def tokenizer():
    return BpeTokenizer.train(TEXT, vocab_size=300)


def _hf_dir(path, family: str, tokenizer):
    ids = dict(bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id, pad_token_id=tokenizer.pad_id)
    if family == "llama":
        model = LlamaForCausalLM(LlamaConfig(vocab_size=tokenizer.vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, **ids))
    else:
        model = GPT2LMHeadModel(GPT2Config(vocab_size=tokenizer.vocab_size, n_positions=64, n_embd=32, n_layer=2, n_head=4, **ids))
    _randomize(model)
    model.save_pretrained(path)
    tokenizer.save_hf(path)
    return path, model.eval()


@pytest.fixture(scope="module")
def hf_models(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("hf")
    return {family: _hf_dir(root / family, family, tokenizer) for family in ("llama", "gpt2")}


def _load(path):
    model, tok, _ = load_for_modality(str(path), get_manager().modality("text"))
    return model.eval(), tok


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_greedy_equals_transformers_generate(hf_models, family):
    path, hf = hf_models[family]
    model, tok = _load(path)
    for prompt in ("To be, or", "The slings and arrows"):
        ids = tok.encode_prompt(prompt).tolist()
        theirs = hf.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long), do_sample=False,
                             max_new_tokens=20, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id)[0, len(ids):].tolist()
        (ours,), _ = generate_ids(model, [ids], SamplingOptions(max_new_tokens=20, temperature=0), eos_ids=[tok.eos_id],
                                  pad_id=tok.pad_id)
        assert ours == theirs


def test_cli_generate_prints_the_continuation_only(hf_models):
    path, _ = hf_models["llama"]
    model, tok = _load(path)
    expected = generate(model, tok, "To be, or", max_new_tokens=8, temperature=0)
    result = run_cli("text", "generate", "--model", path, "--temperature", "0", "--max-new-tokens", "8", "To be, or")
    assert result.exit_code == 0, result.output
    assert result.stdout == expected and expected
    assert "tokens/s" in result.stderr


def _tiny(preset="llama-tiny", **kw):
    torch.manual_seed(0)
    cfg = from_name(preset, vocab_size=64, pad_id=0, n_layer=2, d_model=32, n_head=4, d_ff=64, **kw)
    model = Transformer(cfg).eval()
    _randomize(model)
    return model


@pytest.mark.parametrize("preset,kw", [("llama-tiny", {"n_kv_heads": 2}), ("gpt2-tiny", {}), ("llama-tiny", {"sliding_window": 4})])
def test_kv_cache_logits_equal_full_recomputation(preset, kw):
    model = _tiny(preset, **kw)
    tokens = torch.randint(1, 64, (2, 14), generator=torch.Generator().manual_seed(1))
    cache = KVCache.for_model(model, 2, 14)
    positions = torch.arange(14)[None].expand(2, -1)
    with torch.no_grad():
        steps = [model.forward_cached(tokens[:, :6], cache, positions[:, :6], last_only=False)]
        steps += [model.forward_cached(tokens[:, t : t + 1], cache, positions[:, t : t + 1]) for t in range(6, 14)]
        full = model(tokens).logits
    assert (torch.cat(steps, 1) - full).abs().max() <= 1e-5


def test_left_padded_batch_decodes_like_single_rows():
    model = _tiny()
    prompts = [[5, 9, 11, 3, 7, 2, 8], [4, 6], [12, 13, 14, 15]]
    opts = SamplingOptions(max_new_tokens=10, temperature=0)
    batched, _ = generate_ids(model, prompts, opts)
    alone = [generate_ids(model, [p], opts)[0][0] for p in prompts]
    assert batched == alone
    # and each greedy step is the argmax of a full forward over prompt + what came before
    seq = list(prompts[1])
    for tid in alone[1]:
        with torch.no_grad():
            assert int(model(torch.tensor([seq])).logits[0, -1].argmax()) == tid
        seq.append(tid)


def test_seeded_sampling_is_reproducible_and_options_apply():
    model = _tiny()
    prompts = [[5, 9, 11], [4, 6]]
    sample = lambda **kw: generate_ids(model, prompts, SamplingOptions(max_new_tokens=12, temperature=1.0, **kw))[0]  # noqa: E731
    assert sample(seed=3) == sample(seed=3)
    assert sample(seed=3) != sample(seed=4)
    top1 = sample(seed=5, top_k=1)
    assert top1 == generate_ids(model, prompts, SamplingOptions(max_new_tokens=12, temperature=0))[0]  # top-k 1 is greedy
    assert sample(seed=5, top_p=1e-6) == top1  # a tiny nucleus keeps the most likely token only
    penalised = generate_ids(model, prompts, SamplingOptions(max_new_tokens=12, temperature=0, repetition_penalty=1e6))[0]
    for prompt, new in zip(prompts, penalised):  # a huge penalty never repeats a token while others remain
        assert len(set(prompt + new)) == len(prompt + new)


def test_stop_strings_cut_and_eos_stops(hf_models):
    path, _ = hf_models["llama"]
    model, tok = _load(path)
    full = complete(model, tok, ["To be, or"], max_new_tokens=16, temperature=0)
    text = full.texts[0]
    stop = text[4:7]
    assert stop and text.find(stop) >= 1
    cut = complete(model, tok, ["To be, or"], max_new_tokens=16, temperature=0, stop=[stop])
    assert cut.texts == [text[: text.find(stop)]] and cut.finish_reasons == ["stop"]
    assert len(cut.token_ids[0]) < len(full.token_ids[0])
    # eos: the first greedy token made the eos id ends the row there
    first = full.token_ids[0][0]
    eos_stopped, reasons = generate_ids(model, [tok.encode_prompt("To be, or").tolist()], SamplingOptions(max_new_tokens=16, temperature=0),
                                        eos_ids=[first])
    assert eos_stopped == [[first]] and reasons == ["eos"]


def test_prompts_file_batch_cli(hf_models, tmp_path):
    path, _ = hf_models["gpt2"]
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"id": "a", "prompt": "To be"}) + "\n" + json.dumps({"id": "b", "prompt": "The slings and"}) + "\n")
    result = run_cli("text", "generate", "--model", path, "--prompts", prompts, "--temperature", "0", "--max-new-tokens", "5")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    model, tok = _load(path)
    assert [r["id"] for r in rows] == ["a", "b"]
    assert [r["completion"] for r in rows] == [generate(model, tok, p, max_new_tokens=5, temperature=0) for p in ("To be", "The slings and")]


def test_bad_input_is_one_line_exit_2(hf_models, tmp_path):
    path, _ = hf_models["gpt2"]  # 64 positions
    cases = {
        "empty": (["text", "generate", "--model", path, ""], "the prompt is empty"),
        "too long": (["text", "generate", "--model", path, "To be, or not to be " * 20], "tokens, but the model's context is 64 tokens"),
    }
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "ok"}) + "\n" + json.dumps({"text": "no prompt"}) + "\n")
    cases["missing field"] = (["text", "generate", "--model", path, "--prompts", bad], f"{bad}:2: missing field \"prompt\"")
    long = tmp_path / "long.jsonl"
    long.write_text(json.dumps({"prompt": "ok"}) + "\n\n" + json.dumps({"prompt": "To be, or not to be " * 20}) + "\n")
    cases["long in file"] = (["text", "generate", "--model", path, "--prompts", long, "--batch-size", "1"],
                             f"{long}:3: ")
    masked = tmp_path / "masked"
    save_model(masked, Transformer(from_name("esm2_tiny", vocab_size=300, pad_id=0, mask_id=3)), BpeTokenizer.train(TEXT, vocab_size=300), "text")
    cases["masked"] = (["text", "generate", "--model", masked, "hi"], "a masked (BERT/ESM-style) model cannot generate")
    cases["no fim"] = (["code", "infill", "--model", path, "--prefix", "a", "--suffix", "b"], "has no fill-in-the-middle tokens")
    for name, (args, message) in cases.items():
        result = run_cli(*args)
        assert result.exit_code == 2, (name, result.output)
        assert message in result.stderr, (name, result.stderr)
        assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, (name, result.stderr)


def test_code_infill_and_complete(tmp_path):
    code = ["def add(a, b):\n    return a + b\n", "import os\n\nprint(os.getcwd())\n"] * 20
    tok = train_code_tokenizer(code, vocab_size=300)
    ids = infill_prompt(tok, "def f(x):\n", "    return y\n")
    fim = tok.fim_ids
    body = lambda s: tok.encode(s, add_special_tokens=False).tolist()  # noqa: E731
    assert ids == [tok.bos_id, fim["fim_prefix"], *body("def f(x):\n"), fim["fim_suffix"], *body("    return y\n"), fim["fim_middle"]]
    model_dir = tmp_path / "code"
    torch.manual_seed(0)
    save_model(model_dir, Transformer(from_name("llama-tiny", vocab_size=tok.vocab_size, pad_id=tok.pad_id, n_layer=1, d_model=32, n_head=4, d_ff=64)),
               tok, "code")
    result = run_cli("code", "infill", "--model", model_dir, "--prefix", "def f(x):\n", "--suffix", "    return y\n",
                     "--temperature", "0", "--max-new-tokens", "4")
    assert result.exit_code == 0, result.output
    model, _ = _load_code(model_dir)
    (new,), _ = generate_ids(model, [ids], SamplingOptions(max_new_tokens=4, temperature=0), eos_ids=[tok.eos_id], pad_id=tok.pad_id)
    assert result.stdout == tok.decode([t for t in new if t != tok.eos_id])
    done = run_cli("code", "complete", "--model", model_dir, "--temperature", "0", "--max-new-tokens", "4", "def add(")
    assert done.exit_code == 0, done.output
    prefix = tmp_path / "prefix.py"
    prefix.write_text("def add(")
    from_file = run_cli("code", "complete", "--model", model_dir, "--temperature", "0", "--max-new-tokens", "4", "--file", prefix)
    assert from_file.stdout == done.stdout


def _load_code(path):
    model, tok, _ = load_for_modality(str(path), get_manager().modality("code"))
    return model.eval(), tok


def test_logits_processing_equals_transformers_processors():
    from transformers.generation.logits_process import (
        RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper,
    )

    from foundry.generation import process_logits

    g = torch.Generator().manual_seed(0)
    logits, ids = torch.randn(3, 50, generator=g) * 3, torch.randint(0, 50, (3, 12), generator=g)
    theirs = logits.clone()
    for processor in (RepetitionPenaltyLogitsProcessor(1.3), TemperatureLogitsWarper(0.7), TopKLogitsWarper(10), TopPLogitsWarper(0.8)):
        theirs = processor(ids, theirs)
    seen = torch.zeros(3, 50, dtype=torch.bool).scatter_(1, ids, True)
    ours = process_logits(logits, seen, SamplingOptions(temperature=0.7, top_k=10, top_p=0.8, repetition_penalty=1.3))
    assert torch.equal(ours.isinf(), theirs.isinf()) and (ours.isinf().sum(-1) > 30).all()
    finite = ~ours.isinf()
    assert torch.allclose(ours[finite], theirs[finite], atol=1e-6)
