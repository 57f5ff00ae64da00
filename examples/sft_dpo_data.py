"""Data builders for ``examples/sft_dpo.py``: real data, built deterministically at example time.

- ``stdlib_instructions``: an instruction set from the Python standard library of the running
  interpreter (``ast`` over its sources): prompt = a function's signature and docstring, completion
  = its body. Held out by module (``zlib.crc32`` of the module path), so no function of a held-out
  module is seen in training.
- ``review_data``: from the Pang & Lee movie reviews (``nltk_movie_reviews.zip``, CC-BY-4.0; one
  tokenized sentence per line, 1,000 positive and 1,000 negative reviews). Reviews are held out by
  file id (``crc32 % 10 == 0``). It writes a pretraining text (one review per paragraph), a
  sentiment table of single sentences (for the classifier ``foundry text finetune`` trains), and
  DPO pairs in the spirit of the DPO paper's controlled-sentiment task: prompt = the first sentence
  of a review, chosen = the closing sentence (the verdict) of the k-th positive review, rejected =
  the closing sentence of the k-th negative review.
"""

from __future__ import annotations

import ast
import csv
import json
import math
import sysconfig
import zipfile
import zlib
from pathlib import Path

MAX_WORDS = 40  # sentences longer than this are left out of pairs and the classifier table
MAX_PROMPT_CHARS, MAX_BODY_CHARS = 400, 600  # instruction rows: signature + docstring, body


def _held_out(name: str, every: int = 10) -> bool:
    return zlib.crc32(name.encode()) % every == 0


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# -- the standard library as instructions ---------------------------------------------------------


def _function_rows(source: str) -> list[dict]:
    """(prompt, completion) for each function with a docstring whose body is 2..30 lines (and short
enough in characters, see ``MAX_PROMPT_CHARS``)."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    lines = source.splitlines(keepends=True)
    rows = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or node.decorator_list:
            continue
        doc = ast.get_docstring(node, clean=False)
        if not doc or len(node.body) < 2 or not isinstance(node.body[0], ast.Expr):
            continue
        start, doc_end, end = node.lineno - 1, node.body[0].end_lineno, node.end_lineno
        body = "".join(lines[doc_end:end])
        if not 2 <= end - doc_end <= 30 or not body.strip():
            continue
        indent = len(lines[start]) - len(lines[start].lstrip())
        prompt = "".join(line[indent:] if line[:indent].isspace() else line for line in lines[start:doc_end])
        completion = "".join(line[indent:] if line[:indent].isspace() else line for line in lines[doc_end:end])
        if len(prompt) <= MAX_PROMPT_CHARS and len(completion) <= MAX_BODY_CHARS:  # both fit a 384-token context
            rows.append({"prompt": prompt, "completion": completion})
    return rows


def stdlib_instructions(out: Path, max_train: int = 4000, max_valid: int = 300) -> dict[str, Path]:
    """``out/stdlib_{train,valid}.jsonl``; deterministic for a given Python installation."""
    root = Path(sysconfig.get_paths()["stdlib"])
    train, valid = [], []
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root).as_posix()
        if relative.startswith(("test/", "idlelib/idle_test/", "site-packages/")) or "/tests/" in relative:
            continue
        rows = _function_rows(path.read_text(encoding="utf-8", errors="replace"))
        (valid if _held_out(relative) else train).extend(rows)
    return {"train": _write_jsonl(out / "stdlib_train.jsonl", train[:max_train]),
            "valid": _write_jsonl(out / "stdlib_valid.jsonl", valid[:max_valid])}


# -- movie reviews: pretraining text, a sentiment table, preference pairs ----------------------------


def _reviews(zip_path: Path) -> dict[str, list[tuple[str, list[str]]]]:
    """{"pos"|"neg": [(file id, sentences)]} in file order."""
    found: dict[str, list] = {"pos": [], "neg": []}
    with zipfile.ZipFile(zip_path) as archive:
        for name in sorted(archive.namelist()):
            parts = name.split("/")
            if len(parts) == 3 and parts[1] in found and name.endswith(".txt"):
                sentences = [s.strip() for s in archive.read(name).decode("utf-8").splitlines() if s.strip()]
                found[parts[1]].append((parts[2], sentences))
    return found


def _short(sentence: str) -> bool:
    return 6 <= len(sentence.split()) <= MAX_WORDS


def _pairs(pos: list, neg: list) -> list[dict]:
    rows = []
    for (_, p), (_, n) in zip(pos, neg):
        chosen = next((s for s in reversed(p) if _short(s)), None)
        rejected = next((s for s in reversed(n) if _short(s)), None)
        if chosen is None or rejected is None or chosen == rejected:
            continue
        for review in (p, n):  # the prompt: the opening sentence of either review
            opening = next((s for s in review if _short(s)), None)
            if opening is not None:
                rows.append({"prompt": opening, "chosen": " " + chosen, "rejected": " " + rejected})
    return rows


def word_log_odds(zip_path: Path, min_count: int = 5) -> dict[str, float]:
    """Naive-Bayes sentiment of each word of the training reviews: log p(w | positive) - log p(w | negative)
    (add-one smoothed, words seen at least ``min_count`` times): a second, transparent scorer."""
    from collections import Counter

    counts = {"pos": Counter(), "neg": Counter()}
    for kind, reviews in _reviews(zip_path).items():
        for file_id, sentences in reviews:
            if not _held_out(file_id):
                counts[kind].update(w for s in sentences for w in s.split())
    words = [w for w in counts["pos"] | counts["neg"] if counts["pos"][w] + counts["neg"][w] >= min_count]
    totals = {k: sum(counts[k][w] for w in words) + len(words) for k in counts}
    return {w: math.log((counts["pos"][w] + 1) / totals["pos"]) - math.log((counts["neg"][w] + 1) / totals["neg"]) for w in words}


def review_data(zip_path: Path, out: Path) -> dict[str, Path]:
    reviews = _reviews(zip_path)
    split = {s: {k: [r for r in v if _held_out(r[0]) == (s == "valid")] for k, v in reviews.items()} for s in ("train", "valid")}
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    # pretraining text: every training review, one paragraph each
    corpus = out / "reviews_corpus"
    corpus.mkdir(exist_ok=True)
    (corpus / "reviews_train.txt").write_text(
        "\n\n".join(" ".join(s) for kind in ("pos", "neg") for _, s in split["train"][kind]) + "\n")
    paths["corpus"] = corpus
    # sentiment classifier: single sentences labelled by their review's polarity (the opening, the
    # verdict and two from the middle of each review)
    for s in ("train", "valid"):
        with open(out / f"sentences_{s}.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["id", "text", "label"])
            for kind, label in (("pos", "positive"), ("neg", "negative")):
                for file_id, sentences in split[s][kind]:
                    short = [x for x in sentences if _short(x)]
                    picks = dict.fromkeys(short[i] for i in {0, len(short) // 3, 2 * len(short) // 3, len(short) - 1} if short)
                    for j, sentence in enumerate(picks):
                        writer.writerow([f"{kind}/{file_id}/{j}", sentence, label])
        paths[f"sentences_{s}"] = out / f"sentences_{s}.csv"
    for s in ("train", "valid"):
        paths[f"pairs_{s}"] = _write_jsonl(out / f"pairs_{s}.jsonl", _pairs(split[s]["pos"], split[s]["neg"]))
    return paths
