"""The TFRS sequential retrieval model: a GRU query tower and an embedding candidate tower.

Recipe of the TFRS "sequential retrieval" tutorial: the query is the sequence of
movies a user watched (oldest first, right-padded with 0), encoded by
lookup -> Embedding -> GRU; the candidate is the next movie, encoded by
lookup -> Embedding. Training maximises the score of the true next movie
against the other movies of the batch (in-batch softmax, `tfrs.tasks.Retrieval`).

Only `tf.keras` is used (tf_keras under TF_USE_LEGACY_KERAS=1): TFRS 0.7.7 is
Keras 2 code, and a Keras 3 layer mixed in fails at fit time.
"""
from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf
import tensorflow_recommenders as tfrs

from beam_jobs import schema


def _lookup(movie_ids: Sequence[int], name: str) -> tf.keras.layers.IntegerLookup:
    """Raw MovieLens id -> row index. Row 0: the pad id 0 (mask); row 1: unknown ids."""
    ids = [int(m) for m in movie_ids]
    if schema.PAD_MOVIE_ID in ids:
        raise ValueError(f"movie id {schema.PAD_MOVIE_ID} is the pad id and cannot be in the vocabulary")
    return tf.keras.layers.IntegerLookup(
        vocabulary=tf.constant(ids, dtype=tf.int64),
        mask_token=schema.PAD_MOVIE_ID,
        num_oov_indices=1,
        name=name,
    )


def build_towers(
    movie_ids: Sequence[int], embedding_dim: int, context_length: int
) -> tuple[tf.keras.Model, tf.keras.Model]:
    """Builds the two towers. Call inside `strategy.scope()` when distributing.

    Args:
      movie_ids: the vocabulary (raw MovieLens ids, no 0); order fixes the rows.
      embedding_dim: d, the width of embeddings and of the GRU state.
      context_length: L, the number of context ids per example.

    Returns:
      (query_model, candidate_model):
        query_model: int64 context ids [B, L] (raw ids, 0 = pad) -> float32 [B, d].
        candidate_model: int64 movie ids [B] -> float32 [B, d].
      Ids not in `movie_ids` share one out-of-vocabulary row.
    """
    context = tf.keras.Input(shape=(context_length,), dtype=tf.int64, name=schema.CONTEXT_MOVIE_ID)
    lookup = _lookup(movie_ids, "query_lookup")
    rows = lookup(context)
    # Row 0 is the pad id: mask_zero makes the GRU skip padded steps, so its
    # final state is the state after the last real movie (contexts are
    # right-padded, oldest first).
    embedded = tf.keras.layers.Embedding(
        lookup.vocabulary_size(), embedding_dim, mask_zero=True, name="query_embedding"
    )(rows)
    query = tf.keras.layers.GRU(embedding_dim, name="query_gru")(embedded)
    query_model = tf.keras.Model(context, query, name="query_model")

    movie = tf.keras.Input(shape=(), dtype=tf.int64, name=schema.LABEL_MOVIE_ID)
    lookup = _lookup(movie_ids, "candidate_lookup")
    rows = lookup(movie)
    candidate = tf.keras.layers.Embedding(
        lookup.vocabulary_size(), embedding_dim, name="candidate_embedding"
    )(rows)
    candidate_model = tf.keras.Model(movie, candidate, name="candidate_model")
    return query_model, candidate_model


class SequentialRetrievalModel(tfrs.Model):
    """Two towers + in-batch softmax retrieval loss.

    Inputs are feature dicts: "context_movie_id" int64 [B, L] and
    "label_movie_id" int64 [B] (a scalar per example: a [B, 1] label would make
    the candidate tower output [B, 1, d] and silently transpose TFRS's score
    matrix).

    Negatives are the other labels of the same replica's batch, as TFRS does.
    """

    def __init__(
        self,
        query_model: tf.keras.Model,
        candidate_model: tf.keras.Model,
        global_batch_size: int,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.query_model = query_model
        self.candidate_model = candidate_model
        self.global_batch_size = int(global_batch_size)
        # No FactorizedTopK metrics: top-k over the whole vocabulary is
        # trainer/evaluate.py's job (a brute-force index is ~6x faster), and
        # training should not pay for it every step.
        self.task = tfrs.tasks.Retrieval()
        # tfrs.Model reports the raw per-batch SUM of the loss; this Mean of the
        # per-example loss is comparable across batch sizes and replica counts.
        self.loss_tracker = tf.keras.metrics.Mean(name="loss_per_example")

    def call(self, features, training=False):
        """features -> (query [B, d], candidate [B, d]) embeddings."""
        return (
            self.query_model(features[schema.CONTEXT_MOVIE_ID], training=training),
            self.candidate_model(features[schema.LABEL_MOVIE_ID], training=training),
        )

    def compute_losses(self, features, training: bool = False) -> tuple[tf.Tensor, tf.Tensor]:
        """Losses of one replica's batch.

        Returns:
          (scaled, mean): scaled = summed in-batch loss / global batch size, the
          value to differentiate; mean = summed loss / local batch size, the
          per-example loss of this replica's batch (for reporting).
        """
        query, candidate = self(features, training=training)
        summed = self.task(query, candidate, compute_metrics=False)
        local_batch = tf.cast(tf.shape(query)[0], tf.float32)
        mean = summed / local_batch
        self.loss_tracker.update_state(mean, sample_weight=local_batch)
        # Divide by the GLOBAL batch, not the local one: MirroredStrategy (and
        # MultiWorkerMirroredStrategy) SUM-reduce gradients across replicas, so
        # with R replicas of B/R examples each, sum_r grad(sum_r / B) =
        # grad(total / B): the gradient of the mean over the global batch,
        # whatever R is. Dividing by B/R would make updates R times larger.
        scaled = summed / tf.cast(self.global_batch_size, tf.float32)
        return scaled, mean

    def compute_loss(self, inputs, training: bool = False) -> tf.Tensor:
        """tfrs.Model hook (used by model.fit): the scaled loss."""
        return self.compute_losses(inputs, training=training)[0]
