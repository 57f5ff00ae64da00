"""foundry-dna: an example third-party modality (DNA as nucleotide tokens)."""
