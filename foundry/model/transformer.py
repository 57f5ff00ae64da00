"""The one trunk. ESM-2, Llama, Mistral and GPT-2 are flag settings of ``ModelConfig``.

    model = Transformer(from_name("esm2_tiny"))
    out = model(tokens)                      # tokens: LongTensor (B, T)
    out.logits                               # (B, T, vocab)

Reading order: embeddings (+ ESM token dropout) -> pre-norm blocks -> final norm -> LM head.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from . import masks
from .config import ModelConfig
from .layers import Block, ESMLMHead, make_norm, rope_cos_sin


@dataclass
class TransformerOutput:
    logits: torch.Tensor | None  # (B, T, vocab); None when need_logits=False
    hidden_states: dict[int, torch.Tensor] = field(default_factory=dict)  # idx -> (B, T, D)
    attentions: torch.Tensor | None = None  # (B, n_layer, n_head, T, T) when need_attention


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model, padding_idx=cfg.pad_id)
        self.pos_embed = nn.Embedding(cfg.max_position, cfg.d_model) if cfg.pos == "learned" else None
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.final_norm = make_norm(cfg) if cfg.final_norm else None
        if cfg.lm_head == "esm":
            self.lm_head: nn.Module | None = ESMLMHead(cfg)
        else:
            self.lm_head = None if cfg.tie_embeddings else nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        # Heads that read the trunk's outputs and travel with it (a modality's head fitted on
        # attention maps, say): saved beside the trunk by model/store.py, rebuilt through the head
        # registry. Kept out of the module tree on purpose: the trunk's state dict, parameter
        # count, optimizer groups and weight converters see the trunk only. See ``attach``.
        self._attachments: dict[str, nn.Module] = {}
        # train.activation_checkpointing (set by foundry/distributed.py prepare_model): recompute
        # each block in backward instead of keeping its activations
        self.activation_checkpointing = False
        self.reset_parameters()

    # -- init --------------------------------------------------------------------------------

    def reset_parameters(self) -> None:
        """Normal(0, init_std) weights; residual output projections scaled by 1/sqrt(2 n_layer) (GPT-2)."""
        std = self.config.init_std
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                scale = 1 / math.sqrt(2 * self.config.n_layer) if name.endswith(("o_proj", "mlp.down")) else 1.0
                if module.weight.device.type != "meta":
                    nn.init.normal_(module.weight, std=std * scale)
                    if module.bias is not None:
                        nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding) and module.weight.device.type != "meta":
                nn.init.normal_(module.weight, std=std)
                if module.padding_idx is not None:
                    with torch.no_grad():
                        module.weight[module.padding_idx].zero_()

    # -- attachments -------------------------------------------------------------------------

    @property
    def attachments(self) -> dict[str, nn.Module]:
        """name -> attached head (read-only view; use ``attach`` / ``detach``)."""
        return dict(self._attachments)

    def attach(self, name: str, module: nn.Module) -> nn.Module:
        """Attach ``module`` under ``name`` (replacing one of that name). It follows the trunk's
        device, dtype and train/eval mode; ``store.save_model`` writes it as ``<name>_head.safetensors``
        with its ``describe()``, and ``load_model`` rebuilds it by its ``kind``."""
        if not callable(getattr(module, "describe", None)):
            raise TypeError(f"attach({name!r}): the module needs describe() (its kind and sizes) to be saved")
        if self.embed.weight.device.type != "meta":
            module = module.to(self.embed.weight.device)
        module.train(self.training)
        self._attachments[name] = module
        return module

    def detach(self, name: str) -> nn.Module | None:
        return self._attachments.pop(name, None)

    def _apply(self, fn, *args, **kwargs):
        # .to() / .half() / .cuda() reach the attachments too (they are not submodules)
        out = super()._apply(fn, *args, **kwargs)
        for module in self._attachments.values():
            module._apply(fn, *args, **kwargs)
        return out

    def train(self, mode: bool = True):
        for module in getattr(self, "_attachments", {}).values():
            module.train(mode)
        return super().train(mode)

    # -- forward -----------------------------------------------------------------------------

    def forward(
        self,
        tokens: torch.Tensor,  # (B, T) long
        attention_mask: torch.Tensor | None = None,  # (B, T) bool, True = real token
        document_ids: torch.Tensor | None = None,  # (B, T) long, packed rows
        need_hidden=(),
        need_attention: bool = False,
        need_logits: bool = True,
    ) -> TransformerOutput:
        cfg = self.config
        b, t = tokens.shape
        if attention_mask is None and cfg.pad_id is not None:
            attention_mask = tokens.ne(cfg.pad_id)
        if attention_mask is not None:
            attention_mask = attention_mask.bool()
        positions = masks.position_ids(document_ids, b, t, tokens.device)  # (B|1, T)
        x = self.embed_tokens(tokens, attention_mask, document_ids, positions)  # (B, T, D)

        need_hidden = set(need_hidden)
        bad = [i for i in need_hidden if not 0 <= i <= cfg.n_layer]
        if bad:
            raise ValueError(f"need_hidden: layer indices {bad} outside 0..{cfg.n_layer}")
        hidden = {0: x} if 0 in need_hidden else {}

        # Who may attend to whom; each layer's attention picks its kernel from it (attention.py).
        spec = masks.AttentionSpec(attention_mask, document_ids, cfg.causal, t, tokens.device, cfg.sliding_window, cfg.attn_impl)
        rope = rope_cos_sin(positions, cfg.head_dim, cfg.rope_theta, x.dtype) if cfg.pos == "rope" else None
        weights = []
        for i, block in enumerate(self.blocks, start=1):
            if self.activation_checkpointing and self.training and torch.is_grad_enabled():
                # keep only the block's input; backward recomputes the rest (same dropout: RNG is replayed)
                x, w = checkpoint(block, x, rope, spec, cfg.causal, need_attention, use_reentrant=False)
            else:
                x, w = block(x, rope, spec, cfg.causal, need_attention)
            if i in need_hidden:
                hidden[i] = x
            if need_attention:
                weights.append(w)
        if self.final_norm is not None:
            x = self.final_norm(x)
            if cfg.n_layer in need_hidden:
                hidden[cfg.n_layer] = x  # fair-esm: the last representation has the norm applied

        attentions = None
        if need_attention:
            attentions = torch.stack(weights, dim=1)  # (B, L, H, T, T)
            if attention_mask is not None and not bool(attention_mask.all()):
                real = attention_mask.to(attentions.dtype)
                attentions = attentions * (real[:, :, None] * real[:, None, :])[:, None, None]
        logits = self.logits(x) if need_logits else None
        return TransformerOutput(logits=logits, hidden_states=hidden, attentions=attentions)

    def forward_cached(
        self,
        tokens: torch.Tensor,  # (B, T) long: the new tokens only
        cache,  # model.kv_cache.KVCache holding every earlier position
        positions: torch.Tensor,  # (B, T) long: each row's own positions (left padding: 0 at its first real token)
        attention_mask: torch.Tensor | None = None,  # (B, T) bool, True = real token
        last_only: bool = True,
    ) -> torch.Tensor:
        """Incremental decoding for causal trunks (``foundry.generation``): run the new tokens
        against the cached keys/values, append theirs, return logits (B, 1 or T, vocab).

        Same arithmetic as ``forward`` on the whole sequence (tested step by step), without
        packing, attention maps or hidden states."""
        cfg = self.config
        if not cfg.causal:
            raise ValueError("forward_cached: incremental decoding needs a causal model")
        if attention_mask is None:
            attention_mask = torch.ones_like(tokens, dtype=torch.bool)
        attention_mask = attention_mask.bool()
        x = self.embed_tokens(tokens, attention_mask, None, positions)  # (B, T, D)
        mask = cache.step_mask(attention_mask)  # (B, 1, T, S)
        rope = rope_cos_sin(positions, cfg.head_dim, cfg.rope_theta, x.dtype) if cfg.pos == "rope" else None
        for block, layer_cache in zip(self.blocks, cache.layers):
            x, _ = block(x, rope, mask, False, kv=layer_cache)
        if last_only:
            x = x[:, -1:]
        if self.final_norm is not None:
            x = self.final_norm(x)
        return self.logits(x)

    def embed_tokens(self, tokens, attention_mask, document_ids, positions) -> torch.Tensor:
        """Token (+ learned position) embeddings, ESM token dropout, padded rows zeroed."""
        cfg = self.config
        x = self.embed(tokens)  # (B, T, D)
        if cfg.token_dropout:
            x = self._token_dropout(x, tokens, attention_mask, document_ids)
        if self.pos_embed is not None:
            if positions.max() >= cfg.max_position:
                raise ValueError(f"sequence position {int(positions.max())} >= max_position {cfg.max_position}")
            x = x + self.pos_embed(positions)
        if attention_mask is not None:
            x = x * attention_mask[..., None].to(x.dtype)
        return x

    def _token_dropout(self, x, tokens, attention_mask, document_ids):
        """ESM-2: <mask> embeddings are zeroed, the rest scaled by (1 - train ratio) / (1 - observed ratio).

        The observed ratio is counted per sequence, or per document in a packed row.
        """
        is_mask = tokens.eq(self.config.mask_id)
        x = x.masked_fill(is_mask[..., None], 0.0)
        real = attention_mask if attention_mask is not None else torch.ones_like(is_mask)
        if document_ids is None:
            observed = is_mask.sum(-1).to(x.dtype) / real.sum(-1).clamp(min=1)  # (B,)
            observed = observed[:, None, None]
        else:
            seg = masks.segment_index(document_ids)  # (B, T)
            n_mask = torch.zeros(seg.shape, dtype=x.dtype, device=x.device).scatter_add_(1, seg, is_mask.to(x.dtype))
            n_real = torch.zeros(seg.shape, dtype=x.dtype, device=x.device).scatter_add_(1, seg, real.to(x.dtype))
            observed = (n_mask.gather(1, seg) / n_real.gather(1, seg).clamp(min=1))[..., None]  # (B, T, 1)
        # A window made only of <mask> tokens (observed ratio 1) has nothing left to rescale;
        # clamping keeps it finite instead of dividing by zero (ratios < 1 are unchanged).
        return x * (1 - self.config.mask_ratio_train) / (1 - observed).clamp(min=1e-6)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """Final hidden states (B, T, D) -> logits (B, T, vocab)."""
        if isinstance(self.lm_head, ESMLMHead):
            return self.lm_head(h, self.embed.weight)
        if self.lm_head is None:
            return nn.functional.linear(h, self.embed.weight)
        return self.lm_head(h)

    # -- accounting --------------------------------------------------------------------------

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        """Unique parameters (tied ones once); optionally without token/position embedding tables."""
        params = {id(p): p for p in self.parameters()}
        if exclude_embeddings:
            params.pop(id(self.embed.weight), None)
            if self.pos_embed is not None:
                params.pop(id(self.pos_embed.weight), None)
        return sum(p.numel() for p in params.values())

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token (forward + backward): 6 N + 12 L D T (Kaplan et al.; PaLM appx. B).

        N counts every weight used in a matmul: the trunk plus the output projection (also when it
        is tied to the embedding), not the embedding lookups. The attention term uses ``seq_len``
        (default ``max_position``) and, by convention, ignores causal masking.
        """
        cfg = self.config
        t = seq_len or cfg.max_position
        n = self.num_parameters(exclude_embeddings=True)  # attachments are not parameters of the trunk
        if cfg.tie_embeddings:
            n += cfg.vocab_size * cfg.d_model
        return 6.0 * n + 12.0 * cfg.n_layer * cfg.d_model * t

