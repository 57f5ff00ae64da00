"""Key/value cache for incremental (autoregressive) decoding.

Each layer keeps the rotated keys and the values of every position seen so far in buffers
allocated once for the whole generation, so a decoding step computes attention for the new tokens
only: O(T) work per step instead of re-running the whole prefix.

    cache = KVCache.for_model(model, batch=B, max_len=prompt_len + max_new_tokens)
    logits = model.forward_cached(prompt, cache, positions, attention_mask)   # prefill
    logits = model.forward_cached(next_token, cache, positions + ...)         # one step

Rows may be left-padded (batched prompts of different lengths): ``key_valid`` remembers which
slots hold real tokens, and each row carries its own positions (0 at its first real token), so a
padded row decodes exactly as it would alone.
"""

from __future__ import annotations

import torch

from .config import ModelConfig


class LayerCache:
    """One layer's keys and values, (B, S_max, K, d) each; ``filled`` slots are in use."""

    def __init__(self, k: torch.Tensor, v: torch.Tensor):
        self.k, self.v, self.filled = k, v, 0

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new (B, T, K, d) keys/values; return all of them so far, (B, filled, K, d)."""
        end = self.filled + k.shape[1]
        if end > self.k.shape[1]:
            raise ValueError(f"KV cache overflow: {end} positions, room for {self.k.shape[1]}")
        self.k[:, self.filled : end] = k
        self.v[:, self.filled : end] = v
        self.filled = end
        return self.k[:, :end], self.v[:, :end]


class KVCache:
    def __init__(self, cfg: ModelConfig, batch: int, max_len: int, device, dtype: torch.dtype):
        shape = (batch, max_len, cfg.kv_heads, cfg.head_dim)
        self.layers = [LayerCache(torch.empty(shape, device=device, dtype=dtype), torch.empty(shape, device=device, dtype=dtype))
                       for _ in range(cfg.n_layer)]
        self.key_valid = torch.zeros(batch, max_len, dtype=torch.bool, device=device)
        self.sliding_window = cfg.sliding_window
        self.length = 0  # slots filled (same in every layer between forward calls)
        self.max_len = max_len

    @classmethod
    def for_model(cls, model, batch: int, max_len: int) -> "KVCache":
        weight = model.embed.weight
        return cls(model.config, batch, max_len, weight.device, weight.dtype)

    def step_mask(self, attention_mask: torch.Tensor) -> torch.Tensor:
        """Record which of the T new tokens are real ((B, T) bool) and return the (B, 1, T, S)
        boolean attention mask of this step (True = may attend), S = slots after the step.

        A query sees real keys at or before its own slot (within the sliding window, if any). A
        padding query sees itself only, as in the trunk's dense path, so no row is all -inf."""
        b, t = attention_mask.shape
        start, end = self.length, self.length + t
        if end > self.max_len:
            raise ValueError(f"KV cache overflow: {end} positions, room for {self.max_len}")
        self.key_valid[:, start:end] = attention_mask
        device = attention_mask.device
        query = torch.arange(start, end, device=device)[:, None]  # (T, 1) slot of each new token
        key = torch.arange(end, device=device)[None, :]  # (1, S)
        allowed = (key <= query) & self.key_valid[:, None, :end]  # (B, T, S)
        if self.sliding_window is not None:
            allowed &= (query - key) < self.sliding_window
        allowed |= key == query
        self.length = end
        return allowed[:, None]
