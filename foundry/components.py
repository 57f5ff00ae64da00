"""The engine's built-in training components, named by import path so the plugin manager can
list them without importing torch; ``resolve`` imports one when a run needs it.

Plugins add their own through the ``register_objectives`` and ``register_tasks`` hooks, with a
class or, to keep ``foundry plugins`` fast, a ``"module:Class"`` string.
"""

from __future__ import annotations

import importlib
from typing import Any

BUILTIN_OBJECTIVES = {
    "mlm": "foundry.objectives:MaskedLM",
    "clm": "foundry.objectives:CausalLM",
    "fim": "foundry.objectives:FillInTheMiddle",
    "sft": "foundry.objectives_tuning:SupervisedFineTuning",
    "dpo": "foundry.objectives_tuning:DirectPreference",
}

BUILTIN_TASKS = {
    "sequence-regression": "foundry.finetune.tasks:SequenceRegression",
    "sequence-classification": "foundry.finetune.tasks:SequenceClassification",
    "residue-classification": "foundry.finetune.tasks:ResidueClassification",
}


def resolve(item: Any) -> Any:
    """A registered component: the class itself, or the class a ``"module:Class"`` string names."""
    if not isinstance(item, str):
        return item
    module, _, attribute = item.partition(":")
    return getattr(importlib.import_module(module), attribute)


def component_name(item: Any) -> str:
    """The name a component registers under when ``register`` gets it alone: ``cls.name``."""
    if isinstance(item, str):
        raise TypeError("register a \"module:Class\" string with its name: register(name, \"module:Class\")")
    return item.name
