"""Fine-tuning trains on random windows of long sequences, not on their first ``max_len`` tokens:
each epoch serves a window drawn from (seed, epoch, example) with <cls> ... <eos> kept at its ends,
per-residue labels travel with their tokens, pair labels are windowed on both axes, a sequence
label is unchanged, variant-effect windows hold every mutation, the fold task crops within windows
of the whole chain, token budgets count the window, and a killed run resumes with identical losses."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import DIE_AT_STEP_6, FINETUNE_DATA, foundry, head_rows, losses
from foundry.errors import DataError
from foundry.finetune.data import Columns, Record, encode_records, served_length, training_window
from foundry.finetune.tasks import IGNORE, get_task
from foundry.finetune.workload import ExampleStream
from foundry.testing import run_cli
from modalities.protein.alphabet import EsmTokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

TOK = EsmTokenizer()
AMINO = "ACDEFGHIKLMNPQRSTVY"  # no W: the test's labelled residue
MAX_LEN, WIDTH = 12, 10  # tokens per training window, residues per window (<cls> and <eos> beside)


def random_protein(n: int, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    return "".join(AMINO[i] for i in rng.integers(len(AMINO), size=n))


def window_start(full: np.ndarray, window: np.ndarray) -> int:
    """Where a served window's residues sit in the whole example's tokens (found by matching)."""
    body, n = full[1:-1], len(window) - 2
    starts = [s for s in range(len(body) - n + 1) if np.array_equal(body[s : s + n], window[1:-1])]
    assert len(starts) == 1, starts
    return starts[0]


def residue_examples(max_len: int = MAX_LEN):
    """One 40-residue protein (every W labelled E, the rest H or C) and one short one."""
    long = list(random_protein(40))
    for k in (5, 17, 31, 36):
        long[k] = "W"
    long = "".join(long)
    label = "".join("E" if c == "W" else ("H" if i % 2 else "C") for i, c in enumerate(long))
    records = [Record("long", long, label, "t.csv: line 2"), Record("short", "MKTWAYIA", "CCHEHHHC", "t.csv: line 3")]
    task = get_task("residue-classification")
    info = task.fit([r.label for r in records], [r.where for r in records])
    return encode_records(records, TOK, task, info, max_len), info


def served(stream: ExampleStream, epochs: int):
    """(epoch, example index, tokens, targets) of every row the stream serves over ``epochs``."""
    rows = []
    while stream.epoch < epochs:
        epoch, batch = stream.epoch, stream.next_for_rank(0, 1)
        for r, i in enumerate(batch.index):
            real = int(batch.tokens[r].ne(TOK.pad_id).sum())
            rows.append((epoch, i, batch.tokens[r, :real].numpy(), None if batch.targets is None else batch.targets[r, :real].numpy()))
    return rows


def test_a_long_sequence_is_served_in_moving_windows_with_its_labels():
    examples, info = residue_examples()
    long = examples[0]
    assert len(long.tokens) == 42 and served_length(long) == MAX_LEN
    rows = served(ExampleStream(examples, 2, TOK.pad_id, "residue", seed=0), epochs=30)
    starts, covered = set(), set()
    for _, i, tokens, target in rows:
        if i == 1:  # the short one is served whole
            assert np.array_equal(tokens, examples[1].tokens)
            continue
        assert len(tokens) == MAX_LEN and tokens[0] == TOK.bos_id and tokens[-1] == TOK.eos_id
        assert target[0] == target[-1] == IGNORE
        s = window_start(long.tokens, tokens)
        assert np.array_equal(target[1:-1], long.target[1 + s : 1 + s + WIDTH])  # labels travel with their residues
        w = tokens == int(TOK.encode("W", add_special_tokens=False)[0])
        assert (target[w] == info.names.index("E")).all() and (target[~w][1:-1] != info.names.index("E")).all()
        starts.add(s)
        covered.update(range(s, s + WIDTH))
    assert len(starts) > 5  # the window moves from epoch to epoch
    assert max(covered) >= MAX_LEN and covered == set(range(40))  # residues past the first window are trained on


def test_windows_are_a_function_of_seed_epoch_and_example():
    examples, _ = residue_examples()
    a = served(ExampleStream(examples, 1, TOK.pad_id, "residue", seed=3), epochs=8)
    b = served(ExampleStream(examples, 1, TOK.pad_id, "residue", seed=3), epochs=8)
    c = served(ExampleStream(examples, 1, TOK.pad_id, "residue", seed=4), epochs=8)
    assert all(x[:2] == y[:2] and np.array_equal(x[2], y[2]) for x, y in zip(a, b))
    windows = {(e, i): t.tobytes() for e, i, t, _ in a}
    assert any(windows[(e, i)] != t.tobytes() for e, i, t, _ in c if i == 0)
    # the plan's order does not matter: the window of (epoch, example) is the same in any batch, on any process
    for epoch, i, tokens, _ in a:
        assert np.array_equal(training_window(examples[i], "residue", 3, epoch, i).tokens, tokens)


def test_two_processes_and_a_resumed_stream_serve_the_same_windows():
    examples, _ = residue_examples()
    examples = examples * 3  # six examples, three long
    one = ExampleStream(examples, 2, TOK.pad_id, "residue", seed=1)
    ranks = [ExampleStream(examples, 2, TOK.pad_id, "residue", seed=1) for _ in range(2)]
    alone = [one.next_for_rank(0, 1) for _ in range(6)]  # two epochs
    shares = [[ranks[r].next_for_rank(r, 2) for _ in range(3)] for r in range(2)]
    for k, batch in enumerate(alone):
        theirs = shares[k % 2][k // 2]
        assert batch.index == theirs.index and torch.equal(batch.tokens, theirs.tokens) and torch.equal(batch.targets, theirs.targets)
    resumed = ExampleStream(examples, 2, TOK.pad_id, "residue", seed=1)
    resumed.load_state_dict(json.loads(json.dumps({"epoch": 1, "position": 1})))
    for batch in alone[4:]:
        assert torch.equal(resumed.next_for_rank(0, 1).tokens, batch.tokens)


def test_a_token_budget_counts_the_window_not_the_whole_sequence():
    examples, _ = residue_examples()
    long = [examples[0]] * 4
    stream = ExampleStream(long, 16, TOK.pad_id, "residue", seed=0, batch_tokens=2 * MAX_LEN)
    assert stream.lengths == [MAX_LEN] * 4 and [len(b) for b in stream.plan(0)] == [2, 2]
    batch = stream.next_for_rank(0, 1)
    assert batch.tokens.shape == (2, MAX_LEN)


def test_contact_windows_cut_both_axes_of_the_pair_labels():
    task = get_task("contact")
    sequence = random_protein(40, seed=1)
    record = Record("c", sequence, "3-30;8-20;12-40;25-33", "c.csv: line 2")
    info = task.fit([record.label], [record.where])
    [example] = encode_records([record], TOK, task, info, MAX_LEN)
    assert example.target.shape == (42, 42)
    for epoch in range(20):
        window = training_window(example, "pair", 0, epoch, 0)
        s = window_start(example.tokens, window.tokens)
        keep = np.r_[0, 1 + s + np.arange(WIDTH), 41]
        assert window.target.shape == (MAX_LEN, MAX_LEN)
        assert np.array_equal(window.target, example.target[np.ix_(keep, keep)])
        assert (window.target[0] == IGNORE).all() and (window.target[:, -1] == IGNORE).all()
        if s <= 7 and s + WIDTH >= 20:  # residues 8 and 20 (1-based) both in the window: their contact is there
            assert window.target[8 - s, 20 - s] == 1.0


def test_a_sequence_label_is_unchanged_by_the_window():
    task = get_task("sequence-regression")
    records = [Record("a", random_protein(30, seed=2), "1.5", "s.csv: line 2"), Record("b", "MKT", "0.5", "s.csv: line 3")]
    info = task.fit([r.label for r in records], [r.where for r in records])
    example = encode_records(records, TOK, task, info, MAX_LEN)[0]
    window = training_window(example, "sequence", 0, 0, 0)
    assert len(window.tokens) == MAX_LEN and np.array_equal(window.target, example.target)


def variant_table(tmp_path: Path, wildtype: str, rows: list[tuple[str, float]]) -> Path:
    path = tmp_path / "dms.csv"
    path.write_text("mutation,label\n" + "".join(f"{m},{v}\n" for m, v in rows))
    return path


def test_variant_windows_hold_every_mutated_position(tmp_path):
    wildtype = random_protein(60, seed=3)
    task = get_task("variant-effect")
    task.configure({"wildtype": wildtype})
    rows = [("WT", 0.0), (f"{wildtype[39]}40W:{wildtype[44]}45W", 1.0), (f"{wildtype[2]}3W", 0.5), (f"{wildtype[57]}58W", 0.2)]
    records = task.read_split(variant_table(tmp_path, wildtype, rows), None, Columns(), ())
    assert [r.focus for r in records] == [None, (39, 45), (2, 3), (57, 58)]
    info = task.fit([r.label for r in records], [r.where for r in records])
    examples = encode_records(records, TOK, task, info, MAX_LEN)
    w = int(TOK.encode("W", add_special_tokens=False)[0])
    for _, i, tokens, _ in served(ExampleStream(examples, 4, TOK.pad_id, "sequence", seed=0), epochs=10):
        assert len(tokens) == MAX_LEN
        assert int((tokens == w).sum()) == [0, 2, 1, 1][i]  # every mutation in every window of its variant


def test_variants_wider_than_a_window_are_refused_with_the_row(tmp_path, protein_model):
    wildtype = random_protein(60, seed=3)
    table = variant_table(tmp_path, wildtype, [(f"{wildtype[4]}5W:{wildtype[49]}50W", 1.0), ("WT", 0.0)])
    task = get_task("variant-effect")
    task.configure({"wildtype": wildtype})
    records = task.read_split(table, None, Columns(), ())
    message = (f"{table}: line 2: the mutated positions span residues 5..50 (46 residues), more than a training window of "
               "--max-len 12 tokens holds (10); raise --max-len")
    with pytest.raises(DataError) as caught:
        encode_records(records, TOK, task, task.fit([r.label for r in records], ["w"] * 2), MAX_LEN)
    assert str(caught.value) == message
    out = tmp_path / "run"
    result = run_cli("protein", "finetune", "--from", protein_model, "--task", "variant-effect", "--wildtype", wildtype,
                     "--train", table, "--valid", table, "--max-len", "12", "--out", out, "--no-forgetting", "--quiet")
    assert result.exit_code == 2 and result.stderr.strip() == f"error: {message}" and not out.exists()


def test_fold_crops_within_windows_from_the_whole_chain():
    from modalities.protein.fold.task import Fold

    task = get_task("fold")
    task.configure({"crop_size": 6})
    assert isinstance(task, Fold)
    chain = Path(__file__).parents[1] / "modalities/protein/data/structures/fit/PF00249_1GUU_A.pdb.gz"  # 50 residues
    records = task.read_split(chain, None, Columns(split="train"), ())
    [example] = encode_records(records, TOK, task, task.fit([], []), 16)
    assert example.target.shape == (52, 20)
    stream = ExampleStream([example], 1, TOK.pad_id, "residue", seed=0)
    starts = set()
    for epoch in range(12):
        batch = stream.next_for_rank(0, 1)
        s = window_start(example.tokens, batch.tokens[0].numpy())
        assert torch.equal(batch.targets[0], torch.from_numpy(example.target[np.r_[0, 1 + s + np.arange(14), 51]]))
        starts.add(s)
        torch.manual_seed(epoch)
        cropped = task.training_batch(batch)  # the task's own crop, inside the window
        assert cropped.tokens.shape == (1, 8) and cropped.tokens[0, 0] == TOK.bos_id and cropped.tokens[0, -1] == TOK.eos_id
        body = batch.tokens[0, 1:-1].numpy()
        inner = cropped.tokens[0, 1:-1].numpy()
        assert any(np.array_equal(body[k : k + 6], inner) for k in range(len(body) - 5))
    assert max(starts) + 14 > 14 and len(starts) > 3  # windows reach past the first 16 tokens


def test_a_killed_finetune_with_windows_resumes_with_identical_losses(tmp_path, protein_model):
    train = head_rows(FINETUNE_DATA / "ss3_train.csv", tmp_path / "train.csv", 12)
    valid = head_rows(FINETUNE_DATA / "ss3_valid.csv", tmp_path / "valid.csv", 3)
    args = ["protein", "finetune", "--from", protein_model, "--task", "residue-classification", "--train", train, "--valid", valid,
            "--max-len", "24", "--batch-size", "4", "--max-steps", "10", "--save-every", "2", "--no-forgetting", "--quiet"]
    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    assert run_cli(*args, "--out", reference).exit_code == 0
    killed = foundry(*args, "--out", interrupted, prelude=DIE_AT_STEP_6, check=False)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert run_cli("protein", "finetune", "--resume", interrupted, "--quiet").exit_code == 0
    assert losses(interrupted) == losses(reference) and len(losses(reference)) == 10
    summary = json.loads((reference / "summary.json").read_text())
    assert summary["train_sequences_windowed"] >= 1  # trained in windows, nothing cut
