"""Preference tuning (``foundry text dpo``): the loss against a hand computation, completion-only
log-probabilities, the CLI end to end (full and LoRA), and one clear error per kind of bad pair."""

import json
import math
from pathlib import Path

import pytest
import torch

from foundry.objectives_tuning import dpo_loss, sequence_log_probs
from foundry.testing import run_cli

QUICK = ["--quiet", "--set", "data.max_len=64", "--set", "train.eval_every=2", "--set", "train.log_every=1",
         "--set", "train.warmup_steps=1", "--set", "tune.batch_size=4", "--lr", "1e-3"]


def test_dpo_loss_equals_the_hand_computation():
    policy_chosen, policy_rejected = torch.tensor([-12.0, -30.5]), torch.tensor([-15.0, -29.0])
    reference_chosen, reference_rejected = torch.tensor([-13.0, -31.0]), torch.tensor([-14.0, -30.0])
    beta = 0.1
    losses, chosen, rejected = dpo_loss(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta)
    # pair 0: 0.1 * ((-12 + 13) - (-15 + 14)) = 0.2; pair 1: 0.1 * ((-30.5 + 31) - (-29 + 30)) = -0.05
    expected = [-math.log(1 / (1 + math.exp(-0.2))), -math.log(1 / (1 + math.exp(0.05)))]
    assert losses.tolist() == pytest.approx(expected, rel=1e-6)
    assert chosen.tolist() == pytest.approx([0.1, 0.05]) and rejected.tolist() == pytest.approx([-0.1, 0.1])


def test_sequence_log_probs_sum_the_completion_tokens_only():
    logits = torch.randn(1, 5, 7)
    tokens = torch.tensor([[1, 2, 3, 4, 5]])
    targets = torch.tensor([[False, False, False, True, True]])  # prompt 1 2 3, completion 4 5
    log_probs = torch.log_softmax(logits, -1)
    assert float(sequence_log_probs(logits, tokens, targets)) == pytest.approx(float(log_probs[0, 2, 4] + log_probs[0, 3, 5]))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    from foundry.model import Transformer, from_name
    from foundry.model.store import save_model
    from modalities.text.bpe import BpeTokenizer

    tokenizer = BpeTokenizer.train(["The film was good and fun.", "The film was bad and dull."] * 10, 300)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("dpo") / "lm"
    save_model(path, Transformer(from_name("llama-tiny", vocab_size=tokenizer.vocab_size, pad_id=tokenizer.pad_id, mask_id=None,
                                           n_layer=1, d_model=32, n_head=2, n_kv_heads=1, d_ff=64)), tokenizer, "text")
    return path


def _pairs(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


PAIRS = [{"prompt": f"Film {i} was", "chosen": " good and fun.", "rejected": " bad and dull."} for i in range(16)]


@pytest.mark.parametrize("strategy", ["full", "lora"])
def test_dpo_cli_logs_accuracy_and_writes_a_final_model_that_reloads(strategy, tmp_path, model_dir, one_thread):
    from foundry.model.store import load_model

    out = tmp_path / "run"
    result = run_cli("text", "dpo", "--from", model_dir, "--data", _pairs(tmp_path / "pairs.jsonl", PAIRS), "--valid",
                     _pairs(tmp_path / "valid.jsonl", PAIRS[:4]), "--out", out, "--max-steps", "4", "--strategy", strategy, *QUICK)
    assert result.exit_code == 0, result.output
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    start, steps, evals = logged[0], [m for m in logged if "lr" in m], [m for m in logged if m.get("split") == "valid"]
    assert start["step"] == 0 and start["accuracy"] == 0.5 and start["margin"] == 0.0  # the policy is its reference: all ties
    assert len(steps) == 4 and all(0.0 <= m["accuracy"] <= 1.0 and "margin" in m for m in steps)
    assert evals[-1]["step"] == 4 and evals[-1]["accuracy"] == 1.0 and evals[-1]["margin"] > 0  # one preference, learned
    final = load_model(out / "final")
    assert final.extras["tuned_with"] == "dpo" and final.extras.get("lora_merged", False) == (strategy == "lora")
    start_weights = load_model(model_dir).model.state_dict()
    assert any(not torch.equal(v, start_weights[k]) for k, v in final.model.state_dict().items())


BAD_PAIRS = {
    "missing field": ({"prompt": "a", "chosen": "b"}, 'line 2: missing field "rejected"'),
    "chosen equals rejected": ({"prompt": "a", "chosen": " same", "rejected": " same"}, 'line 2: "chosen" equals "rejected"'),
    "empty completion": ({"prompt": "a", "chosen": "", "rejected": "c"}, 'line 2: empty "chosen"'),
    "prompt longer than the context": ({"prompt": "film " * 100, "chosen": "b", "rejected": "c"}, "line 2: the prompt is"),
}


@pytest.mark.parametrize("case", list(BAD_PAIRS))
def test_a_bad_pair_is_one_error_naming_file_and_line(case, tmp_path, model_dir):
    row, message = BAD_PAIRS[case]
    data = _pairs(tmp_path / "pairs.jsonl", [PAIRS[0], row])
    result = run_cli("text", "dpo", "--from", model_dir, "--data", data, "--out", tmp_path / "run", *QUICK)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.stderr.startswith(f"error: {data} {message}"), result.stderr
    assert not (tmp_path / "run").exists()


def test_tuning_objectives_are_registered_with_their_own_batch_kinds():
    from foundry.objectives import objective_class

    assert objective_class("dpo").batch_kind == "preference-pairs" and objective_class("sft").batch_kind == "chat-tokens"
