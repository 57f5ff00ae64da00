"""Catastrophic forgetting, measured: the pretraining objective on held-out pretraining data,
before and after fine-tuning, and replay of pretraining batches as a guard.

Which documents. A model directory written by ``pretrain`` sits in its run (``RUN/final`` or
``RUN/checkpoints/step-N/model``) next to the run's ``config.yaml``, which records the data the
run used (paths, or a weighted mixture) and its split rule (``data.valid_fraction``,
``data.max_valid_docs``, ``split_by_id``). ``pretraining_split`` rebuilds that split exactly as
``foundry.corpus`` made it, so the probe scores documents the model never trained on, and replay
draws from documents it did train on. Without a recorded run (an imported model, a model dir
copied elsewhere), the modality's bundled corpus is split the same way, and the description says
that its documents may overlap the model's training data. Documents given explicitly
(``--forgetting-data``) are used whole, minus any that the recorded run trained on.

``ForgettingProbe`` fixes everything random once (which documents, which positions are masked
and how), so "before" and "after" score the very same targets: any difference is the model. The
objective is the pretraining run's own (its ``objective.*`` settings when recorded), evaluated as
validation is (FIM off): the masked-LM loss for a masked trunk, the next-token loss for a causal
one. The LM head is the pretrained one: fine-tuning never trains it (except through replay), so
the loss reflects what the trunk still represents.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..config import ObjectiveSection, RunConfig
from ..errors import FoundryError
from ..objectives import IGNORE_INDEX, build_objective, lm_loss
from ..tokenizer import pad_batch

PROBE_SEED = 20_240_601
PROBE_MAX_LEN = 256  # tokens per probe document (cropped): the probe is a measurement, not training
REPLAY_DOCS = 4000


# -- which documents ----------------------------------------------------------------------------


@dataclass
class PretrainingData:
    documents: list[np.ndarray]  # token ids, in the split's order
    source: str  # one line for the report: which data, which split, and why
    run: RunConfig | None = None  # the pretraining run's config, when recorded


def pretraining_run(model_path: str | Path) -> tuple[RunConfig, Path] | None:
    """(config, run dir) of the ``pretrain`` run that wrote ``model_path``, or None.

    ``RUN/final`` and ``RUN/checkpoints/step-N/model`` are the model dirs a run writes; the run's
    ``config.yaml`` says what data it used. A config that no longer loads is treated as absent.
    """
    from ..config import build_config, load_yaml

    path = Path(model_path)
    if path.name == "final":
        run_dir = path.parent
    elif path.name == "model" and path.parent.parent.name == "checkpoints":
        run_dir = path.parent.parent.parent
    else:
        return None
    config_file = run_dir / "config.yaml"
    if not config_file.is_file():
        return None
    try:
        cfg = build_config(base=load_yaml(config_file))
    except FoundryError:
        return None
    if getattr(getattr(cfg, "finetune", None), "task", ""):
        return None  # a fine-tuning run: its data is labelled examples, not pretraining data
    return cfg, run_dir


def pretraining_split(model_path: str | Path | None, modality, readers, tokenizer, part: str = "valid",
                      limit: int | None = None) -> PretrainingData:
    """Up to ``limit`` documents of the ``part`` ("valid" or "train") split of the data the model
    at ``model_path`` was pretrained on, or of the modality's bundled corpus when that is not
    recorded or not readable here; ``source`` says which, and why."""
    run = pretraining_run(model_path) if model_path is not None else None
    split = "validation" if part == "valid" else "training"
    why = "the model's pretraining data is not recorded"
    if run is not None:
        cfg, run_dir = run
        try:
            documents = _run_split(cfg, modality, readers, tokenizer, part)[:limit]
            return PretrainingData(documents, f"{len(documents)} documents of the {split} split of pretraining run "
                                              f"{run_dir} ({_data_of(cfg)})", cfg)
        except FoundryError as exc:
            why = f"pretraining run {run_dir}'s data cannot be read here ({exc})"
    cfg = _bundled_config(modality)
    documents = _run_split(cfg, modality, readers, tokenizer, part)[:limit]
    return PretrainingData(documents, f"{len(documents)} documents of the {split} split of the bundled {modality.name} corpus "
                                      f"({_data_of(cfg)}); {why}, so they may overlap what the model was trained on")


def given_documents(paths: Sequence[Path], readers, tokenizer, limit: int | None, run: RunConfig | None, modality) -> PretrainingData:
    """The documents of ``paths`` (``--forgetting-data``), leaving out any the recorded pretraining
    run trained on: a "held-out" document the model has seen measures memory, not forgetting."""
    from ..readers import read_documents

    docs = [d for d in read_documents(list(paths), readers) if d.text.strip()]
    note = "; not checked against the model's pretraining data (not recorded)"
    if run is not None:
        try:
            seen = {_digest(t) for t in _run_split(run, modality, readers, tokenizer, "train", texts=True)}
        except FoundryError as exc:
            seen, note = None, f"; not checked against the pretraining data ({exc})"
        if seen is not None:
            kept = [d for d in docs if _digest(d.text) not in seen]
            if not kept:
                raise FoundryError(f"--forgetting-data {', '.join(map(str, paths))}: all {len(docs)} documents are in the "
                                   "pretraining run's training split; give documents the model has not seen")
            note = f"; {len(docs) - len(kept)} left out that the pretraining run trained on" if len(kept) < len(docs) else ""
            docs = kept
    docs = docs[:limit]
    encoded = [np.asarray(ids) for ids in tokenizer.encode_batch([d.text for d in docs])]
    return PretrainingData(encoded, f"{len(encoded)} documents of {', '.join(map(str, paths))} (--forgetting-data{note})", run)


def _bundled_config(modality) -> RunConfig:
    """The config ``foundry <modality> pretrain`` runs with when given nothing."""
    from ..config import build_config

    paths = [str(p) for p in modality.default_data()]
    return build_config(base={"modality": modality.name}, dotted={**modality.config_defaults, "data.paths": paths})


def _data_of(cfg: RunConfig) -> str:
    d = cfg.data
    if d.sources:
        return "mixture of " + ", ".join(f"{s.path} (weight {s.weight:g})" for s in d.sources)
    return f"{', '.join(d.paths) or 'the bundled corpus'}; valid_fraction {d.valid_fraction:g}, max_valid_docs {d.max_valid_docs}"


def _run_split(cfg: RunConfig, modality, readers, tokenizer, part: str, texts: bool = False) -> list:
    """Token ids (or, ``texts``, the texts) of one split of a run's data, as ``foundry.corpus``
    splits it. A prepared dataset has its splits on disk (token ids only: no texts)."""
    sources = [s.path for s in cfg.data.sources] or cfg.data.paths or [str(p) for p in modality.default_data()]
    groups = [[p] for p in sources] if cfg.data.sources else [sources]
    out: list = []
    for group in groups:
        out += _split_of(group, cfg, readers, tokenizer, part, texts)
    return out


def _split_of(paths: list[str], cfg: RunConfig, readers, tokenizer, part: str, texts: bool) -> list:
    from ..corpus import split_documents
    from ..data.manifest import is_prepared, open_prepared
    from ..readers import read_documents

    missing = [p for p in paths if not Path(p).exists()]
    if missing:
        raise FoundryError(f"{missing[0]}: the pretraining data is not on this machine (relative paths are read from the "
                           "current folder); pass held-out documents with --forgetting-data")
    if len(paths) == 1 and is_prepared(Path(paths[0])):
        if texts:
            return []  # a prepared dataset keeps token ids only: nothing to compare texts with
        data = open_prepared(Path(paths[0]), expected_fingerprint=tokenizer.fingerprint())
        dataset = data.valid if part == "valid" else data.train
        return [np.asarray(dataset[i]) for i in range(len(dataset))]
    documents = list(read_documents([Path(p) for p in paths], readers, cfg.data.on_decode_error))
    split = split_documents(documents, tokenizer, cfg.data)
    indices = split.valid if part == "valid" else split.train
    if part == "train" and cfg.data.max_train_docs is not None:
        indices = indices[: cfg.data.max_train_docs]
    return [documents[i].text for i in indices] if texts else [np.asarray(split.encoded[i]) for i in indices]


def _digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def pretraining_documents(paths: Sequence[Path], readers, limit: int, part: str = "valid") -> list[str]:
    """Texts of ``paths``. ``part``: "valid" = only the documents ``pretrain`` holds out for
    validation (``split_by_id`` with its defaults), "train" = the others, "all" = every one.
    Kept for callers that have no tokenizer; ``pretraining_split`` reproduces a run exactly."""
    from ..config import DataSection
    from ..corpus import split_by_id
    from ..readers import read_documents

    docs = list(read_documents(list(paths), readers))
    if part != "all" and len(docs) >= 2:
        d = DataSection()
        valid, train = split_by_id([doc.id for doc in docs], d.valid_fraction, d.max_valid_docs)
        docs = [docs[i] for i in (valid if part == "valid" else train)]
    return [doc.text for doc in docs[:limit]]


# -- the probe and the replay stream ------------------------------------------------------------


def _objective(objective: Any, tokenizer, run: RunConfig | None = None):
    """An ``Objective`` from a name ("mlm", "clm", "fim") or an instance; the run's settings when known."""
    if not isinstance(objective, str):
        return objective
    return build_objective(objective, tokenizer, run.objective if run is not None else ObjectiveSection())


