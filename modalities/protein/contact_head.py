"""ESM's contact predictor (Rao et al. 2020, "Transformer protein language models are unsupervised
structure learners"): every layer's and head's attention map is one feature; symmetrize,
average-product-correct (APC), logistic regression. The same computation as fair-esm's
``ContactPredictionHead``, so an imported fair-esm model's contacts equal ``esm``'s
``predict_contacts``.

    head = contact_head_of(model)                     # the head attached to a Transformer, or None
    probs = predict_contacts(model, tokens)           # (B, T-2, T-2): <cls>/<eos> cropped, as ESM
    attach_contact_head(model, fitted)                # saved with the model (contact_head.safetensors)

The head lives here, in the protein plugin, not in the engine: the engine only carries it as a
generic attachment of the trunk (``Transformer.attach``) and rebuilds it through the head
registry (``foundry.finetune.heads``), which finds it among the heads the ``contact`` task brings.
The same class is the ``attention`` head of ``finetune --task contact`` (its ``forward`` has the
fine-tuning heads' signature and returns logits).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from foundry.finetune.heads import register_head

#: the trunk attachment name; the model directory file is ``contact_head.safetensors``
ATTACHMENT = "contact"


def symmetrize(x: torch.Tensor) -> torch.Tensor:
    return x + x.transpose(-1, -2)


def apc(x: torch.Tensor) -> torch.Tensor:
    """Average product correction: remove the rank-one background a1 * a2 / a12."""
    a1 = x.sum(-1, keepdim=True)
    a2 = x.sum(-2, keepdim=True)
    a12 = x.sum((-1, -2), keepdim=True)
    return x - a1 * a2 / a12


def attention_features(attentions: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """(B, L, H, T, T) attention probabilities, (B, T) positions to keep -> (B, T, T, L*H) features.

    Dropped positions (special tokens, padding) are zeroed before APC, which is the same as
    cropping them (their rows and columns add nothing to APC's sums)."""
    b, l, h, t, _ = attentions.shape
    keep = keep.to(attentions.dtype)
    feats = attentions.reshape(b, l * h, t, t) * (keep[:, :, None] * keep[:, None, :])[:, None]  # (B, C, T, T)
    return apc(symmetrize(feats)).permute(0, 2, 3, 1)  # (B, T, T, C)


@register_head  # also found through the contact task's ``heads`` in a process that never imported this
class ContactRegression(nn.Module):
    """Logistic regression on APC-corrected attention: (B, T, T, L*H) features -> (B, T, T) logits."""

    kind = "attention-contact"
    #: "contact": model directories written before the head moved here record no kind; the
    #: engine falls back to the attachment name
    aliases = ("contact",)
    needs_attention = True

    def __init__(self, n_layer: int, n_head: int, n_out: int = 1, eos_id: int | None = 2, prepend_bos: bool = True,
                 bias: bool = True):
        super().__init__()
        self.n_layer, self.n_head, self.n_out = n_layer, n_head, n_out
        self.eos_id, self.prepend_bos = eos_id, prepend_bos  # ESM's layout: <cls> SEQ <eos>
        self.regression = nn.Linear(n_layer * n_head, 1, bias=bias)

    def forward(self, hidden, tokens, real, residues, attentions=None) -> torch.Tensor:
        """The fine-tuning heads' signature: only residues (``residues`` True) are kept."""
        feats = attention_features(attentions, residues)
        return self.regression(feats.to(self.regression.weight.dtype)).squeeze(-1)  # (B, T, T)

    @torch.no_grad()
    def probabilities(self, tokens: torch.Tensor, attentions: torch.Tensor) -> torch.Tensor:
        """fair-esm's ``ContactPredictionHead``: attention to/from <eos> zeroed, the last position
        (and the first, <cls>) cropped, sigmoid. Padding is already zeroed by the trunk."""
        keep = tokens.ne(self.eos_id) if self.eos_id is not None else torch.ones_like(tokens, dtype=torch.bool)
        if self.prepend_bos:
            keep[:, 0] = False  # ESM crops <cls> before APC; zeroing it is the same
        logits = self.forward(None, tokens, None, keep, attentions)
        if self.eos_id is not None:
            logits = logits[:, :-1, :-1]
        if self.prepend_bos:
            logits = logits[:, 1:, 1:]
        return torch.sigmoid(logits)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "n_layer": self.n_layer, "n_head": self.n_head, "n_out": self.n_out,
                "eos_id": self.eos_id, "prepend_bos": self.prepend_bos, "bias": self.regression.bias is not None}


def contact_head_of(model) -> ContactRegression | None:
    """The contact head attached to a foundry ``Transformer``, or None."""
    return model.attachments.get(ATTACHMENT)


def attach_contact_head(model, head: ContactRegression | None = None) -> ContactRegression:
    """Attach ``head`` (or a fresh, all-zero one sized for ``model``) as the model's contact head."""
    cfg = model.config
    if head is None:
        head = ContactRegression(cfg.n_layer, cfg.n_head)
    if (head.n_layer, head.n_head) != (cfg.n_layer, cfg.n_head):
        raise ValueError(f"a contact head for {head.n_layer} layers x {head.n_head} heads cannot read a model "
                         f"of {cfg.n_layer} x {cfg.n_head}")
    return model.attach(ATTACHMENT, head)


@torch.no_grad()
def predict_contacts(model, tokens: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """(B, T) tokens -> (B, T-2, T-2) contact probabilities through the attached head."""
    head = contact_head_of(model)
    if head is None:
        raise RuntimeError("no contact head attached: import one with fair-esm weights or fit one (contacts --fit)")
    out = model(tokens, attention_mask=attention_mask, need_attention=True, need_logits=False)
    return head.probabilities(tokens, out.attentions)
