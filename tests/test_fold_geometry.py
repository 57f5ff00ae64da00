"""Fold geometry and losses: frames, virtual Cβ, FAPE, distogram and pLDDT losses on a real chain (1A8O)."""

import numpy as np
import pytest
import torch

from fold_structures import backbone, random_rigid
from modalities.protein.fold.geometry import apply_frame, cb_or_ca, frames_from_backbone, virtual_cb
from modalities.protein.fold.losses import (
    backbone_fape, distogram_bins, distogram_loss, lddt_per_residue, plddt_from_logits, plddt_loss,
)
from modalities.protein.structures import virtual_cb as virtual_cb_numpy


@pytest.fixture(scope="module")
def chain():
    seq, xyz = backbone("1A8O.pdb")
    return seq, torch.tensor(xyz, dtype=torch.float64)


def _moved(xyz: torch.Tensor, seed: int) -> torch.Tensor:
    rot, shift = random_rigid(seed)
    return xyz @ torch.tensor(rot).T + torch.tensor(shift)


def test_frames_are_rotations_with_ca_origin_and_c_on_x(chain):
    _, xyz = chain
    rot, trans = frames_from_backbone(xyz[:, 0], xyz[:, 1], xyz[:, 2])
    eye = torch.eye(3, dtype=rot.dtype).expand_as(rot)
    assert torch.allclose(rot.transpose(-1, -2) @ rot, eye, atol=1e-7)
    assert torch.allclose(torch.linalg.det(rot), torch.ones(len(xyz), dtype=rot.dtype), atol=1e-7)
    assert torch.equal(trans, xyz[:, 1])
    local_c = torch.einsum("lji,lj->li", rot, xyz[:, 2] - trans)
    local_n = torch.einsum("lji,lj->li", rot, xyz[:, 0] - trans)
    assert torch.allclose(local_c[:, 1:], torch.zeros_like(local_c[:, 1:]), atol=1e-7)  # C on +x
    assert (local_c[:, 0] > 1.3).all() and (local_n[:, 1] > 0).all() and local_n[:, 2].abs().max() < 1e-7


def test_frames_match_alphafold_ideal_backbone():
    """residue_constants' ideal Ala backbone (N, CA, C in the backbone frame) gives the identity frame."""
    from transformers.models.esm.openfold_utils import residue_constants as rc

    pos = {name: torch.tensor(p, dtype=torch.float64) for name, _, p in rc.rigid_group_atom_positions["ALA"]}
    rot, trans = frames_from_backbone(pos["N"], pos["CA"], pos["C"])
    assert torch.allclose(rot, torch.eye(3, dtype=torch.float64), atol=1e-3)
    assert torch.allclose(apply_frame(rot, trans, pos["CB"]), pos["CB"], atol=1e-3)


def test_virtual_cb_equals_numpy_reader_and_real_cb_geometry(chain):
    _, xyz = chain
    cb = virtual_cb(xyz[:, 0], xyz[:, 1], xyz[:, 2])
    ref = virtual_cb_numpy(*(xyz[:, k].numpy() for k in range(3)))
    assert np.allclose(cb.numpy(), ref)
    assert torch.allclose((cb - xyz[:, 1]).norm(dim=-1), torch.full((len(xyz),), 1.52, dtype=cb.dtype), atol=0.1)
    gly = torch.tensor([True] + [False] * (len(xyz) - 1))
    picked = cb_or_ca(xyz[:, 0], xyz[:, 1], xyz[:, 2], None, gly)
    assert torch.equal(picked[0], xyz[0, 1]) and torch.equal(picked[1], cb[1])


def _fape_inputs(xyz):
    rot, trans = frames_from_backbone(xyz[..., 0, :], xyz[..., 1, :], xyz[..., 2, :])
    return rot[None], trans[None], xyz[None]


def test_fape_zero_for_identical_and_invariant_under_shared_rigid_motion(chain):
    _, xyz = chain
    mask = torch.ones(1, len(xyz), dtype=torch.float64)
    r, t, x = _fape_inputs(xyz)
    assert backbone_fape(r, t, r, t, x[:, :, 1], x[:, :, 1], mask, eps=1e-12) < 1e-6
    # the same structure moved rigidly: FAPE is computed in local frames, so still 0
    rm, tm, xm = _fape_inputs(_moved(xyz, 1))
    assert backbone_fape(rm, tm, r, t, xm, x, mask, eps=1e-12) < 1e-6
    # a perturbed prediction: the value does not change when both are moved by different rigid motions
    noisy = xyz + 0.8 * torch.randn(xyz.shape, generator=torch.Generator().manual_seed(0), dtype=xyz.dtype)
    rp, tp, xp = _fape_inputs(noisy)
    base = backbone_fape(rp, tp, r, t, xp, x, mask)
    rp2, tp2, xp2 = _fape_inputs(_moved(noisy, 2))
    rt2, tt2, xt2 = _fape_inputs(_moved(xyz, 3))
    assert 0.1 < base < 1.0  # per-atom noise tilts the frames: errors of several Å far away
    assert torch.allclose(backbone_fape(rp2, tp2, rt2, tt2, xp2, xt2, mask), base, atol=1e-10)


