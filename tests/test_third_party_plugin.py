"""A third-party modality package (plugins/foundry-dna) installed with pip shows up in
`foundry plugins`, pretrains, fine-tunes and exports (with its tokenizer) through the same engine,
with no change to foundry."""

import csv
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PLUGIN = Path(__file__).parent.parent / "plugins" / "foundry-dna"
TINY = ["--set", "data.max_len=128", "--set", "data.batch_tokens=512", "--set", "data.valid_fraction=0.1",
        "--set", "model.overrides.n_layer=2", "--set", "model.overrides.d_model=64", "--set", "model.overrides.n_head=4",
        "--set", "model.overrides.d_ff=128"]

# Real-looking DNA for the tokenizer comparison: soft-masked (lower-case) repeats, N runs and IUPAC
# codes from assembly gaps, line-wrapped FASTA bodies.
SEQUENCES = [
    "TTGACAATTAATCATCGGCTCGTATAATGTGTGGAATTGTGAGCGGATAACAATTTCACACAGGAAACAGCT",
    "GGCCGCGGGcgcgcgcggccgcNNNNNNNNNNacgtacgtTATAAAAGGCGCGCCRYKMSWacgt",
    "ATGGCTAGCAAAGGAGAAGAACTTTTCACTGGAGTTGTCCCAATTCTTGTTGAATTAGATGGTGATGTTAATG\nGGCACAAATTTTCTGTCAGTGGAGAGGGTGAAGG",
    "nnnnACGTBDHVacgtbdhvN",
]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    # Build from a copy: setuptools writes build/ next to the sources it is given.
    source = tmp_path_factory.mktemp("src") / PLUGIN.name
    shutil.copytree(PLUGIN, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(source)], check=True, capture_output=True, timeout=1800)  # a hang guard, never a race
    return target


def _env(site):
    env = {k: v for k, v in os.environ.items() if not k.startswith("FOUNDRY_")}
    env.update(PYTHONPATH=str(site), OMP_NUM_THREADS="1")
    return env


def _foundry(site, *args):
    return subprocess.run([sys.executable, "-m", "foundry", *map(str, args)], capture_output=True, text=True,
                          env=_env(site), timeout=1800)  # a hang guard, never a race


def _sequence(rng, gc, length):
    return "".join(rng.choice("GC") if rng.random() < gc else rng.choice("AT") for _ in range(length))


@pytest.fixture(scope="module")
def pretrained(site, tmp_path_factory):
    """A DNA model pretrained for two steps on genome fragments of varied GC content."""
    folder = tmp_path_factory.mktemp("pretrain")
    rng = random.Random(3)
    fasta = folder / "genome.fna"
    fasta.write_text("".join(f">frag{i}\n{_sequence(rng, rng.uniform(0.3, 0.7), 90)}\n" for i in range(40)))
    run = folder / "run"
    result = _foundry(site, "dna", "pretrain", "--data", fasta, "--out", run, "--max-steps", "2", "--quiet", *TINY)
    return run, result


