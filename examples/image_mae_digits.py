"""Does masked-patch pretraining pay on small data? scikit-learn's 8×8 digits, through the CLI.

    python examples/image_mae_digits.py [--work /tmp/mae_digits] [--seeds 0 1 2] [--pretrain-steps 1500]

1. Write the 1,797 bundled digits (modalities/image/data/digits.csv.gz) as PNGs.
2. MAE-pretrain the default preset (vit-micro: images resized to 16×16, 4×4 patches) on ALL of
   them, labels unused (`foundry image pretrain`), once per seed.
3. Per seed, draw 10 labelled images per class for training and 5 per class for validation (best
   model); every other image is the test set. Fine-tune the pretrained encoder and the same
   architecture from scratch (`foundry image finetune --from OUT/final` vs `--model vit-micro`)
   with the same steps, batch size, learning rate and strategy.
4. Print test accuracy per seed and mean ± standard deviation; results go in examples/README.md.

The test images are among the unlabelled pretraining images (the transductive setting of
semi-supervised benchmarks): pretraining saw their pixels, never their labels.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

DATA = Path(__file__).resolve().parents[1] / "modalities" / "image" / "data" / "digits.csv.gz"


def foundry(*args) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    subprocess.run([sys.executable, "-m", "foundry", "image", *map(str, args), "--quiet"], check=True, env=env,
                   stdout=subprocess.DEVNULL)


def write_pngs(root: Path, rows: np.ndarray, indices, labelled: bool) -> Path:
    for i in indices:
        folder = root / str(int(rows[i, 64])) if labelled else root
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((rows[i, :64].reshape(8, 8) * 255 / 16).round().astype(np.uint8), "L").save(folder / f"{i:04d}.png")
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/mae_digits"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--pretrain-steps", type=int, default=1500)
    parser.add_argument("--finetune-steps", type=int, default=300)
    parser.add_argument("--strategy", default="full")
    parser.add_argument("--per-class", type=int, default=10)
    args = parser.parse_args()
    rows = np.loadtxt(gzip.open(DATA), delimiter=",")
    labels = rows[:, 64].astype(int)
    work = args.work
    unlabelled = work / "all"
    if not unlabelled.is_dir():
        write_pngs(unlabelled, rows, range(len(rows)), labelled=False)
    results = {"pretrained": [], "scratch": []}
    for seed in args.seeds:
        pre = work / f"pretrain_s{seed}"
        if not (pre / "summary.json").is_file():
            foundry("pretrain", "--data", unlabelled, "--out", pre, "--max-steps", args.pretrain_steps, "--seed", seed,
                    "--eval-every", 250, "--save-every", 500)
        rng = np.random.default_rng(seed)
        train, valid = [], []
        for c in range(10):
            members = rng.permutation(np.flatnonzero(labels == c))
            train += members[: args.per_class].tolist()
            valid += members[args.per_class : args.per_class + 5].tolist()
        test = sorted(set(range(len(rows))) - set(train) - set(valid))
        split = work / f"split_s{seed}"
        if not split.is_dir():
            for name, idx in (("train", train), ("valid", valid), ("test", test)):
                write_pngs(split / name, rows, idx, labelled=True)
        for arm, source in (("pretrained", ["--from", pre / "final"]), ("scratch", ["--model", "vit-micro"])):
            out = work / f"ft_{arm}_{args.strategy}_s{seed}"
            if not (out / "summary.json").is_file():
                foundry("finetune", *source, "--task", "image-classification", "--train", split / "train", "--valid", split / "valid",
                        "--test", split / "test", "--out", out, "--max-steps", args.finetune_steps, "--seed", seed,
                        "--strategy", args.strategy, "--batch-size", 32)
            accuracy = json.loads((out / "summary.json").read_text())["test"]["accuracy"]
            results[arm].append(accuracy)
            print(f"seed {seed} {arm:10s} test accuracy {accuracy:.4f}", flush=True)
    for arm, values in results.items():
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        print(f"{arm:10s} {statistics.mean(values):.4f} ± {spread:.4f}  ({', '.join(f'{v:.4f}' for v in values)})")
    gains = [p - s for p, s in zip(results["pretrained"], results["scratch"])]
    print(f"gain       {statistics.mean(gains):+.4f} (per seed: {', '.join(f'{g:+.4f}' for g in gains)})")
    record = {"strategy": args.strategy, "seeds": args.seeds, "pretrain_steps": args.pretrain_steps,
              "finetune_steps": args.finetune_steps, "per_class": args.per_class, "test_accuracy": results}
    (work / f"results_{args.strategy}.json").write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
