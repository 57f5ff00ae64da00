"""``foundry protein score-variants``: zero-shot scores for a deep mutational scan table.

    foundry protein score-variants --model esm1v.pt --wildtype P62593.fasta dms.csv -o scored.csv
    foundry protein score-variants --model m/ --wildtype pab1_wt.txt --wildtype-start 126 \\
        --mutation-column variant pab1.tsv --strategy wt-marginals --score-column score
    foundry protein score-variants --model m/ --wildtype panel.fasta --wildtype-id GB1 gb1.csv --skip-invalid

The table (CSV, or TSV when the header has tabs; read by ``foundry.finetune.data.read_table``,
the one table reader) is copied with one score column added (``--output-column``, default the
strategy name); without ``-o`` it goes to stdout. ``--score-column COL`` names a measured column:
the Spearman correlation of the scores with it is reported, with n. Nonsense variants (``K78*``)
get no score (an ESM model has no stop token): their cell stays blank. Rows that cannot be read or
do not match the wild type are an error, or with ``--skip-invalid`` blank too, counted and the
first few named. Scoring is in ``variants.py``, mutation strings in ``mutations.py``, the wild type
in ``wildtype.py``.
"""

from __future__ import annotations

import csv
import io
import math
import sys
from pathlib import Path

import click
import numpy as np

from foundry.atomic import atomic_write_text
from foundry.errors import DataError, FoundryError

from .wildtype import read_wildtype

#: column names tried, in order, when --mutation-column is not given
MUTATION_COLUMNS = ("mutant", "mutation", "mutations", "variant")


@click.command(name="score-variants")
@click.option("--model", "model", required=True, help="Masked protein LM: model dir, fair-esm .pt or HF ESM dir.")
@click.option("--wildtype", required=True, help="Wild-type sequence, or a FASTA / text file holding it.")
@click.option("--wildtype-id", help="The record of a --wildtype FASTA file with several.")
@click.argument("table", type=click.Path(path_type=Path))
@click.option("-o", "--out", type=click.Path(path_type=Path), help="Output CSV/TSV (default: stdout).")
@click.option("--strategy", type=click.Choice(["masked-marginals", "wt-marginals", "pll"]), default="masked-marginals", show_default=True)
@click.option("--mutation-column", default=None, help="Column holding A24G / A24G:T50S [mutant, else mutation, mutations, variant].")
@click.option("--wildtype-start", "--offset", "offset", type=int, default=1, show_default=True,
              help="The number the mutation strings give the wild type's first residue: 1 for 1-based tables, "
                   "0 for 0-based ones, 126 if the sequence is residues 126.. of the protein.")
@click.option("--score-column", default=None, help="A measured column (e.g. fitness): report Spearman of the scores against it, with n.")
@click.option("--output-column", default=None, help="Name of the added column (default: the strategy).")
@click.option("--skip-invalid", is_flag=True, help="Leave rows that cannot be scored (malformed, not matching the wild type) "
              "blank, counted and named, instead of stopping at the first.")