def _promoter_table(path, rng, n):
    """Toy promoter labels: GC-rich sequences with a -10 box (TATAAT) are 'promoter', AT-rich ones 'background'."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "sequence", "label"])
        for i in range(n):
            promoter = i % 2 == 0
            body = _sequence(rng, 0.68 if promoter else 0.36, rng.randrange(40, 70))
            if promoter:
                body = body[:-12] + "TATAAT" + body[-6:]
            writer.writerow([f"{path.stem}{i}", body, "promoter" if promoter else "background"])


def test_installed_plugin_is_listed_with_its_package_and_contributions(site):
    out = _foundry(site, "plugins").stdout
    assert "dna  (foundry-dna 0.1.0)" in out
    assert "dna (mlm, default preset esm2_tiny)" in out and "tokenizers: dna" in out


def test_installed_plugin_pretrains_and_rejects_bad_input(site, pretrained, tmp_path):
    run, result = pretrained
    assert result.returncode == 0, result.stderr
    assert "final val_loss" in result.stdout and (run / "final" / "tokenizer" / "dna_tokenizer.json").is_file()

    bad = tmp_path / "bad.fna"
    bad.write_text(">x\nACGTQ\n")
    result = _foundry(site, "dna", "pretrain", "--data", bad, "--out", tmp_path / "bad")
    assert result.returncode != 0
    assert "bad.fna: record 'x': character 'Q' at position 5 is not a nucleotide" in result.stderr
    result = _foundry(site, "dna", "pretrain", "--out", tmp_path / "nodata")
    assert "no --data given and the dna modality bundles no default corpus" in result.stderr


def test_commands_the_modality_cannot_serve_are_hidden(site, tmp_path):
    listing = _foundry(site, "dna", "--help").stdout
    assert all(f"  {name} " in listing for name in ("pretrain", "prepare", "presets", "finetune", "predict"))
    assert "  import " not in listing  # the plugin gives no Modality.import_tokenizer
    result = _foundry(site, "dna", "import", "model.pt", "-o", tmp_path / "m")
    assert result.returncode == 2 and not (tmp_path / "m").exists()
    assert ("No such command 'import': the dna modality cannot import outside models "
            "(its plugin gives no Modality.import_tokenizer)") in result.stderr
    tasks = _foundry(site, "dna", "finetune", "--help").stdout
    assert all(task in tasks for task in ("sequence-regression", "sequence-classification", "residue-classification"))


def test_installed_plugin_fine_tunes_and_predicts(site, pretrained, tmp_path):
    run, _ = pretrained
    rng = random.Random(5)
    _promoter_table(tmp_path / "train.csv", rng, 32)
    _promoter_table(tmp_path / "valid.csv", rng, 12)
    out = tmp_path / "ft"
    result = _foundry(site, "dna", "finetune", "--from", run / "final", "--task", "sequence-classification",
                      "--train", tmp_path / "train.csv", "--valid", tmp_path / "valid.csv", "--out", out,
                      "--max-steps", "3", "--batch-size", "8", "--quiet")
    assert result.returncode == 0, result.stderr
    assert "accuracy" in result.stdout and "forgetting: masked-LM loss on held-out pretraining data" in result.stdout
    assert f"best model: {out / 'best'}" in result.stdout

    # Soft-masked and ambiguous bases read as the tokenizer reads them in pretraining.
    query = tmp_path / "query.fna"
    query.write_text(">cpg_island\nGCGCGGCCGCAGCGGCGCCGTATAATGC\n>at_rich\nattattaatanaataatttattaRYA\n")
    result = _foundry(site, "dna", "predict", "--model", out / "best", query, "-o", tmp_path / "pred.csv")
    assert result.returncode == 0, result.stderr
    assert f"wrote 2 predictions to {tmp_path / 'pred.csv'}" in result.stdout
    rows = list(csv.DictReader(open(tmp_path / "pred.csv")))
    assert [r["id"] for r in rows] == ["cpg_island", "at_rich"]
    assert all(r["prediction"] in ("promoter", "background") for r in rows)
    assert all(abs(float(r["p_promoter"]) + float(r["p_background"]) - 1) < 1e-4 for r in rows)


def test_export_writes_a_tokenizer_that_encodes_as_foundry(site, pretrained, tmp_path):
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    run, _ = pretrained
    result = _foundry(site, "export", run / "final", "--to", "hf", "-o", tmp_path / "hf")
    assert result.returncode == 0, result.stderr
    assert "holds no tokenizer" not in result.stderr
    assert "tokenizer_not_exported" not in json.loads((tmp_path / "hf" / "foundry_export.json").read_text())

    # foundry's ids, from the tokenizer saved with the model (in the plugin's own environment)
    script = ("import json, sys; from foundry_dna.tokenizer import DnaTokenizer; t = DnaTokenizer.load(sys.argv[1]); "
              "print(json.dumps([t.encode(s).tolist() for s in json.loads(sys.argv[2])]))")
    ours = subprocess.run([sys.executable, "-c", script, str(run / "final" / "tokenizer"), json.dumps(SEQUENCES)],
                          capture_output=True, text=True, env=_env(site), check=True, timeout=1800).stdout
    hf = AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert [hf(s)["input_ids"] for s in SEQUENCES] == json.loads(ours)
    assert hf.decode(hf("acgtRYn")["input_ids"], skip_special_tokens=True) == "ACGTNNN"
    assert (hf.mask_token_id, hf.pad_token_id) == (4, 1)

    model = AutoModelForMaskedLM.from_pretrained(tmp_path / "hf").eval()
    batch = hf(["ACGT<mask>ACGT", "ttgaca"], return_tensors="pt", padding=True)
    assert model(**batch).logits.shape == (2, 11, hf.vocab_size)
