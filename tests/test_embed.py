"""``foundry protein embed`` / ``contacts``: equal to fair-esm's own representations and contacts.

A tiny random ESM-2 is built with fair-esm here, saved like a fair-esm checkpoint (with its
contact regression) and read by foundry through ``foundry.convert``. The reference numbers come
from the fair-esm model, one sequence at a time (no padding), the way its scripts/extract.py reads
``representations`` and ``contacts``; foundry batches and pads several sequences together.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from foundry.cli import main
from modalities.protein.embed import contact_picture, length_batches, safe_names, write_png
from test_convert_esm import ALPHABET, fair_esm_model, save_fair_esm

FASTA = Path(__file__).parent / "data" / "protein" / "some_proteins.fasta"
STRUCTURES = Path(__file__).parent / "data" / "structures"


def records(path: Path, n: int | None = None) -> list[tuple[str, str]]:
    out = []
    for block in path.read_text().split(">")[1:]:
        header, *lines = block.splitlines()
        out.append((header.split()[0], "".join(lines)))
    return out[:n]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.manual_seed(0)
    ref = fair_esm_model(layers=2, dim=32, heads=4)
    return ref, save_fair_esm(ref, tmp_path_factory.mktemp("esm") / "esm2_t2_tiny.pt")


@pytest.fixture(scope="module")
def small_fasta(tmp_path_factory) -> Path:
    """8 real UniRef50 sequences cropped to 20..160 residues (different lengths: padded batches)."""
    path = tmp_path_factory.mktemp("fasta") / "small.fasta"
    recs = records(FASTA, 8)
    path.write_text("".join(f">{rid}\n{seq[: 20 + 20 * i]}\n" for i, (rid, seq) in enumerate(recs)))
    return path


def run(capsys, *args) -> tuple[int, str, str]:
    code = 0
    try:
        main(["protein", *map(str, args)])
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def esm_reference(model, seq: str, layers=(0, 1, 2)):
    _, _, tokens = ALPHABET.get_batch_converter()([("x", seq)])
    with torch.no_grad():
        out = model(tokens, repr_layers=list(layers), return_contacts=True)
    return {k: v[0, 1 : len(seq) + 1] for k, v in out["representations"].items()}, out["contacts"][0]


@pytest.mark.parametrize("fmt", ["safetensors", "npy"])
def test_embeddings_equal_fair_esm_representations(tiny, small_fasta, tmp_path, capsys, fmt):
    ref, path = tiny
    out = tmp_path / "emb"
    code, stdout, err = run(capsys, "embed", "--model", path, small_fasta, "-o", out, "--layers", "0,1",
                            "--layers", "-1", "--format", fmt, "--batch-tokens", 300, "--device", "cpu")
    assert code == 0, err
    assert "8 sequences, layers [0, 1, 2], dim 32" in stdout
    index = json.loads((out / "index.json").read_text())
    assert index["layers"] == [0, 1, 2] and index["format"] == fmt
    recs = records(small_fasta)
    assert [r["id"] for r in index["records"]] == [rid for rid, _ in recs]
    if fmt == "safetensors":
        from safetensors.numpy import load_file

        means = load_file(out / "mean.safetensors")
    else:
        means = {rid: row for (rid, _), row in zip(recs, np.load(out / "mean.npy"))}
    for rec, (rid, seq) in zip(index["records"], recs):
        expected, _ = esm_reference(ref, seq)
        assert rec["length"] == len(seq)
        if fmt == "safetensors":
            per = load_file(out / "per_residue" / f"{rec['file']}.safetensors")
            per = [per[f"layer_{k}"] for k in (0, 1, 2)]
        else:
            per = list(np.load(out / "per_residue" / f"{rec['file']}.npy"))
        for k in (0, 1, 2):
            assert per[k].shape == (len(seq), 32)
            assert np.abs(per[k] - expected[k].numpy()).max() <= 1e-5
            assert np.abs(means[rid][k] - expected[k].mean(0).numpy()).max() <= 1e-5


def test_mean_only_ids_with_odd_characters_and_errors(tiny, tmp_path, capsys):
    _, path = tiny
    fasta = tmp_path / "ids.fasta"
    fasta.write_text(">sp|P69905|HBA_HUMAN hemoglobin\nMVLSPADKTNVKAAWGKVGAHAGEYGAEALERMFLSF\n>a/b\nmkv lsp*\n")
    out = tmp_path / "emb"
    code, _, err = run(capsys, "embed", "--model", path, fasta, "-o", out, "--no-per-residue", "--device", "cpu")
    assert code == 0, err
    index = json.loads((out / "index.json").read_text())
    assert [(r["id"], r["file"], r["length"]) for r in index["records"]] == [
        ("sp|P69905|HBA_HUMAN", "sp_P69905_HBA_HUMAN", 37), ("a/b", "a_b", 6)]  # lowercase, space and '*' cleaned
    assert not (out / "per_residue").exists()
    from safetensors.numpy import load_file

    assert load_file(out / "mean.safetensors")["a/b"].shape == (1, 32)

    code, _, err = run(capsys, "embed", "--model", path, fasta, "-o", out, "--device", "cpu")
    assert code == 2 and "already exists (pass --overwrite" in err
    code, _, err = run(capsys, "embed", "--model", path, fasta, "-o", tmp_path / "e2", "--layers", "5", "--device", "cpu")
    assert code == 2 and "--layers 5: this model has layers 0..2" in err and not (tmp_path / "e2").exists()
    fasta.write_text(">x\nMKV\n>x\nMKL\n")
    code, _, err = run(capsys, "embed", "--model", path, fasta, "-o", tmp_path / "e3", "--device", "cpu")
    assert code == 2 and "record 2 has the id 'x' of record 1" in err and err.count("\n") == 1
    fasta.write_text(">x\nMK1V\n")
    code, _, err = run(capsys, "embed", "--model", path, fasta, "-o", tmp_path / "e4", "--device", "cpu")
    assert code == 2 and "record 1 'x'" in err and "'1' at position 3" in err
    assert not (tmp_path / "e3").exists() and not (tmp_path / "e4").exists()
    assert not list(tmp_path.glob("*.tmp-*"))  # nothing half-written left behind


def test_length_batches_respect_the_token_budget():
    lengths = [50, 10, 200, 30, 30, 5, 1000, 75]
    batches = length_batches(lengths, batch_tokens=256)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        if len(b) > 1:
            assert len(b) * (max(lengths[i] for i in b) + 2) <= 256
    flat = [lengths[i] for b in batches for i in b]
    assert flat == sorted(flat) and batches[-1] == [6]  # the 1000-residue one alone


def test_safe_names_are_unique():
    assert safe_names(["a|b", "a/b", "A_B", "..", "x y"]) == ["a_b", "a_b__2", "A_B__3", "record", "x_y"]


def test_safe_names_keep_the_record_id_as_given():
    # SCOP ids end with "_": the file must be d1or4a_.npy, not d1or4a.npy
    assert safe_names(["d1or4a_", "sp|P69905|", ".hidden"]) == ["d1or4a_", "sp_P69905_", "hidden"]


def decode_png(path: Path) -> np.ndarray:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, {}
    while pos < len(data):
        (n,), kind = struct.unpack(">I", data[pos : pos + 4]), data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + n]
        assert struct.unpack(">I", data[pos + 8 + n : pos + 12 + n])[0] == zlib.crc32(kind + body)
        chunks[kind] = chunks.get(kind, b"") + body
        pos += 12 + n
    w, h, depth, color = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    assert (depth, color) == (8, 2)
    raw = np.frombuffer(zlib.decompress(chunks[b"IDAT"]), dtype=np.uint8).reshape(h, 1 + 3 * w)
    assert (raw[:, 0] == 0).all()
    return raw[:, 1:].reshape(h, w, 3)


def test_png_writer_round_trip(tmp_path):
    img = np.random.default_rng(0).integers(0, 256, (7, 5, 3), dtype=np.uint8)
    write_png(tmp_path / "x.png", img)
    assert np.array_equal(decode_png(tmp_path / "x.png"), img)


def test_contact_picture_has_axes_colour_bar_and_true_contacts():
    from foundry.images import BLUE, TRUE_COLOR

    n = 40
    probs = np.full((n, n), 0.25)
    truth = np.zeros((n, n), dtype=np.int8)
    truth[30, 2] = truth[2, 30] = truth[35, 10] = truth[10, 35] = 1  # two contacts, each in both triangles
    truth[20, :] = truth[:, 20] = -1  # a residue without coordinates
    pic = contact_picture(probs, truth)
    side = 400  # 10 px per residue
    assert pic.shape[0] > side and pic.shape[1] > side + 30  # room for the axes and the colour bar
    red = np.all(pic == TRUE_COLOR, axis=-1)
    # each true contact of the lower triangle is a hollow 10 px square (36 px), plus the legend's 7x7 swatch
    assert red.sum() == 2 * 36 + 49
    # the colour bar runs from the darkest blue (1) down to white (0)
    rows = np.where(np.all(pic == BLUE.astype(np.uint8), axis=-1).any(axis=1))[0]
    assert len(rows) >= 1
    # axis numbers are drawn: the image has black pixels left of the map and below it
    assert (pic[:, :20] == 0).all(axis=-1).any() and (pic[-20:] == 0).all(axis=-1).any()


def test_contacts_equal_fair_esm_for_fasta(tiny, small_fasta, tmp_path, capsys):
    ref, path = tiny
    out = tmp_path / "c"
    code, stdout, err = run(capsys, "contacts", "--model", path, small_fasta, "-o", out, "--batch-tokens", 400, "--device", "cpu")
    assert code == 0, err and "8 contact maps" in stdout
    for rid, seq in records(small_fasta):
        _, expected = esm_reference(ref, seq)
        ours = np.load(out / f"{rid}.npy")
        assert ours.shape == (len(seq), len(seq)) and np.abs(ours - expected.numpy()).max() <= 1e-5
        assert decode_png(out / f"{rid}.png").shape[0] >= 400


def test_contacts_on_structures_print_precision(tiny, tmp_path, capsys):
    ref, path = tiny
    folder = tmp_path / "pdbs"
    folder.mkdir()
    for name in ("1A8O.pdb", "2BEG.pdb.gz"):
        (folder / name).write_bytes((STRUCTURES / name).read_bytes())
    out = tmp_path / "c"
    code, stdout, err = run(capsys, "contacts", "--model", path, folder, "-o", out, "--device", "cpu")
    assert code == 0, err
    assert "1A8O_A  L=70  short_P@L5" in stdout and "long_P@L5" in stdout and "mean over 2 structures" in stdout
    lines = (out / "metrics.tsv").read_text().splitlines()
    assert lines[0].startswith("name\tlength\tshort_P@L") and len(lines) == 3
    assert lines[2].startswith("2BEG_A\t42\t")  # SEQRES length: the 16 unobserved residues are masked, not dropped
    _, expected = esm_reference(ref, "MDIRQGPKEPFRDYVDRFYKTLRAEQASQEVKNWMTETLLVQNANPDCKTILKALGPGATLEEMMTACQG")
    assert np.abs(np.load(out / "1A8O_A.npy") - expected.numpy()).max() <= 1e-5
    code, _, err = run(capsys, "contacts", "--model", path, STRUCTURES / "header.pdb", "-o", tmp_path / "c2")
    assert code == 2 and "header.pdb: no atoms" in err


def test_contacts_without_a_contact_head_is_a_clear_error(tmp_path, capsys, small_fasta):
    torch.manual_seed(1)
    path = save_fair_esm(fair_esm_model(layers=1, dim=32, heads=4), tmp_path / "esm2_t1_nohead.pt", regression=False)
    code, _, err = run(capsys, "contacts", "--model", path, small_fasta, "-o", tmp_path / "c", "--device", "cpu")
    assert code == 2 and "no contact head" in err and not (tmp_path / "c").exists()
