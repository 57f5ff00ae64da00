"""Mutation strings: parse ``A24G``, ``A24G:T50S`` (also ``;`` ``,`` ``+`` or space between), check
them against a wild type, apply them.

    muts = parse_mutations("A24G:T50S")                  # (Mutation('A', 24, 'G'), Mutation('T', 50, 'S'))
    check_mutations(muts, wildtype, offset=1)           # DataError if wildtype[23] != 'A' ...
    apply_mutations(wildtype, muts, offset=1)           # the mutant sequence

Positions are 1-based by default. ``offset`` is the number the file gives to the first residue of
the wild-type sequence: 1 for ordinary numbering, 126 for the Pab1 RRM scan whose sequence starts
at residue 126 of the full protein (so ``G126A`` mutates the first residue). fair-esm's
``predict.py --offset-idx`` means the same (written position - offset = 0-based index); its
default 0 assumes 0-based positions, ours (1) the usual 1-based numbering.

``WT``, ``wt``, ``_wt`` and ``wildtype`` mean no mutation; a synonymous mutation (``K78K``) is the
wild type too (score 0, the wild-type sequence). A mutation to ``*`` (a nonsense variant: an ESM
model has no stop token, so it cannot be scored or built; unless ``allow_stop``, then the caller
decides), a position mutated twice, or a letter outside the 20 amino acids plus X B Z U O is an
error: the message names the record (the caller passes where it came from), position, expected and
found letters. ``usable_variants`` reads a whole column: the first bad row is the error, or, with
``skip_invalid`` (``--skip-invalid``), bad rows are set aside and ``skipped_note`` names them.

This is the one mutation parser: ``score-variants`` and the ``variant-effect`` fine-tuning task
(``foundry.finetune.data``) both read mutation strings through it.
"""

from __future__ import annotations

import re
from typing import NamedTuple, Sequence

from foundry.errors import DataError

_ONE = re.compile(r"^([A-Za-z*])(-?\d+)([A-Za-z*])$")
_SPLIT = re.compile(r"[:;,+\s]+")
WILDTYPE_WORDS = {"wt", "_wt", "wildtype", "wild-type", "wild_type"}
_LETTERS = set("ACDEFGHIKLMNPQRSTVWYXBZUO")


class Mutation(NamedTuple):
    wt: str
    position: int  # as written (1-based, before the offset)
    mt: str

    def __str__(self) -> str:
        return f"{self.wt}{self.position}{self.mt}"


def parse_mutations(text: str, where: str = "", allow_stop: bool = False) -> tuple[Mutation, ...]:
    """``"A24G:T50S"`` -> mutations, in the order written. ``where`` prefixes error messages.

    ``allow_stop``: accept nonsense mutations (``K10*``) so the caller can leave them unscored.
    """
    prefix = f"{where}: " if where else ""
    if not isinstance(text, str) or not text.strip():
        raise DataError(f"{prefix}empty mutation (write WT for the wild type)")
    if text.strip().lower() in WILDTYPE_WORDS:
        return ()
    out, seen = [], {}
    for part in _SPLIT.split(text.strip()):
        if not part:
            continue
        m = _ONE.match(part)
        if not m:
            raise DataError(f"{prefix}cannot read mutation {part!r} in {text!r} (expected e.g. A24G or A24G:T50S)")
        wt, pos, mt = m.group(1).upper(), int(m.group(2)), m.group(3).upper()
        if wt == "*" or (mt == "*" and not allow_stop):
            raise DataError(f"{prefix}mutation {part!r}: stop codons '*' cannot be scored by a protein language "
                            "model (ESM has no stop token); drop nonsense variants with --skip-invalid")
        for letter in (wt, mt):
            if letter not in _LETTERS and letter != "*":
                raise DataError(f"{prefix}mutation {part!r}: {letter!r} is not an amino-acid letter")
        if pos in seen:
            raise DataError(f"{prefix}position {pos} is mutated twice in {text!r} ({seen[pos]} and {part})")
        seen[pos] = part
        out.append(Mutation(wt, pos, mt))
    return tuple(out)


def check_mutations(mutations: Sequence[Mutation], wildtype: str, offset: int = 1, where: str = "",
                    option: str = "--offset") -> list[int]:
    """0-based indices into ``wildtype``; DataError when a position is outside or the letter differs.

    ``option`` is the command-line option that sets ``offset``, named in the hint of a mismatch.
    """
    prefix = f"{where}: " if where else ""
    indices = []
    for m in mutations:
        i = m.position - offset
        if not 0 <= i < len(wildtype):
            raise DataError(f"{prefix}mutation {m}: position {m.position} is outside the wild-type sequence "
                            f"(positions {offset}..{offset + len(wildtype) - 1} with {option} {offset})")
        if wildtype[i] != m.wt:
            raise DataError(f"{prefix}mutation {m}: position {m.position} expects wild-type {m.wt} but the "
                            f"sequence has {wildtype[i]} there ({option} {offset}; is it right?)")
        indices.append(i)
    return indices


def apply_mutations(wildtype: str, mutations: Sequence[Mutation], offset: int = 1, where: str = "",
                    option: str = "--offset") -> str:
    seq = list(wildtype)
    for i, m in zip(check_mutations(mutations, wildtype, offset, where, option), mutations):
        seq[i] = m.mt
    return "".join(seq)


def usable_variants(texts: Sequence[str], wheres: Sequence[str], wildtype: str, offset: int = 1, *, skip_invalid: bool = False,
                    allow_stop: bool = False, option: str = "--offset", source: str = "") -> tuple[list[tuple[int, tuple[Mutation, ...]]], list[str]]:
    """Parse and check a column of mutation strings: ``([(row index, mutations)], [skipped row's
    message])``. A bad row (malformed, nonsense unless ``allow_stop``, a position outside the wild
    type or a letter that differs) raises its DataError, or with ``skip_invalid`` is set aside.

    More than half of the rows set aside is still an error: that is a wrong ``option`` (numbering)
    or wild type far more often than a bad table, and training on the rest would hide it.
    ``source`` (the file) starts that message; the skipped rows' messages name their rows."""
    kept, skipped = [], []
    for k, (text, where) in enumerate(zip(texts, wheres)):
        try:
            mutations = parse_mutations(text, where, allow_stop=allow_stop)
            check_mutations(mutations, wildtype, offset, where, option)
        except DataError as exc:
            if not skip_invalid:
                raise
            skipped.append(str(exc))
            continue
        kept.append((k, mutations))
    if skipped and len(skipped) * 2 > len(texts):
        raise DataError(f"{source}: " * bool(source) + f"{len(skipped)} of {len(texts)} rows are invalid, too many to skip (is {option} {offset} right? "
                        f"is it the right wild type?); the first: {skipped[0]}")
    return kept, skipped


def skipped_note(skipped: Sequence[str], total: int, shown: int = 3) -> str:
    """One line: how many rows --skip-invalid dropped and why, the first ``shown`` of them named."""
    more = f"; … and {len(skipped) - shown} more" if len(skipped) > shown else ""
    return f"skipped {len(skipped)} of {total} rows (--skip-invalid): " + "; ".join(skipped[:shown]) + more
