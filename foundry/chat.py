"""Conversations to tokens: chat templates, the loss mask of instruction tuning, and the JSONL rows
SFT and DPO read.

Two row shapes (one JSON object per line):

- ``{"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}``: rendered with
  a chat template; the loss is on the assistant turns only (with the end-of-turn text the
  template writes after them, so the model learns to stop).
- ``{"prompt": "...", "completion": "..."}``: plain text, no template (the TRL convention for
  non-conversational data): bos + prompt + completion + eos, loss on completion and eos.

The chat template is a Jinja string in the Hugging Face format (``messages``,
``add_generation_prompt``, ``bos_token``, ``eos_token``), so a model's own template works as it
does in transformers. Which one a run uses (``find_template``): ``tune.chat_template`` (a file),
else the model's own (saved by an earlier SFT run in ``model.json``, or an imported Hugging Face
tokenizer's ``chat_template``), else ``DEFAULT_CHAT_TEMPLATE`` unless ``tune.default_template`` is
false. The template used is saved with the tuned model and exported into ``tokenizer_config.json``.

Tokenization is segment by segment: the rendered conversation is cut where each assistant turn
starts and ends (found by rendering the conversation up to that turn with and without it), each
piece is encoded alone, and the assistant pieces are the targets. A prompt tokenized for
generation (``render_prompt``) therefore gives exactly the ids training saw.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .errors import DataError
from . import jsonl

ROLES = ("system", "user", "assistant")

#: The template a model without its own gets (documented in the README): plain-text role headers,
#: the tokenizer's bos in front and its eos closing every assistant turn, so no new token (and no
#: resized embedding) is needed. ``add_generation_prompt`` opens an assistant turn.
DEFAULT_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ '### System:\n' + message['content'] + '\n\n' }}"
    "{% elif message['role'] == 'user' %}{{ '### User:\n' + message['content'] + '\n\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ '### Assistant:\n' + message['content'] + eos_token + '\n\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '### Assistant:\n' }}{% endif %}"
)


@dataclass
class Encoded:
    """One training sequence: ``ids`` and ``target`` (True where the token is predicted and scored)."""

    ids: np.ndarray
    target: np.ndarray

    @property
    def prompt_length(self) -> int:
        """Tokens before the first target."""
        hits = np.flatnonzero(self.target)
        return int(hits[0]) if len(hits) else len(self.ids)


# -- templates ---------------------------------------------------------------------------------


@dataclass
class ChatTemplate:
    source: str  # where it came from: a file, "model.json", an HF tokenizer_config.json, "default"
    text: str

    def render(self, messages: list[dict], tokenizer, add_generation_prompt: bool = False) -> str:
        return _compile(self.text)(messages=messages, add_generation_prompt=add_generation_prompt, **_special_strings(tokenizer))


_COMPILED: dict[str, Any] = {}


def _compile(text: str):
    """A template compiled the way transformers compiles it (sandboxed, trim/lstrip blocks)."""
    if text not in _COMPILED:
        from jinja2.exceptions import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message):
            raise TemplateError(message)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
        env.filters["tojson"] = lambda x, indent=None, **_: json.dumps(x, ensure_ascii=False, indent=indent)
        env.globals["raise_exception"] = raise_exception
        template = env.from_string(text)
        _COMPILED[text] = lambda **kw: template.render(**kw)
    return _COMPILED[text]


def _special_strings(tokenizer) -> dict[str, str]:
    def text(token_id):
        if token_id is None or not hasattr(tokenizer, "id_to_token"):
            return ""
        return tokenizer.id_to_token(token_id) or ""

    return {"bos_token": text(tokenizer.bos_id), "eos_token": text(tokenizer.eos_id), "pad_token": text(tokenizer.pad_id)}


def model_template(spec: str | Path) -> ChatTemplate | None:
    """The chat template a model comes with: ``model.json`` extras of a foundry model dir, or the
    ``chat_template`` of a Hugging Face directory (``tokenizer_config.json`` or ``chat_template.jinja``)."""
    path = Path(spec)
    if (path / "model.json").is_file():
        from .model.store import read_meta

        text = (read_meta(path).get("extras") or {}).get("chat_template")
        return ChatTemplate(f"{path / 'model.json'}", text) if text else None
    jinja = path / "chat_template.jinja"
    if jinja.is_file():
        return ChatTemplate(str(jinja), jinja.read_text(encoding="utf-8"))
    config = path / "tokenizer_config.json"
    if config.is_file():
        try:
            value = json.loads(config.read_text(encoding="utf-8")).get("chat_template")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            return None
        if isinstance(value, list):  # named templates: transformers uses "default"
            value = next((t.get("template") for t in value if isinstance(t, dict) and t.get("name") == "default"), None)
        return ChatTemplate(str(config), value) if isinstance(value, str) and value else None
    return None


def find_template(spec: str | Path | None, template_file: str | None, allow_default: bool) -> ChatTemplate | None:
    """The template a run uses (see the module docstring); None when there is none and the
    default is not allowed (only conversations need one)."""
    if template_file:
        path = Path(template_file)
        if not path.is_file():
            raise DataError(f"{path}: chat template file not found (tune.chat_template)")
        return ChatTemplate(str(path), path.read_text(encoding="utf-8"))
    own = model_template(spec) if spec else None
    if own is not None:
        return own
    return ChatTemplate("default", DEFAULT_CHAT_TEMPLATE) if allow_default else None


# -- encoding ----------------------------------------------------------------------------------


def encode_piece(tokenizer, text: str) -> list[int]:
    """``text`` as ids with no bos/eos added; special-token strings in it (a template's
    ``<|im_start|>``, ``eos_token``) become their ids when the tokenizer can do that."""
    if not text:
        return []
    if hasattr(tokenizer, "encode_prompt"):
        prefix = len(tokenizer.encode_prompt(""))  # bos, when the tokenizer puts one in front
        return [int(i) for i in tokenizer.encode_prompt(text)[prefix:]]
    return [int(i) for i in tokenizer.encode(text, add_special_tokens=False)]


def encode_pieces(tokenizer, pieces: list[tuple[str, bool]]) -> Encoded:
    ids: list[int] = []
    target: list[bool] = []
    for text, scored in pieces:
        piece = encode_piece(tokenizer, text)
        ids += piece
        target += [scored] * len(piece)
    return Encoded(np.asarray(ids, dtype=np.int64), np.asarray(target, dtype=bool))


def conversation_pieces(messages: list[dict], template: ChatTemplate, tokenizer) -> list[tuple[str, bool]]:
    """The rendered conversation cut into (text, is_assistant) pieces. Raises ``ValueError`` when
    the template does not render a conversation as the concatenation of its turns."""
    full = template.render(messages, tokenizer)
    pieces, at = [], 0
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = template.render(messages[:i], tokenizer, add_generation_prompt=True)
        through = template.render(messages[: i + 1], tokenizer)
        if not (through.startswith(before) and full.startswith(through) and len(before) >= at):
            raise ValueError(f"the chat template ({template.source}) does not render the conversation turn by turn "
                             f"(message {i}): cannot tell which tokens are the assistant's")
        pieces += [(full[at:len(before)], False), (full[len(before):len(through)], True)]
        at = len(through)
    pieces.append((full[at:], False))
    return [p for p in pieces if p[0]]


def prompt_completion_pieces(prompt: str, completion: str, tokenizer) -> list[tuple[str, bool]]:
    """Plain text: bos + prompt | completion + eos (no template)."""
    bos = _special_strings(tokenizer)["bos_token"] if tokenizer.bos_id is not None else ""
    eos = _special_strings(tokenizer)["eos_token"] if tokenizer.eos_id is not None else ""
    return [(bos + prompt, False), (completion + eos, True)]


def render_prompt(messages_or_prompt: list[dict] | str, template: ChatTemplate | None, tokenizer) -> np.ndarray:
    """The ids to generate the answer from, as training saw them: a conversation through the
    template with an assistant turn opened, or bos + a plain prompt."""
    if isinstance(messages_or_prompt, str):
        return encode_pieces(tokenizer, prompt_completion_pieces(messages_or_prompt, "", tokenizer)[:1]).ids
    if template is None:
        raise DataError("a conversation needs a chat template")
    return encode_pieces(tokenizer, [(template.render(messages_or_prompt, tokenizer, add_generation_prompt=True), False)]).ids


# -- reading JSONL -----------------------------------------------------------------------------


def read_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) for every non-blank line (``foundry.jsonl``), places named "FILE line N"."""
    return jsonl.read_jsonl(path, place=lambda file, number: f"{file} line {number}")


