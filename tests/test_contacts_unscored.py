"""`protein contacts` on structures too sparse to score: a clear "not scored" line and a count,
never "P@L 0.000" beside NaN, and a metrics.json that is valid JSON (no NaN)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from foundry.cli import main
from modalities.protein.contact_metrics import format_metrics
from modalities.protein.embed import ContactItem, score_structure, write_contact_metrics
from modalities.protein.structures import read_structure

STRUCTURES = Path(__file__).parent / "data" / "structures"


def without_atoms(tmp_path: Path, names: set[str]) -> Path:
    """1A8O with the named atoms deleted (e.g. every Cβ: only the 4 glycines keep a contact atom)."""
    lines = (STRUCTURES / "1A8O.pdb").read_text().splitlines()
    kept = [line for line in lines if not (line.startswith(("ATOM", "HETATM")) and line[12:16].strip() in names)]
    path = tmp_path / f"1A8O_no_{'_'.join(sorted(names))}.pdb"
    path.write_text("\n".join(kept) + "\n")
    return path


def test_sparse_structures_are_not_scored_and_files_hold_no_nan(tmp_path):
    full = read_structure(STRUCTURES / "1A8O.pdb")
    sparse = read_structure(without_atoms(tmp_path, {"CB"}))  # 4 of 70 residues (glycines, Cα) left
    rng = np.random.default_rng(0)
    rows = [score_structure(ContactItem("full", full.sequence, full), rng.random((70, 70))),
            score_structure(ContactItem("sparse", sparse.sequence, sparse), rng.random((70, 70)))]
    assert rows[1] == {"name": "sparse", "length": 70,
                       "not_scored": "4 of 70 residues have coordinates for Cβ (Cα for glycine); P@L/5 needs at least 5"}
    mean = write_contact_metrics(tmp_path, rows)
    doc = json.loads((tmp_path / "metrics.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in metrics.json"))
    assert [r["name"] for r in doc["structures"]] == ["full"] and doc["not_scored"][0]["name"] == "sparse"
    assert mean == doc["mean"] and mean["long_P@L5"] == rows[0]["long_P@L5"]
    assert len((tmp_path / "metrics.tsv").read_text().splitlines()) == 2


def test_undefined_precisions_read_na_and_null():
    assert format_metrics({"long_P@L5": float("nan"), "long_P@L": 0.25, "short_P@L5": None}) == \
        "short_P@L5 n/a  long_P@L5 n/a  long_P@L 0.250"


def test_contacts_command_names_unscored_structures_and_counts_them(tmp_path, capsys):
    from test_convert_esm import fair_esm_model, save_fair_esm

    torch.manual_seed(0)
    model = save_fair_esm(fair_esm_model(layers=1, dim=32, heads=4), tmp_path / "esm2_t1_tiny.pt")
    folder = tmp_path / "pdbs"
    folder.mkdir()
    (folder / "1A8O.pdb").write_bytes((STRUCTURES / "1A8O.pdb").read_bytes())
    without_atoms(folder, {"CA", "CB"})  # no residue has Cα or Cβ
    out = tmp_path / "c"
    try:
        main(["protein", "contacts", "--model", str(model), str(folder), "-o", str(out), "--device", "cpu"])
        code = 0
    except SystemExit as exc:
        code = exc.code
    stdout = capsys.readouterr().out
    assert code == 0
    assert "1A8O_no_CA_CB_A  L=70  not scored: 0 of 70 residues have coordinates for Cβ (Cα for glycine)" in stdout
    assert "1 of 2 structures not scored (too few residues with coordinates)" in stdout and "nan" not in stdout
    doc = json.loads((out / "metrics.json").read_text())
    assert all(v is None or math.isfinite(v) for r in doc["structures"] for v in r.values() if not isinstance(v, str))
    assert (out / "1A8O_no_CA_CB_A.npy").exists()  # the prediction itself is still written