@click.option("--batch-tokens", type=click.IntRange(min=1), default=4096, show_default=True)
@click.option("--device", default="auto", show_default=True)
def score_variants_command(model, wildtype, wildtype_id, table, out, strategy, mutation_column, offset, score_column, output_column,
                           skip_invalid, batch_tokens, device):
    """Zero-shot variant scores (log-odds vs the wild type) added as a column of TABLE.

    \b
    Positions are 1-based unless --wildtype-start says otherwise (0 for 0-based tables).
    Synonymous variants (K78K) score 0. Nonsense variants (K78*) are left blank: ESM has no stop token.
    """
    # foundry.finetune.data imports torch: only when the command runs, so building the CLI stays fast
    from foundry.finetune.data import read_table, table_column

    from .embed import load_protein_model, pick_device
    from .mutations import skipped_note, usable_variants
    from .variants import score_variants

    wt = read_wildtype(wildtype, record_id=wildtype_id)
    header, rows = read_table(table)
    if not rows:
        raise DataError(f"{table}: no rows below the header")
    fallbacks = MUTATION_COLUMNS[1:] if mutation_column is None else ()  # a column named by the user is not guessed
    mutations = table_column(table, header, mutation_column or "mutant", "mutation", fallbacks)
    column = output_column or strategy.replace("-", "_")
    if column in header:
        raise FoundryError(f"{table}: already has a column {column!r}; name the added one with --output-column")
    measured = _measured(table, header, rows, score_column) if score_column else None
    where = [f"{table}: line {line}" for line, _ in rows]
    kept, skipped = usable_variants([row[mutations] for _, row in rows], where, wt, offset, skip_invalid=skip_invalid,
                                    allow_stop=True, option="--wildtype-start", source=str(table))
    scorable = [(k, v) for k, v in kept if not any(m.mt == "*" for m in v)]  # every row checked before the model loads
    pm = load_protein_model(model, pick_device(device))
    scored = score_variants(pm, wt, [v for _, v in scorable], strategy, offset, batch_tokens, [where[k] for k, _ in scorable])
    scores: list[float | None] = [None] * len(rows)
    for (k, _), value in zip(scorable, scored):
        scores[k] = float(value)
    _write(out, table, header, rows, column, scores)
    nonsense = len(kept) - len(scorable)
    note = f"; {nonsense} nonsense variants (stop '*') left blank" if nonsense else ""
    click.echo(f"{len(scorable)} variants scored ({strategy}){note}" + (f" -> {out}" if out else ""), err=True)
    if skipped:
        click.echo(f"{table}: " + skipped_note([m.removeprefix(f"{table}: ") for m in skipped], len(rows)), err=True)
    if measured is not None:
        click.echo(_spearman_line(scores, measured, column, score_column), err=True)


def _measured(table: Path, header: list[str], rows: list, name: str) -> list[float | None]:
    """The measured values of column ``name``; empty cells and NaN are None (left out of Spearman)."""
    if name not in header:
        raise DataError(f"{table}: no column {name!r} for --score-column (the measured values to compare with); "
                        f"the columns are: {', '.join(header)}")
    values: list[float | None] = []
    for line, row in rows:
        text = row[name].strip()
        if text.lower() in ("", "nan", "na", "n/a"):
            values.append(None)
            continue
        try:
            value = float(text)
        except ValueError:
            raise DataError(f"{table}: line {line}: --score-column {name!r} value {text!r} is not a number") from None
        values.append(value if math.isfinite(value) else None)
    return values


def _spearman_line(scores: list[float | None], measured: list[float | None], column: str, name: str) -> str:
    from foundry.finetune.metrics import spearman

    pairs = [(s, m) for s, m in zip(scores, measured) if s is not None and m is not None]
    left_out = len(scores) - len(pairs)
    detail = f"n = {len(pairs)}" + (f"; {left_out} rows without a score or a measured value left out" if left_out else "")
    if len(pairs) < 3:
        return f"spearman of {column} vs {name}: not enough pairs ({detail})"
    rho = spearman(np.array([m for _, m in pairs]), np.array([s for s, _ in pairs]))
    return f"spearman of {column} vs {name}: {rho:.4f} ({detail})"


def _write(out: Path | None, table: Path, header: list[str], rows: list, column: str, scores: list[float | None]) -> None:
    """The input rows, unchanged, plus the score column (blank where there is no score)."""
    from foundry.finetune.data import table_delimiter

    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=table_delimiter(table), lineterminator="\n")
    writer.writerow([*header, column])
    for (_, row), score in zip(rows, scores):
        writer.writerow([*(row.get(c, "") for c in header), "" if score is None else repr(score)])
    if out is None:
        sys.stdout.write(buffer.getvalue())
    else:
        atomic_write_text(out, buffer.getvalue())
