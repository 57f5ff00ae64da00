"""Reading and writing Hugging Face tokenizer directories (no network, local files only).

Used by ``BpeTokenizer.from_hf`` / ``save_hf``. Knows the three files transformers writes
(``tokenizer.json``, ``tokenizer_config.json``, ``special_tokens_map.json``) and GPT-2's older
``vocab.json`` + ``merges.txt`` (+ ``added_tokens.json``) layout.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

from foundry.atomic import atomic_write_text
from foundry.errors import CheckpointError

ROLES = ("pad", "bos", "eos", "unk", "mask")

#: Used only when a directory has neither tokenizer_config.json nor special_tokens_map.json.
GUESSES = {
    "bos": ("<|bos|>", "<s>", "<|begin_of_text|>", "<|endoftext|>"),
    "eos": ("<|eos|>", "</s>", "<|end_of_text|>", "<|endoftext|>"),
    "unk": ("<|unk|>", "<unk>"),
    "pad": ("<|pad|>", "<pad>"),
    "mask": ("<|mask|>", "<mask>"),
}

VERY_LARGE_INTEGER = int(1e30)  # transformers' "no limit" model_max_length


# -- small file helpers --------------------------------------------------------------------------


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temp file and a rename: never a half-written file."""
    atomic_write_text(path, text)


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from None


def read_tokenizer_json(path: Path) -> Tokenizer:
    if not path.exists():
        raise CheckpointError(f"{path}: file not found (a tokenizer directory needs tokenizer.json)")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception with serde's message
        raise CheckpointError(f"{path}: not a valid tokenizers file ({str(exc).splitlines()[0]})") from None


# -- reading ---------------------------------------------------------------------------------


def read_hf_directory(directory: Path) -> tuple[Tokenizer, dict[str, str | None], list[str]]:
    """Return (tokenizer, role → token, extra special tokens) for an HF tokenizer directory."""
    if not directory.is_dir():
        raise CheckpointError(
            f"{directory}: no such tokenizer directory. foundry never downloads: pass a local folder "
            "holding tokenizer.json (or vocab.json + merges.txt), e.g. a Hugging Face snapshot"
        )
    config = _optional_json(directory / "tokenizer_config.json")
    smap = _optional_json(directory / "special_tokens_map.json")
    extras = _extra_tokens(config) or _extra_tokens(smap)
    if (directory / "tokenizer.json").exists():
        tk = read_tokenizer_json(directory / "tokenizer.json")
    elif (directory / "vocab.json").exists() and (directory / "merges.txt").exists():
        tk = _gpt2_from_vocab_merges(directory)
    elif (directory / "tokenizer.model").exists():
        raise CheckpointError(
            f"{directory}: only a SentencePiece tokenizer.model is here; foundry reads tokenizer.json. "
            "Convert once with: python -c \"from transformers import AutoTokenizer as A; "
            f"A.from_pretrained('{directory}').save_pretrained('{directory}')\" (needs sentencepiece)"
        )
    else:
        raise CheckpointError(
            f"{directory}: no tokenizer found (expected tokenizer.json, or vocab.json + merges.txt)"
        )
    roles: dict[str, str | None] = {}
    for role in ROLES:
        token = _content(config.get(f"{role}_token")) or _content(smap.get(f"{role}_token"))
        roles[role] = token if token is not None and tk.token_to_id(token) is not None else None
    if not config and not smap:
        for role, names in GUESSES.items():
            roles[role] = next((n for n in names if tk.token_to_id(n) is not None), None)
    # Make sure every role token counts as special (GPT-2's vocab.json knows nothing of roles).
    present = [t for t in list(roles.values()) + extras if t is not None and tk.token_to_id(t) is not None]
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in dict.fromkeys(present)])
    return tk, roles, [t for t in extras if tk.token_to_id(t) is not None]


def adds_bos(directory: Path, tk: Tokenizer, bos: str | None) -> bool:
    """Whether the original tokenizer puts bos in front (config flag, else its post-processor)."""
    if bos is None:
        return False
    config = _optional_json(directory / "tokenizer_config.json")
    flag = config.get("add_bos_token")
    if isinstance(flag, bool):
        return flag
    ids = tk.encode("a", add_special_tokens=True).ids
    return bool(ids) and ids[0] == tk.token_to_id(bos)


def _gpt2_from_vocab_merges(directory: Path) -> Tokenizer:
    try:
        model = models.BPE.from_file(str(directory / "vocab.json"), str(directory / "merges.txt"))
    except Exception as exc:
        raise CheckpointError(f"{directory}: cannot read vocab.json + merges.txt ({str(exc).splitlines()[0]})") from None
    tk = Tokenizer(model)
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.post_processor = processors.ByteLevel(trim_offsets=False)
    added_path = directory / "added_tokens.json"
    if added_path.exists():
        for token, want in sorted(read_json(added_path).items(), key=lambda kv: kv[1]):
            if tk.token_to_id(token) is None:
                tk.add_tokens([AddedToken(token, normalized=False)])
            if tk.token_to_id(token) != want:
                raise CheckpointError(f"{added_path}: token {token!r} should have id {want}, but ids do not line up")
    return tk


def _optional_json(path: Path) -> dict:
    if not path.exists():
        return {}
    data = read_json(path)
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def _content(value: Any) -> str | None:
    """A special token as written by transformers: a string or an AddedToken dict."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def _extra_tokens(config: dict) -> list[str]:
    out: list[str] = []
    for key in ("additional_special_tokens", "extra_special_tokens"):
        value = config.get(key)
        items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
        out += [t for t in (_content(v) for v in items) if t is not None and t not in out]
    return out


# -- writing ---------------------------------------------------------------------------------


def write_hf_configs(directory: Path, roles: dict[str, str | None], extras: Sequence[str], *, add_bos: bool) -> None:
    """``tokenizer_config.json`` and ``special_tokens_map.json`` for ``PreTrainedTokenizerFast``.

    The directory is for generating with transformers, so it behaves like any HF causal tokenizer:
    bos in front when foundry's ``encode`` puts one (Llama yes, GPT-2 no), never an eos at the end
    (a prompt must not end the document), and special-token strings written in a prompt
    (``<|fim_prefix|>`` ...) become their ids (``split_special_tokens`` false, transformers' default).
    """
    named = {f"{role}_token": token for role, token in roles.items() if token is not None}
    special_map = dict(named)
    if extras:
        special_map["additional_special_tokens"] = list(extras)
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **special_map,
        "add_bos_token": add_bos,
        "add_eos_token": False,
        "split_special_tokens": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": VERY_LARGE_INTEGER,
    }
    write_atomic(directory / "tokenizer_config.json", json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    write_atomic(directory / "special_tokens_map.json", json.dumps(special_map, indent=2, ensure_ascii=False) + "\n")