def _ids(documents: Sequence, tokenizer) -> list[np.ndarray]:
    """Token ids of each document: texts are encoded, id arrays used as they are."""
    texts = [i for i, d in enumerate(documents) if isinstance(d, str)]
    encoded = dict(zip(texts, tokenizer.encode_batch([documents[i] for i in texts]))) if texts else {}
    return [np.asarray(encoded[i] if i in encoded else d) for i, d in enumerate(documents)]


def _labelled(objective, tokens: torch.Tensor, pad_id: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, labels) of a padded batch as the objective scores validation; padding never scored."""
    document_ids = tokens.ne(pad_id).long()  # one document per row; padding is document 0
    inputs, labels = objective.corrupt(tokens, document_ids, generator, False)
    return inputs, torch.where(tokens.eq(pad_id), torch.full_like(labels, IGNORE_INDEX), labels)


class ForgettingProbe:
    """The pretraining loss of a trunk on fixed, pre-corrupted batches.

    ``documents``: texts or token id arrays; ``objective``: a registered name or an ``Objective``;
    ``source``: which data this is, for the report."""

    def __init__(self, documents: Sequence, tokenizer, objective: Any, max_len: int = PROBE_MAX_LEN, batch_size: int = 16,
                 seed: int = PROBE_SEED, source: str = ""):
        objective = _objective(objective, tokenizer)
        self.objective_name, self.loss_name, self.source = objective.name, objective.loss_name, source
        encoded = [ids[:max_len] for ids in _ids(documents, tokenizer)]
        encoded = [e for e in encoded if len(e) > 1]
        if not encoded:
            raise FoundryError(f"forgetting probe: no documents with at least 2 tokens ({source or 'no data'})")
        generator = torch.Generator().manual_seed(seed)
        self.batches = [_labelled(objective, torch.from_numpy(pad_batch(encoded[s : s + batch_size], tokenizer.pad_id)),
                                  tokenizer.pad_id, generator) for s in range(0, len(encoded), batch_size)]
        self.pad_id = tokenizer.pad_id
        self.targets = int(sum(int((lab != IGNORE_INDEX).sum()) for _, lab in self.batches))

    @torch.no_grad()
    def loss(self, trunk: torch.nn.Module, device="cpu") -> float:
        """Mean loss per target over all batches; the trunk's train/eval mode is restored."""
        was_training = trunk.training
        trunk.eval()
        total, count = 0.0, 0
        for inputs, labels in self.batches:
            out = trunk(inputs.to(device), attention_mask=inputs.ne(self.pad_id).to(device))
            loss, n = lm_loss(out.logits, labels.to(device))
            total += float(loss) * n
            count += n
        trunk.train(was_training)
        return total / max(1, count)


