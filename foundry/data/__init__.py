"""Token data: documents tokenized into arrays (in memory or memory-mapped shards), the
deterministic sampler, and the packer that fills fixed token budgets."""
