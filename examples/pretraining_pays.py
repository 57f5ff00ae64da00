"""Does pretraining pay? Fine-tune a masked-LM-pretrained protein model and the same architecture
from scratch on the same labels, with the same budget, on several held-out tasks and seeds.

    .venv/bin/python examples/pretraining_pays.py                        # pretrain, then compare
    .venv/bin/python examples/pretraining_pays.py --pretrained runs/protein-small/final
    .venv/bin/python examples/pretraining_pays.py --tasks ss3,gb1 --seeds 0,1,2
    .venv/bin/python examples/pretraining_pays.py --pretrained runs/demo-protein/final --name demo  # same scratch runs

Pretraining (unless --pretrained is given) is ``configs/protein/pretrain_small.yaml`` on the bundled
UniProt sample (about 25 minutes on two busy CPU cores; each fine-tuning run about a minute); the scratch
baseline is ``--model`` with the pretrained model's own architecture. Every run goes through the
``foundry protein finetune`` command, full fine-tuning, best-on-valid checkpoint scored once on
the test split. Tasks (small bundled slices, sources in tests/data/finetune/SOURCES.md and
examples/data/SOURCES.md):

  ss3   3-state secondary structure, FLIP/NetSurfP-2.0 chains       residue-classification, Q3
  amp   antimicrobial peptides (modlAMP)                            sequence-classification, MCC
  pab1  Pab1 RRM double mutants (Melamed 2013), wild type given      variant-effect, Spearman
  gb1   GB1 four-site variants (FLIP "sampled"), first 80 residues   sequence-regression, Spearman

Results: OUT/results.json (every run) and a table of mean ± spread (half the range) over seeds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests" / "data" / "finetune"
EXAMPLES = ROOT / "examples" / "data"

#: name -> (finetune arguments, test metric reported, fine-tuning steps). Steps are sized so that
#: one run takes about a minute on a busy two-core machine; both models get exactly the same.
TASKS: dict[str, tuple[list[str], str, int]] = {
    "ss3": (["--task", "residue-classification", "--train", str(TESTS / "ss3_train.csv"),
             "--valid", str(TESTS / "ss3_valid.csv"), "--test", str(TESTS / "ss3_test.csv")], "q3", 80),
    "amp": (["--task", "sequence-classification", "--train", str(TESTS / "amp_train.fasta"),
             "--train-labels", str(TESTS / "amp_train_labels.txt"), "--valid", str(TESTS / "amp_valid.csv"),
             "--test", str(TESTS / "amp_test.csv")], "mcc", 100),
    "pab1": (["--task", "variant-effect", "--wildtype", str(TESTS / "pab1_wt.fasta"), "--wildtype-start", "126",
              "--train", str(TESTS / "pab1_train.csv"),
              "--valid", str(TESTS / "pab1_valid.csv"), "--test", str(TESTS / "pab1_test.csv")], "spearman", 100),
    "gb1": (["--task", "sequence-regression", "--train", str(EXAMPLES / "gb1_train.csv"),
             "--valid", str(EXAMPLES / "gb1_valid.csv"), "--test", str(EXAMPLES / "gb1_test.csv")], "spearman", 100),
}


def foundry(*args: str) -> None:
    # One thread unless the user says otherwise: on cores shared with other jobs, torch's default
    # (a thread per core) ran this tiny model about 20x slower, the threads waiting on each other.
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    subprocess.run([sys.executable, "-m", "foundry", *args], check=True, env=env)


def pretrain(out: Path) -> Path:
    if not (out / "final").is_dir():
        foundry("protein", "pretrain", "--config", str(ROOT / "configs" / "protein" / "pretrain_small.yaml"), "--out", str(out), "--quiet")
    return out / "final"


def same_architecture(model_dir: Path) -> list[str]:
    """``--model``/``--model-set`` flags that rebuild ``model_dir``'s architecture from scratch."""
    from foundry.model import from_name
    from foundry.model.store import read_meta

    config = read_meta(model_dir)["model"]
    reference = from_name(config["name"]).to_dict()
    flags = ["--model", config["name"]]
    for key, value in config.items():
        if reference.get(key) != value:
            flags += ["--model-set", f"{key}={value}"]
    return flags


