"""Backbone geometry in torch: residue frames from N, Cα, C and the ideal (virtual) Cβ.

    rot, trans = frames_from_backbone(n, ca, c)     # (..., 3, 3), (..., 3)
    local = torch.einsum("...ji,...j->...i", rot, x - trans)    # x in the residue's frame

A frame is AlphaFold2's ``rigidFrom3Points`` (supplement Algorithm 21), Gram-Schmidt on the two
bond vectors: x along Cα→C, y in the N–Cα–C plane on N's side, z = x × y, origin at Cα. This is
the convention of ``residue_constants.rigid_group_atom_positions`` (C at +x, N at +y) and of
transformers' ``Rigid`` backbone frames, so frames built here and frames predicted by a structure
module (``openfold_utils.Rigid``) are comparable as they are. The columns of ``rot`` are the
frame's axes in global coordinates: global = rot @ local + trans.

Everything broadcasts over leading dimensions (batch, length) and is differentiable.
"""

from __future__ import annotations

import torch

# trRosetta / AlphaFold ideal Cβ: CB = a*(b×c) + b_*b + c_*c + CA with b = CA-N, c = C-CA.
# Same constants as ``modalities.protein.structures.virtual_cb`` (numpy), kept equal by a test.
_CB_CROSS, _CB_B, _CB_C = -0.58273431, 0.56802827, -0.54067466


def frames_from_backbone(n: torch.Tensor, ca: torch.Tensor, c: torch.Tensor,
                         eps: float = 1e-8) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., 3) N, Cα, C -> rotation (..., 3, 3) with the frame axes as columns, translation (..., 3) = Cα.

    ``eps`` keeps the normalisation finite for degenerate input (masked residues filled with zeros);
    such frames are meaningless and must be masked by the caller.
    """
    v1 = c - ca
    v2 = n - ca
    e1 = v1 / torch.sqrt((v1**2).sum(-1, keepdim=True) + eps)
    u2 = v2 - e1 * (e1 * v2).sum(-1, keepdim=True)
    e2 = u2 / torch.sqrt((u2**2).sum(-1, keepdim=True) + eps)
    e3 = torch.linalg.cross(e1, e2, dim=-1)
    rot = torch.stack([e1, e2, e3], dim=-1)  # columns = axes
    return rot, ca


def virtual_cb(n: torch.Tensor, ca: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Ideal Cβ (..., 3) from N, Cα, C: used for glycine (which has none) and for missing side chains."""
    b = ca - n
    c_ = c - ca
    a = torch.linalg.cross(b, c_, dim=-1)
    return _CB_CROSS * a + _CB_B * b + _CB_C * c_ + ca


def to_local(rot: torch.Tensor, trans: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Every point in every frame: rot (B, F, 3, 3), trans (B, F, 3), points (B, P, 3) -> (B, F, P, 3).

    local_fp = rot_f^T (x_p - t_f), the coordinates FAPE compares.
    """
    diff = points[:, None, :, :] - trans[:, :, None, :]  # (B, F, P, 3)
    return torch.einsum("bfji,bfpj->bfpi", rot, diff)


def apply_frame(rot: torch.Tensor, trans: torch.Tensor, local: torch.Tensor) -> torch.Tensor:
    """Local coordinates (..., 3) -> global: rot @ local + trans (frame and point broadcast together)."""
    return torch.einsum("...ij,...j->...i", rot, local) + trans


def cb_or_ca(n: torch.Tensor, ca: torch.Tensor, c: torch.Tensor, cb: torch.Tensor | None,
             is_glycine: torch.Tensor) -> torch.Tensor:
    """The distogram's atom: Cβ, Cα for glycine (CASP / ESM convention); a virtual Cβ where ``cb`` is None or NaN."""
    ideal = virtual_cb(n, ca, c)
    if cb is None:
        cb = ideal
    else:
        cb = torch.where(torch.isnan(cb), ideal, cb)
    return torch.where(is_glycine[..., None], ca, cb)
