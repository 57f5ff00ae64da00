"""Instruction tuning (``foundry text sft``): the loss mask, chat templates, the CLI end to end,
resume, export of the template, and one clear error per kind of bad row."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from foundry.chat import DEFAULT_CHAT_TEMPLATE, ChatTemplate, encode_sft_row, find_template, render_prompt
from foundry.objectives import IGNORE_INDEX
from foundry.objectives_tuning import SftStream, sft_labels
from foundry.testing import run_cli

CONVERSATION = {"messages": [
    {"role": "system", "content": "You answer in one line."},
    {"role": "user", "content": "What does len do?"},
    {"role": "assistant", "content": "It counts the items."},
    {"role": "user", "content": "And sorted?"},
    {"role": "assistant", "content": "It returns a new sorted list."},
]}
QUICK = ["--quiet", "--set", "data.max_len=64", "--set", "data.batch_tokens=256", "--set", "train.eval_every=2",
         "--set", "train.log_every=1", "--set", "train.warmup_steps=1", "--lr", "1e-3"]


@pytest.fixture(scope="module")
def tokenizer():
    from modalities.text.bpe import BpeTokenizer

    texts = [m["content"] for m in CONVERSATION["messages"]] * 5 + ["def f(x):\n    return x + 1\n"] * 5
    return BpeTokenizer.train(texts, 300)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer) -> Path:
    from foundry.model import Transformer, from_name
    from foundry.model.store import save_model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("sft") / "lm"
    save_model(path, Transformer(from_name("llama-tiny", vocab_size=tokenizer.vocab_size, pad_id=tokenizer.pad_id, mask_id=None,
                                           n_layer=1, d_model=32, n_head=2, n_kv_heads=1, d_ff=64)), tokenizer, "text")
    return path


def _jsonl(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_sft_labels_are_ignored_on_every_prompt_token(tokenizer):
    template = ChatTemplate("default", DEFAULT_CHAT_TEMPLATE)
    chat = encode_sft_row(CONVERSATION, "x", tokenizer, template, 256, "")
    plain = encode_sft_row({"prompt": "def f(x):\n", "completion": "    return x + 1\n"}, "x", tokenizer, None, 256, "")
    # two examples packed in one row: the labels follow each one's own targets, never cross them
    batch = SftStream([chat, plain], max_len=256, batch_tokens=256, pad_id=tokenizer.pad_id, seed=0).next_for_rank(0, 1)
    labels = sft_labels(batch.tokens, batch.document_ids, batch.targets)[0]
    tokens, targets = batch.tokens[0], batch.targets[0]
    scored = torch.nonzero(labels != IGNORE_INDEX).flatten()
    assert len(scored) > 0
    assert bool(targets[scored + 1].all())  # every labelled position predicts an answer token
    assert (labels[scored] == tokens[scored + 1]).all()
    prompt_positions = torch.nonzero(~targets[1:]).flatten()  # position t predicts token t+1
    assert (labels[prompt_positions] == IGNORE_INDEX).all()
    # what is scored is exactly the assistant turns and the eos closing each one (and the completion)
    assert tokenizer.decode(chat.ids[chat.target], skip_special_tokens=False) == \
        "It counts the items.<|eos|>\n\nIt returns a new sorted list.<|eos|>\n\n"
    assert tokenizer.decode(plain.ids[plain.target], skip_special_tokens=False) == "    return x + 1\n<|eos|>"
    assert int(batch.document_ids.max()) >= 2  # packed: several examples share the row


def test_prompt_for_generation_is_the_prefix_training_saw(tokenizer):
    template = ChatTemplate("default", DEFAULT_CHAT_TEMPLATE)
    chat = encode_sft_row(CONVERSATION, "x", tokenizer, template, 256, "")
    prompt = render_prompt(CONVERSATION["messages"][:2], template, tokenizer)
    assert np.array_equal(chat.ids[: len(prompt)], prompt) and chat.target[len(prompt)] and not chat.target[: len(prompt)].any()


def test_an_imported_tokenizer_brings_its_own_chat_template(tmp_path):
    own = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": own}))
    assert find_template(tmp_path, None, allow_default=True).text == own
    assert find_template(tmp_path.parent, None, allow_default=True).text == DEFAULT_CHAT_TEMPLATE
    assert find_template(tmp_path.parent, None, allow_default=False) is None


def test_sft_cli_trains_writes_final_that_reloads_resumes_and_exports_its_template(tmp_path, model_dir, one_thread):
    from foundry.model.store import load_model

    rows = [CONVERSATION, {"prompt": "def f(x):\n", "completion": "    return x + 1\n"}] * 8
    data, out = _jsonl(tmp_path / "chats.jsonl", rows), tmp_path / "run"
    result = run_cli("text", "sft", "--from", model_dir, "--data", data, "--out", out, "--max-steps", "4", "--save-every", "2", *QUICK)
    assert result.exit_code == 0, result.output
    assert "valid answer loss" in result.stdout and f"model: {out / 'final'}" in result.stdout
    loaded = load_model(out / "final")
    assert loaded.extras["chat_template"] == DEFAULT_CHAT_TEMPLATE and loaded.extras["tuned_with"] == "sft"
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    reference = {m["step"]: m["loss"] for m in logged if "lr" in m}
    assert sorted(reference) == [1, 2, 3, 4] and logged[0]["step"] == 0 and "val_loss" in logged[0]

    # resume: a run stopped after its step-2 checkpoint continues to the same losses
    shutil.rmtree(out / "checkpoints" / "step-000004")
    (out / "checkpoints" / "LATEST").write_text("step-000002\n")
    shutil.rmtree(out / "final")
    (out / "summary.json").unlink()
    assert run_cli("text", "sft", "--resume", out, "--quiet").exit_code == 0
    resumed = {json.loads(line)["step"]: json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()
               if "lr" in json.loads(line)}
    assert resumed == pytest.approx(reference, rel=1e-5)

    hf = tmp_path / "hf"
    assert run_cli("export", out / "final", "--to", "hf", "-o", hf).exit_code == 0
    assert json.loads((hf / "tokenizer_config.json").read_text())["chat_template"] == DEFAULT_CHAT_TEMPLATE


BAD_ROWS = {
    "missing field": ({"prompt": "def f():\n"}, 'line 2: missing field "completion"'),
    "unknown role": ({"messages": [{"role": "bot", "content": "hi"}]}, "line 2: message 0 has unknown role 'bot'; expected one of"),
    "empty completion": ({"prompt": "a", "completion": "  "}, 'line 2: empty "completion"'),
    "prompt longer than the context": ({"prompt": "word " * 200, "completion": "x"}, "line 2: the prompt is"),
    "not json": ("{not json", "line 2: not valid JSON"),
}


@pytest.mark.parametrize("case", list(BAD_ROWS))
def test_a_bad_row_is_one_error_naming_file_and_line(case, tmp_path, model_dir):
    row, message = BAD_ROWS[case]
    data = _jsonl(tmp_path / "chats.jsonl", [{"prompt": "a", "completion": "b"}, row])
    result = run_cli("text", "sft", "--from", model_dir, "--data", data, "--out", tmp_path / "run", *QUICK)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.stderr.startswith(f"error: {data} {message}"), result.stderr
    assert not (tmp_path / "run").exists()


def test_a_conversation_without_a_template_and_no_default_is_refused(tmp_path, model_dir):
    data = _jsonl(tmp_path / "chats.jsonl", [CONVERSATION, CONVERSATION])
    result = run_cli("text", "sft", "--from", model_dir, "--data", data, "--out", tmp_path / "run", "--no-default-template", *QUICK)
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: {data} line 1: a conversation needs a chat template and {model_dir} has none"), result.stderr
