"""What a modality plugin declares about itself.

The engine reads this to run ``foundry NAME pretrain`` without knowing anything about the
domain: which objective, which presets, which default corpus, how to build the tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from .readers import Document
from .tokenizer import Tokenizer


@dataclass(frozen=True)
class Modality:
    name: str
    description: str
    #: the registered objective pretraining uses: "mlm" (masked, BERT/ESM), "clm" (causal,
    #: GPT/Llama), "fim" (causal with fill-in-the-middle) or one a plugin registers
    objective: str
    #: model presets this modality offers (names in ``foundry.model.presets``); first is default
    presets: tuple[str, ...]
    #: reader names (``foundry.readers``) that turn this modality's files into documents
    readers: tuple[str, ...]
    #: ``build_tokenizer(documents, settings)`` returns the tokenizer for a new run. Fixed
    #: vocabularies ignore the documents; learned ones (BPE) train on them.
    build_tokenizer: Callable[[Iterable[Document], dict[str, Any]], Tokenizer]
    #: default corpus when ``--data`` is not given (bundled real data)
    default_data: Callable[[], list[Path]]
    #: run-config overrides applied before the user's (e.g. a shorter ``max_len`` for text)
    config_defaults: dict[str, Any] = field(default_factory=dict)
    #: ``import_tokenizer(path, source_format)``: the tokenizer that goes with an outside model
    #: (a fair-esm checkpoint, an HF directory) being imported; None = this modality imports none
    import_tokenizer: Callable[[Path, str], Tokenizer] | None = None
    #: True when ``build_tokenizer`` learns its vocabulary from the documents (BPE): a model from
    #: scratch outside pretraining (``finetune --model``) then needs an existing tokenizer
    learned_vocabulary: bool = False

    @property
    def default_preset(self) -> str:
        return self.presets[0]
