"""foundry: one engine to pretrain and fine-tune transformer foundation models.

The engine (this package) never knows what a token means; modalities (``modalities/`` and
third-party packages) bring tokenizers, readers, heads and CLI commands through pluggy hooks.
"""

__version__ = "0.1.0"
