"""The one trunk (``Transformer``), its config, presets and the model directory store."""

from .config import ModelConfig
from .presets import PRESETS, from_name, list_presets
from .transformer import Transformer, TransformerOutput

__all__ = [
    "ModelConfig", "PRESETS", "from_name", "list_presets", "Transformer", "TransformerOutput",
]
