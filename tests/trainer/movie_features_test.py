"""--movie_features: genre and release-year vectors added to every movie's embedding."""
import numpy as np
import pytest
import tensorflow as tf

from tests.trainer.export_test import write_vocab
from tests.trainer.towers import tower_cfg
from trainer import content, export, model

VOCAB = [5, 6, 7, 8]
YEARS = [1995, 1996, 2001, 0]
GENRES = ["Comedy|Drama", "Drama", "Comedy|Drama", ""]


def test_content_by_hand():
    c = content.MovieContent.from_vocab(YEARS, GENRES)
    assert c.genres == ("Comedy", "Drama")
    # rows 0 (pad) and 1 (unknown) first
    np.testing.assert_allclose(c.genre_weights,
                               [[0, 0], [0, 0], [.5, .5], [0, 1], [.5, .5], [0, 0]])
    # 5-year buckets from 1995: 1995, 1996 -> 1; 2001 -> 2; no year -> 0
    np.testing.assert_array_equal(c.year_buckets, [0, 0, 1, 1, 2, 0])
    with pytest.raises(ValueError, match="4 years for 3"):
        content.MovieContent.from_vocab(YEARS, GENRES[:3])


def _towers(cfg):
    c = content.MovieContent.from_vocab(YEARS, GENRES)
    return model.build_towers(VOCAB, 3, cfg, content=c)


def test_flag_adds_content_to_both_towers():
    plain = model.build_towers(VOCAB, 3, tower_cfg(4))
    q, cand = _towers(tower_cfg(4, movie_features=True))
    names = {v.name.split("/")[0] for v in q.trainable_variables + cand.trainable_variables}
    assert {"query_content", "candidate_content"} <= names
    assert len(q.trainable_variables) == len(plain[0].trainable_variables) + 2
    # With the id embeddings zeroed, a candidate is its content alone: movies 5 and 7
    # differ only in year bucket, 8 has no content at all.
    cand.get_layer("candidate_embedding").set_weights(
        [np.zeros_like(cand.get_layer("candidate_embedding").get_weights()[0])])
    layer = cand.get_layer("candidate_content")
    genre, year = layer.get_weights()
    out = cand(tf.constant(VOCAB, tf.int64)).numpy()
    np.testing.assert_allclose(out[0], genre.mean(axis=0) + year[1], rtol=1e-6)
    np.testing.assert_allclose(out[1], genre[1] + year[1], rtol=1e-6)
    np.testing.assert_allclose(out[2], genre.mean(axis=0) + year[2], rtol=1e-6)
    np.testing.assert_allclose(out[3], year[0], rtol=1e-6)
    # An unknown id (row 1) gets no content.
    np.testing.assert_allclose(cand(tf.constant([999], tf.int64)).numpy(), 0.0, atol=0)


def test_shared_embeddings_share_the_content():
    q, cand = _towers(tower_cfg(4, movie_features=True, share_embeddings=True))
    shared = [v for v in q.trainable_variables if "movie_content" in v.name]
    assert len(shared) == 2
    assert {id(v) for v in shared} <= {id(v) for v in cand.trainable_variables}


def test_needs_the_content():
    with pytest.raises(ValueError, match="MovieContent"):
        model.build_towers(VOCAB, 3, tower_cfg(4, movie_features=True))


@pytest.mark.parametrize("tower", ["gru", "transformer"])
def test_export_serves_what_the_towers_compute(tmp_path, tower):
    extra = {"query_tower": tower, "last_movies": 1} if tower == "transformer" else {}
    q, cand = _towers(tower_cfg(4, movie_features=True, **extra))
    path = export.export_model(q, cand, VOCAB, str(tmp_path / "e"),
                               write_vocab(tmp_path / "v", VOCAB), k=4)
    loaded = tf.saved_model.load(path)
    context = tf.constant([[5, 6, 0], [8, 7, 6]], tf.int64)
    out = loaded.signatures["serving_default"](context_movie_id=context)
    scores = q(context).numpy() @ cand(tf.constant(VOCAB, tf.int64)).numpy().T
    np.testing.assert_allclose(out["scores"], -np.sort(-scores, axis=1), rtol=1e-5, atol=1e-6)
