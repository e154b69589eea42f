"""Tests for trainer.export: a SavedModel whose answers are known by hand."""
import shutil

import numpy as np
import pytest
import tensorflow as tf

from beam_jobs import schema
from tests.trainer.towers import hand_towers, tower_cfg
from trainer import export, model


def write_vocab(path, movie_ids):
    with open(path, "w") as f:
        f.write("\t".join(schema.VOCAB_COLUMNS) + "\n")
        for i in movie_ids:
            f.write(schema.format_vocab_row(i, 100 - i, 1990 + i, f"Movie {i}", "Drama") + "\n")
    return str(path)


# Candidates 10, 20, 30, 40; queries chosen by the first context movie.
CANDIDATES = {10: [1, 0], 20: [0, 1], 30: [1, 1], 40: [-1, 0]}
QUERIES = {10: [2, 1], 20: [0, 1], 30: [0, 0]}
# context starting with 10: q=[2, 1] -> scores 10: 2, 20: 1, 30: 3, 40: -2
#   -> top 3: 30 (3), 10 (2), 20 (1)
# context starting with 20: q=[0, 1] -> scores 10: 0, 20: 1, 30: 1, 40: 0
#   -> ties keep vocabulary order: 20 (1), 30 (1), 10 (0)


@pytest.fixture(scope="module")
def hand_export(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export")
    vocab = write_vocab(tmp / "vocab.tsv", [10, 20, 30, 40])
    towers = hand_towers(QUERIES, CANDIDATES)
    # 0 (the pad id) in the id list must be dropped, never returned.
    export.export_model(*towers, [0, 10, 20, 30, 40], str(tmp / "export"), vocab, k=3)
    # Move it: the asset must follow.
    shutil.move(str(tmp / "export"), str(tmp / "moved"))
    (tmp / "vocab.tsv").unlink()
    return tf.saved_model.load(str(tmp / "moved")), tmp / "moved"


def test_known_top_k(hand_export):
    loaded, _ = hand_export
    serve = loaded.signatures["serving_default"]
    out = serve(context_movie_id=tf.constant([[10, 0, 0], [20, 10, 0]], tf.int64))
    assert out["movie_ids"].dtype == tf.int64 and out["scores"].dtype == tf.float32
    np.testing.assert_array_equal(out["movie_ids"], [[30, 10, 20], [20, 30, 10]])
    np.testing.assert_allclose(out["scores"], [[3, 2, 1], [1, 1, 0]])


def test_signature_spec(hand_export):
    loaded, _ = hand_export
    serve = loaded.signatures["serving_default"]
    _, inputs = serve.structured_input_signature
    # Histories of any length (the last L = 3 are read).
    assert inputs == {
        schema.CONTEXT_MOVIE_ID: tf.TensorSpec([None, None], tf.int64, schema.CONTEXT_MOVIE_ID)
    }
    outputs = serve.structured_outputs
    assert outputs["movie_ids"].shape.as_list() == [None, 3]
    assert outputs["scores"].shape.as_list() == [None, 3]
    assert outputs["titles"].shape.as_list() == [None, 3] and outputs["titles"].dtype == tf.string
    assert outputs["unknown_ids"].shape.as_list() == [None]
    assert int(loaded.context_length.numpy()) == 3


def test_exclude_context_signature(hand_export):
    loaded, _ = hand_export
    serve = loaded.signatures["serving_exclude_context"]
    out = serve(context_movie_id=tf.constant([[10, 30, 0], [20, 10, 0]], tf.int64))
    # row 1: 10 and 30 leave -> 20 (1), 40 (-2), then an excluded one at -inf.
    # row 2: 20 and 10 leave -> 30 (1), 40 (0), then -inf.
    np.testing.assert_array_equal(out["movie_ids"][:, :2], [[20, 40], [30, 40]])
    np.testing.assert_allclose(out["scores"], [[1, -2, -np.inf], [1, 0, -np.inf]])


def test_exclude_context_covers_the_whole_history(hand_export):
    """A history longer than L: the query reads the last L ids, the exclusion all of them."""
    loaded, _ = hand_export
    serve = loaded.signatures["serving_exclude_context"]
    out = serve(context_movie_id=tf.constant([[10, 30, 40, 0], [20, 10, 30, 40]], tf.int64))
    # Both rows' queries read [10, 30, 40]; only row 1 leaves 20 unexcluded.
    assert int(out["movie_ids"][0, 0]) == 20 and np.isfinite(out["scores"][0, 0])
    assert np.all(np.isneginf(out["scores"][0, 1:]))
    assert np.all(np.isneginf(out["scores"][1]))


def test_asset_found_after_move(hand_export):
    loaded, moved = hand_export
    path = loaded.vocab.asset_path.numpy().decode()
    assert path.startswith(str(moved))
    with tf.io.gfile.GFile(path) as f:
        rows = schema.parse_vocab(f.read(), path)
    assert [r["movie_id"] for r in rows] == [10, 20, 30, 40]
    assert rows[0]["title"] == "Movie 10"


def test_real_towers_match_brute_force(tmp_path):
    vocab = list(range(1, 50))
    query_model, candidate_model = model.build_towers(vocab, 4, tower_cfg(8))
    path = export.export_model(
        query_model, candidate_model, vocab, str(tmp_path / "e"), write_vocab(tmp_path / "v", vocab),
        k=100,
    )
    loaded = tf.saved_model.load(path)
    # Unknown id 999 is left out of the history (and counted); 0 is padding.
    context = tf.constant([[3, 7, 0, 0], [5, 999, 2, 1]], tf.int64)
    out = loaded.signatures["serving_default"](context_movie_id=context)
    assert out["movie_ids"].shape == (2, 49)  # k capped at V
    np.testing.assert_array_equal(out["unknown_ids"], [0, 1])
    read = tf.constant([[3, 7, 0, 0], [5, 2, 1, 0]], tf.int64)
    scores = query_model(read).numpy() @ candidate_model(tf.constant(vocab, tf.int64)).numpy().T
    want = np.array(vocab)[np.argsort(-scores, axis=1, kind="stable")]
    np.testing.assert_array_equal(out["movie_ids"], want)
    np.testing.assert_allclose(out["scores"], -np.sort(-scores, axis=1), rtol=1e-5, atol=1e-6)


def test_bad_arguments(tmp_path):
    towers = hand_towers(QUERIES, CANDIDATES)
    with pytest.raises(FileNotFoundError, match="nowhere.tsv"):
        export.export_model(*towers, [10], str(tmp_path / "e"), str(tmp_path / "nowhere.tsv"))
    bad = tmp_path / "bad.tsv"
    bad.write_text("id\ttitle\n")
    with pytest.raises(schema.SchemaError, match="bad.tsv"):
        export.export_model(*towers, [10], str(tmp_path / "e"), str(bad))
    assert not (tmp_path / "e").exists()


def test_export_under_mirrored_strategy(tmp_path):
    vocab = list(range(1, 30))
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        query_model, candidate_model = model.build_towers(vocab, 4, tower_cfg(4))
        path = export.export_model(
            query_model, candidate_model, vocab, str(tmp_path / "e"),
            write_vocab(tmp_path / "v", vocab), k=5,
        )
    context = tf.constant([[3, 7, 9, 0]], tf.int64)
    out = tf.saved_model.load(path).signatures["serving_default"](context_movie_id=context)
    scores = query_model(context).numpy() @ candidate_model(tf.constant(vocab, tf.int64)).numpy().T
    np.testing.assert_allclose(out["scores"][0], np.sort(scores[0])[::-1][:5], rtol=1e-5)


def test_reexport_overwrites(tmp_path):
    vocab_path = write_vocab(tmp_path / "v", [10, 20, 30, 40])
    towers = hand_towers(QUERIES, CANDIDATES)
    target = str(tmp_path / "e")
    export.export_model(*towers, [10, 20, 30, 40], target, vocab_path, k=3)
    export.export_model(*towers, [10, 20, 30, 40], target, vocab_path, k=2)
    serve = tf.saved_model.load(target).signatures["serving_default"]
    out = serve(context_movie_id=tf.constant([[10, 0, 0]], tf.int64))
    np.testing.assert_array_equal(out["movie_ids"], [[30, 10]])