def test_fape_equals_brute_force_loop_and_masks(chain):
    _, xyz = chain
    xyz = xyz[:12]
    noisy = xyz + 2.0 * torch.randn(xyz.shape, generator=torch.Generator().manual_seed(1), dtype=xyz.dtype)
    mask = torch.ones(1, 12, dtype=torch.float64)
    mask[0, 3] = 0
    truth = xyz.clone()
    truth[3] = float("nan")  # a residue without coordinates: masked, never read
    rp, tp, xp = _fape_inputs(noisy)
    rt, tt, xt = _fape_inputs(truth)
    got = backbone_fape(rp, tp, rt, tt, xp[:, :, 1], xt[:, :, 1], mask, clamp=3.0)
    total, count = 0.0, 0
    for i in range(12):
        for j in range(12):
            if i == 3 or j == 3:
                continue
            a = rp[0, i].T @ (xp[0, j, 1] - tp[0, i])
            b = rt[0, i].T @ (xt[0, j, 1] - tt[0, i])
            total += min(float(torch.sqrt(((a - b) ** 2).sum() + 1e-4)), 3.0) / 10.0
            count += 1
    assert torch.isfinite(got) and abs(float(got) - total / count) < 1e-10
    # all backbone atoms, an atom mask leaving out O
    atoms = backbone_fape(rp, tp, rt, tt, xp, xt, mask, atom_mask=torch.tensor([1.0, 1, 1, 0]).expand(1, 12, 4))
    assert torch.isfinite(atoms) and atoms > 0


def test_fape_gradient_is_finite_with_nan_truth(chain):
    _, xyz = chain
    pred = (xyz[:6] + 0.5).clone().requires_grad_(True)
    truth = xyz[:6].clone()
    truth[2] = float("nan")
    mask = torch.tensor([[1.0, 1, 0, 1, 1, 1]], dtype=torch.float64)
    rp, tp, xp = _fape_inputs(pred)
    rt, tt, xt = _fape_inputs(truth)
    backbone_fape(rp, tp, rt, tt, xp[:, :, 1], xt[:, :, 1], mask).backward()
    assert torch.isfinite(pred.grad).all()


def test_distogram_bins_and_loss(chain):
    _, xyz = chain
    ca = xyz[None, :, 1].float()
    bins = distogram_bins(ca)
    d = torch.cdist(ca, ca)
    edges = torch.linspace(2.3125, 21.6875, 63)
    assert torch.equal(bins, torch.bucketize(d, edges, right=False).clamp(max=63)) or (
        (bins - torch.bucketize(d, edges)).abs().max() <= 1)  # ties exactly on an edge only
    assert bins[0, 0, 0] == 0 and bins.max() == 63
    # near-perfect logits give a near-zero loss; uniform logits give log(64)
    perfect = torch.nn.functional.one_hot(bins, 64).float() * 50.0
    mask = torch.ones(1, len(xyz))
    assert distogram_loss(perfect, ca, mask) < 1e-6
    uniform = torch.zeros(1, len(xyz), len(xyz), 64)
    assert torch.allclose(distogram_loss(uniform, ca, mask), torch.log(torch.tensor(64.0)))
    mask[0, :5] = 0
    nan_ca = ca.clone()
    nan_ca[0, :5] = float("nan")
    assert torch.allclose(distogram_loss(perfect, nan_ca, mask), distogram_loss(perfect, ca, mask))


def test_lddt_per_residue_and_plddt_loss(chain):
    _, xyz = chain
    ca = xyz[None, :, 1]
    mask = torch.ones(1, len(xyz), dtype=torch.float64)
    assert torch.allclose(lddt_per_residue(_moved(xyz, 4)[None, :, 1], ca, mask), torch.ones_like(mask))
    noisy = ca + 1.0 * torch.randn(ca.shape, generator=torch.Generator().manual_seed(2), dtype=ca.dtype)
    per_res = lddt_per_residue(noisy, ca, mask)
    # brute force for residue 10
    i, total, count = 10, 0.0, 0
    for j in range(ca.shape[1]):
        dt = float((ca[0, i] - ca[0, j]).norm())
        if j == i or dt >= 15.0:
            continue
        err = abs(dt - float((noisy[0, i] - noisy[0, j]).norm()))
        total += sum(err < t for t in (0.5, 1.0, 2.0, 4.0)) / 4
        count += 1
    assert abs(float(per_res[0, i]) - total / count) < 1e-8
    # pLDDT loss: logits that put all mass in the right bin give ~0; it trains no structure gradient
    index = torch.clamp((per_res * 50).floor().long(), max=49)
    logits = torch.nn.functional.one_hot(index, 50).double() * 50.0
    pred = noisy.clone().requires_grad_(True)
    loss = plddt_loss(logits, pred, ca, mask)
    assert loss < 1e-6 and not loss.requires_grad
    assert torch.allclose(plddt_from_logits(logits), (index.double() + 0.5) * 2.0)


