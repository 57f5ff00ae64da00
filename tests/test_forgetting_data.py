"""Which documents the forgetting probe scores: the pretraining run's own validation split when the
model directory sits in its run, else the bundled corpus with that said; given documents are
checked against what the run trained on."""

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest

from foundry.config import build_config, load_yaml
from foundry.corpus import load_run_data
from foundry.errors import FoundryError
from foundry.finetune.forgetting import build_probe, forgetting_tools, pretraining_split
from foundry.model.store import load_model
from foundry.plugins import get_manager

BUNDLED = Path(__file__).parent.parent / "modalities" / "protein" / "data" / "uniprot_sample.fasta.gz"


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A two-step protein run on 80 UniProt records that are not the bundled default path."""
    from foundry.pretrain import pretrain

    root = tmp_path_factory.mktemp("forgetting")
    records = gzip.open(BUNDLED, "rt").read().split(">")[1:81]
    (root / "mine.fasta").write_text("".join(">" + r for r in records))
    cfg = build_config(base={"modality": "protein", "out": str(root / "run")}, dotted={
        "model.preset": "esm2_tiny", "model.overrides": {"n_layer": 1, "d_model": 32, "n_head": 2, "d_ff": 64},
        "data.paths": [str(root / "mine.fasta")], "data.max_len": 64, "data.batch_tokens": 256, "data.valid_fraction": 0.2,
        "train.max_steps": 2, "train.eval_every": 2, "train.eval_batches": 1, "train.save_every": 2, "train.warmup_steps": 1,
        "train.progress": False})
    pretrain(cfg)
    return root / "run"


@pytest.fixture(scope="module")
def protein():
    manager = get_manager()
    modality = manager.modality("protein")
    return modality, manager.reader_objects(modality.readers)


def test_probe_scores_the_runs_own_validation_split(run, protein):
    modality, readers = protein
    tokenizer = load_model(run / "final").tokenizer
    data = pretraining_split(run / "final", modality, readers, tokenizer, "valid")
    expected = load_run_data(build_config(base=load_yaml(run / "config.yaml")), modality, tokenizer).valid
    assert len(data.documents) == len(expected) > 0
    assert all(np.array_equal(ids, expected[i]) for i, ids in enumerate(data.documents)), "exactly what pretraining held out"
    assert data.source == (f"{len(expected)} documents of the validation split of pretraining run {run} "
                           f"({run.parent / 'mine.fasta'}; valid_fraction 0.2, max_valid_docs 500)")
    # a checkpoint's model dir belongs to the same run
    step = next((run / "checkpoints").glob("step-*")) / "model"
    assert pretraining_split(step, modality, readers, tokenizer, "valid").source == data.source


def test_probe_and_replay_through_forgetting_tools(run, protein):
    modality, readers = protein
    tokenizer = load_model(run / "final").tokenizer
    cfg = build_config(base={"modality": "protein"}, dotted={"model.init_from": str(run / "final"), "finetune.forgetting_docs": 8,
                                                             "finetune.replay": 0.25, "finetune.batch_size": 6})
    probe, replay = forgetting_tools(modality, readers, tokenizer, cfg, pretrained=True)
    assert probe.source.startswith("8 documents of the validation split of pretraining run")
    assert (probe.objective_name, probe.loss_name) == ("mlm", "masked-LM loss") and probe.targets > 0
    assert "training split of pretraining run" in replay.source and replay.rows == 2
    trunk = load_model(run / "final").model
    assert float(replay.loss(trunk, index=3).detach()) == pytest.approx(float(replay.loss(trunk, index=3).detach())), "fixed by its index"


def test_a_model_without_its_run_says_the_bundled_corpus_may_overlap(run, protein, tmp_path):
    modality, readers = protein
    moved = tmp_path / "final"
    shutil.copytree(run / "final", moved)
    probe = build_probe(moved, modality, readers, load_model(moved).tokenizer, docs=4)
    assert probe.source == (f"4 documents of the validation split of the bundled protein corpus ({BUNDLED.resolve()}; "
                            "valid_fraction 0.02, max_valid_docs 500); the model's pretraining data is not recorded, "
                            "so they may overlap what the model was trained on")


def test_a_run_whose_data_moved_falls_back_and_says_why(run, protein, tmp_path):
    modality, readers = protein
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    text = (copy / "config.yaml").read_text().replace(str(run.parent / "mine.fasta"), str(tmp_path / "gone.fasta"))
    (copy / "config.yaml").write_text(text)
    probe = build_probe(copy / "final", modality, readers, load_model(copy / "final").tokenizer, docs=4)
    assert f"pretraining run {copy}'s data cannot be read here" in probe.source and "gone.fasta" in probe.source
    assert "bundled protein corpus" in probe.source


def test_given_documents_leave_out_what_the_run_trained_on(run, protein, tmp_path):
    modality, readers = protein
    tokenizer = load_model(run / "final").tokenizer
    trained = set(_training_texts(run, modality, readers, tokenizer))
    records = [r.split("\n", 1) for r in (run.parent / "mine.fasta").read_text().split(">")[1:]]
    sequences = [body.replace("\n", "") for _, body in records]
    mixed = tmp_path / "mixed.fasta"
    mixed.write_text(">new1\nMKTAYIAKQRQISFVKSHFSRQ\n>new2\nMADEEKLPPGWEKRMSRSSG\n" + "".join(f">r{i}\n{s}\n" for i, s in enumerate(sequences)))
    left_out = sum(s in trained for s in sequences)
    probe = build_probe(run / "final", modality, readers, tokenizer, given=[mixed], docs=1000)
    assert probe.source == (f"{2 + len(sequences) - left_out} documents of {mixed} "
                            f"(--forgetting-data; {left_out} left out that the pretraining run trained on)")
    assert left_out > 40
    seen = tmp_path / "seen.fasta"
    seen.write_text("".join(f">t{i}\n{s}\n" for i, s in enumerate(sorted(trained)[:2])))
    with pytest.raises(FoundryError, match="all 2 documents are in the pretraining run's training split"):
        build_probe(run / "final", modality, readers, tokenizer, given=[seen])


def _training_texts(run: Path, modality, readers, tokenizer) -> list[str]:
    from foundry.finetune.forgetting import _run_split

    return _run_split(build_config(base=load_yaml(run / "config.yaml")), modality, readers, tokenizer, "train", texts=True)