class ReplayStream:
    """Pretraining-objective batches from pretraining documents (for ``--replay``).

    ``loss(trunk, device, index)``: the batch is a function of (seed, index), so a resumed
    fine-tune replays the same batches; without ``index`` the stream simply advances."""

    def __init__(self, documents: Sequence, tokenizer, objective: Any, rows: int, max_len: int = PROBE_MAX_LEN, seed: int = 0,
                 source: str = ""):
        self.encoded = [e for e in _ids(documents, tokenizer) if len(e) > 1]
        if not self.encoded:
            raise FoundryError(f"--replay: no pretraining documents with at least 2 tokens ({source or 'no data'})")
        self.tokenizer, self.objective = tokenizer, _objective(objective, tokenizer)
        self.rows, self.max_len, self.seed, self.source = max(1, rows), max_len, seed, source
        self.rng = np.random.default_rng(seed)
        self.generator = torch.Generator().manual_seed(seed)

    def loss(self, trunk: torch.nn.Module, device="cpu", index: int | None = None) -> torch.Tensor:
        tok = self.tokenizer
        rng, generator = self.rng, self.generator
        if index is not None:
            rng = np.random.default_rng([self.seed, index])
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        rows = []
        for i in rng.integers(0, len(self.encoded), self.rows):
            ids = self.encoded[int(i)]
            start = int(rng.integers(0, len(ids) - self.max_len + 1)) if len(ids) > self.max_len else 0
            rows.append(ids[start : start + self.max_len])
        inputs, labels = _labelled(self.objective, torch.from_numpy(pad_batch(rows, tok.pad_id)), tok.pad_id, generator)
        out = trunk(inputs.to(device), attention_mask=inputs.ne(tok.pad_id).to(device))
        return lm_loss(out.logits, labels.to(device))[0]


