"""Towers for the trainer tests: the recipe's plain towers, and towers whose
embeddings are written by hand so expected scores can be worked out on paper."""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import tensorflow as tf

from trainer.config import ModelConfig


def tower_cfg(embedding_dim: int, **options) -> ModelConfig:
    """The TFRS recipe's towers (a GRU as wide as the embeddings, no skip, no
    prior), embedding_dim wide, with `options` changed."""
    return ModelConfig(**{"embedding_dim": embedding_dim, "gru_units": 0, "last_movies": 0,
                          "popularity_prior": 0.0, **options})


def hand_towers(query_vectors, candidate_vectors, context_length: int = 3):
    """Towers with embeddings set by hand, keyed by raw movie id.

    query_model: context [B, L] -> query_vectors[context[:, 0]] (the first movie
    alone decides the query, so queries can be written down directly).
    candidate_model: ids [B] -> candidate_vectors[ids].
    Each is a {movie id: vector} mapping (ids without a vector embed to zeros)
    or a table whose row i is movie i's vector.
    """

    def table(vectors):
        if isinstance(vectors, Mapping):
            rows = np.zeros([max(vectors) + 1, len(next(iter(vectors.values())))], np.float32)
            for movie_id, vector in vectors.items():
                rows[movie_id] = vector
        else:
            rows = np.asarray(vectors, np.float32)
        return tf.keras.layers.Embedding(*rows.shape, weights=[rows])

    context = tf.keras.Input(shape=(context_length,), dtype=tf.int64)
    first = tf.keras.layers.Lambda(lambda c: c[:, 0])(context)
    movie = tf.keras.Input(shape=(), dtype=tf.int64)
    return (tf.keras.Model(context, table(query_vectors)(first)),
            tf.keras.Model(movie, table(candidate_vectors)(movie)))
