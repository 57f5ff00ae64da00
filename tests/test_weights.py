"""Weight files that are wrong in ways ``load_state_dict`` would not say (or would say as a
traceback): each is one line naming the file and the tensor, and the CLI exits 2 writing nothing.

Covers the model directory (trunk and contact head), the fine-tuned directory (head, LoRA adapter)
and ``embed`` / ``predict`` on NaN weights, which used to write NaN and exit 0.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from foundry.cli import main
from foundry.errors import CheckpointError
from foundry.finetune.heads import FinetuneModel, head_for
from foundry.finetune.store import load_finetuned, save_finetuned
from foundry.finetune.strategies import apply_strategy
from foundry.finetune.tasks import LabelInfo, get_task
from foundry.model import Transformer, from_name
from foundry.model.store import load_model, save_model
from modalities.protein.alphabet import EsmTokenizer
from modalities.protein.contact_head import attach_contact_head

TINY = {"n_layer": 1, "d_model": 32, "n_head": 2, "d_ff": 64}


@pytest.fixture
def model_dir(tmp_path) -> Path:
    torch.manual_seed(0)
    tok = EsmTokenizer()
    model = Transformer(from_name("esm2_tiny", vocab_size=tok.vocab_size, **TINY))
    attach_contact_head(model)
    return save_model(tmp_path / "m", model, tok, "protein")


def rewrite(path: Path, **changes) -> None:
    """Replace tensors of a safetensors file, keeping its metadata."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        metadata = f.metadata()
    tensors = load_file(str(path))
    tensors.update(changes)
    save_file(tensors, str(path), metadata=metadata)


def one_line(exc: BaseException) -> str:
    message = str(exc)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool])
def test_integer_or_bool_weights_are_named(model_dir, dtype):
    weights = model_dir / "model.safetensors"
    rewrite(weights, **{"blocks.0.mlp.up.weight": torch.ones(64, 32, dtype=dtype)})
    with pytest.raises(CheckpointError) as err:
        load_model(model_dir)
    name = str(dtype).removeprefix("torch.")
    assert one_line(err.value) == (
        f"{weights}: tensor 'blocks.0.mlp.up.weight' is {name}, expected a floating-point tensor "
        "(the file was not written as model weights, or was converted wrongly)"
    )


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused(model_dir, bad):
    weights = model_dir / "model.safetensors"
    embed = load_file(str(weights))["embed.weight"]
    embed[3, 5] = bad
    rewrite(weights, **{"embed.weight": embed})
    with pytest.raises(CheckpointError, match=r"model.safetensors: tensor 'embed.weight' holds NaN or infinite values \(1 of 1056\)"):
        load_model(model_dir)


def test_corrupt_header_is_named(model_dir):
    weights = model_dir / "model.safetensors"
    weights.write_bytes((1 << 60).to_bytes(8, "little") + b"{}")  # a header length no file has
    with pytest.raises(CheckpointError) as err:
        load_model(model_dir)
    assert one_line(err.value).startswith(f"{weights}: not a readable safetensors file (truncated or corrupt?): ")


def test_contact_head_is_checked_like_the_trunk(model_dir):
    head = model_dir / "contact_head.safetensors"
    rewrite(head, **{"regression.weight": torch.full((1, 2), float("nan"))})
    with pytest.raises(CheckpointError, match=r"contact_head.safetensors: tensor 'regression.weight' holds NaN"):
        load_model(model_dir)
    rewrite(head, **{"regression.weight": torch.zeros(1, 3)})
    with pytest.raises(CheckpointError, match=r"contact_head.safetensors: tensor 'regression.weight' has shape \(1, 3\), expected \(1, 2\)"):
        load_model(model_dir)


