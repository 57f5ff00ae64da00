"""Every pluggy hook foundry calls, in one file.

A plugin is a module (or object) with functions decorated by ``foundry.hookimpl`` whose names
match the specs below. It is found through the ``foundry`` entry-point group, the route the
built-in modalities take too (see ``pyproject.toml``).

Contribution hooks receive a ``register`` callback instead of returning values (the style of
simonw/llm): a plugin may register any number of things, and the registry that receives them
checks names and reports duplicates with both packages named.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("foundry")
hookimpl = pluggy.HookimplMarker("foundry")


@hookspec
def register_modalities(register):
    """Called once when the plugin manager starts.

    ``register(modality)`` takes a ``foundry.modality.Modality``: its name becomes a CLI group
    (``foundry NAME …``) and a value of ``modality`` in run configs.
    """


@hookspec
def register_tokenizers(register):
    """Called once when the plugin manager starts.

    ``register(kind, cls)`` maps a tokenizer kind (the string stored in checkpoints) to a class
    implementing ``foundry.tokenizer.Tokenizer``; ``cls.load(directory)`` must restore it.
    """


@hookspec
def register_readers(register):
    """Called once when the plugin manager starts.

    ``register(reader)`` takes a ``foundry.readers.Reader``: a name, the file suffixes it reads
    and a function ``path -> Iterator[Document]``.
    """


@hookspec
def register_presets(register):
    """Called once when the plugin manager starts, before ``register_modalities``.

    ``register(name, spec)`` adds a model preset: ``spec`` is plain data (a dict of
    ``foundry.model.config.ModelConfig`` fields with numbers, strings, booleans, plus an optional
    ``source`` saying where the shapes come from). No torch is needed to register or list presets;
    the fields are validated when a run builds the model. A modality lists the names in
    ``Modality.presets``; the engine's own presets (``foundry/presets.py``) cannot be replaced.
    """


@hookspec
def register_objectives(register):
    """Called once when the plugin manager starts.

    ``register(cls)`` adds a self-supervised objective, a subclass of
    ``foundry.objectives.Objective`` named by ``cls.name``; ``register(name, "module:Class")``
    does the same without importing it until a run uses it (keeps ``foundry plugins`` fast).
    A run uses it when its modality names it (``Modality.objective``) or through
    ``--set objective.name=NAME``. The engine's ``mlm``, ``clm`` and ``fim`` cannot be replaced.
    ``cls.batch_kind`` says what data it trains on; a command offers only objectives of its data's
    kind (``foundry.objectives.objectives_for``).
    """


@hookspec
def register_tasks(register):
    """Called once when the plugin manager starts.

    ``register(cls)`` (or ``register(name, "module:Class")``) adds a fine-tuning task, a subclass
    of ``foundry.finetune.tasks.Task``: label parsing, how a split is read, head, loss, metrics,
    prediction columns and its own options. ``foundry MODALITY finetune`` offers it when its
    ``modalities`` (None: all) admits the modality.
    """


@hookspec
def register_commands(cli):
    """Called when the CLI is built, with the root ``click.Group``.

    Add command groups or commands with ``cli.add_command(...)``. A modality usually adds one
    group named after itself, built with ``foundry.cli_common.modality_group``.
    """