# -- what fine-tuning calls ---------------------------------------------------------------------


def forgetting_tools(modality, readers, tokenizer, cfg: RunConfig, pretrained: bool):
    """(probe, replay) for a fine-tuning run: the forgetting probe for a pretrained trunk (unless
    ``finetune.forgetting`` is off), the replay stream when ``finetune.replay`` > 0. Both draw on
    the model's own pretraining data when its run is recorded (see the module docstring)."""
    f = cfg.finetune
    source_path = _local_model_path(cfg.model.init_from) if pretrained else None
    probe = replay = None
    if pretrained and f.forgetting:
        probe = build_probe(source_path, modality, readers, tokenizer, [Path(p) for p in f.forgetting_data], f.forgetting_docs,
                            f.forgetting_max_len)
    share = f.replay  # in [0, 1): the config's range
    if share > 0:
        data = pretraining_split(source_path, modality, readers, tokenizer, "train", REPLAY_DOCS)
        rows = round(f.batch_size * share / (1 - share))
        replay = ReplayStream(data.documents, tokenizer, _objective(_objective_name(data.run, modality), tokenizer, data.run), rows,
                              PROBE_MAX_LEN, cfg.train.seed, data.source)
    return probe, replay


def build_probe(model_path: str | Path | None, modality, readers, tokenizer, given: Sequence[Path] = (), docs: int = 128,
                max_len: int = PROBE_MAX_LEN) -> ForgettingProbe:
    """The forgetting probe for the model at ``model_path``: ``given`` documents when there are
    any, else the held-out split of its pretraining data (or of the bundled corpus); the probe's
    ``source`` says which."""
    run = pretraining_run(model_path) if model_path is not None else None
    if given:
        data = given_documents(given, readers, tokenizer, docs, run[0] if run else None, modality)
    else:
        data = pretraining_split(model_path, modality, readers, tokenizer, "valid", docs)
    objective = _objective(_objective_name(data.run, modality), tokenizer, data.run)
    return ForgettingProbe(data.documents, tokenizer, objective, max_len, source=data.source)


def _objective_name(run: RunConfig | None, modality) -> str:
    return (run.objective.name if run is not None and getattr(run.objective, "name", "") else "") or modality.objective


def _local_model_path(spec: str | None) -> Path | None:
    if not spec:
        return None
    from ..convert.hub import resolve_model_path

    return Path(resolve_model_path(spec)).resolve()
