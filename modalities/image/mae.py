"""Masked autoencoding of image patches (MAE; He et al. 2021, "Masked Autoencoders Are Scalable
Vision Learners", facebookresearch/mae ``models_mae.py``) around a timm ``VisionTransformer``.

Per image a random ``mask_ratio`` of the patches is dropped; the encoder (the timm ViT's own patch
embedding, position embedding, class token, blocks and norm) sees only the visible ones; a light
decoder gets the encoded visible patches plus a shared learned mask token at every dropped position
and predicts every patch's pixels; the loss is the mean squared error over the *dropped* patches
only, optionally against per-patch normalised pixels (``norm_pix_loss``: each target patch minus
its mean, over its standard deviation, which MAE reports gives better features).

Unlike MAE's ``patchify`` (three channels), ``patchify``/``unpatchify`` here take any channel
count, grayscale included. The masking noise comes from a ``torch.Generator`` the caller seeds, so
the corruption of a batch is a function of (seed, batch index) and a resumed run is exact.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from einops import rearrange


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, L, patch*patch*C), patches in row-major order, pixels as (row, col, channel)."""
    return rearrange(images, "b c (h p) (w q) -> b (h w) (p q c)", p=patch, q=patch)


def unpatchify(patches: torch.Tensor, patch: int, channels: int, grid: tuple[int, int]) -> torch.Tensor:
    """The inverse of ``patchify``: (B, L, patch*patch*C) -> (B, C, grid_h*patch, grid_w*patch)."""
    return rearrange(patches, "b (h w) (p q c) -> b c (h p) (w q)", h=grid[0], w=grid[1], p=patch, q=patch, c=channels)


def random_masking(batch: int, n_patches: int, mask_ratio: float, generator: torch.Generator, device=None):
    """Which patches each image keeps: (keep indices (B, K), mask (B, L) with 1 = dropped, restore
    indices (B, L) that undo the shuffle). K = L * (1 - mask_ratio) rounded down, at least 1 and at
    most L - 1, the same for every image (so the encoder's input is a dense batch)."""
    n_keep = min(n_patches - 1, max(1, int(n_patches * (1.0 - mask_ratio))))
    noise = torch.rand(batch, n_patches, generator=generator).to(device)
    shuffle = torch.argsort(noise, dim=1)  # ascending: the first n_keep are kept
    restore = torch.argsort(shuffle, dim=1)
    mask = torch.ones(batch, n_patches, device=device)
    mask[:, :n_keep] = 0
    mask = torch.gather(mask, 1, restore)  # back to patch order
    return shuffle[:, :n_keep], mask, restore


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, norm_pix_loss: bool) -> torch.Tensor:
    """Mean over dropped patches (``mask`` 1) of the per-patch mean squared error; visible patches count for nothing."""
    if norm_pix_loss:
        mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1e-6) ** 0.5
    per_patch = ((pred - target) ** 2).mean(dim=-1)
    return (per_patch * mask).sum() / mask.sum()


class MaskedAutoencoder(nn.Module):
    """A timm ViT encoder (``self.encoder``, unchanged: export it as is) plus MAE's decoder."""

    def __init__(self, encoder: nn.Module, decoder_dim: int, decoder_depth: int, decoder_heads: int, mask_ratio: float = 0.75,
                 norm_pix_loss: bool = True):
        super().__init__()
        from timm.models.vision_transformer import Block

        self.encoder, self.mask_ratio, self.norm_pix_loss = encoder, mask_ratio, norm_pix_loss
        embed = encoder.patch_embed
        self.patch, self.channels = int(embed.patch_size[0]), int(embed.proj.in_channels)
        self.grid = tuple(int(g) for g in embed.grid_size)
        self.prefix = 1 if encoder.cls_token is not None else 0
        n_patches = self.grid[0] * self.grid[1]
        self.decoder_embed = nn.Linear(encoder.embed_dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.decoder_pos = nn.Parameter(torch.zeros(1, self.prefix + n_patches, decoder_dim))
        self.decoder_blocks = nn.Sequential(*[Block(decoder_dim, decoder_heads, mlp_ratio=4.0, qkv_bias=True) for _ in range(decoder_depth)])
        self.decoder_norm = nn.LayerNorm(decoder_dim)
        self.decoder_pred = nn.Linear(decoder_dim, self.patch * self.patch * self.channels)
        nn.init.normal_(self.mask_token, std=0.02)
        nn.init.trunc_normal_(self.decoder_pos, std=0.02)

    def encode(self, images: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Encoder output for the kept patches, prefix (class) token first: (B, prefix + K, D)."""
        enc = self.encoder
        x = enc.patch_embed(images)  # (B, L, D)
        pos = enc.pos_embed
        patch_pos = pos if enc.no_embed_class else pos[:, self.prefix:]
        x = x + patch_pos
        x = torch.gather(x, 1, keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        if self.prefix:
            cls = enc.cls_token + (0 if enc.no_embed_class else pos[:, :1])
            x = torch.cat([cls.expand(x.shape[0], -1, -1), x], dim=1)
        x = enc.norm_pre(x)
        x = enc.blocks(x)
        return enc.norm(x)

    def decode(self, latent: torch.Tensor, restore: torch.Tensor) -> torch.Tensor:
        """Pixels of every patch (B, L, patch*patch*C) from the visible patches' encodings."""
        y = self.decoder_embed(latent)
        prefix, visible = y[:, : self.prefix], y[:, self.prefix:]
        n_masked = restore.shape[1] - visible.shape[1]
        y = torch.cat([visible, self.mask_token.expand(y.shape[0], n_masked, -1)], dim=1)
        y = torch.gather(y, 1, restore.unsqueeze(-1).expand(-1, -1, y.shape[-1]))  # unshuffle to patch order
        y = torch.cat([prefix, y], dim=1) + self.decoder_pos
        y = self.decoder_norm(self.decoder_blocks(y))
        return self.decoder_pred(y)[:, self.prefix:]

    def forward(self, images: torch.Tensor, generator: torch.Generator):
        """(loss, predicted patches, mask) for a batch of normalised images (B, C, H, W)."""
        keep, mask, restore = random_masking(images.shape[0], self.grid[0] * self.grid[1], self.mask_ratio, generator, images.device)
        pred = self.decode(self.encode(images, keep), restore)
        loss = masked_mse(pred.float(), patchify(images, self.patch).float(), mask, self.norm_pix_loss)
        return loss, pred, mask
