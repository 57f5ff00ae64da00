"""The protein modality: ESM-2 amino-acid tokens, FASTA reading, protein commands.

Loaded through the ``foundry`` entry point ``protein = "modalities.protein.plugin"``, the same
route a third-party modality takes. ``alphabet.EsmTokenizer`` is the fair-esm ESM-1b/ESM-2
vocabulary (33 tokens, same ids); ``fasta.read_fasta`` reads FASTA and FASTA.gz through
biopython; ``data/uniprot_sample.fasta.gz`` is the bundled default corpus (see data/SOURCES.md).
"""
