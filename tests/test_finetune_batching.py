"""Fine-tuning batches by a token budget (``finetune.batch_tokens``, ``--batch-tokens``): the plan
of each epoch is a function of (seed, epoch) alone, keeps every batch within the budget, serves
every example once per epoch, resumes mid-epoch exactly, gives 2 processes disjoint shares, and
pads far less than fixed-size batches on real FLIP SS3 lengths. The loop's logged real tokens and
padding fraction match the batches it was given."""

import csv
import json
from collections import Counter

import numpy as np
import pytest
import torch
import yaml

from conftest import FINETUNE_DATA, head_rows
from foundry.finetune.data import BUCKET_BATCHES, Example, batch_plan
from foundry.finetune.workload import ExampleStream
from foundry.testing import run_cli

pytestmark = pytest.mark.usefixtures("one_thread")

PAD = 1


def ss3_lengths() -> list[int]:
    """Token counts (residues + <cls> + <eos>) of the bundled FLIP SS3 training slice."""
    with open(FINETUNE_DATA / "ss3_train.csv", newline="") as handle:
        return [len(row["sequence"]) + 2 for row in csv.DictReader(handle)]


def toy_examples(lengths) -> list[Example]:
    return [Example(str(i), "A" * n, np.full(n, 5 + i % 20, dtype=np.int64), np.zeros(n, dtype=np.int64)) for i, n in enumerate(lengths)]


def padded(plan, lengths) -> int:
    return sum(len(b) * max(lengths[i] for i in b) for b in plan)


def test_the_plan_is_a_function_of_seed_and_epoch():
    lengths = ss3_lengths()
    a = batch_plan(lengths, batch_tokens=2048, seed=3, epoch=1)
    assert a == batch_plan(list(lengths), batch_tokens=2048, seed=3, epoch=1)
    assert a != batch_plan(lengths, batch_tokens=2048, seed=3, epoch=2)
    assert a != batch_plan(lengths, batch_tokens=2048, seed=4, epoch=1)


def test_without_a_budget_the_plan_is_todays_shuffle_cut_into_rows():
    """Runs without batch_tokens see exactly the batches they saw before it existed."""
    order = np.random.default_rng([7, 2]).permutation(50).tolist()
    assert batch_plan(list(range(10, 60)), batch_size=16, seed=7, epoch=2) == [order[0:16], order[16:32], order[32:48], order[48:50]]


@pytest.mark.parametrize("budget", [300, 2048, 8192])
def test_every_batch_stays_within_the_budget_and_every_example_comes_once(budget):
    lengths = ss3_lengths() + [1026, 700]  # two long chains: over and under the smallest budget
    for epoch in range(3):
        plan = batch_plan(lengths, batch_tokens=budget, seed=0, epoch=epoch)
        assert sorted(i for b in plan for i in b) == list(range(len(lengths)))
        for b in plan:
            longest = max(lengths[i] for i in b)
            assert len(b) * longest <= budget or len(b) == 1, (budget, [lengths[i] for i in b])


def test_batches_are_shuffled_not_sorted_by_length():
    """Length buckets, but the batch order is random: no epoch of short batches, then long ones."""
    lengths = list(range(10, 4010))
    plan = batch_plan(lengths, batch_tokens=1024, seed=0, epoch=0)
    widths = [max(lengths[i] for i in b) for b in plan]
    assert len(plan) > 2 * BUCKET_BATCHES  # several sorted chunks
    assert widths != sorted(widths) and widths != sorted(widths, reverse=True)
    assert abs(np.corrcoef(np.arange(len(widths)), widths)[0, 1]) < 0.2


def test_a_token_budget_pads_far_less_than_fixed_rows_on_real_ss3_lengths():
    lengths = ss3_lengths()
    real = sum(lengths)
    rows = batch_plan(lengths, batch_size=16, seed=0, epoch=0)
    tokens = batch_plan(lengths, batch_tokens=16 * 110, seed=0, epoch=0)  # ~16 rows of the mean length
    assert 1 - real / padded(tokens, lengths) < 0.1
    assert 1 - real / padded(rows, lengths) > 0.25  # the slice holds chains of 40-200 only; all of SS3 pads far more


@pytest.mark.parametrize("budget", [None, 600])
def test_the_stream_serves_each_example_once_per_epoch(budget):
    lengths = ss3_lengths()[:60]
    stream = ExampleStream(toy_examples(lengths), 8, PAD, "residue", seed=1, batch_tokens=budget)
    for epoch in range(3):
        seen = Counter()
        for _ in range(len(stream.plan(epoch))):
            assert stream.epoch == epoch
            batch = stream.next_for_rank(0, 1)
            seen.update(batch.index)
            # rows padded to the longest member, targets alike; the real tokens are the examples' own
            assert batch.tokens.shape == (len(batch.index), max(lengths[i] for i in batch.index))
            assert int(batch.tokens.ne(PAD).sum()) == sum(lengths[i] for i in batch.index)
            assert batch.targets.shape == batch.tokens.shape
        assert seen == Counter(range(60))
    assert stream.state_dict() == {"epoch": 3, "position": 0}


