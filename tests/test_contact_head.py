"""The contact head is the protein plugin's (modalities/protein/contact_head.py): fitted on
structures with ``contacts --fit``, saved with the model as a generic attachment, rebuilt through
the head registry; the contact task reads PDB/mmCIF directly.

Parity with fair-esm's own contact head is in test_convert_esm.py and test_embed.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from foundry.errors import CheckpointError
from foundry.finetune.heads import HEADS, build_head, head_class
from foundry.hookspecs import hookimpl
from foundry.model.store import load_model, save_model
from foundry.testing import plugins_registered, run_cli
from modalities.protein.contact_fit import fit_l1_logistic
from modalities.protein.contact_head import ContactRegression, contact_head_of

STRUCTURES = Path(__file__).parent / "data" / "structures"


@pytest.fixture
def model_dir(protein_model, tmp_path) -> Path:
    return Path(shutil.copytree(protein_model, tmp_path / "model"))


@pytest.fixture
def pdbs(tmp_path) -> Path:
    folder = tmp_path / "pdbs"
    folder.mkdir()
    for name in ("1A8O.pdb", "PF00041_1TEN_A.pdb"):
        shutil.copy(STRUCTURES / name, folder / name)
    return folder


def test_l1_logistic_regression_finds_the_informative_features():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4000, 12))
    logits = 2.0 * x[:, 3] - 1.5 * x[:, 7] - 2.0
    y = (rng.random(4000) < 1 / (1 + np.exp(-logits))).astype(float)
    w, b, _ = fit_l1_logistic(x, y, l1=0.02, steps=800)
    assert w[3] > 1.0 and w[7] < -0.8 and -2.6 < b < -1.4
    assert np.count_nonzero(w) <= 4  # the L1 penalty drops (almost all) noise features
    w_strong, _, _ = fit_l1_logistic(x, y, l1=10.0)
    assert np.count_nonzero(w_strong) == 0


def test_fit_saves_the_head_with_the_model_and_contacts_use_it(model_dir, pdbs, tmp_path):
    result = run_cli("protein", "contacts", "--model", model_dir, "--fit", pdbs, "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    assert "fitted a contact head on 2 structures" in result.stdout and "attention maps kept" in result.stdout
    assert "chosen by cross-validation over chains" in result.stdout
    assert "cross-validated long-range P@L/5 on the fit chains" in result.stdout and "(random 0." in result.stdout
    head_file = model_dir / "contact_head.safetensors"
    assert head_file.is_file()
    loaded = load_model(model_dir)
    head = contact_head_of(loaded.model)
    assert isinstance(head, ContactRegression) and head.describe()["kind"] == "attention-contact"

    out = tmp_path / "maps"
    result = run_cli("protein", "contacts", "--model", model_dir, STRUCTURES / "1A8O.pdb", "-o", out, "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    assert "1A8O_A  L=70" in result.stdout and (out / "1A8O_A.png").is_file()
    assert np.load(out / "1A8O_A.npy").shape == (70, 70)

    # a second fit does not silently replace the head
    result = run_cli("protein", "contacts", "--model", model_dir, "--fit", pdbs)
    assert result.exit_code == 2 and "already has a contact head; pass --replace-head" in result.stderr
    result = run_cli("protein", "contacts", "--model", model_dir, "--fit", pdbs, "--replace-head", "--l1", "0.1", "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    assert "(L1 0.1, given)" in result.stdout
    # one chain: nothing to cross-validate against, the default L1, and no cross-validated number
    result = run_cli("protein", "contacts", "--model", model_dir, "--fit", pdbs / "1A8O.pdb", "--replace-head", "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    assert "(L1 0.001, the default: too few chains with long-range pairs to cross-validate)" in result.stdout
    assert "cross-validated long-range" not in result.stdout


def test_fit_errors_are_one_line(model_dir):
    result = run_cli("protein", "contacts", "--model", model_dir, "--fit", STRUCTURES / "header.pdb")
    assert result.exit_code == 2 and "header.pdb: no atoms" in result.stderr
    result = run_cli("protein", "contacts", "--model", model_dir)
    assert result.exit_code == 2 and "give INPUT" in result.stderr
    result = run_cli("protein", "contacts", "--model", model_dir, STRUCTURES / "1A8O.pdb")
    assert result.exit_code == 2 and "-o/--out is required" in result.stderr
    assert not (model_dir / "contact_head.safetensors").exists()


def test_the_registry_rebuilds_a_head_a_task_brings():
    class ToyHead(torch.nn.Module):
        kind = "toy-pair"

        def __init__(self, width: int):
            super().__init__()
            self.width = width

        def describe(self):
            return {"kind": self.kind, "width": self.width}

    class ToyTask:
        name = "toy-task"
        heads = (ToyHead,)

    class Plugin:
        @staticmethod
        @hookimpl
        def register_tasks(register):
            register(ToyTask)

    with plugins_registered(("toy", Plugin())):
        assert "toy-pair" not in HEADS and head_class("toy-pair") is ToyHead
        assert build_head({"kind": "toy-pair", "width": 3}).width == 3
    with plugins_registered(), pytest.raises(CheckpointError, match=r"unknown head kind 'toy-pair' \(known: .*pairwise"):
        head_class("toy-pair")


def test_a_head_file_without_a_kind_still_loads(model_dir):
    """Model directories written before the head moved record no kind: the file name says it."""
    loaded = load_model(model_dir)
    cfg = loaded.config
    weight = torch.randn(1, cfg.n_layer * cfg.n_head)
    old_meta = {"n_layer": cfg.n_layer, "n_head": cfg.n_head, "eos_id": 2, "prepend_bos": True, "bias": True}
    save_file({"regression.weight": weight, "regression.bias": torch.zeros(1)}, str(model_dir / "contact_head.safetensors"),
              metadata={"format": "pt", "head": json.dumps(old_meta)})
    head = contact_head_of(load_model(model_dir).model)
    assert torch.equal(head.regression.weight, weight)


def test_a_head_for_another_model_is_refused(model_dir):
    loaded = load_model(model_dir)
    cfg = loaded.config
    bad = {"kind": "attention-contact", "n_layer": cfg.n_layer + 1, "n_head": cfg.n_head}
    save_file({"regression.weight": torch.zeros(1, (cfg.n_layer + 1) * cfg.n_head), "regression.bias": torch.zeros(1)},
              str(model_dir / "contact_head.safetensors"), metadata={"format": "pt", "head": json.dumps(bad)})
    with pytest.raises(CheckpointError, match=rf"contact_head.safetensors: a head for n_layer={cfg.n_layer + 1}, but the model has"):
        load_model(model_dir)


def test_attached_heads_follow_the_trunk_but_stay_out_of_its_state_dict(model_dir, tmp_path):
    loaded = load_model(model_dir)
    model = loaded.model
    from modalities.protein.contact_head import attach_contact_head

    head = attach_contact_head(model)
    assert not any(k.startswith("contact") or "regression" in k for k in model.state_dict())
    model.double()
    assert head.regression.weight.dtype == torch.float64
    model.train()
    assert head.training
    save_model(tmp_path / "again", model.float().eval(), loaded.tokenizer, "protein")
    assert (tmp_path / "again" / "contact_head.safetensors").is_file()


def test_finetune_contact_task_reads_structures(protein_model, pdbs, tmp_path):
    out = tmp_path / "ft"
    result = run_cli("protein", "finetune", "--from", protein_model, "--task", "contact", "--contact-head", "attention",
                     "--train", pdbs, "--valid", STRUCTURES / "1A8O.pdb", "--out", out, "--max-steps", "2",
                     "--batch-size", "2", "--quiet")
    assert result.exit_code == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() else {}
    assert (out / "best").is_dir(), summary
    # the structures' contacts became labels: the task encodes them with unknown and near pairs ignored
    from foundry.finetune.tasks import IGNORE
    from modalities.protein.structures import read_structure
    from modalities.protein.tasks import Contact

    labels = read_structure(STRUCTURES / "PF00041_1TEN_A.pdb")
    task = Contact()
    task.configure({})
    (record,) = task.read_split(STRUCTURES / "PF00041_1TEN_A.pdb", None, None, ())
    target = task.encode(record.label, len(record.sequence), record.where, task.fit([record.label], [record.where]))
    assert record.id == "PF00041_1TEN_A_A" and target.shape == (len(labels.sequence),) * 2
    assert (target[0] == IGNORE).all()  # residue 1 has no Cβ/Cα: masked, not a negative
    i, j = np.argwhere((labels.contacts == 1) & (np.abs(np.subtract.outer(*(np.arange(len(labels)),) * 2)) >= 6))[0]
    assert target[i, j] == 1.0 and target[5, 6] == IGNORE


class AttentionFromStructures(torch.nn.Module):
    """A stand-in trunk whose first attention head sees the true contacts through noise (the
    others are noise): what fitting must find, the way it finds the contact heads of ESM-2."""

    def __init__(self, contacts: dict[str, np.ndarray], tokenizer, n_layer=2, n_head=2):
        super().__init__()
        from foundry.model.config import ModelConfig

        self.config = ModelConfig(name="probe", vocab_size=33, n_layer=n_layer, n_head=n_head, d_model=8, d_ff=16)
        self.contacts, self.tokenizer, self.attachments_ = contacts, tokenizer, {}
        self.rng = np.random.default_rng(0)

    @property
    def attachments(self):
        return dict(self.attachments_)

    def attach(self, name, module):
        self.attachments_[name] = module
        return module

    def forward(self, tokens, attention_mask=None, need_attention=False, need_logits=True, **_):
        from types import SimpleNamespace

        b, t = tokens.shape
        maps = self.rng.random((b, self.config.n_layer, self.config.n_head, t, t))
        for row in range(b):
            seq = self.tokenizer.decode(tokens[row].tolist())
            truth = self.contacts[seq] == 1
            maps[row, 0, 0, 1 : len(seq) + 1, 1 : len(seq) + 1] += 1.5 * truth
        maps /= maps.sum(-1, keepdims=True)
        return SimpleNamespace(attentions=torch.as_tensor(maps, dtype=torch.float32))


def test_a_head_fitted_on_bundled_structures_finds_contacts_in_held_out_chains():
    """The bundled fit/ and held_out/ chains (different Pfam families): with default settings the
    fitted head ranks held-out long-range contacts well above the random rate."""
    from modalities.protein.alphabet import EsmTokenizer
    from modalities.protein.contact_fit import L1_GRID, fit_contact_head
    from modalities.protein.contact_metrics import contact_precisions
    from modalities.protein.embed import ProteinModel, predict_contacts
    from modalities.protein.structures import read_structures

    data = Path(__file__).parents[1] / "modalities" / "protein" / "data" / "structures"
    fit = list(read_structures(data / "fit"))[:6]
    held = list(read_structures(data / "held_out"))[:6]
    tok = EsmTokenizer()
    model = AttentionFromStructures({s.sequence: s.contacts for s in fit + held}, tok)
    pm = ProteinModel(model, tok, "probe", torch.device("cpu"))
    head, report = fit_contact_head(pm, fit)
    assert report.n_selected >= 1 and head.regression.weight[0, 0] > 0  # the informative map is kept
    # the L1 was chosen by cross-validation over the fit chains, and the report says how well the
    # head does on chains it did not see, against the random rate and separation alone
    assert report.l1_chosen_by_cv and report.l1 in L1_GRID and set(report.cv_by_l1) == set(L1_GRID)
    assert report.cv_long_precision > 0.5 > 5 * report.random_long
    assert 0 <= report.separation_long < 0.5
    model.attach("contact", head)
    precisions, rates = [], []
    for i, probs in predict_contacts(pm, [s.sequence for s in held]):
        precisions.append(contact_precisions(probs, held[i].contacts)["long_P@L5"])
        a, b = np.triu_indices(len(held[i]), 24)
        known = held[i].contacts[a, b]
        rates.append(float((known[known >= 0] == 1).mean()))
    assert np.mean(precisions) > 0.5 > 5 * np.mean(rates)


def test_fit_baselines_random_rate_and_separation_alone():
    """The numbers a fitted head is judged against, by hand on a 30-residue chain."""
    from modalities.protein.contact_metrics import random_rate, separation_precisions

    contacts = np.zeros((30, 30), dtype=np.int8)
    contacts[0, 29] = contacts[29, 0] = 1  # the one long-range contact, at the largest separation
    contacts[2, 26] = contacts[26, 2] = -1  # unknown: not a pair
    # long-range pairs (j - i >= 24): 6 + 5 + 4 + 3 + 2 + 1 = 21, one unknown -> 1 of 20
    assert random_rate(contacts) == pytest.approx(1 / 20)
    # separation alone ranks the closest long-range pairs first: L // 5 = 6 picks, none the contact
    assert separation_precisions(contacts)["long_P@L5"] == 0.0
    contacts[0, 29] = contacts[29, 0] = 0
    contacts[0, 24] = contacts[24, 0] = 1
    assert separation_precisions(contacts)["long_P@L5"] == pytest.approx(1 / 6)


def test_fit_says_when_the_attention_has_no_contact_signal():
    from modalities.protein.contact_fit import FitReport
    from modalities.protein.embed_cmd import _signal_notes

    report = FitReport(20, 1000, 50, 16, 3, 0.2, [], cv_long_precision=0.031, random_long=0.049, separation_long=0.032)
    (note,) = _signal_notes(report)
    assert "at about the random rate (0.031 vs 0.049)" in note and "train it longer" in note
    report.cv_long_precision = 0.094
    assert _signal_notes(report) == []
