"""Built-in modality plugins (protein, text, code), loaded through the ``foundry`` entry points."""
