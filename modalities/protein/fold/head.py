"""The folding head: an ESMFold-style structure predictor on top of the language-model trunk.

    trunk hidden states (B, T, D) ──> single s (B, T, c_s)          + amino-acid embedding
    trunk attention maps (B, Ly, H, T, T) ──> APC + symmetrize ──> pair z (B, T, T, c_z)
    folding trunk: ``blocks`` x transformers' EsmFoldTriangularSelfAttentionBlock (triangular
        multiplicative updates + triangular attention + pair-biased sequence attention), with
        relative positions and ESMFold's recycling (``recycles`` extra passes, no gradient)
    structure module: transformers' EsmFoldStructureModule (invariant point attention) ->
        backbone frames -> N, Cα, C, O, Cβ (atom14 positions; Cβ of glycine is the ideal one)
    distogram head: Linear(z) -> 64 bins, symmetric;  pLDDT head: MLP(states) -> 50 bins

Pair features initialised from attention maps is what ESMFold (``use_esm_attn_map``) and minifold
do; the hidden states play the role of ESMFold's ``esm_s``.

Output, one tensor so that the engine's batching, windowing and checkpointing carry it unchanged:
(B, T, T, 129 + 9 (structure_blocks - 1)) = distogram logits in channels [0, 64) of every pair,
and on the diagonal (i, i) the residue's atoms (channels [64, 79): 5 atoms x xyz, Å), pLDDT logits
([79, 129)) and the N, Cα, C of each earlier structure-module block (9 channels per block: the loss
averages FAPE over every block, as AlphaFold2 does). ``unpack`` / ``unpack_blocks`` read it back. While ``distogram_steps`` training batches have not yet been seen (the
first stage of minifold's two-stage recipe) the structure module is skipped in training and the
atom channels are NaN: the loss then trains the distogram only.

AlphaFold initialisation: transformers applies it ("final" zero-init of output layers, "gating"
ones, IPA head weights) only in ``EsmFoldPreTrainedModel._init_weights``; ``alphafold_init``
does the same here, so the untrained head starts as AlphaFold's does (residual blocks are
identities, every residue at the origin with an identity frame).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn

from foundry.finetune.heads import register_head

from ..contact_head import attention_features
from .geometry import virtual_cb

DISTOGRAM_BINS, PLDDT_BINS, ATOMS = 64, 50, 5  # atoms: N, CA, C, O, CB
ATOM_START = DISTOGRAM_BINS
PLDDT_START = ATOM_START + 3 * ATOMS
CHANNELS = PLDDT_START + PLDDT_BINS
GLYCINE, ALANINE, UNKNOWN = 7, 0, 20  # openfold residue_constants.restypes indices; 20 = X


def restype_table(tokens: list[str]) -> list[int]:
    """Token id -> openfold residue type (0..19, 20 for anything else) for a vocabulary."""
    from transformers.models.esm.openfold_utils import residue_constants as rc

    return [rc.restypes.index(t) if t in rc.restypes else UNKNOWN for t in tokens]


def alphafold_init(module: nn.Module) -> None:
    """AlphaFold's initialisation of transformers' ESMFold modules (what
    ``EsmFoldPreTrainedModel._init_weights`` does; those modules do not do it themselves)."""
    from torch.nn import init
    from transformers.models.esm import modeling_esmfold as ef

    for m in module.modules():
        if isinstance(m, ef.EsmFoldLinear):
            with torch.no_grad():
                if m.init == "default":
                    init.normal_(m.weight, std=math.sqrt(1.0 / max(1, m.weight.shape[1])))
                elif m.init == "relu":
                    init.normal_(m.weight, std=math.sqrt(2.0 / max(1, m.weight.shape[1])))
                elif m.init == "glorot":
                    init.xavier_uniform_(m.weight, gain=1)
                elif m.init == "gating":
                    init.zeros_(m.weight)
                    if m.bias is not None:
                        init.ones_(m.bias)
                elif m.init == "normal":
                    init.kaiming_normal_(m.weight, nonlinearity="linear")
                elif m.init == "final":
                    init.zeros_(m.weight)
        elif isinstance(m, ef.EsmFoldInvariantPointAttention):
            init.constant_(m.head_weights, 0.541324854612918)  # softplus^-1(1)
    for m in module.modules():  # after the Linear pass: these zeros must win
        if isinstance(m, ef.EsmFoldTriangularSelfAttentionBlock):
            for layer in (m.tri_mul_in.linear_z, m.tri_mul_out.linear_z, m.tri_att_start.mha.linear_o, m.tri_att_end.mha.linear_o,
                          m.sequence_to_pair.o_proj, m.seq_attention.o_proj, m.mlp_seq.mlp[-2], m.mlp_pair.mlp[-2]):
                init.zeros_(layer.weight)
                if layer.bias is not None:
                    init.zeros_(layer.bias)
            init.zeros_(m.pair_to_sequence.linear.weight)


@register_head
class FoldHead(nn.Module):
    kind = "fold"
    needs_attention = True

    def __init__(self, d_model: int, n_layer: int, n_head: int, restypes: list[int], seq_dim: int = 64, pair_dim: int = 32,
                 blocks: int = 1, structure_dim: int = 64, structure_blocks: int = 4, ipa_heads: int = 4, recycles: int = 0,
                 distogram_steps: int = 0, dropout: float = 0.0):
        super().__init__()
        from transformers.models.esm.configuration_esm import StructureModuleConfig, TrunkConfig
        from transformers.models.esm.modeling_esmfold import EsmFoldingTrunk

        self.sizes = dict(d_model=d_model, n_layer=n_layer, n_head=n_head, restypes=list(restypes), seq_dim=seq_dim, pair_dim=pair_dim,
                          blocks=blocks, structure_dim=structure_dim, structure_blocks=structure_blocks, ipa_heads=ipa_heads,
                          recycles=recycles, distogram_steps=distogram_steps, dropout=float(dropout))
        self.recycles, self.distogram_steps = recycles, distogram_steps
        self.chunk_size: int | None = None  # triangular attention in chunks of this many rows: less memory, same result
        head_width = 16 if seq_dim % 16 == 0 and pair_dim % 16 == 0 else 8
        structure = StructureModuleConfig(sequence_dim=structure_dim, pairwise_dim=pair_dim, ipa_dim=16, resnet_dim=structure_dim,
                                          num_heads_ipa=ipa_heads, num_qk_points=4, num_v_points=8, dropout_rate=float(dropout),
                                          num_blocks=structure_blocks)
        config = TrunkConfig(num_blocks=blocks, sequence_state_dim=seq_dim, pairwise_state_dim=pair_dim, sequence_head_width=head_width,
                             pairwise_head_width=head_width, dropout=float(dropout), max_recycles=recycles, chunk_size=None,
                             structure_module=structure.to_dict())
        self.folding = EsmFoldingTrunk(config)  # its parts are used; its forward always runs the structure module
        self.seq_in = nn.Sequential(nn.LayerNorm(d_model), nn.Linear(d_model, seq_dim), nn.ReLU(), nn.Linear(seq_dim, seq_dim))
        self.aa_embed = nn.Embedding(UNKNOWN + 2, seq_dim)  # 21 residue types + "not a residue"
        self.pair_in = nn.Sequential(nn.LayerNorm(n_layer * n_head), nn.Linear(n_layer * n_head, pair_dim), nn.ReLU(),
                                     nn.Linear(pair_dim, pair_dim))
        self.distogram = nn.Linear(pair_dim, DISTOGRAM_BINS)
        self.plddt = nn.Sequential(nn.LayerNorm(structure_dim), nn.Linear(structure_dim, 64), nn.ReLU(), nn.Linear(64, PLDDT_BINS))
        self.register_buffer("restype", torch.tensor(restypes, dtype=torch.long), persistent=False)
        # training batches seen: the two-stage schedule survives a resume (it is saved with the head)
        self.register_buffer("trained_batches", torch.zeros((), dtype=torch.long))
        alphafold_init(self.folding)
        with torch.no_grad():
            self.folding.recycle_disto.weight[0].zero_()

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, **self.sizes}

    def forward(self, hidden, tokens, real, residues, attentions=None):
        if attentions is None:
            raise ValueError("the fold head reads the trunk's attention maps (needs_attention)")
        mask = residues
        restype = torch.where(mask, self.restype[tokens], torch.full_like(tokens, UNKNOWN + 1))
        s0 = self.seq_in(hidden.float()) + self.aa_embed(restype)
        z0 = self.pair_in(attention_features(attentions.float(), mask))
        b, t = tokens.shape
        residx = torch.arange(t, device=tokens.device).expand(b, t)
        # residue type for the atom positions: X as alanine (its backbone is every residue's)
        atom_type = torch.where(restype >= UNKNOWN, torch.full_like(restype, ALANINE), restype)
        with_structure = not self.training or int(self.trained_batches) >= self.distogram_steps
        if self.training:
            self.trained_batches += 1
        f = self.folding
        recycle_s, recycle_z = torch.zeros_like(s0), torch.zeros_like(z0)
        bins = torch.zeros(b, t, t, dtype=torch.long, device=tokens.device)
        structure = None
        for cycle in range(self.recycles + 1):
            last = cycle == self.recycles
            with torch.set_grad_enabled(torch.is_grad_enabled() and last):  # earlier cycles: no gradient (ESMFold)
                s = s0 + f.recycle_s_norm(recycle_s.detach())
                z = z0 + f.recycle_z_norm(recycle_z.detach()) + f.recycle_disto(bins)
                z = z + f.pairwise_positional_embedding(residx, mask=mask)
                for block in f.blocks:
                    s, z = block(s, z, mask=mask.to(s.dtype), residue_index=residx, chunk_size=self.chunk_size)
                if with_structure:
                    structure = f.structure_module({"single": f.trunk2sm_s(s), "pair": f.trunk2sm_z(z)}, atom_type, mask.float())
                    bins = f.distogram(structure["positions"][-1][:, :, :3], 3.375, 21.375, f.recycle_bins)
                recycle_s, recycle_z = s, z
        distogram = self.distogram(z)
        distogram = (distogram + distogram.transpose(1, 2)) / 2
        if structure is None:
            width = CHANNELS - ATOM_START + 9 * (f.structure_module.config.num_blocks - 1)
            per_residue = torch.full((b, t, width), float("nan"), device=z.device, dtype=z.dtype)
        else:
            atoms = structure["positions"][-1][:, :, :ATOMS]  # (B, T, 5, 3) N, CA, C, O, CB (CB zero for Gly)
            ideal = virtual_cb(atoms[:, :, 0], atoms[:, :, 1], atoms[:, :, 2])
            cb = torch.where((atom_type == GLYCINE)[..., None], ideal, atoms[:, :, 4])
            atoms = torch.cat([atoms[:, :, :4], cb[:, :, None]], 2)
            earlier = structure["positions"][:-1, :, :, :3]  # (blocks - 1, B, T, 3, 3) N, CA, C
            earlier = earlier.permute(1, 2, 0, 3, 4).flatten(2)  # (B, T, 9 (blocks - 1))
            per_residue = torch.cat([atoms.flatten(2), self.plddt(structure["states"][-1]), earlier], -1)
        diagonal = torch.diag_embed(per_residue.transpose(1, 2)).permute(0, 2, 3, 1)  # (B, T, T, 65), zero off the diagonal
        return torch.cat([distogram, diagonal], -1)


def unpack(output: torch.Tensor, length: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, T, W, 129) head output (W >= T: a batch's width) -> distogram logits (B, T, T, 64),
    atoms (B, T, 5, 3) in Å (NaN while the structure module is skipped), pLDDT logits (B, T, 50)."""
    t = output.shape[1] if length is None else length
    output = output[:, :t, :t]
    per_residue = torch.diagonal(output[..., ATOM_START:], dim1=1, dim2=2).transpose(1, 2)  # (B, T, 65)
    atoms = per_residue[..., : 3 * ATOMS].reshape(*per_residue.shape[:2], ATOMS, 3)
    return output[..., :DISTOGRAM_BINS], atoms, per_residue[..., 3 * ATOMS : 3 * ATOMS + PLDDT_BINS]


def unpack_blocks(output: torch.Tensor, length: int | None = None) -> torch.Tensor:
    """N, Cα, C of every structure-module block, the last one included: (blocks, B, T, 3, 3)."""
    t = output.shape[1] if length is None else length
    per_residue = torch.diagonal(output[:, :t, :t, ATOM_START:], dim1=1, dim2=2).transpose(1, 2)
    earlier = per_residue[..., 3 * ATOMS + PLDDT_BINS :]
    earlier = earlier.reshape(*earlier.shape[:2], -1, 3, 3).permute(2, 0, 1, 3, 4)
    final = per_residue[..., : 3 * ATOMS].reshape(*per_residue.shape[:2], ATOMS, 3)[:, :, :3]
    return torch.cat([earlier, final[None]], 0)
