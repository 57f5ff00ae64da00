"""The folding head (modalities/protein/fold/head.py): AlphaFold's initialisation, masking of
padding, the saved description, the two-stage schedule, and that it can learn a real structure."""

import numpy as np
import pytest
import torch

from foundry.finetune.heads import build_head
from modalities.protein.alphabet import EsmTokenizer
from modalities.protein.fold.head import FoldHead, restype_table, unpack

pytestmark = pytest.mark.usefixtures("one_thread")

TOKENIZER = EsmTokenizer()


def tiny_head(**kw) -> FoldHead:
    torch.manual_seed(0)
    sizes = dict(seq_dim=32, pair_dim=16, blocks=1, structure_dim=32, structure_blocks=2, ipa_heads=2, dropout=0.0)
    return FoldHead(16, 2, 2, restype_table(list(TOKENIZER.tokens)), **{**sizes, **kw})


def inputs(sequences, seed=0):
    """Trunk-like inputs for a padded batch: tokens, masks, hidden states, attention maps."""
    g = torch.Generator().manual_seed(seed)
    encoded = [torch.as_tensor(TOKENIZER.encode(s, add_special_tokens=True)) for s in sequences]
    width = max(len(e) for e in encoded)
    tokens = torch.full((len(encoded), width), TOKENIZER.pad_id)
    for k, e in enumerate(encoded):
        tokens[k, : len(e)] = e
    real = tokens.ne(TOKENIZER.pad_id)
    residues = real & ~torch.isin(tokens, torch.tensor(TOKENIZER.special_ids))
    # per-position features that do not depend on the batch's width (as a trunk's would not)
    hidden = torch.randn(1, width, 16, generator=g).expand(len(encoded), -1, -1).clone()
    attentions = torch.rand(1, 2, 2, width, width, generator=g).expand(len(encoded), -1, -1, -1, -1).clone()
    attentions = attentions * (real[:, None, None, :, None] & real[:, None, None, None, :])
    return tokens, real, residues, hidden, attentions


def test_untrained_head_starts_as_alphafold_does():
    # transformers' ESMFold modules get these only from EsmFoldPreTrainedModel._init_weights
    head = tiny_head()
    block = head.folding.blocks[0]
    assert not block.tri_mul_out.linear_z.weight.any() and not block.tri_att_start.mha.linear_o.weight.any()
    assert torch.all(block.tri_mul_in.linear_a_g.bias == 1) and not block.tri_mul_in.linear_a_g.weight.any()
    sm = head.folding.structure_module
    assert not sm.bb_update.linear.weight.any()
    assert torch.allclose(sm.ipa.head_weights, torch.full_like(sm.ipa.head_weights, 0.541324854612918))
    tokens, real, residues, hidden, att = inputs(["MKVLAG"])
    with torch.no_grad():
        _, atoms, _ = unpack(head.eval()(hidden, tokens, real, residues, att))
    assert torch.allclose(atoms[0, 1:7, 1], torch.zeros(6, 3))  # every Cα at the origin: identity frames


def test_padding_does_not_change_a_prediction():
    head = tiny_head().eval()
    tokens, real, residues, hidden, att = inputs(["MKVLAGHE", "MKVLAGHEWLLRQ"])
    with torch.no_grad():
        both = head(hidden, tokens, real, residues, att)
        alone = head(hidden[:1, :10], tokens[:1, :10], real[:1, :10], residues[:1, :10], att[:1, :, :, :10, :10])
    d_both, a_both, p_both = unpack(both[:1], 10)
    d_alone, a_alone, p_alone = unpack(alone)
    assert torch.allclose(a_both, a_alone, atol=1e-4) and torch.allclose(d_both, d_alone, atol=1e-4)
    assert torch.allclose(p_both[:, 1:9], p_alone[:, 1:9], atol=1e-4)
    assert torch.allclose(d_alone, d_alone.transpose(1, 2))  # the distogram is symmetric


def test_head_rebuilds_from_its_description():
    head = tiny_head(recycles=1).eval()
    rebuilt = build_head(head.describe()).eval()
    rebuilt.load_state_dict(head.state_dict())
    x = inputs(["MKVLAGHEW"])
    with torch.no_grad():
        assert torch.equal(head(x[3], *x[:3], x[4]), rebuilt(x[3], *x[:3], x[4]))


def test_first_stage_trains_the_distogram_alone():
    head = tiny_head(distogram_steps=2).train()
    x = inputs(["MKVLAGHEW"])
    for expected_nan in (True, True, False):
        _, atoms, _ = unpack(head(x[3], *x[:3], x[4]))
        assert bool(torch.isnan(atoms).all()) == expected_nan
    assert int(head.trained_batches) == 3 and "trained_batches" in head.state_dict()  # saved: a resume keeps the stage
    head.eval()
    assert torch.isfinite(unpack(head(x[3], *x[:3], x[4]))[1]).all()  # evaluation always builds the structure


def test_head_learns_a_real_structure():
    """A short version of the overfit proof (examples/fold_on_bundled_chains.py runs it to lDDT-Cα > 0.9):
    40 Adam steps on one 50-residue Pfam domain move lDDT-Cα from ~0.02 to ~0.37 (0.41 at 60 steps)."""
    from pathlib import Path

    from modalities.protein.fold.data import read_chains
    from modalities.protein.fold.task import Fold

    chain = read_chains(Path(__file__).parents[1] / "modalities/protein/data/structures/fit/PF00249_1GUU_A.pdb.gz")[0]
    task = Fold()
    task.configure({})
    head = tiny_head()
    x = inputs([chain.sequence], seed=1)
    target = torch.from_numpy(np.pad(chain.target(), ((1, 1), (0, 0)), constant_values=-100))[None]
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-2)

    def lddt() -> float:
        head.eval()
        with torch.no_grad():
            return task.metrics([head(x[3], *x[:3], x[4])[0].numpy()], [target[0].numpy()], None)["lddt_ca"]

    before = lddt()
    head.train()
    for _ in range(40):
        optimizer.zero_grad()
        task.loss(head(x[3], *x[:3], x[4]), target, None).backward()
        optimizer.step()
    after = lddt()
    assert before < 0.1 and after > 0.3, (before, after)
