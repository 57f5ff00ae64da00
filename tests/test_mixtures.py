"""Weighted mixtures of sources and UniRef-style cluster sampling: right proportions,
deterministic, resumable, and clear errors for bad weights or cluster files."""

import gzip
from collections import Counter

import numpy as np
import pytest

from foundry.data.dataset import InMemoryTokens
from foundry.data.order import ClusterOrder, ConcatTokens, MixtureOrder, ShuffledOrder, read_clusters
from foundry.data.packing import PackedStream
from foundry.errors import DataError
from test_pretrain_cli import TINY, foundry


def _dataset(n, prefix, seed=0):
    rng = np.random.default_rng(seed)
    return InMemoryTokens([rng.integers(4, 20, size=int(k)) for k in rng.integers(5, 60, size=n)], [f"{prefix}{i}" for i in range(n)], "fp")


def _draw(order, n):
    out = []
    for _ in range(n):
        out.append(order.peek())
        order.advance()
    return out


def test_mixture_draws_sources_in_proportion_to_their_weights():
    code, text = _dataset(500, "code"), _dataset(80, "text")
    both = ConcatTokens([code, text])
    order = MixtureOrder([ShuffledOrder(500, 1), ShuffledOrder(80, 2)], [0.85, 0.15], both.offsets, seed=0)
    draws = _draw(order, 20000)
    share = np.mean([d < 500 for d in draws])
    assert abs(share - 0.85) < 0.01
    assert both.record_id(draws[0]).startswith("code" if draws[0] < 500 else "text")
    # the small source is recycled epoch after epoch, each epoch a full permutation
    text_draws = [d - 500 for d in draws if d >= 500][:160]
    assert sorted(text_draws[:80]) == list(range(80)) and sorted(text_draws[80:]) == list(range(80))


def test_cluster_sampling_visits_each_cluster_once_per_epoch():
    ds = _dataset(60, "m")
    clusters = [np.arange(0, 50), *[np.array([i]) for i in range(50, 60)]]  # one huge cluster + 10 singletons
    order = ClusterOrder(clusters, seed=0)
    draws = _draw(order, 11 * 200)
    in_big = np.mean([d < 50 for d in draws])
    assert abs(in_big - 1 / 11) < 0.01, "a big cluster is drawn as often as a singleton"
    assert len(set(d for d in draws if d < 50)) > 40, "members of a cluster are drawn uniformly"
    assert Counter(d for d in draws[:11] if d >= 50) == Counter(range(50, 60))
    del ds


def test_mixture_stream_resumes_exactly():
    a, b = _dataset(200, "a", 1), _dataset(50, "b", 2)
    both = ConcatTokens([a, b])

    def stream():
        order = MixtureOrder([ShuffledOrder(200, 1), ClusterOrder([np.arange(i, i + 5) for i in range(0, 50, 5)], 2)], [2, 1], both.offsets, 0)
        return PackedStream(both, max_len=64, batch_tokens=256, pad_id=0, seed=0, order=order)

    reference = stream()
    expected = [reference.materialize(reference.next_plan(), i).tokens for i in range(20)]
    first = stream()
    for _ in range(7):
        first.next_plan()
    resumed = stream()
    resumed.load_state_dict(first.state_dict())
    for i in range(7, 20):
        assert (resumed.materialize(resumed.next_plan(), i).tokens == expected[i]).all()


def test_cluster_file_errors_name_file_and_line(tmp_path):
    ds = _dataset(5, "p")
    bad = tmp_path / "clusters.tsv"
    bad.write_text("p0\tc1\np1\tc1\nghost\tc2\n")
    with pytest.raises(DataError, match=r"clusters.tsv:3: member 'ghost' is not a record of the corpus"):
        read_clusters(bad, ds)
    bad.write_text("p0 c1\n")
    with pytest.raises(DataError, match=r"clusters.tsv:1: expected member_id<TAB>cluster_id"):
        read_clusters(bad, ds)
    good = tmp_path / "good.tsv"
    good.write_text("p0\tc1\np1\tc1\nvalid7\tc1\n")
    clusters = read_clusters(good, ds, known_elsewhere={"valid7"})
    assert sorted(map(list, clusters)) == [[0, 1], [2], [3], [4]]


def _fasta(path, records):
    with gzip.open(path, "wt") as handle:
        for name, seq in records:
            handle.write(f">{name}\n{seq}\n")


def test_pretrain_on_a_weighted_mixture_with_clusters(tmp_path):
    rng = np.random.default_rng(0)
    letters = np.array(list("ACDEFGHIKLMNPQRSTVWY"))
    _fasta(tmp_path / "a.fasta.gz", [(f"a{i}", "".join(rng.choice(letters, 80))) for i in range(120)])
    _fasta(tmp_path / "b.fasta.gz", [(f"b{i}", "".join(rng.choice(letters, 40))) for i in range(60)])
    (tmp_path / "b_clusters.tsv").write_text("".join(f"b{i}\tcluster{i // 6}\n" for i in range(60)))
    config = tmp_path / "mix.yaml"
    config.write_text(
        "modality: protein\ndata:\n  sources:\n"
        f"    - {{path: {tmp_path / 'a.fasta.gz'}, weight: 0.85}}\n"
        f"    - {{path: {tmp_path / 'b.fasta.gz'}, weight: 0.15, clusters: {tmp_path / 'b_clusters.tsv'}}}\n"
    )
    out = tmp_path / "run"
    foundry("protein", "pretrain", "--config", str(config), "--out", str(out), "--max-steps", "2", *TINY)
    assert (out / "final" / "model.safetensors").is_file()

    config.write_text(config.read_text().replace("weight: 0.15", "weight: 0"))
    result = foundry("protein", "pretrain", "--config", str(config), "--out", str(tmp_path / "bad"), *TINY, check=False)
    assert result.returncode != 0 and "data.sources[1].weight: 0.0 is not allowed; must be a finite number > 0" in result.stderr
    assert not (tmp_path / "bad").exists()