def text_field(row: dict, key: str, where: str, allow_empty: bool = False) -> str:
    if key not in row:
        raise DataError(f"{where}: missing field \"{key}\" (has {', '.join(map(repr, row)) or 'no fields'})")
    value = row[key]
    if not isinstance(value, str):
        raise DataError(f"{where}: \"{key}\" must be a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise DataError(f"{where}: empty \"{key}\"")
    return value


def check_messages(row: dict, where: str) -> list[dict]:
    messages = row["messages"]
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: \"messages\" must be a non-empty list of {{\"role\", \"content\"}} objects")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise DataError(f"{where}: message {i} is not an object")
        role = message.get("role")
        if role not in ROLES:
            raise DataError(f"{where}: message {i} has unknown role {role!r}; expected one of {', '.join(ROLES)}")
        text_field(message, "content", f"{where}: message {i}", allow_empty=role != "assistant")
    if not any(m["role"] == "assistant" for m in messages):
        raise DataError(f"{where}: no assistant message: nothing to learn from")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def encode_sft_row(row: dict, where: str, tokenizer, template: ChatTemplate | None, max_len: int, no_template_hint: str) -> Encoded:
    """One SFT row (either shape) as ids + targets, checked: a prompt that leaves no room for the
    answer within ``max_len`` tokens is an error; a long answer is cut at ``max_len``."""
    if "messages" in row:
        messages = check_messages(row, where)
        if template is None:
            raise DataError(f"{where}: a conversation needs a chat template and {no_template_hint}")
        try:
            encoded = encode_pieces(tokenizer, conversation_pieces(messages, template, tokenizer))
        except ValueError as exc:
            raise DataError(f"{where}: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - a template error (raise_exception, undefined) names the row
            raise DataError(f"{where}: the chat template ({template.source}) failed: {exc}") from None
    elif "prompt" in row or "completion" in row:
        prompt = text_field(row, "prompt", where, allow_empty=True)
        completion = text_field(row, "completion", where)
        encoded = encode_pieces(tokenizer, prompt_completion_pieces(prompt, completion, tokenizer))
    else:
        raise DataError(f"{where}: expected \"messages\", or \"prompt\" and \"completion\" (has {', '.join(map(repr, row)) or 'no fields'})")
    if encoded.prompt_length >= max_len:
        raise DataError(f"{where}: the prompt is {encoded.prompt_length} tokens, longer than the context "
                        f"(data.max_len {max_len}) leaves room for")
    return Encoded(encoded.ids[:max_len], encoded.target[:max_len])
