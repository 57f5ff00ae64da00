"""Instruction tuning and preference tuning on real data, end to end through the CLI, on a CPU.

    .venv/bin/python examples/sft_dpo.py --out runs/sft_dpo [--reviews ../shared/data/text_labelled/nltk_movie_reviews.zip]

1. SFT. ``foundry code pretrain`` (the standard library), then ``foundry code sft`` on an
   instruction set built from the same standard library with ``ast`` (signature + docstring ->
   body), held out by module: the answer loss on held-out functions before and after.
2. DPO. ``foundry text pretrain`` on the training movie reviews, ``foundry text finetune`` a
   sentiment classifier on their sentences (same pretrained model), then ``foundry text dpo``
   on pairs (opening sentence -> a positive review's verdict over a negative one's). Reported on
   held-out reviews: the DPO preference accuracy (implicit reward) before/after, the policy's own
   preference (log p(chosen) > log p(rejected)) before/after, and the classifier's verdict on the
   greedy continuations (``foundry.generation``) of held-out openings, before/after.

Every stage is skipped when its output exists, so a rerun continues. Numbers: examples/README.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from sft_dpo_data import review_data, stdlib_instructions, word_log_odds  # noqa: E402

FOUNDRY = [sys.executable, "-m", "foundry"]
DEFAULT_REVIEWS = Path(__file__).resolve().parents[2] / "shared" / "data" / "text_labelled" / "nltk_movie_reviews.zip"


def run(*args, done: Path | None = None) -> None:
    if done is not None and done.exists():
        print(f"[skip] {done} exists")
        return
    command = [*FOUNDRY, *map(str, args)]
    print("$ foundry", " ".join(map(str, args)), flush=True)
    if subprocess.run(command).returncode != 0:
        sys.exit(f"stopped: foundry {' '.join(map(str, args[:2]))} failed (its error is above)")


def sft_stage(out: Path, steps: dict) -> dict:
    data = stdlib_instructions(out / "data")
    run("code", "pretrain", "--out", out / "code_lm", "--max-steps", steps["code_pretrain"], "--quiet",
        "--set", "data.max_len=256", "--set", "data.batch_tokens=4096", done=out / "code_lm" / "final")
    run("code", "sft", "--from", out / "code_lm" / "final", "--data", data["train"], "--valid", data["valid"], "--out", out / "code_sft",
        "--max-steps", steps["sft"], "--max-len", 384, "--lr", 3e-4, "--quiet", "--set", "train.eval_every=50",
        done=out / "code_sft" / "summary.json")
    summary = json.loads((out / "code_sft" / "summary.json").read_text())
    return {"train_rows": summary["train_rows"], "valid_rows": summary["valid_rows"], "steps": summary["step"],
            "valid_answer_loss_before": summary["initial"]["val_loss"], "valid_answer_loss_after": summary["val_loss"]}


def policy_preference(model_dir: Path, pairs: Path) -> float:
    """Share of pairs where the model itself gives the chosen completion the higher log-probability."""
    import torch

    from foundry.chat import encode_pieces, prompt_completion_pieces
    from foundry.model.store import load_model
    from foundry.objectives_tuning import Pair, collate_pairs, sequence_log_probs

    loaded = load_model(model_dir)
    rows = [json.loads(line) for line in pairs.read_text().splitlines()]
    encoded = [Pair(*(encode_pieces(loaded.tokenizer, prompt_completion_pieces(r["prompt"], r[k], loaded.tokenizer))
                      for k in ("chosen", "rejected"))) for r in rows]
    wins = 0
    with torch.no_grad():
        for i in range(0, len(encoded), 16):
            batch = collate_pairs(encoded[i : i + 16], loaded.tokenizer.pad_id, 0)
            scores = sequence_log_probs(loaded.model(batch.tokens, document_ids=batch.document_ids).logits, batch.tokens, batch.targets)
            half = len(scores) // 2
            wins += int((scores[:half] > scores[half:]).sum())
    return wins / len(encoded)


def continuations(model_dir: Path, prompts: list[str], path: Path) -> Path:
    from foundry.generation import generate
    from foundry.model.store import load_model

    loaded = load_model(model_dir)
    # greedy; a mild repetition penalty (the same for both models) keeps a small LM out of loops
    texts = generate(loaded.model, loaded.tokenizer, prompts, max_new_tokens=24, temperature=0, repetition_penalty=1.2, stop=["\n"])
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "text"])
        writer.writerows((i, t.strip() or ".") for i, t in enumerate(texts))
    return path


def lexicon_score(log_odds: dict[str, float], table: Path) -> float:
    """Mean over continuations of the mean Naive-Bayes log-odds of their known words (> 0: positive words)."""
    scores = []
    for row in csv.DictReader(table.open()):
        known = [log_odds[w] for w in row["text"].split() if w in log_odds]
        scores.append(sum(known) / len(known) if known else 0.0)
    return sum(scores) / len(scores)


def positive_share(classifier: Path, table: Path) -> dict:
    predictions = table.with_name(table.stem + "_predicted.csv")
    run("text", "predict", "--model", classifier, table, "-o", predictions, "--sequence-column", "text")
    rows = list(csv.DictReader(predictions.open()))
    return {"positive_share": sum(r["prediction"] == "positive" for r in rows) / len(rows),
            "mean_p_positive": sum(float(r["p_positive"]) for r in rows) / len(rows)}


def dpo_stage(out: Path, reviews: Path, steps: dict) -> dict:
    data = review_data(reviews, out / "data")
    lm = out / "review_lm"
    run("text", "pretrain", "--data", data["corpus"], "--out", lm, "--max-steps", steps["text_pretrain"], "--quiet",
        "--set", "data.max_len=128", "--set", "data.batch_tokens=4096", done=lm / "final")
    run("text", "finetune", "--from", lm / "final", "--task", "sequence-classification", "--train", data["sentences_train"],
        "--valid", data["sentences_valid"], "--sequence-column", "text", "--max-len", 64, "--out", out / "sentiment",
        "--set", f"train.max_steps={steps['classifier']}", "--set", "finetune.batch_size=32", "--set", "finetune.forgetting=false", "--set", "finetune.pooling=mean",
        done=out / "sentiment" / "summary.json")
    run("text", "dpo", "--from", lm / "final", "--data", data["pairs_train"], "--valid", data["pairs_valid"], "--out", out / "review_dpo",
        "--max-steps", steps["dpo"], "--max-len", 128, "--lr", 5e-4, "--quiet", "--set", "train.eval_every=50",
        done=out / "review_dpo" / "summary.json")
    dpo = json.loads((out / "review_dpo" / "summary.json").read_text())
    classifier = json.loads((out / "sentiment" / "summary.json").read_text())
    prompts = [json.loads(line)["prompt"] for line in data["pairs_valid"].read_text().splitlines()]
    log_odds = word_log_odds(reviews)
    result = {"classifier_valid_accuracy": classifier["valid"].get("accuracy"), "dpo_steps": dpo["step"], "valid_pairs": dpo["pairs"],
              "dpo_accuracy_before": dpo["initial"]["accuracy"], "dpo_accuracy_after": dpo["accuracy"],
              "reward_margin_after": dpo["margin"]}
    for name, model in (("before", lm / "final"), ("after", out / "review_dpo" / "final")):
        result[f"policy_preference_{name}"] = policy_preference(model, data["pairs_valid"])
        table = continuations(model, prompts, out / f"continuations_{name}.csv")
        for key, value in positive_share(out / "sentiment" / "best", table).items():
            result[f"continuations_{key}_{name}"] = value
        result[f"continuations_word_log_odds_{name}"] = lexicon_score(log_odds, table)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/sft_dpo"))
    parser.add_argument("--reviews", type=Path, default=DEFAULT_REVIEWS, help="nltk_movie_reviews.zip")
    parser.add_argument("--only", choices=["sft", "dpo"], help="run one half")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every step budget (0.1 for a smoke run)")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    base = {"code_pretrain": 300, "sft": 200, "text_pretrain": 800, "classifier": 1200, "dpo": 600}
    steps = {k: max(2, int(v * args.scale)) for k, v in base.items()}
    results = {"steps": steps}
    if args.only in (None, "sft"):
        results["sft"] = sft_stage(args.out, steps)
    if args.only in (None, "dpo"):
        if not args.reviews.is_file():
            sys.exit(f"error: {args.reviews}: not found; pass --reviews PATH/nltk_movie_reviews.zip")
        results["dpo"] = dpo_stage(args.out, args.reviews, steps)
    (args.out / f"results{'_' + args.only if args.only else ''}.json").write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
