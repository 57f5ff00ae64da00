"""Code-Llama-style continued pretraining from real (tiny, random) transformers weights: import a
Llama directory with its tokenizer, continue pretraining, export — logits agree with transformers."""

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from foundry.model.store import load_model
from modalities.text.bpe import BpeTokenizer
from test_pretrain_cli import foundry

CODE = ["def add(a, b):\n    return a + b\n", "import os\n\nprint(os.getcwd())\n", "class A:\n    x = 1\n"] * 20


def _hf_llama_dir(path):
    tokenizer = BpeTokenizer.train(CODE, vocab_size=300)
    config = LlamaConfig(vocab_size=tokenizer.vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id, pad_token_id=tokenizer.pad_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_hf(path)
    return path


def test_import_llama_continue_pretraining_and_export(tmp_path):
    hf_dir = _hf_llama_dir(tmp_path / "llama")
    model_dir = tmp_path / "imported"
    out = foundry("code", "import", str(hf_dir), "-o", str(model_dir))
    assert "imported hf-llama model" in out.stdout

    hf = AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    ids = AutoTokenizer.from_pretrained(hf_dir)(CODE[:2], return_tensors="pt", padding=True)
    loaded = load_model(model_dir)
    with torch.no_grad():
        ours = loaded.model(ids["input_ids"], attention_mask=ids["attention_mask"].bool()).logits
        theirs = hf(**ids).logits
    real = ids["attention_mask"].bool()
    assert (ours - theirs)[real].abs().max() <= 1e-5
    assert loaded.tokenizer.encode(CODE[0]).tolist()[1:-1] == AutoTokenizer.from_pretrained(hf_dir)(CODE[0], add_special_tokens=False)["input_ids"]

    src = tmp_path / "src"
    src.mkdir()
    for i, text in enumerate(CODE[:3] * 4):
        (src / f"m{i}.py").write_text(text)
    run = tmp_path / "run"
    foundry("code", "pretrain", "--from", str(hf_dir), "--data", str(src), "--out", str(run), "--max-steps", "2",
            "--set", "data.max_len=64", "--set", "data.batch_tokens=256", "--set", "data.valid_fraction=0.2",
            "--set", "objective.fim_rate=0", "--quiet")  # this tokenizer has no FIM tokens
    exported = tmp_path / "exported"
    foundry("export", str(run / "final"), "--to", "hf", "-o", str(exported))
    trained = load_model(run / "final").model
    reloaded = AutoModelForCausalLM.from_pretrained(exported).eval()
    with torch.no_grad():
        diff = (trained(ids["input_ids"], attention_mask=real).logits - reloaded(**ids).logits)[real]
    assert diff.abs().max() <= 1e-5
    assert not torch.allclose(trained.embed.weight, loaded.model.embed.weight), "continued pretraining changed the weights"


def test_gpt2_import_for_text(tmp_path):
    tokenizer = BpeTokenizer.train(CODE, vocab_size=280)
    GPT2LMHeadModel(GPT2Config(vocab_size=tokenizer.vocab_size, n_positions=64, n_embd=32, n_layer=2, n_head=4)).save_pretrained(tmp_path / "gpt2")
    tokenizer.save_hf(tmp_path / "gpt2")
    foundry("text", "import", str(tmp_path / "gpt2"), "-o", str(tmp_path / "model"))
    assert load_model(tmp_path / "model").config.pos == "learned"
    wrong = foundry("protein", "import", str(tmp_path / "gpt2"), "-o", str(tmp_path / "p"), check=False)
    assert wrong.returncode != 0 and "does not fit the protein modality" in wrong.stderr


def test_gpt2_continues_code_pretraining_with_the_default_fim_rate(tmp_path):
    """GPT-2's vocabulary has no FIM sentinels: code's default fim_rate 0.5 is not applied, with a notice."""
    tokenizer = BpeTokenizer.train(CODE, vocab_size=280)
    GPT2LMHeadModel(GPT2Config(vocab_size=tokenizer.vocab_size, n_positions=64, n_embd=32, n_layer=2, n_head=4)).save_pretrained(tmp_path / "gpt2")
    tokenizer.save_hf(tmp_path / "gpt2")
    src = tmp_path / "src"
    src.mkdir()
    for i, text in enumerate(CODE[:3] * 4):
        (src / f"m{i}.py").write_text(text)
    result = foundry("code", "pretrain", "--from", str(tmp_path / "gpt2"), "--data", str(src), "--out", str(tmp_path / "run"),
                     "--max-steps", "1", "--set", "data.max_len=64", "--set", "data.batch_tokens=256",
                     "--set", "data.valid_fraction=0.2", "--quiet")
    assert "objective.fim_rate is not applied: the tokenizer has no fill-in-the-middle tokens" in result.stderr
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()
    assert "fim_rate: 0.0" in (tmp_path / "run" / "config.yaml").read_text()  # the config says what the run did
