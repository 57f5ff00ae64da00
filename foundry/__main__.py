"""``python -m foundry`` — the same as the ``foundry`` command (used by ``accelerate launch -m``)."""

from .cli import main

main()
