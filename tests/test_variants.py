"""Mutation strings and zero-shot variant scores, checked against fair-esm computed directly.

A tiny random fair-esm ESM-2 is built here, saved like a fair-esm checkpoint and imported by
foundry; the reference scores are computed with the fair-esm model itself, one masked sequence at
a time as in fair-esm's examples/variant-prediction/predict.py. Real data: a slice of the Pab1
RRM deep mutational scan (Melamed et al. 2013, via nn4dms), whose positions start at 126.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from foundry.cli import main
from foundry.errors import DataError
from modalities.protein.embed import load_protein_model
from modalities.protein.mutations import Mutation, apply_mutations, check_mutations, parse_mutations
from modalities.protein.variants import score_variants
from test_convert_esm import ALPHABET, fair_esm_model, save_fair_esm

DMS = Path("/work/shared/data/protein_labelled/dms")
PAB1_WT = (DMS / "pab1_wt_aa.txt").read_text().split()[0]  # line 1: sequence, line 2: first residue number (126)
PAB1_OFFSET = 126


def pab1_slice(n_single=12, n_double=4) -> list[tuple[str, str]]:
    """First single and double mutants of the scan (no nonsense ones) as (variant, line)."""
    singles, doubles = [], []
    for line in (DMS / "pab1_nn4dms.tsv").read_text().splitlines()[1:]:
        variant, count, _ = line.split("\t")
        if "*" in variant:
            continue
        if count == "1" and len(singles) < n_single:
            singles.append(variant)
        elif count == "2" and len(doubles) < n_double:
            doubles.append(variant)
    return singles + doubles


# -- mutation strings ---------------------------------------------------------------------------


def test_parse_single_multi_and_separators():
    assert parse_mutations("A24G") == (Mutation("A", 24, "G"),)
    expected = (Mutation("A", 24, "G"), Mutation("T", 50, "S"))
    for text in ("A24G:T50S", "A24G;T50S", "A24G,T50S", "A24G T50S", " A24G : T50S "):
        assert parse_mutations(text) == expected
    assert parse_mutations("WT") == () and parse_mutations("_wt") == ()
    assert str(expected[1]) == "T50S"


@pytest.mark.parametrize("text, message", [
    ("A24", "cannot read mutation 'A24'"),
    ("24G", "cannot read"),
    ("A24J", "'J' is not an amino-acid letter"),
    ("A24G:A24C", "position 24 is mutated twice"),
    ("A24*", "stop codons"),
    ("", "empty mutation"),
])
def test_parse_errors_name_the_record(text, message):
    with pytest.raises(DataError, match=message) as err:
        parse_mutations(text, where="dms.csv: line 7")
    assert str(err.value).startswith("dms.csv: line 7: ")


def test_stop_allowed_on_request():
    assert parse_mutations("K3*", allow_stop=True) == (Mutation("K", 3, "*"),)


def test_wildtype_letter_mismatch_names_position_expected_and_found():
    with pytest.raises(DataError) as err:
        check_mutations(parse_mutations("A126G"), PAB1_WT, offset=PAB1_OFFSET, where="pab1.tsv: line 2")
    msg = str(err.value)
    assert "pab1.tsv: line 2" in msg and "position 126" in msg and "expects wild-type A" in msg and "has G" in msg
    with pytest.raises(DataError, match="outside the wild-type sequence"):
        check_mutations(parse_mutations("G126A"), PAB1_WT, offset=1)


def test_apply_with_offset():
    mutant = apply_mutations(PAB1_WT, parse_mutations("G126A:N127D"), offset=PAB1_OFFSET)
    assert mutant[:2] == "AD" and mutant[2:] == PAB1_WT[2:]


# -- scores vs fair-esm -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.manual_seed(0)
    ref = fair_esm_model(layers=2, dim=32, heads=4)
    path = save_fair_esm(ref, tmp_path_factory.mktemp("esm") / "esm2_t2_tiny.pt")
    return ref, path


def _esm_log_probs(model, seq: str, masked: int | None = None) -> torch.Tensor:
    _, _, tokens = ALPHABET.get_batch_converter()([("wt", seq)])
    if masked is not None:
        tokens[0, masked + 1] = ALPHABET.mask_idx
    with torch.no_grad():
        return torch.log_softmax(model(tokens)["logits"], dim=-1)[0]


def _reference(model, wt: str, variants: list[str], strategy: str) -> list[float]:
    out = []
    unmasked = _esm_log_probs(model, wt)
    for v in variants:
        total = 0.0
        if strategy == "pll":
            mutant = apply_mutations(wt, parse_mutations(v), PAB1_OFFSET)
            pll = [sum(_esm_log_probs(model, s, i)[i + 1, ALPHABET.get_idx(s[i])].item() for i in range(len(s)))
                   for s in (mutant, wt)]
            out.append(pll[0] - pll[1])
            continue
        for m in parse_mutations(v):
            i = m.position - PAB1_OFFSET
            lp = unmasked if strategy == "wt-marginals" else _esm_log_probs(model, wt, i)
            total += (lp[i + 1, ALPHABET.get_idx(m.mt)] - lp[i + 1, ALPHABET.get_idx(m.wt)]).item()
        out.append(total)
    return out


@pytest.mark.parametrize("strategy", ["masked-marginals", "wt-marginals", "pll"])
def test_scores_equal_fair_esm(tiny, strategy):
    ref, path = tiny
    variants = pab1_slice() if strategy != "pll" else pab1_slice(2, 1)
    pm = load_protein_model(path)
    ours = score_variants(pm, PAB1_WT, [parse_mutations(v) for v in variants], strategy, offset=PAB1_OFFSET, batch_tokens=700)
    expected = _reference(ref, PAB1_WT, variants, strategy)
    assert ours.tolist() == pytest.approx(expected, abs=2e-4 if strategy == "pll" else 1e-5)
    assert len(set(ours.round(6).tolist())) > 1  # not all equal: the test can tell variants apart


# -- command ------------------------------------------------------------------------------------


def _run(capsys, *args) -> tuple[int, str, str]:
    code = 0
    try:
        main(["protein", *map(str, args)])
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_score_variants_command_on_pab1_slice(tiny, tmp_path, capsys):
    ref, path = tiny
    lines = (DMS / "pab1_nn4dms.tsv").read_text().splitlines()
    table = tmp_path / "pab1.tsv"
    table.write_text("\n".join(lines[:30]) + "\n")  # rows 2..30: singles incl. nonsense N127*
    (tmp_path / "wt.fasta").write_text(f">pab1\n{PAB1_WT}\n")
    out = tmp_path / "scored.tsv"
    code, _, err = _run(capsys, "score-variants", "--model", path, "--wildtype", tmp_path / "wt.fasta",
                        "--offset", PAB1_OFFSET, "--mutation-column", "variant", table, "-o", out, "--device", "cpu")
    assert code == 0, err
    rows = [r.split("\t") for r in out.read_text().splitlines()]
    assert rows[0] == ["variant", "num_mutations", "score", "masked_marginals"]
    assert [r[:3] for r in rows[1:]] == [r.split("\t") for r in lines[1:30]]  # table copied unchanged
    blank = [r[0] for r in rows[1:] if r[3] == ""]
    assert blank and all(v.endswith("*") for v in blank) and "nonsense" in err
    scored = [(r[0], float(r[3])) for r in rows[1:] if r[3]]
    expected = _reference(ref, PAB1_WT, [v for v, _ in scored], "masked-marginals")
    assert [s for _, s in scored] == pytest.approx(expected, abs=1e-5)


def test_score_variants_wrong_offset_is_one_line_error(tiny, tmp_path, capsys):
    _, path = tiny
    table = tmp_path / "dms.csv"
    table.write_text("mutant,score\nG1A,0.5\nN2D,0.1\nI3A,0.2\n")
    code, _, err = _run(capsys, "score-variants", "--model", path, "--wildtype", PAB1_WT, table, "--device", "cpu")
    assert code == 0, err  # 1-based by default: G1 N2 I3 match the Pab1 wild type
    table.write_text("mutant,score\nG1A,0.5\nK3D,0.1\n")
    code, _, err = _run(capsys, "score-variants", "--model", path, "--wildtype", PAB1_WT, table, "--device", "cpu")
    assert code == 2 and err.count("\n") == 1
    assert f"{table}: line 3: mutation K3D: position 3 expects wild-type K but the sequence has I there (--wildtype-start 1; is it right?)" in err
    code, _, err = _run(capsys, "score-variants", "--model", path, "--wildtype", PAB1_WT, table, "--mutation-column", "variant")
    assert code == 2 and "no mutation column 'variant'; the columns are: mutant, score (choose one with --mutation-column)" in err


def test_zero_based_tables_with_wildtype_start_0(tiny, tmp_path, capsys):
    _, path = tiny
    table = tmp_path / "dms.csv"
    table.write_text("mutant\nG0A\nI2A\n")  # 0-based: G0 is the first residue, I2 the third
    code, out, err = _run(capsys, "score-variants", "--model", path, "--wildtype", PAB1_WT, table, "--wildtype-start", 0, "--device", "cpu")
    assert code == 0, err
    assert [r.split(",")[0] for r in out.splitlines()] == ["mutant", "G0A", "I2A"] and "2 variants scored" in err


def test_skip_invalid_leaves_bad_rows_blank_counted_and_named(tiny, tmp_path, capsys):
    _, path = tiny
    table = tmp_path / "dms.csv"
    rows = ["G1A", "N2*", "N2N", "K3D", "I3A", "Q4", "G1A:I3V", "N2D"]  # nonsense, synonymous, wrong letter, malformed
    table.write_text("mutant,fitness\n" + "".join(f"{r},{i}\n" for i, r in enumerate(rows)))
    code, _, err = _run(capsys, "score-variants", "--model", path, "--wildtype", PAB1_WT, table, "--device", "cpu")
    assert code == 2 and "line 5: mutation K3D: position 3 expects wild-type K" in err  # default: the first bad row
    out = tmp_path / "scored.csv"
    code, _, err = _run(capsys, "score-variants", "--model", path, "--wildtype", PAB1_WT, table, "--device", "cpu",
                        "--skip-invalid", "-o", out)
    assert code == 0, err
    scored = {r.split(",")[0]: r.split(",")[2] for r in out.read_text().splitlines()[1:]}
    assert list(scored) == rows  # every row kept, in order
    assert {m for m, s in scored.items() if not s} == {"N2*", "K3D", "Q4"}
    assert float(scored["N2N"]) == 0.0  # synonymous: the wild type
    assert "5 variants scored (masked-marginals); 1 nonsense variants (stop '*') left blank" in err
    assert (f"{table}: skipped 2 of 8 rows (--skip-invalid): line 5: mutation K3D: position 3 expects wild-type K "
            "but the sequence has I there (--wildtype-start 1; is it right?); line 7: cannot read mutation 'Q4'") in err


def test_skip_invalid_refuses_a_table_that_is_mostly_invalid(tiny, tmp_path, capsys):
    _, path = tiny
    table = tmp_path / "dms.csv"
    table.write_text("mutant\nG1A\nN2D\nI3A\n")  # 1-based, read with the wrong numbering
    code, _, err = _run(capsys, "score-variants", "--model", path, "--wildtype", PAB1_WT, table, "--wildtype-start", 0, "--skip-invalid")
    assert code == 2 and err.count("\n") == 1
    assert f"error: {table}: 3 of 3 rows are invalid, too many to skip (is --wildtype-start 0 right? is it the right wild type?)" in err


def test_score_column_reports_spearman_and_n(tiny, tmp_path, capsys):
    ref, path = tiny
    variants = pab1_slice(8, 2)
    expected = _reference(ref, PAB1_WT, variants, "masked-marginals")
    measured = [round(e * 2 + 1, 6) for e in expected]  # a monotone function of the scores: Spearman 1
    measured[3] = "NaN"  # a missing measurement is left out of n
    table = tmp_path / "dms.tsv"
    table.write_text("variant\tfitness\n" + "".join(f"{v}\t{m}\n" for v, m in zip(variants, measured)))
    code, out, err = _run(capsys, "score-variants", "--model", path, "--wildtype", PAB1_WT, "--wildtype-start", PAB1_OFFSET,
                          table, "--score-column", "fitness", "--device", "cpu")
    assert code == 0, err
    assert out.splitlines()[0] == "variant\tfitness\tmasked_marginals"  # the variant column found without --mutation-column
    assert "spearman of masked_marginals vs fitness: 1.0000 (n = 9; 1 rows without a score or a measured value left out)" in err
    code, _, err = _run(capsys, "score-variants", "--model", path, "--wildtype", PAB1_WT, "--wildtype-start", PAB1_OFFSET,
                        table, "--score-column", "score", "--device", "cpu")
    assert code == 2 and f"{table}: no column 'score' for --score-column (the measured values to compare with)" in err
    table.write_text("variant\tfitness\nG126A\thigh\n")
    code, _, err = _run(capsys, "score-variants", "--model", path, "--wildtype", PAB1_WT, "--wildtype-start", PAB1_OFFSET,
                        table, "--score-column", "fitness", "--device", "cpu")
    assert code == 2 and f"{table}: line 2: --score-column 'fitness' value 'high' is not a number" in err


def test_wildtype_from_a_multi_record_fasta_with_wildtype_id(tiny, tmp_path, capsys):
    _, path = tiny
    panel = tmp_path / "panel.fasta"
    panel.write_text(f">other\nMKTAYIAKQR\n>pab1 RRM2\n{PAB1_WT}\n")
    table = tmp_path / "dms.csv"
    table.write_text("mutant\nG126A\n")
    args = ["score-variants", "--model", path, "--wildtype", panel, "--wildtype-start", PAB1_OFFSET, table, "--device", "cpu"]
    code, _, err = _run(capsys, *args)
    assert code == 2 and f"{panel}: 2 FASTA records; choose the wild type with --wildtype-id ID (records: other, pab1)" in err
    code, _, err = _run(capsys, *args, "--wildtype-id", "pab2")
    assert code == 2 and f"{panel}: no record 'pab2' (--wildtype-id); its records: other, pab1" in err
    code, out, err = _run(capsys, *args, "--wildtype-id", "pab1")
    assert code == 0, err
    assert out.splitlines()[1].startswith("G126A,")