def test_a_resumed_stream_continues_mid_epoch_with_the_same_batches():
    examples = toy_examples(ss3_lengths()[:80])
    first = ExampleStream(examples, 8, PAD, "residue", seed=5, batch_tokens=900)
    n = len(first.plan(0))
    for _ in range(n // 2):
        first.next_for_rank(0, 1)
    state = json.loads(json.dumps(first.state_dict()))  # as a checkpoint stores it
    assert state["epoch"] == 0 and 0 < state["position"] < n
    resumed = ExampleStream(examples, 8, PAD, "residue", seed=5, batch_tokens=900)
    resumed.load_state_dict(state)
    for _ in range(n + 3):  # past the epoch boundary
        a, b = first.next_for_rank(0, 1), resumed.next_for_rank(0, 1)
        assert a.index == b.index and torch.equal(a.tokens, b.tokens)


def test_two_processes_take_disjoint_shares_of_the_same_plan():
    examples = toy_examples(ss3_lengths()[:90])
    ranks = [ExampleStream(examples, 8, PAD, "residue", seed=2, batch_tokens=700) for _ in range(2)]
    one = ExampleStream(examples, 8, PAD, "residue", seed=2, batch_tokens=700)
    rounds = len(one.plan(0)) // 2
    shares = [[ranks[r].next_for_rank(r, 2).index for _ in range(rounds)] for r in range(2)]
    alone = [one.next_for_rank(0, 1).index for _ in range(2 * rounds)]
    assert shares[0] == alone[0::2] and shares[1] == alone[1::2]
    mine = [{i for b in share for i in b} for share in shares]
    assert not mine[0] & mine[1]
    assert ranks[0].state_dict() == ranks[1].state_dict() == one.state_dict()


# -- through the CLI --------------------------------------------------------------------------


def _finetune(model, train, valid, out, *extra):
    result = run_cli("protein", "finetune", "--from", model, "--task", "residue-classification", "--train", train, "--valid", valid,
                     "--out", out, "--no-forgetting", "--quiet", "--set", "train.log_every=1", *map(str, extra))
    return result


def test_finetune_batch_tokens_sets_the_steps_and_logs_real_tokens_and_padding(tmp_path, protein_model):
    """``--batch-tokens``: steps per epoch come from the plan; each step's logged tokens and padding
    fraction are those of the batch the plan gave it."""
    from foundry.finetune.data import encode_records, read_records
    from foundry.finetune.tasks import get_task
    from modalities.protein.alphabet import EsmTokenizer

    train = head_rows(FINETUNE_DATA / "ss3_train.csv", tmp_path / "train.csv", 40)
    valid = head_rows(FINETUNE_DATA / "ss3_valid.csv", tmp_path / "valid.csv", 4)
    out = tmp_path / "run"
    result = _finetune(protein_model, train, valid, out, "--batch-tokens", "1024", "--epochs", "2")
    assert result.exit_code == 0, result.output

    task, tokenizer = get_task("residue-classification"), EsmTokenizer()
    records = read_records(train)
    labels = task.fit([r.label for r in records], [r.where for r in records])
    examples = encode_records(records, tokenizer, task, labels, 1024)
    stream = ExampleStream(examples, 16, tokenizer.pad_id, "residue", seed=0, batch_tokens=1024)
    per_epoch = len(stream.plan(0))
    assert per_epoch != -(-len(examples) // 16)  # the plan's batches, not those of 16 rows
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["finetune"]["batch_tokens"] == 1024
    assert config["train"]["max_steps"] == 2 * per_epoch  # --epochs 2 of the plan's batches

    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"lr"' in line]
    assert [s["step"] for s in steps] == list(range(1, 2 * per_epoch + 1))
    total = 0
    for record in steps:
        batch = stream.next_for_rank(0, 1)
        real, slots = int(batch.tokens.ne(tokenizer.pad_id).sum()), batch.tokens.numel()
        assert slots <= 1024 or len(batch.index) == 1
        total += real
        assert record["tokens"] == total
        assert record["padding_fraction"] == pytest.approx(1 - real / slots)
        assert record["tokens_per_s"] > 0


def test_a_bad_batch_tokens_is_one_error_naming_the_key(tmp_path, protein_model):
    train = head_rows(FINETUNE_DATA / "ss3_train.csv", tmp_path / "train.csv", 4)
    result = _finetune(protein_model, train, train, tmp_path / "run", "--batch-tokens", "0")
    assert result.exit_code == 2
    assert result.stderr.strip() == ("error: finetune.batch_tokens: 0 is not allowed; must be an integer >= 1 "
                                     "(padded tokens per micro-batch, rows x longest; null = finetune.batch_size rows)")
    assert not (tmp_path / "run").exists()
