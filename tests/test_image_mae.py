"""The image modality's pieces: MAE masking and loss, patchify for any channel count, timm
checkpoints in and out with equal outputs."""

import json

import pytest
import torch

from modalities.image.backbone import PRESET_DEFAULTS, build_encoder, import_timm, load_encoder_file, save_encoder
from modalities.image.mae import MaskedAutoencoder, masked_mse, patchify, random_masking, unpatchify

TINY = dict(img_size=16, patch_size=4, embed_dim=32, depth=1, num_heads=2, mlp_ratio=2.0, **PRESET_DEFAULTS)


def tiny_mae(channels: int, mask_ratio: float = 0.75) -> MaskedAutoencoder:
    torch.manual_seed(0)
    return MaskedAutoencoder(build_encoder({**TINY, "in_chans": channels}), 16, 1, 2, mask_ratio=mask_ratio)


@pytest.mark.parametrize("ratio", [0.75, 0.5, 0.9])
def test_masking_drops_the_same_fraction_of_every_image_and_restores_patch_order(ratio):
    generator = torch.Generator().manual_seed(1)
    keep, mask, restore = random_masking(8, 16, ratio, generator)
    n_keep = int(16 * (1 - ratio))
    assert keep.shape == (8, n_keep)
    assert (mask.sum(1) == 16 - n_keep).all()  # per image, not only on average
    for b in range(8):  # the kept indices are exactly the unmasked patches
        assert sorted(keep[b].tolist()) == torch.nonzero(mask[b] == 0).flatten().tolist()
    shuffle = torch.argsort(restore, dim=1)
    assert (torch.gather(shuffle, 1, restore) == torch.arange(16).expand(8, -1)).all()
    again = random_masking(8, 16, ratio, torch.Generator().manual_seed(1))[1]
    assert torch.equal(mask, again)  # a function of the generator's seed: resume is exact


def test_the_loss_counts_only_masked_patches():
    pred, target = torch.zeros(2, 4, 3), torch.zeros(2, 4, 3)
    mask = torch.tensor([[1.0, 0, 0, 1], [0, 1, 0, 0]])
    target[mask == 0] = 100.0  # huge errors on visible patches must not count
    target[0, 0], target[0, 3], target[1, 1] = 1.0, 2.0, 3.0
    expected = (1.0 + 4.0 + 9.0) / 3
    assert masked_mse(pred, target, mask, norm_pix_loss=False).item() == pytest.approx(expected)
    # per-patch normalisation: a constant patch has target 0 everywhere
    assert masked_mse(pred, target, mask, norm_pix_loss=True).item() == pytest.approx(0.0, abs=1e-6)


def test_the_mae_loss_is_the_masked_mse_of_its_own_prediction():
    model = tiny_mae(1).eval()
    images = torch.randn(2, 1, 16, 16)
    loss, pred, mask = model(images, torch.Generator().manual_seed(3))
    assert (mask.sum(1) == 12).all()
    assert loss.item() == pytest.approx(masked_mse(pred, patchify(images, 4), mask, True).item(), rel=1e-6)


@pytest.mark.parametrize("channels", [1, 3])
def test_patchify_round_trips_for_grayscale_and_colour(channels):
    images = torch.randn(2, channels, 12, 8)
    patches = patchify(images, 4)
    assert patches.shape == (2, 3 * 2, 4 * 4 * channels)
    assert torch.equal(unpatchify(patches, 4, channels, (3, 2)), images)
    # patch 0 is the top-left 4x4 block, pixels (row, col, channel)
    assert torch.equal(patches[0, 0].reshape(4, 4, channels), images[0, :, :4, :4].permute(1, 2, 0))


@pytest.mark.parametrize("channels", [1, 3])
def test_mae_trains_on_any_channel_count(channels):
    model = tiny_mae(channels)
    loss, pred, mask = model(torch.randn(3, channels, 16, 16), torch.Generator().manual_seed(0))
    loss.backward()
    assert pred.shape == (3, 16, 16 * channels) and torch.isfinite(loss)
    assert model.encoder.patch_embed.proj.weight.grad is not None


def test_a_saved_encoder_reloads_with_equal_outputs_and_a_bare_file_needs_its_architecture(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    kwargs = {**TINY, "in_chans": 1}
    reference = build_encoder(kwargs).eval()
    path = tmp_path / "enc.safetensors"
    save_encoder(path, reference, kwargs, None)
    loaded, loaded_kwargs, _ = load_encoder_file(path)
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), reference(x))
    assert loaded_kwargs == kwargs
    bare = tmp_path / "bare.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(bare))
    with pytest.raises(Exception, match="needs --timm-model NAME"):
        import_timm(bare, None)


def test_import_through_timm_create_model_and_export_back(tmp_path):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    reference = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0).eval()
    path = tmp_path / "vit_tiny.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(path))
    model, kwargs, name = import_timm(path, "vit_tiny_patch16_224")
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(model.eval()(x), reference(x), atol=1e-5)
    assert name == "vit_tiny_patch16_224" and kwargs["embed_dim"] == 192 and kwargs["depth"] == 12
    # export: timm's own loader reads the file back, and so does ours (its .json beside it)
    out = tmp_path / "export.safetensors"
    save_encoder(out, model, kwargs, name)
    again = timm.create_model(name, pretrained=True, num_classes=0, pretrained_cfg_overlay=dict(file=str(out))).eval()
    ours, _, _ = load_encoder_file(out)
    with torch.no_grad():
        assert torch.allclose(again(x), reference(x), atol=1e-5)
        assert torch.allclose(ours.eval()(x), reference(x), atol=1e-5)
    assert json.loads(out.with_suffix(".json").read_text())["timm_name"] == name