def test_losses_compute_in_float32_under_autocast(chain):
    """Mixed precision: bf16 Cβ coordinates would shift distances by ~0.1 Å (a third of a distogram bin)."""
    _, xyz = chain
    ca = xyz[None, :, 1].float()
    mask = torch.ones(1, len(xyz))
    logits = torch.randn(1, len(xyz), len(xyz), 64, generator=torch.Generator().manual_seed(3))
    full = distogram_loss(logits, ca, mask)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = distogram_loss(logits.bfloat16(), ca, mask)
        fape = backbone_fape(*_fape_inputs(xyz.float())[:2], *_fape_inputs(xyz.float())[:2], ca, ca, mask)
    assert half.dtype == torch.float32 and fape.dtype == torch.float32
    assert torch.allclose(half, full, atol=0.02)  # only the logits' rounding differs


def test_violations_are_zero_on_a_real_chain_and_price_a_collapsed_one(chain):
    from modalities.protein.fold.violations import clash_loss, peptide_bond_loss, violation_loss

    _, xyz = chain  # 1A8O: residues with N, Cα, C, O, consecutive in the file
    residues = torch.ones(1, len(xyz), dtype=torch.bool)
    real = xyz[None]
    # the peptide bond C(i)-N(i+1) is 1.33 Å, far inside the 1.7 + 1.55 - 1.5 Å clash bound: it is excepted
    assert float(peptide_bond_loss(real, residues)) == 0.0 and float(clash_loss(real, residues)) == 0.0
    moved = _moved(xyz, 3)[None]
    assert float(violation_loss(moved, residues)) == 0.0  # invariant under a rigid motion
    collapsed = (real * 0.3).requires_grad_()  # FAPE's hedge: every residue pulled to the middle
    loss = violation_loss(collapsed, residues)
    assert loss.item() > 1.0
    loss.backward()
    assert torch.isfinite(collapsed.grad).all()


def test_peptide_bond_and_clash_equal_hand_computation():
    from modalities.protein.fold.violations import TOLERANCE, clash_loss, peptide_bond_loss

    # two residues, ideal angles aside: stretch the C(0)-N(1) bond to 1.329 + 0.5 Å along x
    n0, ca0, c0 = [-1.46, 0.0, 0.0], [0.0, 0.0, 0.0], [0.55, 1.42, 0.0]
    bond = 1.329 + 0.5
    n1 = [c0[0] + bond, c0[1], 0.0]
    atoms = torch.tensor([[n0, ca0, c0, [0.0, 3.0, 0.0]], [n1, [n1[0] + 1.46, n1[1], 0.0], [n1[0] + 2.0, n1[1] + 1.4, 0.0], [n1[0], n1[1] + 3.0, 0.0]]],
                         dtype=torch.float64)[None]
    residues = torch.ones(1, 2, dtype=torch.bool)
    from modalities.protein.fold.violations import _unit  # the angle terms, as the loss computes them
    from transformers.models.esm.openfold_utils import residue_constants as rc

    c_to_n, _ = _unit(atoms[0, 1, 0] - atoms[0, 0, 2])
    c_to_ca, _ = _unit(atoms[0, 0, 1] - atoms[0, 0, 2])
    n_to_ca, _ = _unit(atoms[0, 1, 1] - atoms[0, 1, 0])
    angle = lambda cos, ideal, sd: max(0.0, abs(float(cos) - ideal) - TOLERANCE * sd)  # noqa: E731
    expected = (0.5 - TOLERANCE * 0.014 + angle((c_to_ca * c_to_n).sum(), *rc.between_res_cos_angles_ca_c_n)
                + angle((-c_to_n * n_to_ca).sum(), *rc.between_res_cos_angles_c_n_ca))
    assert float(peptide_bond_loss(atoms, residues)) == pytest.approx(expected, abs=1e-5)
    # one clash: O(0) and O(1) 1.0 Å apart (bound 1.52 + 1.52 - 1.5 = 1.54 Å): 0.54 Å over 8 atoms
    atoms = atoms.clone()
    atoms[0, 1, 3] = atoms[0, 0, 3] - torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    far = atoms.clone()
    far[0, 1, :3] += torch.tensor([0.0, 0.0, 20.0], dtype=torch.float64)  # keep only the O-O pair close
    assert float(clash_loss(far, residues)) == pytest.approx(0.54 / 8, abs=1e-6)
    assert float(clash_loss(far, torch.tensor([[True, False]]))) == 0.0  # a padding position clashes with nothing
