"""A third-party modality package (plugins/foundry-dna) installed with pip shows up in
`foundry plugins` and pretrains through the same engine, with no change to foundry."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PLUGIN = Path(__file__).parent.parent / "plugins" / "foundry-dna"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    # Build from a copy: setuptools writes build/ next to the sources it is given.
    source = tmp_path_factory.mktemp("src") / PLUGIN.name
    shutil.copytree(PLUGIN, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(source)], check=True, capture_output=True, timeout=1800)  # a hang guard, never a race
    return target


def _foundry(site, *args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("FOUNDRY_")}
    env["PYTHONPATH"] = str(site)
    return subprocess.run([sys.executable, "-m", "foundry", *args], capture_output=True, text=True, env=env, timeout=1800)  # a hang guard, never a race


def test_installed_plugin_is_listed_with_its_package_and_contributions(site):
    out = _foundry(site, "plugins").stdout
    assert "dna  (foundry-dna 0.1.0)" in out
    assert "dna (mlm, default preset esm2_tiny)" in out and "tokenizers: dna" in out


def test_installed_plugin_pretrains_and_rejects_bad_input(site, tmp_path):
    fasta = tmp_path / "genome.fna"
    bases = "ACGTTGCAACGGTACCATGGCATTACGATCGATCGGCTAAGCTTGCA"
    fasta.write_text("".join(f">frag{i}\n{bases[i % 7:] * 3}\n" for i in range(40)))
    out = tmp_path / "run"
    result = _foundry(site, "dna", "pretrain", "--data", str(fasta), "--out", str(out), "--max-steps", "2", "--quiet",
                      "--set", "data.max_len=128", "--set", "data.batch_tokens=512", "--set", "data.valid_fraction=0.1")
    assert result.returncode == 0, result.stderr
    assert "final val_loss" in result.stdout and (out / "final" / "tokenizer" / "dna_tokenizer.json").is_file()

    bad = tmp_path / "bad.fna"
    bad.write_text(">x\nACGTQ\n")
    result = _foundry(site, "dna", "pretrain", "--data", str(bad), "--out", str(tmp_path / "bad"))
    assert result.returncode != 0
    assert "bad.fna: record 'x': character 'Q' at position 5 is not a nucleotide" in result.stderr
    result = _foundry(site, "dna", "pretrain", "--out", str(tmp_path / "nodata"))
    assert "no --data given and the dna modality bundles no default corpus" in result.stderr


def test_export_says_the_plugin_tokenizer_has_no_transformers_form(site, tmp_path):
    fasta = tmp_path / "genome.fna"
    fasta.write_text("".join(f">frag{i}\n{'ACGTTGCAACGGTACCATGG'[i % 5:] * 3}\n" for i in range(20)))
    run = tmp_path / "run"
    result = _foundry(site, "dna", "pretrain", "--data", str(fasta), "--out", str(run), "--max-steps", "1", "--quiet",
                      "--set", "data.max_len=64", "--set", "data.batch_tokens=256", "--set", "data.valid_fraction=0.1")
    assert result.returncode == 0, result.stderr
    result = _foundry(site, "export", str(run / "final"), "--to", "hf", "-o", str(tmp_path / "hf"))
    assert result.returncode == 0, result.stderr
    assert (f"note: {tmp_path / 'hf'} holds no tokenizer, AutoTokenizer will not load it: the 'dna' tokenizer has no "
            "transformers form (its class defines no save_hf); tokenize with foundry's tokenizer in "
            f"{run / 'final' / 'tokenizer'}") in result.stderr
    assert (tmp_path / "hf" / "model.safetensors").is_file() and not (tmp_path / "hf" / "tokenizer_config.json").exists()