def finetune(out: Path, task: str, model_flags: list[str], seed: int, args) -> dict:
    """One fine-tuning run (skipped when OUT already holds its summary): its test metric and wall time."""
    task_args, metric, steps = TASKS[task]
    if not (out / "summary.json").is_file():
        start = time.time()
        foundry("protein", "finetune", *task_args, *model_flags, "--strategy", "full", "--lr", str(args.lr),
                "--max-steps", str(args.steps or steps), "--eval-every", str(max(1, (args.steps or steps) // 4)),
                "--batch-size", str(args.batch_size), "--max-len", "256", "--seed", str(seed), "--no-forgetting",
                "--quiet", "--out", str(out))
        (out / "wall_s.txt").write_text(f"{time.time() - start:.1f}\n")
    summary = json.loads((out / "summary.json").read_text())
    return {"test": summary["test"][metric], "valid": summary["valid"][metric], "best_step": summary["best_step"],
            "wall_s": float((out / "wall_s.txt").read_text()) if (out / "wall_s.txt").is_file() else None}


def spread(values: list[float]) -> str:
    mean = statistics.fmean(values)
    return f"{mean:.3f} ± {(max(values) - min(values)) / 2:.3f}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "pretraining-pays")
    parser.add_argument("--pretrained", type=Path, help="A protein model dir to use instead of pretraining one.")
    parser.add_argument("--tasks", default=",".join(TASKS), help=f"Comma-separated, of {', '.join(TASKS)}.")
    parser.add_argument("--seeds", default="0,1", help="Fine-tuning seeds, comma-separated.")
    parser.add_argument("--steps", type=int, help="Fine-tuning steps for every task (default: each task's own).")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3, help="The same for both models.")
    parser.add_argument("--name", default="pretrained",
                        help="Label of the pretrained model's runs (OUT/TASK/NAME/seedN) and table column, so that "
                             "several pretrained models share one OUT and one scratch set (e.g. --name demo).")
    args = parser.parse_args(argv)
    tasks = args.tasks.split(",")
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        print(f"error: --tasks: unknown task {unknown[0]!r} (known: {', '.join(TASKS)})", file=sys.stderr)
        return 2
    seeds = [int(s) for s in args.seeds.split(",")]

    if args.name == "scratch":  # before a pretraining of 25 minutes, not after
        print("error: --name: 'scratch' is the baseline's label; choose another", file=sys.stderr)
        return 2
    pretrained = args.pretrained or pretrain(args.out / "pretrain")
    models = {"scratch": same_architecture(pretrained), args.name: ["--from", str(pretrained)]}
    # Earlier invocations' runs stay in results.json (other seeds, tasks or --name in the same OUT).
    path = args.out / "results.json"
    results: dict = json.loads(path.read_text()) if path.is_file() else {}
    results = {"models": {**results.get("models", {}), args.name: str(pretrained)}, "lr": args.lr,
               "runs": results.get("runs", {})}
    for task in tasks:
        for seed in seeds:
            for name, flags in models.items():
                key = f"{task}/{name}/seed{seed}"
                results["runs"][key] = finetune(args.out / task / name / f"seed{seed}", task, flags, seed, args)
                path.write_text(json.dumps(results, indent=1) + "\n")

    print(f"\n{'task':6s}{'metric':>10s}{'scratch':>18s}{args.name:>18s}  pays?")
    for task in tasks:
        per = {name: [results["runs"][f"{task}/{name}/seed{s}"]["test"] for s in seeds] for name in models}
        gain = statistics.fmean(per[args.name]) - statistics.fmean(per["scratch"])
        # A gain no larger than either model's seed spread is not evidence either way: say so.
        noise = max((max(v) - min(v)) / 2 for v in per.values())
        print(f"{task:6s}{TASKS[task][1]:>10s}{spread(per['scratch']):>18s}{spread(per[args.name]):>18s}  "
              f"{'yes' if gain > 0 else 'no'} ({gain:+.3f}{', within seed-to-seed spread' if abs(gain) <= noise else ''})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
