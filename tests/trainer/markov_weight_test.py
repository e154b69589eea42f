"""--markov_weight: counted successors blended into the model's ranking, the same way in
the evaluation and in the export (against the formula written out in numpy), and
end to end through the trainer on data whose next movie follows from the last."""
import numpy as np
import pytest
import tensorflow as tf

from beam_jobs import schema
from tests.trainer import datadir
from tests.trainer.export_test import CANDIDATES, QUERIES, write_vocab
from tests.trainer.towers import hand_towers
from trainer import evaluate, export, loop, markov
from trainer.config import TrainConfig

VOCAB = [10, 20, 30, 40]
# Counted: after 20 comes 40 (3 times) or 10 (once); after 30 comes 20.
TRAIN = (np.array([[20, 0, 0]] * 4 + [[30, 0, 0]], np.int64), np.array([40, 40, 40, 10, 20]))


def _successors():
    return markov.count_successors([TRAIN], VOCAB, last=1, smoothing=1.0)


def _reference(contexts, weight):
    """log((softmax(q . c) + w S / sum S) / (1 + w)) by hand: [B, V]."""
    counted = _successors().dense()
    scores = np.array([[np.dot(QUERIES.get(c[0], [0, 0]), CANDIDATES[m]) for m in VOCAB]
                       for c in contexts], np.float64)
    model = np.exp(scores) / np.exp(scores).sum(axis=1, keepdims=True)
    rows = []
    for c in contexts:
        real = [m for m in c if m]
        s = counted[VOCAB.index(real[-1])] if real else np.zeros(len(VOCAB))
        rows.append(s / s.sum() if s.sum() else s)
    return np.log((model + weight * np.array(rows)) / (1 + weight))


CONTEXTS = np.array([[10, 20, 0], [20, 30, 0], [30, 10, 0], [20, 0, 0]], np.int64)
LABELS = np.array([40, 20, 10, 10], np.int64)


@pytest.mark.parametrize("weight", [0.5, 4.0])
def test_evaluation_ranks_by_the_blend(weight):
    ds = tf.data.Dataset.from_tensor_slices(
        {schema.CONTEXT_MOVIE_ID: CONTEXTS, schema.LABEL_MOVIE_ID: LABELS}).batch(3)
    towers = hand_towers(QUERIES, CANDIDATES)
    got = evaluate.evaluate_retrieval(*towers, ds, VOCAB, ks=(1, 2), successors=_successors(),
                                      markov_weight=weight)
    want = _reference(CONTEXTS, weight)
    label = [VOCAB.index(m) for m in LABELS]
    rank = np.array([1 + (row > row[j]).sum() for row, j in zip(want, label, strict=True)])
    assert got["top_1"] == pytest.approx(np.mean(rank <= 1))
    assert got["mrr"] == pytest.approx(np.mean(1 / rank))
    plain = evaluate.evaluate_retrieval(*towers, ds, VOCAB, ks=(1, 2))
    assert got["mrr"] != pytest.approx(plain["mrr"])  # the blend changes the ranking
    with pytest.raises(ValueError, match="needs successors"):
        evaluate.evaluate_retrieval(*towers, ds, VOCAB, markov_weight=1.0)


def test_export_serves_the_blend(tmp_path):
    vocab = write_vocab(tmp_path / "vocab.tsv", VOCAB)
    towers = hand_towers(QUERIES, CANDIDATES)
    export.export_model(*towers, VOCAB, str(tmp_path / "e"), vocab, k=4,
                        successors=_successors(), markov_weight=2.0)
    loaded = tf.saved_model.load(str(tmp_path / "e"))
    out = loaded.signatures["serving_default"](context_movie_id=tf.constant(CONTEXTS))
    want = _reference(CONTEXTS, 2.0)
    order = np.argsort(-want, axis=1, kind="stable")
    np.testing.assert_array_equal(out["movie_ids"], np.array(VOCAB)[order])
    np.testing.assert_allclose(out["scores"], np.take_along_axis(want, order, 1), rtol=1e-5)
    # The index signatures stay the towers' own: dot products, no blend.
    emb = loaded.signatures["query_embedding"](context_movie_id=tf.constant(CONTEXTS))
    cand = loaded.signatures["candidates"]()
    np.testing.assert_allclose(emb["embedding"].numpy() @ cand["embeddings"].numpy().T,
                               [[np.dot(QUERIES.get(c[0], [0, 0]), CANDIDATES[m]) for m in VOCAB]
                                for c in CONTEXTS])


def test_trainer_blends_in_evaluation_and_export(tmp_path):
    # datadir's timelines follow one fixed successor per movie: the counts know it.
    data_dir = str(tmp_path / "data")
    datadir.write_data_dir(data_dir, num_movies=40, num_users=120)
    results = {}
    for weight in (0.0, 2.0):
        cfg = TrainConfig(data_dir=data_dir, model_dir=str(tmp_path / f"m{weight}"), epochs=1,
                          global_batch_size=60, embedding_dim=8, eval_batch_size=64,
                          markov_weight=weight, strategy="auto")
        results[weight] = loop.run(cfg)
    assert results[2.0]["test"]["top_1"] == 1.0 > results[0.0]["test"]["top_1"]
    assert TrainConfig(data_dir="d", model_dir="m").model.markov_weight == 1.0  # the default
    # The export recommends what the evaluation ranked first: the chain's next movie.
    test = next(iter(tf.data.TFRecordDataset(
        tf.io.gfile.glob(f"{data_dir}/test/*"), compression_type="GZIP").take(1)))
    example = tf.train.Example.FromString(test.numpy())
    context = example.features.feature[schema.CONTEXT_MOVIE_ID].int64_list.value
    label = example.features.feature[schema.LABEL_MOVIE_ID].int64_list.value[0]
    loaded = tf.saved_model.load(export.latest(str(tmp_path / "m2.0" / "export")))
    out = loaded.signatures["serving_default"](context_movie_id=tf.constant([context], tf.int64))
    assert int(out["movie_ids"][0, 0]) == label
