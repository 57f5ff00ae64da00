"""Image model presets: plain data (no torch), so ``foundry image presets`` and ``foundry plugins``
stay light. Each preset is the timm ``VisionTransformer`` keyword arguments of the encoder plus the
MAE decoder's size (He et al. 2021, "Masked Autoencoders Are Scalable Vision Learners": a light
decoder, 8 blocks of 512 for ViT-B; smaller here, in proportion).

Every image is resized to the preset's ``img_size`` (bilinear, antialiased) when it is read, so a
preset handles any input size: 8×8 digits are upsampled, 28×28 MNIST-like images downsampled.
The channel count comes from the data (1 for grayscale, 3 for colour), not from the preset.
"""

from __future__ import annotations

#: name -> settings; the first is the default (a CPU-sized model that trains in seconds)
PRESETS: dict[str, dict] = {
    "vit-micro": dict(img_size=16, patch_size=4, embed_dim=64, depth=4, num_heads=4, mlp_ratio=2.0,
                      decoder_dim=48, decoder_depth=1, decoder_heads=4, timm_name=None,
                      source="a CPU-sized ViT: 16×16 input, 4×4 patches (16 tokens), 4 blocks of 64"),
    "vit-tiny": dict(img_size=224, patch_size=16, embed_dim=192, depth=12, num_heads=3, mlp_ratio=4.0,
                     decoder_dim=128, decoder_depth=2, decoder_heads=4, timm_name="vit_tiny_patch16_224",
                     source="timm vit_tiny_patch16_224 (DeiT-Ti shapes, Touvron et al. 2021)"),
    "vit-small": dict(img_size=224, patch_size=16, embed_dim=384, depth=12, num_heads=6, mlp_ratio=4.0,
                      decoder_dim=256, decoder_depth=4, decoder_heads=8, timm_name="vit_small_patch16_224",
                      source="timm vit_small_patch16_224 (DeiT-S shapes, Touvron et al. 2021)"),
}

DEFAULT_PRESET = next(iter(PRESETS))
