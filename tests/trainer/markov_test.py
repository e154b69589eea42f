"""trainer/markov.py's counting baseline: the matrix by hand, its ranking against a
numpy reference (ties broken by popularity), and bench/markov_run.py on a data_dir."""
import json

import numpy as np
import pytest
import tensorflow as tf

from beam_jobs import schema
from bench import markov_run
from tests.trainer import datadir
from trainer import data, evaluate, markov


def test_successors_by_hand():
    vocab = [10, 20, 30, 40]
    batches = [
        # last 30 -> 40 (weight 1), the one before, 20 -> 40 (weight 0.5)
        (np.array([[10, 20, 30, 0]]), np.array([40])),
        # 99 is unknown: it counts nothing, and 20 (second last) -> 30 (0.5)
        (np.array([[20, 99, 0, 0]]), np.array([30])),
        # an unknown label counts nothing
        (np.array([[10, 0, 0, 0]]), np.array([77])),
    ]
    got = markov.count_successors(batches, vocab, last=2, decay=0.5, smoothing=1.0).dense()
    want = np.zeros((4, 4), np.float32)
    want[1, 3] = want[1, 2] = 0.5 / (1.0 + 1.0)  # row 20: total 1, + smoothing 1
    want[2, 3] = 1.0 / (1.0 + 1.0)  # row 30
    np.testing.assert_allclose(got, want)
    assert got.dtype == np.float32


def test_merging_pairs_while_counting_changes_nothing(monkeypatch):
    rng = np.random.default_rng(2)
    vocab = list(range(1, 21))
    batches = [(rng.integers(0, 21, (50, 5)), rng.integers(1, 21, 50)) for _ in range(8)]
    whole = markov.count_successors(batches, vocab)
    monkeypatch.setattr(markov, "_MERGE_EVERY", 100)  # merge after about every batch
    merged = markov.count_successors(batches, vocab)
    np.testing.assert_array_equal(merged.index, whole.index)
    np.testing.assert_allclose(merged.weight, whole.weight, rtol=1e-6)


def test_successors_keep_each_rows_top_entries():
    vocab = [1, 2, 3, 4]
    # Movie 1 is followed by 4 three times, 2 twice, 3 once.
    labels = np.array([4, 4, 4, 2, 2, 3])
    got = markov.count_successors([(np.ones((6, 1), np.int64), labels)], vocab, last=1,
                                  smoothing=0.0, top=2)
    assert got.index[0].tolist() == [3, 1]  # vocabulary positions of 4, then 2
    np.testing.assert_allclose(got.weight[0], [3 / 6, 2 / 6])
    assert (got.index[1:] == -1).all() and (got.weight[1:] == 0).all()
    with pytest.raises(ValueError, match="decay > 0"):
        markov.count_successors([], [1, 2], decay=0.0)


def _reference_ranks(matrix, position, vocab, contexts, labels, last, decay, exclude_context):
    """Ranks of each label, written out: scores from the last movies, ties by position."""
    ranks = []
    for context, label in zip(contexts, labels, strict=True):
        real = [m for m in context if m != schema.PAD_MOVIE_ID]
        scores = np.zeros(len(vocab))
        for b, movie in enumerate(reversed(real[-last:])):
            if movie in vocab:
                scores += decay ** b * matrix[vocab.index(movie)]
        j = vocab.index(label)
        above = {i for i in range(len(vocab)) if scores[i] > scores[j]
                 or (scores[i] == scores[j] and position[i] < position[j])}
        if exclude_context:
            above -= {vocab.index(m) for m in real if m in vocab and m != label}
        ranks.append(len(above) + 1)
    return np.array(ranks, np.float64)


@pytest.mark.parametrize("exclude_context", [False, True])
def test_markov_baseline_ranks_like_the_reference(exclude_context):
    rng = np.random.default_rng(5)
    vocab = [int(v) for v in rng.choice(np.arange(1, 200), 30, replace=False)]
    counts = rng.integers(0, 4, len(vocab))  # many equal counts: vocabulary order decides

    def examples(n):
        contexts = np.zeros((n, 6), np.int64)
        for row in contexts:
            length = rng.integers(1, 7)
            row[:length] = rng.choice(vocab + [999], length)  # 999: unknown
        return contexts, rng.choice(vocab, n)

    train, (contexts, labels) = examples(300), examples(64)
    successors = markov.count_successors([train], vocab, last=3, decay=0.6, smoothing=2.0)
    matrix = successors.dense()
    ds = tf.data.Dataset.from_tensor_slices(
        {schema.CONTEXT_MOVIE_ID: contexts, schema.LABEL_MOVIE_ID: labels}).batch(16)
    got = evaluate.markov_baseline(ds, vocab, successors, counts, ks=(1, 3, 10),
                                   exclude_context=exclude_context)
    position = evaluate._popularity_position(np.array(vocab), counts)
    rank = _reference_ranks(matrix, position, vocab, contexts, labels, 3, 0.6, exclude_context)
    for k in (1, 3, 10):
        assert got[f"top_{k}"] == pytest.approx(np.mean(rank <= k))
    assert got["mrr"] == pytest.approx(np.mean(1 / rank))
    assert got["ndcg_10"] == pytest.approx(np.mean(np.where(rank <= 10, 1 / np.log2(rank + 1), 0)))
    assert got["label_tie_rate"] == 0.0 and got["num_queries"] == 64
    # The scores matter: with every successor count zeroed it is the popularity ranking.
    pop = evaluate.popularity_baseline(ds, vocab, counts, ks=(1, 3, 10),
                                       exclude_context=exclude_context)
    none = markov.Successors(np.full_like(successors.index, -1),
                             np.zeros_like(successors.weight), 3, 0.6)
    flat = evaluate.markov_baseline(ds, vocab, none, counts, ks=(1, 3, 10),
                                    exclude_context=exclude_context)
    assert flat == pytest.approx(pop) and got["mrr"] != pytest.approx(pop["mrr"])


def test_bench_markov_run_finds_the_chain(tmp_path, capsys):
    # datadir's timelines follow one fixed successor per movie: counting finds it.
    path = str(tmp_path / "data")
    datadir.write_data_dir(path, num_movies=30, num_users=200)
    out = tmp_path / "metrics.json"
    assert markov_run.main([f"--data_dir={path}", f"--output={out}"]) == 0
    got = json.loads(out.read_text())
    assert got["test"]["top_1"] == 1.0 and got["popularity"]["top_1"] < 0.2
    assert got["eval_split"] == schema.TEST and got["timing"]["fit_s"] > 0
    assert got["markov"] == {"last": markov.DEFAULT_LAST, "decay": markov.DEFAULT_DECAY,
                             "smoothing": markov.DEFAULT_SMOOTHING}
    info = data.load_data_dir(path)
    assert got["test"]["num_queries"] == info.num_examples[schema.TEST]
    # Bad input: one line naming it, exit 2, nothing written.
    missing = tmp_path / "none"
    assert markov_run.main([f"--data_dir={missing}", f"--output={tmp_path}/x.json"]) == 2
    assert str(missing) in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()
