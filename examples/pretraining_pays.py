"""Does pretraining pay? Fine-tune a masked-LM-pretrained protein model and the same architecture
from scratch on the same labels, with the same budget, and compare on held-out proteins.

    .venv/bin/python examples/pretraining_pays.py                        # pretrain, then compare
    .venv/bin/python examples/pretraining_pays.py --pretrained runs/protein/final   # reuse a model

Task: 3-state secondary structure (FLIP / NetSurfP-2.0 "sampled" split, bundled slice of 400
training, 80 validation and 80 test chains, see tests/data/finetune/SOURCES.md), scored as Q3 on
the test chains with the model that was best on validation. Fine-tuning uses few labelled chains
(``--train-chains``, default 100): that is where a pretrained representation should matter.

Two references put the numbers in context: the majority state (always "C"), and the best
state for each amino acid read off the training labels (what residue identity alone gives).
Pretraining is the bundled UniProt sample with the default esm2_tiny recipe for
``--pretrain-steps`` steps (the full default, 600 steps, takes about five minutes on two idle
CPU cores; the loss curve is in OUT/pretrain/metrics.jsonl).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data" / "finetune"


def pretrain(out: Path, steps: int, seed: int) -> Path:
    from foundry.config import build_config
    from foundry.plugins import get_manager
    from foundry.pretrain import pretrain as run_pretrain

    modality = get_manager().modality("protein")
    cfg = build_config(base={"modality": "protein", "out": str(out)}, dotted={**modality.config_defaults})
    cfg = build_config(base=cfg.to_dict(), dotted={"model.preset": "esm2_tiny", "train.max_steps": steps, "train.seed": seed,
                                                   "train.eval_every": max(1, steps // 3), "train.save_every": steps,
                                                   "train.warmup_steps": min(40, max(1, steps // 10))})
    summary = run_pretrain(cfg)
    print(f"pretrained {steps} steps: val_loss {summary['val_loss']:.4f} vs unigram {summary['baseline_loss']:.4f}", flush=True)
    return out / "final"


def same_architecture(model_dir: Path) -> tuple[str, dict]:
    """(preset, overrides) that rebuild ``model_dir``'s architecture from scratch (``--model``)."""
    from foundry.model import from_name
    from foundry.model.store import read_meta

    config = read_meta(model_dir)["model"]
    preset = config["name"]
    reference = from_name(preset).to_dict()
    return preset, {k: v for k, v in config.items() if reference.get(k) != v}


def subset(src: Path, dst: Path, n: int) -> Path:
    lines = src.read_text().splitlines()
    dst.write_text("\n".join(lines[: n + 1]) + "\n")
    return dst


def residue_baselines(train: Path, test: Path) -> dict[str, float]:
    import csv

    def pairs(path):
        for row in csv.DictReader(path.open()):
            yield from ((a, s) for a, s in zip(row["sequence"], row["label"]) if s != ".")

    train_pairs, test_pairs = list(pairs(train)), list(pairs(test))
    majority = Counter(s for _, s in train_pairs).most_common(1)[0][0]
    by_residue = {}
    for a in {a for a, _ in train_pairs}:
        by_residue[a] = Counter(s for b, s in train_pairs if b == a).most_common(1)[0][0]
    return {
        "majority_state": sum(s == majority for _, s in test_pairs) / len(test_pairs),
        "state_per_amino_acid": sum(by_residue.get(a, majority) == s for a, s in test_pairs) / len(test_pairs),
    }


def finetune_run(out: Path, splits: dict, args, source: Path | None = None, preset=None, overrides=None) -> dict:
    from foundry.finetune.loop import LoopSettings
    from foundry.finetune.run import DataOptions, ForgettingOptions, ModelOptions, finetune

    data = DataOptions(train=splits["train"], valid=splits["valid"], test=splits["test"], max_len=512)
    model = ModelOptions(source=str(source) if source else None, preset=preset, overrides=overrides or {}, strategy="full")
    loop = LoopSettings(lr=args.lr, max_steps=args.steps, batch_size=args.batch_size, eval_every=args.eval_every, seed=args.seed, progress=False)
    return finetune("protein", "residue-classification", data, model, loop, out, ForgettingOptions(enabled=source is not None, docs=64))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "pretraining-pays")
    parser.add_argument("--pretrained", type=Path, help="A protein model dir to use instead of pretraining one.")
    parser.add_argument("--pretrain-steps", type=int, default=300)
    parser.add_argument("--train-chains", type=int, default=100)
    parser.add_argument("--steps", type=int, default=150, help="Fine-tuning steps, the same for both models.")
    parser.add_argument("--eval-every", type=int, default=25)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    out = args.out
    if out.exists() and any(p.name != "pretrain" for p in out.iterdir()):
        print(f"error: {out} already holds results; choose another --out", file=sys.stderr)
        return 1
    out.mkdir(parents=True, exist_ok=True)
    pretrained = args.pretrained or (out / "pretrain" / "final" if (out / "pretrain" / "final").is_dir() else pretrain(out / "pretrain", args.pretrain_steps, args.seed))
    splits = {"train": subset(DATA / "ss3_train.csv", out / "train.csv", args.train_chains), "valid": DATA / "ss3_valid.csv", "test": DATA / "ss3_test.csv"}

    preset, overrides = same_architecture(pretrained)
    results = {"pretrained_from": str(pretrained), "train_chains": args.train_chains, "steps": args.steps, "lr": args.lr}
    results["from_scratch"] = finetune_run(out / "scratch", splits, args, preset=preset, overrides=overrides)
    results["pretrained"] = finetune_run(out / "pretrained", splits, args, source=pretrained)
    results["references"] = residue_baselines(splits["train"], splits["test"])
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")

    refs = results["references"]
    print(f"\nSS3, {args.train_chains} training chains, {args.steps} fine-tuning steps each; test = 80 held-out chains")
    print(f"{'model':34s}{'valid Q3':>10s}{'test Q3':>10s}{'test MCC':>10s}")
    for name, key in (("esm2_tiny from scratch", "from_scratch"), ("esm2_tiny pretrained + fine-tuned", "pretrained")):
        r = results[key]
        print(f"{name:34s}{r['valid']['q3']:10.4f}{r['test']['q3']:10.4f}{r['test']['mcc']:10.4f}")
    print(f"{'majority state (C)':34s}{'':10s}{refs['majority_state']:10.4f}")
    print(f"{'best state per amino acid':34s}{'':10s}{refs['state_per_amino_acid']:10.4f}")
    gain = results["pretrained"]["test"]["q3"] - results["from_scratch"]["test"]["q3"]
    print(f"pretraining {'pays' if gain > 0 else 'does not pay'} here: {gain:+.4f} test Q3")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
