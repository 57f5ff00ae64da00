"""`protein contacts` on structures writes each range's random rate (the fraction of contacts among
that range's scored pairs: what a random ranking scores) beside its precisions, per chain in
metrics.tsv / metrics.json and on the printed lines, so a P@L/5 can be judged against chance."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from foundry.testing import run_cli
from modalities.protein.contact_metrics import format_metrics
from modalities.protein.structures import read_structure

STRUCTURES = Path(__file__).parent / "data" / "structures"
RANGES = {"short": (6, 12), "medium": (12, 24), "long": (24, 10**9)}


def hand_random_rate(contacts, lo: int, hi: int) -> tuple[int, int]:
    """(contacts, scored pairs) with lo <= j - i < hi and a known label, counted pair by pair."""
    found = pairs = 0
    for i in range(len(contacts)):
        for j in range(i + lo, min(i + hi, len(contacts))):
            if contacts[i, j] >= 0:
                pairs += 1
                found += int(contacts[i, j] == 1)
    return found, pairs


def test_hand_counts_on_a_real_structure():
    """Pins the hand count itself: 1A8O (70 residues, all with coordinates) has 35 contacts among
    its 1081 long-range pairs; 2BEG's 16 unobserved residues leave 3 long-range pairs to score."""
    assert hand_random_rate(read_structure(STRUCTURES / "1A8O.pdb").contacts, 24, 10**9) == (35, 1081)
    assert hand_random_rate(read_structure(STRUCTURES / "2BEG.pdb.gz").contacts, 24, 10**9) == (0, 3)


def test_contacts_write_and_print_the_random_rate_of_each_range(tmp_path):
    from test_convert_esm import fair_esm_model, save_fair_esm

    torch.manual_seed(0)
    model = save_fair_esm(fair_esm_model(layers=1, dim=32, heads=4), tmp_path / "esm2_t1_tiny.pt")
    folder = tmp_path / "pdbs"
    folder.mkdir()
    for name in ("1A8O.pdb", "2BEG.pdb.gz"):
        (folder / name).write_bytes((STRUCTURES / name).read_bytes())
    out = tmp_path / "c"
    result = run_cli("protein", "contacts", "--model", model, folder, "-o", out, "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    stdout = result.stdout

    expected = {}
    for chain, name in (("1A8O_A", "1A8O.pdb"), ("2BEG_A", "2BEG.pdb.gz")):
        contacts = read_structure(STRUCTURES / name).contacts
        counts = {r: hand_random_rate(contacts, lo, hi) for r, (lo, hi) in RANGES.items()}
        expected[chain] = {r: found / pairs for r, (found, pairs) in counts.items()}

    doc = json.loads((out / "metrics.json").read_text())
    rows = {r["name"]: r for r in doc["structures"]}
    for chain, rates in expected.items():
        for r, rate in rates.items():
            assert rows[chain][f"{r}_random"] == pytest.approx(rate, abs=1e-12)
            assert f"{r}_P@L5" in rows[chain] and f"{r}_P@L" in rows[chain]  # existing keys kept
    for r in RANGES:
        assert doc["mean"][f"{r}_random"] == pytest.approx((expected["1A8O_A"][r] + expected["2BEG_A"][r]) / 2)

    header, *lines = (out / "metrics.tsv").read_text().splitlines()
    columns = header.split("\t")
    assert columns[:6] == ["name", "length", "short_P@L", "short_P@L2", "short_P@L5", "short_random"]
    assert columns[-4:] == ["long_P@L", "long_P@L2", "long_P@L5", "long_random"]
    tsv = {line.split("\t")[0]: dict(zip(columns, line.split("\t"))) for line in lines}
    assert tsv["1A8O_A"]["long_random"] == f"{35 / 1081:.4f}" == "0.0324"

    p = rows["1A8O_A"]["long_P@L5"]
    assert f"1A8O_A  L=70  short_P@L5 {rows['1A8O_A']['short_P@L5']:.3f} (random 0.043)" in stdout
    assert f"long_P@L5 {p:.3f} (random 0.032)  long_P@L2" in stdout
    mean = doc["mean"]
    assert (f"mean over 2 structures  short_P@L5 {mean['short_P@L5']:.3f} (random {mean['short_random']:.3f})  "
            f"medium_P@L5 {mean['medium_P@L5']:.3f} (random {mean['medium_random']:.3f})  "
            f"long_P@L5 {mean['long_P@L5']:.3f} (random {(35 / 1081 + 0) / 2:.3f})  long_P@L2") in stdout


def test_the_random_rate_is_shown_once_per_range_and_undefined_reads_na():
    metrics = {"long_P@L5": 0.096, "long_P@L2": 0.08, "long_P@L": 0.06, "long_random": 0.044,
               "medium_P@L5": 0.1, "medium_random": float("nan")}
    assert format_metrics(metrics) == \
        "medium_P@L5 0.100 (random n/a)  long_P@L5 0.096 (random 0.044)  long_P@L2 0.080  long_P@L 0.060"