def test_embed_refuses_nan_weights_and_writes_nothing(model_dir, tmp_path, capsys):
    weights = model_dir / "model.safetensors"
    rewrite(weights, **{"final_norm.weight": torch.full((32,), float("nan"))})
    fasta = tmp_path / "p.fasta"
    fasta.write_text(">a\nMKTAYIAKQR\n")
    with pytest.raises(SystemExit) as exit_:
        main(["protein", "embed", "--model", str(model_dir), str(fasta), "-o", str(tmp_path / "emb")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert err.strip().splitlines() == [f"error: {weights}: tensor 'final_norm.weight' holds NaN or infinite values "
                                        "(32 of 32); the weights are corrupt (saved from a run that diverged?)"]
    assert not (tmp_path / "emb").exists()


# -- the fine-tuned model directory ------------------------------------------------------------


def finetuned(tmp_path: Path, model_dir: Path, strategy: str = "full") -> Path:
    loaded = load_model(model_dir)
    tok = loaded.tokenizer
    trunk = apply_strategy(loaded.model, strategy, lora_rank=2)
    model = FinetuneModel(trunk, head_for("sequence", 32, 1), tok.special_ids, tok.pad_id, 1)
    return save_finetuned(tmp_path / "ft", model, tok, get_task("sequence-regression"), LabelInfo([]),
                          strategy=strategy, modality="protein", base=str(model_dir), max_len=64)


def test_finetuned_head_corrupt_or_nan_is_named(tmp_path, model_dir, capsys):
    ft = finetuned(tmp_path, model_dir)
    head = ft / "head.safetensors"
    good = head.read_bytes()
    head.write_bytes(b"\xff" * 8 + good[8:])  # the SafetensorError "header too large" case
    with pytest.raises(CheckpointError) as err:
        load_finetuned(ft)
    assert one_line(err.value).startswith(f"{head}: not a readable safetensors file (truncated or corrupt?): ")

    head.write_bytes(good)
    name, value = next(iter(load_file(str(head)).items()))
    rewrite(head, **{name: torch.full_like(value, float("nan"))})
    with pytest.raises(CheckpointError, match=rf"head.safetensors: tensor '{name}' holds NaN"):
        load_finetuned(ft)

    csv = tmp_path / "in.csv"
    csv.write_text("id,sequence\na,MKTAYIAKQR\n")
    with pytest.raises(SystemExit) as exit_:
        main(["protein", "predict", "--model", str(ft), str(csv), "-o", str(tmp_path / "pred.csv")])
    assert exit_.value.code == 2
    assert f"head.safetensors: tensor '{name}' holds NaN" in capsys.readouterr().err
    assert not (tmp_path / "pred.csv").exists()


class NeedsCode:
    """Pickling an instance records this class: loading it back would run code."""


def test_adapter_that_needs_pickled_code_is_refused(tmp_path, model_dir):
    ft = finetuned(tmp_path, model_dir, strategy="lora")
    adapter = ft / "adapter"
    state = load_file(str(adapter / "adapter_model.safetensors"))
    assert load_finetuned(ft).model.trunk is not None  # the untouched adapter loads

    (adapter / "adapter_model.safetensors").unlink()
    with open(adapter / "adapter_model.bin", "wb") as f:
        pickle.dump({**state, "extra": NeedsCode()}, f, protocol=2)
    with pytest.raises(CheckpointError) as err:
        load_finetuned(ft)
    assert one_line(err.value).startswith(f"{adapter / 'adapter_model.bin'}: refuses to unpickle")

    key = next(iter(state))
    save_file({**state, key: torch.full_like(state[key], float("inf"))}, str(adapter / "adapter_model.safetensors"))
    with pytest.raises(CheckpointError, match=rf"adapter_model.safetensors: tensor '{key}' holds NaN or infinite"):
        load_finetuned(ft)


def test_an_imported_checkpoint_with_nan_is_refused_by_the_loader(tmp_path):
    """fair-esm ``.pt`` through ``load_for_modality`` (what --from, finetune and export use)."""
    from foundry.loading import load_for_modality
    from foundry.plugins import get_manager
    from test_convert_esm import fair_esm_model, save_fair_esm

    ref = fair_esm_model(layers=1, dim=32, heads=2)
    with torch.no_grad():
        ref.embed_tokens.weight[4, 0] = float("nan")
    pt = save_fair_esm(ref, tmp_path / "esm2_t1_tiny.pt")
    with pytest.raises(CheckpointError, match=r"esm2_t1_tiny.pt: tensor 'embed_tokens.weight' holds NaN or infinite values \(1 of "):
        load_for_modality(pt, get_manager().modality("protein"))
