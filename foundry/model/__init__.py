"""The one trunk (``Transformer``), its config, presets, heads and the model directory store."""

from .config import ModelConfig
from .heads import AttentionContactHead
from .presets import PRESETS, from_name, list_presets
from .transformer import Transformer, TransformerOutput

__all__ = [
    "ModelConfig", "PRESETS", "from_name", "list_presets", "Transformer", "TransformerOutput",
    "AttentionContactHead",
]
