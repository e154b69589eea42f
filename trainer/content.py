"""Movie content (genres, release year) as part of a movie's embedding: --movie_features.

A movie is embedded as  id_embedding + mean(genre embeddings) + year_bucket embedding,
in both towers (the query tower's context movies and the candidates). The content
comes from vocab.tsv (genres and the year parsed from the title), so it is a
function of the movie id: the examples' context_movie_year / context_movie_genre
features are exactly these values for the context movies, and reading them from the
vocabulary by id instead keeps every model input (and the export's serving
signatures) a list of ids. What content adds: movies with few ratings share
parameters with similar movies, so rarely rated movies get usable embeddings.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

# Release years are bucketed: a learned vector per 5 years keeps every bucket
# populated (ML-1M spans 1919-2000, ML-25M 1874-2019).
YEAR_BUCKET = 5
# Rows of the towers' lookup: 0 is the pad id, 1 the unknown id (trainer/model.py _lookup).
SPECIAL_ROWS = 2


@dataclasses.dataclass(frozen=True)
class MovieContent:
    """Content per lookup row (rows 0 and 1, pad and unknown, have none).

    Attributes:
      genres: the genre names, sorted: column g of `genre_weights` is genres[g].
      genre_weights: float32 [V + 2, G], row r: 1/n for each of its n genres.
      year_buckets: int32 [V + 2], 0 for no year, else 1 + (year - first) // YEAR_BUCKET.
    """

    genres: tuple[str, ...]
    genre_weights: np.ndarray
    year_buckets: np.ndarray

    @property
    def num_year_buckets(self) -> int:
        return int(self.year_buckets.max()) + 1

    @classmethod
    def from_vocab(cls, years: Sequence[int], genres: Sequence[str]) -> MovieContent:
        """From vocab.tsv's columns in vocabulary order: years [V] (0 = unknown) and
        genres [V] ("|"-separated names, as in movies.dat)."""
        if len(years) != len(genres):
            raise ValueError(f"{len(years)} years for {len(genres)} genre lists")
        names = [[g for g in text.split("|") if g] for text in genres]  # movies.dat's "|"
        vocab = tuple(sorted({g for n in names for g in n}))
        column = {g: i for i, g in enumerate(vocab)}
        weights = np.zeros([len(names) + SPECIAL_ROWS, max(len(vocab), 1)], np.float32)
        for row, movie_genres in enumerate(names, start=SPECIAL_ROWS):
            for g in movie_genres:
                weights[row, column[g]] = 1.0 / len(movie_genres)
        years = np.asarray(years, np.int64)
        known = years > 0
        first = years[known].min() if known.any() else 0
        buckets = np.zeros(len(names) + SPECIAL_ROWS, np.int32)
        buckets[SPECIAL_ROWS:][known] = 1 + (years[known] - first) // YEAR_BUCKET
        return cls(vocab, weights, buckets)


class ContentEmbedding(tf.keras.layers.Layer):
    """call(rows int [...]) -> [..., d]: genre_weights[rows] @ genre_table +
    year_table[year_buckets[rows]]; zeros for the pad and unknown rows (year bucket 0,
    "no year", is learned for real movies without one)."""

    def __init__(self, content: MovieContent, dim: int, **kwargs):
        super().__init__(**kwargs)
        self.content, self.dim = content, int(dim)

    def build(self, input_shape):
        # Created here, not in __init__, so the variables carry the layer's name.
        self.genre_table = self.add_weight(
            name="genre_embedding", shape=[self.content.genre_weights.shape[1], self.dim],
            initializer="uniform")
        self.year_table = self.add_weight(
            name="year_embedding", shape=[self.content.num_year_buckets, self.dim],
            initializer="uniform")
        super().build(input_shape)

    def call(self, rows):
        weights = tf.gather(tf.constant(self.content.genre_weights), rows)  # [..., G]
        genre = tf.tensordot(tf.cast(weights, self.compute_dtype),
                             tf.cast(self.genre_table, self.compute_dtype), axes=1)
        year = tf.gather(tf.cast(self.year_table, self.compute_dtype),
                         tf.gather(tf.constant(self.content.year_buckets), rows))
        real = tf.cast(rows >= SPECIAL_ROWS, self.compute_dtype)[..., None]
        return (genre + year) * real

    def compute_mask(self, inputs, mask=None):
        return None
