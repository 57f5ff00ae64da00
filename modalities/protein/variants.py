"""Zero-shot variant effect scores from a masked protein LM (Meier et al. 2021, ESM-1v), the three
strategies of fair-esm's ``examples/variant-prediction/predict.py``:

- ``masked-marginals`` (the paper's best): mask each mutated position of the wild type, score
  log p(mutant) - log p(wild type) at that position; L forward passes at most (only the
  positions that occur in the input are computed).
- ``wt-marginals``: the same log-odds read from one unmasked pass over the wild type.
- ``pll`` (pseudo-log-likelihood): sum over all positions i of log p(x_i | x without i) for the
  mutant sequence, minus the same for the wild type, L passes per distinct mutant. fair-esm's
  script reports the mutant's raw PLL over positions 1..L-2 (its loop stops two residues short);
  we use every position and subtract the wild type so 0 means "as likely as the wild type", as
  for the other strategies. Rankings (Spearman) differ from the raw PLL only by that constant.

Multi-mutants (``A24G:T50S``) are the sum of their single-mutation log-odds for the marginal
strategies (the additive model of the ESM-1v paper; fair-esm's script handles singles only) and
scored jointly for ``pll``.

    scores = score_variants(pm, wildtype, [parse_mutations("A24G"), ...], "masked-marginals", offset=1)
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from foundry.errors import FoundryError

from .embed import ProteinModel
from .mutations import Mutation, apply_mutations, check_mutations

STRATEGIES = ("masked-marginals", "wt-marginals", "pll")


def _log_probs(pm: ProteinModel, tokens: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(pm.model(tokens.to(pm.device)).logits.float(), dim=-1).cpu()  # (B, T, V)


@torch.no_grad()
def masked_log_probs(pm: ProteinModel, sequence: str, positions: Sequence[int], batch_tokens: int = 4096) -> dict[int, torch.Tensor]:
    """{i: (V,) log-probabilities at 0-based residue i with that residue masked}, batched."""
    base = torch.from_numpy(pm.tokenizer.encode(sequence))  # <cls> seq <eos>
    rows = max(1, batch_tokens // len(base))
    positions = sorted(set(positions))
    out = {}
    for start in range(0, len(positions), rows):
        chunk = positions[start : start + rows]
        tokens = base.repeat(len(chunk), 1)
        cols = torch.tensor(chunk) + 1  # +1 for <cls>
        tokens[torch.arange(len(chunk)), cols] = pm.tokenizer.mask_id
        lp = _log_probs(pm, tokens)
        for r, i in enumerate(chunk):
            out[i] = lp[r, i + 1]
    return out


@torch.no_grad()
def pseudo_log_likelihood(pm: ProteinModel, sequence: str, batch_tokens: int = 4096) -> float:
    ids = pm.tokenizer.encode(sequence, add_special_tokens=False)
    lp = masked_log_probs(pm, sequence, range(len(ids)), batch_tokens)
    return float(sum(lp[i][int(t)] for i, t in enumerate(ids)))


def score_variants(pm: ProteinModel, wildtype: str, variants: Sequence[Sequence[Mutation]], strategy: str = "masked-marginals",
                   offset: int = 1, batch_tokens: int = 4096, where: Sequence[str] | None = None, progress=None) -> np.ndarray:
    """One score per variant (higher = more like the wild type or better), float64.

    ``where[k]`` names variant k in error messages (file and line).
    """
    if strategy not in STRATEGIES:
        raise FoundryError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    where = where or [f"variant {k + 1}" for k in range(len(variants))]
    indices = [check_mutations(v, wildtype, offset, where[k]) for k, v in enumerate(variants)]
    tok = pm.tokenizer.token_to_id
    scores = np.zeros(len(variants), dtype=np.float64)
    if strategy == "pll":
        wt_pll = pseudo_log_likelihood(pm, wildtype, batch_tokens)
        cache: dict[str, float] = {wildtype: wt_pll}
        for k, v in enumerate(variants):
            mutant = apply_mutations(wildtype, v, offset)
            if mutant not in cache:
                cache[mutant] = pseudo_log_likelihood(pm, mutant, batch_tokens)
            scores[k] = cache[mutant] - wt_pll
            if progress is not None:
                progress(1)
        return scores
    if strategy == "wt-marginals":
        with torch.no_grad():
            lp = _log_probs(pm, torch.from_numpy(pm.tokenizer.encode(wildtype))[None])[0]
        table = {i: lp[i + 1] for idx in indices for i in idx}
    else:
        table = masked_log_probs(pm, wildtype, [i for idx in indices for i in idx], batch_tokens)
    for k, (v, idx) in enumerate(zip(variants, indices)):
        scores[k] = sum(float(table[i][tok[m.mt]] - table[i][tok[m.wt]]) for m, i in zip(v, idx))
    return scores
