"""`foundry plugins new NAME` writes a package that installs with pip (no network) and passes its
own tests right after creation."""

import os
import subprocess
import sys

from foundry.testing import run_cli


def test_a_new_plugin_installs_and_passes_its_own_tests(tmp_path):
    package = tmp_path / "foundry-smiles"
    created = run_cli("plugins", "new", "smiles", "-o", str(package))
    assert created.exit_code == 0, created.output
    assert (package / "pyproject.toml").is_file() and (package / "foundry_smiles" / "plugin.py").is_file()

    # Installed into a target folder, not the shared venv: nothing to clean up afterwards.
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(site), str(package)], check=True, capture_output=True, timeout=300)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FOUNDRY_")}
    env.update(PYTHONPATH=str(site), OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"], cwd=package,
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "6 passed" in result.stdout


def test_names_that_cannot_work_are_refused(tmp_path):
    taken = run_cli("plugins", "new", "protein", "-o", str(tmp_path / "p"))
    assert taken.exit_code == 2
    assert "error: a modality named 'protein' already exists (from protein (foundry)); choose another name" in taken.stderr
    command = run_cli("plugins", "new", "export", "-o", str(tmp_path / "e"))
    assert "error: `foundry export` is already a command; choose another name" in command.stderr
    bad = run_cli("plugins", "new", "My Plugin", "-o", str(tmp_path / "m"))
    assert "error: plugin name 'My Plugin': use lower-case letters" in bad.stderr
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    full = run_cli("plugins", "new", "smiles", "-o", str(tmp_path / "full"))
    assert full.exit_code == 2 and "full: already exists and is not empty" in full.stderr
    assert not (tmp_path / "p").exists() and (tmp_path / "full" / "keep.txt").read_text() == "mine"
