"""Rebuild the bundled fine-tuning slices from the original downloads (see SOURCES.md).

    python tests/data/finetune/make_slices.py /work/shared/data/protein_labelled /work/shared/data/text_labelled

Deterministic: the same inputs give byte-identical files.
"""

import csv
import io
import random
import sys
import zipfile
from pathlib import Path

HERE = Path(__file__).parent


def fasta(text: str) -> dict[str, tuple[str, str]]:
    """id -> (header rest, sequence)"""
    out, cur = {}, None
    for line in text.splitlines():
        if line.startswith(">"):
            head = line[1:].split(None, 1)
            cur = head[0]
            out[cur] = (head[1] if len(head) > 1 else "", "")
        elif cur:
            out[cur] = (out[cur][0], out[cur][1] + line.strip())
    return out


def write(path: Path, columns, rows) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    w.writerows(rows)
    path.write_text(buf.getvalue())


def secondary_structure(root: Path) -> None:
    """FLIP SS3 'sampled' split: chains of 40..200 residues; unresolved residues ('0' in mask.fasta) -> '.'."""
    z = zipfile.ZipFile(root / "secondary_structure" / "flip_ss3_splits.zip")
    seqs = fasta(z.read("splits/sequences.fasta").decode())
    labels = fasta(z.read("splits/sampled.fasta").decode())
    masks = fasta(z.read("splits/mask.fasta").decode())
    groups = {"train": [], "valid": [], "test": []}
    for pid, (head, lab) in labels.items():
        seq = seqs[pid][1]
        if not 40 <= len(seq) <= 200 or len(lab) != len(seq):
            continue
        mask = masks[pid][1]
        lab = "".join(c if m == "1" else "." for c, m in zip(lab, mask))
        split = "test" if "SET=test" in head else ("valid" if "VALIDATION=True" in head else "train")
        groups[split].append((pid, seq, lab))
    rng = random.Random(0)
    for split, n in (("train", 400), ("valid", 80), ("test", 80)):
        rows = sorted(groups[split])
        rng.shuffle(rows)
        write(HERE / f"ss3_{split}.csv", ["id", "sequence", "label"], rows[:n])


def pab1(root: Path) -> None:
    """Pab1 RRM DMS (Melamed 2013 via nn4dms): 300 variants, 200/50/50, mutations numbered from 126."""
    lines = (root / "dms" / "pab1_nn4dms.tsv").read_text().splitlines()[1:]
    rows = [line.split("\t") for line in lines if "*" not in line]  # nonsense mutants: not protein variants
    rng = random.Random(0)
    rng.shuffle(rows)
    rows = [(v.replace(",", ":"), f"{float(s):.4f}") for v, _, s in rows[:300]]
    for split, part in (("train", rows[:200]), ("valid", rows[200:250]), ("test", rows[250:])):
        write(HERE / f"pab1_{split}.csv", ["mutation", "label"], part)
    wt = (root / "dms" / "pab1_wt_aa.txt").read_text().split()[0]
    (HERE / "pab1_wt.fasta").write_text(f">pab1_RRM2 residues 126-200\n{wt}\n")


def amp(root: Path) -> None:
    """Antimicrobial peptides (modlAMP via peptidereactor): FASTA + one class per line, 240 records."""
    d = root / "peptides" / "amp_modlamp"
    recs = list(fasta((d / "seqs.fasta").read_text()).items())
    classes = (d / "classes.txt").read_text().split()
    pairs = [(pid, seq, c) for (pid, (_, seq)), c in zip(recs, classes)]
    rng = random.Random(0)
    rng.shuffle(pairs)
    pairs = pairs[:240]
    names = {"0": "other", "1": "amp"}
    (HERE / "amp_train.fasta").write_text("".join(f">{p}\n{s}\n" for p, s, _ in pairs[:160]))
    (HERE / "amp_train_labels.txt").write_text("".join(f"{names[c]}\n" for _, _, c in pairs[:160]))
    write(HERE / "amp_valid.csv", ["id", "sequence", "label"], [(p, s, names[c]) for p, s, c in pairs[160:200]])
    write(HERE / "amp_test.csv", ["id", "sequence", "label"], [(p, s, names[c]) for p, s, c in pairs[200:]])


def reviews(root: Path) -> None:
    """Movie reviews (Pang & Lee 2004, NLTK): the last 600 characters of 100 reviews per split."""
    z = zipfile.ZipFile(root / "nltk_movie_reviews.zip")
    items = sorted(n for n in z.namelist() if n.endswith(".txt") and ("/pos/" in n or "/neg/" in n))
    rng = random.Random(0)
    rng.shuffle(items)
    rows = []
    for name in items[:200]:
        text = " ".join(z.read(name).decode("utf-8").split())
        cut = text[-600:]
        cut = cut[cut.find(" ") + 1 :] if len(text) > 600 else cut
        rows.append((Path(name).stem, cut, "positive" if "/pos/" in name else "negative"))
    write(HERE / "reviews_train.csv", ["id", "text", "label"], rows[:140])
    write(HERE / "reviews_valid.csv", ["id", "text", "label"], rows[140:])


if __name__ == "__main__":
    protein, text = Path(sys.argv[1]), Path(sys.argv[2])
    secondary_structure(protein)
    pab1(protein)
    amp(protein)
    reviews(text)
