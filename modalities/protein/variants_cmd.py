"""``foundry protein score-variants``: zero-shot scores for a deep mutational scan table.

    foundry protein score-variants --model esm1v.pt --wildtype P62593.fasta dms.csv -o scored.csv
    foundry protein score-variants --model m/ --wildtype pab1_wt.txt --offset 126 \\
        --mutation-column variant pab1.tsv --strategy wt-marginals

The table (CSV, or TSV when the header has tabs) is copied unchanged with one score column added
(``--score-column``, default the strategy name); without ``-o`` it goes to stdout. Scoring is in
``variants.py``, mutation strings in ``mutations.py``, the wild type in ``wildtype.py``.
"""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path

import click

from foundry.atomic import atomic_write_text
from foundry.errors import DataError, FoundryError

from .wildtype import read_wildtype


def read_table(path: Path, column: str) -> tuple[list[str], list[list[str]], list[int], str]:
    """(header, rows, line number of each row, delimiter); the mutation column must exist."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read as text ({exc})") from None
    first = text.split("\n", 1)[0]
    delimiter = "\t" if "\t" in first or path.suffix.lower() in (".tsv", ".tab") else ","
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    rows, lines = [], []
    for row in reader:
        if row:
            rows.append(row)
            lines.append(reader.line_num)
    if not rows:
        raise DataError(f"{path}: empty table")
    header, body = rows[0], rows[1:]
    if column not in header:
        raise DataError(f"{path}: no column {column!r} (columns: {', '.join(header)}); use --mutation-column")
    if not body:
        raise DataError(f"{path}: no rows below the header")
    return header, body, lines[1:], delimiter


@click.command(name="score-variants")
@click.option("--model", "model", required=True, help="Masked protein LM: model dir, fair-esm .pt or HF ESM dir.")
@click.option("--wildtype", required=True, help="Wild-type sequence, or a FASTA / text file holding it.")
@click.argument("table", type=click.Path(path_type=Path))
@click.option("-o", "--out", type=click.Path(path_type=Path), help="Output CSV/TSV (default: stdout).")
@click.option("--strategy", type=click.Choice(["masked-marginals", "wt-marginals", "pll"]), default="masked-marginals", show_default=True)
@click.option("--mutation-column", default="mutant", show_default=True, help="Column holding A24G / A24G:T50S.")
@click.option("--score-column", default=None, help="Name of the added column (default: the strategy).")
@click.option("--offset", type=int, default=1, show_default=True, help="Number of the wild type's first residue in the mutation strings.")
@click.option("--batch-tokens", type=click.IntRange(min=1), default=4096, show_default=True)
@click.option("--device", default="auto", show_default=True)
def score_variants_command(model, wildtype, table, out, strategy, mutation_column, score_column, offset, batch_tokens, device):
    """Zero-shot variant scores (log-odds vs the wild type) added as a column of TABLE."""
    from .embed import load_protein_model, pick_device
    from .mutations import check_mutations, parse_mutations
    from .variants import score_variants

    wt = read_wildtype(wildtype)
    header, rows, lines, delimiter = read_table(table, mutation_column)
    column = score_column or strategy.replace("-", "_")
    if column in header:
        raise FoundryError(f"{table}: already has a column {column!r}; choose another with --score-column")
    col = header.index(mutation_column)
    where = [f"{table}: line {n}" for n in lines]
    variants = []
    for n, row in enumerate(rows):
        if col >= len(row):
            raise DataError(f"{where[n]}: {len(row)} fields, no {mutation_column!r} value")
        variants.append(parse_mutations(row[col], where[n], allow_stop=True))
    for n, v in enumerate(variants):  # every row checked before the model is loaded
        check_mutations(v, wt, offset, where[n])
    scorable = [n for n, v in enumerate(variants) if not any(m.mt == "*" for m in v)]
    pm = load_protein_model(model, pick_device(device))
    scored = score_variants(pm, wt, [variants[n] for n in scorable], strategy, offset, batch_tokens,
                            [where[n] for n in scorable])
    scores: list[float | None] = [None] * len(rows)
    for n, value in zip(scorable, scored):
        scores[n] = float(value)
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=delimiter, lineterminator="\n")
    writer.writerow([*header, column])
    for row, score in zip(rows, scores):
        writer.writerow([*row, "" if score is None else repr(score)])
    skipped = len(rows) - len(scorable)
    note = f"; {skipped} nonsense variants (stop '*') left blank" if skipped else ""
    if out is None:
        sys.stdout.write(buffer.getvalue())
        click.echo(f"{len(scorable)} variants scored ({strategy}){note}", err=True)
        return
    atomic_write_text(out, buffer.getvalue())
    click.echo(f"{len(scorable)} variants scored ({strategy}){note} -> {out}", err=True)
