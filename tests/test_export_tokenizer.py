"""An exported causal model tokenizes, generates and infills with transformers alone.

Tiny Llama and GPT-2 directories are built here the way transformers writes them (a BPE trained on
real text with ``tokenizers``, wrapped in ``LlamaTokenizer`` / ``GPT2Tokenizer``), imported with
``foundry code import`` / ``foundry text import`` and exported with ``foundry export --to hf``.
``AutoTokenizer`` on the export must encode and decode real text (a stdlib source file, lines of
tiny-shakespeare) exactly as the original; for models foundry trained, exactly as foundry's own
tokenizer encodes a prompt. ``generate`` must stop at eos, and FIM sentinels written as text must
become the sentinel ids.
"""

from __future__ import annotations

import json
import textwrap as stdlib_module
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel, GPT2Tokenizer, LlamaConfig, LlamaForCausalLM,
    LlamaTokenizer,
)

from foundry.cli import main
from foundry.model import Transformer, from_name
from foundry.model.store import load_model, save_model
from modalities.code.tokenizer import train_code_tokenizer
from modalities.text.bpe import BpeTokenizer

SHAKESPEARE = (Path(__file__).parent.parent / "modalities" / "text" / "data" / "tinyshakespeare.txt").read_text()
SOURCE = Path(stdlib_module.__file__).read_text()  # a real Python file: indentation, blank lines, docstrings
LINES = [ln for ln in SHAKESPEARE.splitlines()[2000:2400] if ln.strip()]
SAMPLES = [SOURCE, "\n".join(LINES), *LINES[:40], "def add(a, b):\n    return a + b\n", "  tabs\tand ünïcödé 日本 🙂\r\n"]


def _merges(tk: Tokenizer) -> list[tuple[str, str]]:
    return [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in json.loads(tk.to_str())["model"]["merges"]]


def _gpt2_tokenizer() -> GPT2Tokenizer:
    """GPT-2's layout: byte-level BPE, ``<|endoftext|>`` as bos = eos = unk, nothing added to a text."""
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.train_from_iterator([SHAKESPEARE[:300_000], SOURCE], trainers.BpeTrainer(
        vocab_size=600, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    return GPT2Tokenizer(vocab=tk.get_vocab(), merges=_merges(tk))


def _llama_tokenizer() -> LlamaTokenizer:
    """Llama-2's layout: SentencePiece-style BPE with byte fallback, ``<s>`` put in front."""
    tk = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)  # split: fast training
    specials = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    tk.train_from_iterator([SHAKESPEARE[:300_000], SOURCE], trainers.BpeTrainer(
        vocab_size=700, special_tokens=specials, show_progress=False))
    return LlamaTokenizer(vocab=tk.get_vocab(), merges=_merges(tk), add_bos_token=True)


def _original(kind: str, directory: Path) -> Path:
    tokenizer = _gpt2_tokenizer() if kind == "gpt2" else _llama_tokenizer()
    torch.manual_seed(0)
    if kind == "gpt2":
        eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
        model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=32, n_layer=2, n_head=4,
                                           bos_token_id=eot, eos_token_id=eot))
    else:
        model = LlamaForCausalLM(LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64, bos_token_id=1, eos_token_id=2))
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def originals(tmp_path_factory):
    root = tmp_path_factory.mktemp("originals")
    return {kind: _original(kind, root / kind) for kind in ("llama", "gpt2")}


def cli(*args: str) -> None:
    main([str(a) for a in args])


def _same_tokenizer(original, exported) -> None:
    for text in SAMPLES:
        ids = original(text)["input_ids"]
        assert exported(text)["input_ids"] == ids, text[:60]
        for skip in (True, False):
            assert exported.decode(ids, skip_special_tokens=skip) == original.decode(ids, skip_special_tokens=skip)


def _always_eos(model_dir: Path, out: Path) -> None:
    """A copy of the model whose every next token is eos: blocks write nothing to the residual,
    every embedding is a positive constant vector (eos's twice as long), the final norm passes it."""
    loaded = load_model(model_dir)
    model, eos = loaded.model, loaded.tokenizer.eos_id
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".o_proj." in name or ".mlp.down." in name or name.startswith("pos_embed."):
                p.zero_()
            elif name.startswith(("embed.", "lm_head.")):
                p.fill_(1.0)
                p[eos] = 2.0
            elif name.startswith("final_norm."):
                p.fill_(1.0)  # weight 1; LayerNorm's bias 1 (it centres a constant vector to 0)
    save_model(out, model, loaded.tokenizer, loaded.modality)


