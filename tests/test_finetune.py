"""Fine-tuning strategies, the saved model, and forgetting, through the Python API on tiny models.

A module fixture pretrains a 2-layer ESM-2-layout model for a few dozen steps on the bundled
UniProt sample, so there is something to fine-tune and something to forget.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from foundry.finetune.data import encode_records, read_records
from foundry.finetune.heads import FinetuneModel, head_for
from foundry.config import build_config
from foundry.finetune.run import finetune
from foundry.finetune.store import load_finetuned
from foundry.finetune.strategies import apply_strategy, layer_decay_scale
from foundry.finetune.evaluation import predict_logits
from foundry.train import param_groups
from foundry.model.store import load_model

from conftest import FINETUNE_DATA as DATA, TINY_MODEL as TINY


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    from foundry.config import build_config
    from foundry.pretrain import pretrain

    out = tmp_path_factory.mktemp("pretrain") / "run"
    cfg = build_config(base={"modality": "protein", "out": str(out)}, dotted={
        "model.preset": "esm2_tiny", "model.overrides": TINY, "data.max_len": 128, "data.batch_tokens": 1024,
        "data.max_train_docs": 1000, "train.max_steps": 40, "train.lr": 3e-3, "train.warmup_steps": 5,
        "train.eval_every": 40, "train.eval_batches": 1, "train.save_every": 40, "train.progress": False,
    })
    pretrain(cfg)
    return out / "final"


@pytest.fixture(scope="module")
def ss3_small(tmp_path_factory) -> dict:
    """The first rows of the bundled SS3 slices, so each run takes seconds."""
    root = tmp_path_factory.mktemp("ss3")
    paths = {}
    for split, n in (("train", 32), ("valid", 8), ("test", 8)):
        lines = (DATA / f"ss3_{split}.csv").read_text().splitlines()
        paths[split] = root / f"{split}.csv"
        paths[split].write_text("\n".join(lines[: n + 1]) + "\n")
    return paths


def run(out, source, data, strategy="full", steps=8, task="residue-classification", lr=None, merge=False, pair_head="pairwise",
        eval_every=None, patience=None, l2sp=0.0, replay=0.0):
    """finetune() with a run config, as `foundry protein finetune` builds it."""
    options = {"contact_head": pair_head} if task == "contact" else {}
    train = {"train.max_steps": steps, "train.lr": lr or (1e-3 if strategy == "full" else 5e-3), "train.eval_every": eval_every or steps,
             "train.patience": patience, "train.progress": False, "train.keep_best": True, "train.min_lr_ratio": 0.0}
    cfg = build_config(base={"modality": "protein", "out": str(out)}, dotted={
        "model.init_from": str(source), "finetune.task": task, "finetune.train": str(data["train"]), "finetune.valid": str(data["valid"]),
        "finetune.test": str(data["test"]) if data.get("test") else None, "finetune.strategy": strategy, "finetune.merge": merge,
        "finetune.batch_size": 8, "finetune.forgetting_docs": 24, "finetune.forgetting_max_len": 128, "finetune.task_options": options,
        "finetune.l2sp": l2sp, "finetune.replay": replay, **train})
    return finetune(cfg, explicit=set(train))


def predictions(model_dir: Path, csv: Path) -> np.ndarray:
    ft = load_finetuned(model_dir)
    examples = encode_records(read_records(csv), ft.tokenizer, ft.task, None, 1024)
    return np.concatenate([x.ravel() for x in predict_logits(ft.model, examples, 4, ft.tokenizer.pad_id, ft.task.level)])


def trunk_state(model_dir: Path) -> dict:
    return load_file(str(model_dir / "model.safetensors"))


def test_frozen_trunk_is_unchanged_and_forgetting_is_zero(tmp_path, pretrained, ss3_small):
    summary = run(tmp_path / "frozen", pretrained, ss3_small, "frozen")
    before, after = trunk_state(pretrained), trunk_state(tmp_path / "frozen" / "best" / "trunk")
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert summary["forgetting"]["increase"] == pytest.approx(0.0, abs=1e-6)
    assert summary["trainable_parameters"] == sum(p.numel() for p in head_for("residue", 64, 3).parameters())


def test_lora_trains_only_adapters_and_head_and_reloads_identically(tmp_path, pretrained, ss3_small):
    base = load_model(pretrained).model
    trunk = apply_strategy(base, "lora", lora_rank=4)
    trainable = [n for n, p in trunk.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert {n.split(".")[-4] for n in trainable} >= {"q_proj", "k_proj", "v_proj", "o_proj", "up", "down"}

    summary = run(tmp_path / "lora", pretrained, ss3_small, "lora")
    best = tmp_path / "lora" / "best"
    assert (best / "adapter" / "adapter_config.json").is_file() and not (best / "trunk").exists()
    adapter = load_file(str(best / "adapter" / "adapter_model.safetensors"))
    assert adapter and all("lora_" in k for k in adapter)
    ft = load_finetuned(best)  # the base weights under the adapter are the pretrained ones
    base_now = {k.replace("base_model.model.", "").replace(".base_layer", ""): v for k, v in ft.model.trunk.state_dict().items() if "lora_" not in k}
    pre = trunk_state(pretrained)
    assert all(torch.equal(base_now[k], pre[k]) for k in pre)
    assert summary["trainable_parameters"] < summary["parameters"] // 4

    # reload -> the same predictions as the model that was scored; merging changes nothing either
    first, second = predictions(best, ss3_small["test"]), predictions(best, ss3_small["test"])
    np.testing.assert_array_equal(first, second)
    logged = json.loads((tmp_path / "lora" / "summary.json").read_text())["test"]
    assert logged == summary["test"]
    merged = run(tmp_path / "merged", pretrained, ss3_small, "lora", merge=True)
    assert (tmp_path / "merged" / "best" / "trunk" / "model.safetensors").is_file()
    np.testing.assert_allclose(predictions(tmp_path / "merged" / "best", ss3_small["test"]), first, atol=1e-4)
    assert merged["test"]["accuracy"] == pytest.approx(summary["test"]["accuracy"])


def test_full_finetune_save_reload_gives_identical_predictions(tmp_path, pretrained, ss3_small):
    run(tmp_path / "full", pretrained, ss3_small, "full", task="residue-classification")
    best = tmp_path / "full" / "best"
    meta = json.loads((best / "finetune.json").read_text())
    assert meta["task"] == "residue-classification" and meta["labels"]["names"] == ["C", "E", "H"] and meta["strategy"] == "full"
    assert (best / "head.safetensors").is_file()
    ft = load_finetuned(best)
    examples = encode_records(read_records(ss3_small["test"]), ft.tokenizer, ft.task, None, 1024)
    again = FinetuneModel(load_model(best / "trunk").model, ft.model.head, ft.tokenizer.special_ids, ft.tokenizer.pad_id, 2).eval()
    a = predict_logits(ft.model, examples, 4, ft.tokenizer.pad_id, "residue")
    b = predict_logits(again, examples, 16, ft.tokenizer.pad_id, "residue")  # other batch, other padding
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, atol=1e-5)


def test_layer_decay_scales_learning_rate_by_depth(pretrained):
    trunk = load_model(pretrained).model
    model = FinetuneModel(trunk, head_for("sequence", 64, 1), (0, 1, 2), 1, 2)
    groups = param_groups(model.named_parameters(), 0.01, lr_scale=layer_decay_scale(2, 0.5))
    group_of = lambda param: next(g for g in groups if any(p is param for p in g["params"]))  # noqa: E731
    assert group_of(trunk.embed.weight)["lr_scale"] == 0.125 and group_of(trunk.embed.weight)["weight_decay"] == 0.0
    assert group_of(trunk.blocks[0].mlp.up.weight)["lr_scale"] == 0.25
    assert group_of(trunk.blocks[1].mlp.up.weight)["lr_scale"] == 0.5
    head = group_of(model.head.net[-1].weight)
    assert head["lr_scale"] == 1.0 and head["weight_decay"] == 0.01


def test_guards_shrink_the_forgetting_increase(tmp_path, pretrained, ss3_small):
    plain = run(tmp_path / "plain", pretrained, ss3_small, "full", steps=12, lr=5e-3)
    guarded = run(tmp_path / "l2sp", pretrained, ss3_small, "full", steps=12, lr=5e-3, l2sp=50.0)
    replayed = run(tmp_path / "replay", pretrained, ss3_small, "full", steps=12, lr=5e-3, replay=0.5)
    assert plain["forgetting"]["before"] == pytest.approx(guarded["forgetting"]["before"])
    assert plain["forgetting"]["increase"] > 0.02
    assert guarded["forgetting"]["increase"] < 0.5 * plain["forgetting"]["increase"]
    assert replayed["forgetting"]["increase"] < plain["forgetting"]["increase"]
    replay_log = [json.loads(line) for line in (tmp_path / "replay" / "metrics.jsonl").read_text().splitlines()]
    assert all("replay_loss" in m for m in replay_log if "loss" in m and "split" not in m)
    metrics = [json.loads(line) for line in (tmp_path / "l2sp" / "metrics.jsonl").read_text().splitlines()]
    assert any("forgetting_after" in m for m in metrics) and any(m.get("split") == "test" for m in metrics)


def test_early_stopping_after_patience_evaluations_without_improvement(tmp_path, pretrained, ss3_small):
    # lr 0: the valid metric never improves after the first evaluation -> stop after 1 + patience
    summary = run(tmp_path / "stop", pretrained, ss3_small, "frozen", steps=50, lr=1e-12, patience=2, eval_every=1)
    assert summary["stopped_early"] and summary["steps"] == 3 and summary["best_step"] == 1


def test_contact_task_trains_a_pairwise_head(tmp_path, pretrained):
    # Synthetic labels (real ones come from structures): residue i contacts residue n-i+1.
    rows = ["id,sequence,label"]
    for k, seq in enumerate(["MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ", "GSHMLEDPVDAFQLATKALKWWGENQ", "MSTNPKPQRKTKRNTNRRPQDVKFPGG"]):
        n = len(seq)
        rows.append(f"p{k},{seq}," + ";".join(f"{i}-{n - i + 1}" for i in range(1, n // 2 - 3)))
    table = tmp_path / "contacts.csv"
    table.write_text("\n".join(rows) + "\n")
    summary = run(tmp_path / "contact", pretrained, {"train": table, "valid": table}, "full", steps=2, task="contact")
    assert "p_at_l5_long" in summary["valid"] and 0.0 <= summary["valid"]["p_at_l5_long"] <= 1.0
    ft = load_finetuned(tmp_path / "contact" / "best")
    assert ft.task.name == "contact" and ft.model.head.describe()["kind"] == "pairwise"
    # predict writes the top pairs into the CSV and every map as .npy + .png beside it
    from foundry.finetune.predict import predict_file

    assert predict_file(tmp_path / "contact" / "best", table, tmp_path / "preds.csv") == 3
    maps = tmp_path / "preds_maps"
    probs = np.load(maps / "p1.npy")
    assert probs.shape == (26, 26) and ((probs >= 0) & (probs <= 1)).all()
    assert (maps / "p1.png").read_bytes().startswith(b"\x89PNG")

    # ESM's recipe: logistic regression on APC-corrected attention of a frozen trunk
    run(tmp_path / "attn", pretrained, {"train": table, "valid": table}, "frozen", steps=2, task="contact", pair_head="attention")
    ft = load_finetuned(tmp_path / "attn" / "best")
    assert [n for n, _ in ft.model.head.named_parameters()] == ["regression.weight", "regression.bias"]
    assert ft.model.head.regression.in_features == 2 * 4  # layers x heads of the trunk


def test_finetune_from_a_fair_esm_checkpoint_with_an_unmerged_adapter(tmp_path, ss3_small):
    import argparse

    import esm
    from esm.model.esm2 import ESM2

    from foundry.finetune.predict import load_for_prediction

    torch.manual_seed(0)
    fair = ESM2(num_layers=1, embed_dim=32, attention_heads=2, alphabet=esm.Alphabet.from_architecture("ESM-1b"))
    state = {("encoder." if k.startswith("lm_head") else "encoder.sentence_encoder.") + k: v
             for k, v in fair.state_dict().items() if not k.startswith("contact_head.")}
    ns = argparse.Namespace(arch="esm2", encoder_layers=1, encoder_embed_dim=32, encoder_ffn_embed_dim=128, encoder_attention_heads=2, token_dropout=True)
    pt = tmp_path / "esm2_t1_tiny.pt"
    torch.save({"model": state, "cfg": {"model": ns}}, pt)

    summary = run(tmp_path / "esm", pt, ss3_small, "lora", steps=2)
    assert summary["from"] == str(pt.resolve()) and summary["forgetting"]["before"] > 0
    ft = load_for_prediction(tmp_path / "esm" / "best")  # the base is re-imported from the .pt
    assert ft.tokenizer.kind == "esm" and hasattr(ft.model.trunk, "peft_config")
    examples = encode_records(read_records(ss3_small["test"]), ft.tokenizer, ft.task, None, 1024)
    assert len(predict_logits(ft.model, examples, 4, ft.tokenizer.pad_id, "residue")) == len(examples)


def test_attention_contact_head_equals_the_trunks_esm_contact_head(pretrained):
    from modalities.protein.alphabet import EsmTokenizer
    from modalities.protein.contact_head import ContactRegression, attach_contact_head, predict_contacts

    tok = EsmTokenizer()
    trunk = load_model(pretrained).model
    esm_head = attach_contact_head(trunk)
    torch.nn.init.normal_(esm_head.regression.weight)
    ours = ContactRegression(2, 4)
    ours.regression.load_state_dict(esm_head.regression.state_dict())
    model = FinetuneModel(trunk, ours, tok.special_ids, tok.pad_id, 2).eval()
    tokens = torch.from_numpy(tok.encode("MKTAYIAKQRQISFVKSHFSRQLEERLGL"))[None]
    with torch.no_grad():
        expected = predict_contacts(trunk, tokens)  # (1, L, L) over residues
        got = torch.sigmoid(model(tokens))[:, 1:-1, 1:-1]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
