"""--eval_exclude_seen at the evaluation level: hand-computed ranks with each
user's seen movies taken out of the ranking (model and popularity)."""
import pytest
import tensorflow as tf

from beam_jobs import schema
from tests.trainer.evaluate_test import CANDIDATES, CONTEXTS, LABELS, QUERIES, VOCAB
from tests.trainer.towers import hand_towers
from trainer import evaluate


def seen_batches(seen, batch_size=2):
    """CONTEXTS/LABELS with a ragged seen_movie_id, parsed as a SparseTensor like
    data.make_eval_dataset's VarLenFeature."""
    ds = tf.data.Dataset.from_tensor_slices({
        schema.CONTEXT_MOVIE_ID: tf.constant(CONTEXTS, tf.int64),
        schema.LABEL_MOVIE_ID: tf.constant(LABELS, tf.int64),
        schema.SEEN_MOVIE_ID: tf.ragged.constant(seen, tf.int64),
    }).batch(batch_size)
    return ds.map(lambda f: {**f, schema.SEEN_MOVIE_ID: f[schema.SEEN_MOVIE_ID].to_sparse()})


# Scores of movies 1..4 per query (see evaluate_test): [2, 1, 3, -2], [0, 1, 1, 0],
# [-1, 0, -1, 1]; labels 1, 3, 1; ranks without exclusion 2, 1 (tie with 2), 3 (tie with 3).
# Seen: query 1 saw 3 (the one above its label) and 99 (not in the vocabulary);
# query 2 saw 1 and 4 (both below its label: nothing changes but no tie is removed);
# query 3 saw 4 (above), 2 (above) listed twice, and its own label 1 (never removed).
SEEN = [[3, 99], [1, 4], [1, 2, 2, 4]]


def test_exclude_seen_ranks():
    towers = hand_towers(QUERIES, CANDIDATES)
    got = evaluate.evaluate_retrieval(*towers, seen_batches(SEEN), VOCAB, ks=(1, 2, 3),
                                      exclude_seen=True)
    # ranks 1, 1 (movie 2 still ties), 1 (3 still ties: unseen)
    assert got["top_1"] == pytest.approx(1.0)
    assert got["mrr"] == pytest.approx(1.0)
    assert got["label_tie_rate"] == pytest.approx(2 / 3)
    # exclude_context adds nothing once seen movies are excluded.
    both = evaluate.evaluate_retrieval(*towers, seen_batches(SEEN), VOCAB, ks=(1, 2, 3),
                                       exclude_seen=True, exclude_context=True)
    assert both == got


def test_exclude_seen_is_not_exclude_context():
    """A seen movie outside the context is removed only by exclude_seen."""
    towers = hand_towers(QUERIES, CANDIDATES)
    ds = seen_batches(SEEN)
    context = evaluate.evaluate_retrieval(*towers, ds, VOCAB, ks=(1,), exclude_context=True)
    seen = evaluate.evaluate_retrieval(*towers, ds, VOCAB, ks=(1,), exclude_seen=True)
    plain = evaluate.evaluate_retrieval(*towers, ds, VOCAB, ks=(1,))
    assert plain["mrr"] < context["mrr"] < seen["mrr"]


def test_popularity_exclude_seen():
    # Ranking by count: 3 (9), 2 (5), 4 (5), 1 (0). Label 1 is last (rank 4) for queries
    # 1 and 3; label 3 is first for query 2. Query 1 saw 3 -> rank 3; query 3 saw 2 and 4
    # -> rank 2.
    counts = [0, 5, 9, 5]
    got = evaluate.popularity_baseline(seen_batches(SEEN), VOCAB, counts, ks=(1, 2, 3, 4),
                                       exclude_seen=True)
    assert got["mrr"] == pytest.approx((1 / 3 + 1 + 1 / 2) / 3)
    assert got["top_2"] == pytest.approx(2 / 3)


def test_exclude_seen_needs_the_feature():
    towers = hand_towers(QUERIES, CANDIDATES)
    ds = seen_batches(SEEN).map(lambda f: {k: v for k, v in f.items()
                                           if k != schema.SEEN_MOVIE_ID})
    with pytest.raises(ValueError, match="seen_movie_id"):
        evaluate.evaluate_retrieval(*towers, ds, VOCAB, exclude_seen=True)