@pytest.mark.parametrize("kind,modality", [("llama", "code"), ("gpt2", "text")])
def test_imported_model_exports_the_original_tokenizer(kind, modality, originals, tmp_path):
    cli(modality, "import", originals[kind], "-o", tmp_path / "model")
    cli("export", tmp_path / "model", "--to", "hf", "-o", tmp_path / "hf")
    original, exported = AutoTokenizer.from_pretrained(originals[kind]), AutoTokenizer.from_pretrained(tmp_path / "hf")
    _same_tokenizer(original, exported)
    ids = exported("def add(a, b):\n    return a + b\n")["input_ids"]
    assert ids[-1] != original.eos_token_id, "a prompt must not end in end-of-sequence"
    assert (ids[0] == original.bos_token_id) == (kind == "llama"), "bos in front as the original: Llama yes, GPT-2 no"
    assert (exported.bos_token_id, exported.eos_token_id) == (original.bos_token_id, original.eos_token_id)

    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    generation = json.loads((tmp_path / "hf" / "generation_config.json").read_text())
    for ids_of in (config, generation):
        assert (ids_of["bos_token_id"], ids_of["eos_token_id"]) == (original.bos_token_id, original.eos_token_id)
    assert generation["pad_token_id"] == exported.pad_token_id is not None


@pytest.mark.parametrize("kind,modality", [("llama", "code"), ("gpt2", "text")])
def test_exported_model_generate_stops_at_eos(kind, modality, originals, tmp_path):
    cli(modality, "import", originals[kind], "-o", tmp_path / "model")
    _always_eos(tmp_path / "model", tmp_path / "eos")
    cli("export", tmp_path / "eos", "--to", "hf", "-o", tmp_path / "hf")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "hf")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    prompt = tokenizer(LINES[0], return_tensors="pt")
    out = model.generate(**prompt, max_new_tokens=50, do_sample=False)  # eos comes from generation_config.json
    assert out[0].tolist() == prompt["input_ids"][0].tolist() + [tokenizer.eos_token_id]


def test_foundry_trained_code_model_infills_through_transformers(tmp_path):
    tok = train_code_tokenizer([SOURCE, SHAKESPEARE[:50_000]], vocab_size=500)
    torch.manual_seed(0)
    model = Transformer(from_name("llama-tiny", vocab_size=tok.vocab_size, pad_id=tok.pad_id, mask_id=None))
    save_model(tmp_path / "model", model, tok, "code")
    cli("export", tmp_path / "model", "--to", "hf", "-o", tmp_path / "hf")
    hf_tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    for text in SAMPLES:
        ids = hf_tok(text)["input_ids"]
        assert ids == tok.encode_prompt(text).tolist() == tok.encode(text).tolist()[:-1]
        assert hf_tok.decode(ids, skip_special_tokens=True) == tok.decode(ids) == text

    prefix, suffix = "def add(a, b):\n    ", "\n\nprint(add(1, 2))\n"
    prompt = f"<|fim_prefix|>{prefix}<|fim_suffix|>{suffix}<|fim_middle|>"
    fim = tok.fim_ids
    spliced = [tok.bos_id, fim["fim_prefix"], *tok.encode(prefix, add_special_tokens=False), fim["fim_suffix"],
               *tok.encode(suffix, add_special_tokens=False), fim["fim_middle"]]
    assert hf_tok(prompt)["input_ids"] == spliced == tok.encode_prompt(prompt).tolist()
    assert hf_tok.decode(spliced, skip_special_tokens=True) == prefix + suffix
    hf_model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    out = hf_model.generate(**hf_tok(prompt, return_tensors="pt"), max_new_tokens=4, do_sample=False)
    assert out[0, : len(spliced)].tolist() == spliced and out.shape[1] > len(spliced)


def test_foundry_trained_text_model_encodes_prompts_as_foundry(tmp_path):
    tok = BpeTokenizer.train(LINES * 3, vocab_size=400)
    torch.manual_seed(0)
    model = Transformer(from_name("gpt2-tiny", vocab_size=tok.vocab_size, pad_id=tok.pad_id, mask_id=None))
    save_model(tmp_path / "model", model, tok, "text")
    cli("export", tmp_path / "model", "--to", "hf", "-o", tmp_path / "hf")
    hf_tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    for text in SAMPLES:
        ids = tok.encode_prompt(text).tolist()
        assert hf_tok(text)["input_ids"] == ids and ids[0] == tok.bos_id and ids[-1] != tok.eos_id
        assert hf_tok.decode(ids, skip_special_tokens=True) == tok.decode(ids) == text
    assert BpeTokenizer.load(tmp_path / "hf").fingerprint() == tok.fingerprint(), "re-import gives the training tokenizer"
    generation = json.loads((tmp_path / "hf" / "generation_config.json").read_text())
    assert (generation["bos_token_id"], generation["eos_token_id"]) == (tok.bos_id, tok.eos_id)


def test_export_without_a_tokenizer_says_so(tmp_path, capsys):
    model = Transformer(from_name("gpt2-tiny", vocab_size=300, pad_id=0, mask_id=None))
    save_model(tmp_path / "model", model, None, "text")
    cli("export", tmp_path / "model", "--to", "hf", "-o", tmp_path / "hf")
    err = capsys.readouterr().err
    assert f"note: {tmp_path / 'hf'} holds no tokenizer, AutoTokenizer will not load it" in err
    assert not (tmp_path / "hf" / "tokenizer.json").exists()
    assert "no tokenizer" in json.loads((tmp_path / "hf" / "foundry_export.json").read_text())["tokenizer_not_exported"]
