"""Exports the trained towers as a self-contained recommender SavedModel.

Layout of `export_dir` (a local path or gs:// URI):

    saved_model.pb, variables/    the query tower, candidate embeddings [V, d], ids [V]
    assets/vocab.tsv              copy of the data_dir's vocab.tsv (titles, years, genres)

Signatures (both take `context_movie_id` int64 [None, L]: raw ids, oldest
first, right-padded with 0, exactly like the training features):

    serving_default            -> {"movie_ids": int64 [None, k], "scores": float32 [None, k]}
    serving_exclude_context    the same, but movies of the context itself are not returned
                               (they get score -inf and only show up if fewer than k
                               other candidates exist)

The index is brute force: candidate embeddings are computed once at export
time and stored as a variable, and serving is query [B, d] @ cand^T -> [B, V]
-> tf.math.top_k. We use a plain tf.Module rather than
tfrs.layers.factorized_top_k.BruteForce: BruteForce's call would still need
wrapping for named inputs/outputs, the asset and the exclusion signature, and
this way the SavedModel needs nothing but TensorFlow to serve. At MovieLens
sizes (V <= 62k) exact scoring is a few ms per query on CPU; an approximate
index (ScaNN) only pays off far beyond that. Candidates are the vocabulary ids
only, so the pad id 0 and the query tower's OOV row can never be returned.
Ties keep vocabulary order (tf.math.top_k puts the lower index first).
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from beam_jobs import schema
from trainer import evaluate

SERVING_DEFAULT = "serving_default"
SERVING_EXCLUDE_CONTEXT = "serving_exclude_context"
EXPORT_SUBDIR = "export"


class Recommender(tf.Module):
    """Query tower + brute-force index over precomputed candidate embeddings."""

    def __init__(
        self,
        query_model: tf.keras.Model,
        candidate_embeddings: np.ndarray,
        movie_ids: np.ndarray,
        vocab_path: str,
        k: int,
        context_length: int,
    ):
        super().__init__(name="recommender")
        self.query_model = query_model
        # Variables, not constants: a [V, d] constant would bloat the graph proto.
        self.candidate_embeddings = tf.Variable(
            candidate_embeddings, trainable=False, name="candidate_embeddings"
        )
        self.candidate_ids = tf.Variable(movie_ids, trainable=False, name="candidate_ids")
        # Copied into export_dir/assets/ by tf.saved_model.save; after loading,
        # .asset_path points into wherever the export now lives.
        self.vocab = tf.saved_model.Asset(vocab_path)
        self.k = int(k)
        spec = tf.TensorSpec([None, context_length], tf.int64, name=schema.CONTEXT_MOVIE_ID)
        self.serve = tf.function(self._serve, input_signature=[spec])
        self.serve_exclude_context = tf.function(self._serve_exclude_context, input_signature=[spec])

    def _scores(self, context_movie_id: tf.Tensor) -> tf.Tensor:
        """[B, L] context ids -> [B, V] scores against every candidate."""
        query = tf.cast(self.query_model(context_movie_id, training=False), tf.float32)
        return tf.matmul(query, self.candidate_embeddings, transpose_b=True)

    def _top_k(self, scores: tf.Tensor) -> dict:
        values, indices = tf.math.top_k(scores, k=self.k)
        return {"movie_ids": tf.gather(self.candidate_ids, indices), "scores": values}

    def _serve(self, context_movie_id):
        return self._top_k(self._scores(context_movie_id))

    def _serve_exclude_context(self, context_movie_id):
        scores = self._scores(context_movie_id)
        # in_context[b, v]: candidate v appears in row b's context. [B, L, V]
        # is small at serving batch sizes; pads (0) match no candidate.
        in_context = tf.reduce_any(
            tf.equal(context_movie_id[:, :, None], self.candidate_ids[None, None, :]), axis=1
        )
        return self._top_k(tf.where(in_context, -np.inf, scores))


def _context_length(query_model: tf.keras.Model) -> int:
    shape = getattr(query_model, "input_shape", None)
    if isinstance(shape, tuple) and len(shape) == 2 and isinstance(shape[1], int):
        return shape[1]
    raise ValueError(
        f"cannot read the context length from query_model.input_shape ({shape!r}); "
        "pass context_length="
    )


def export_model(
    query_model: tf.keras.Model,
    candidate_model: tf.keras.Model,
    movie_ids: Sequence[int],
    export_dir: str,
    vocab_path: str,
    k: int = 100,
    *,
    context_length: int | None = None,
) -> str:
    """Writes the recommender SavedModel (see module doc) to export_dir.

    Args:
      query_model: int64 context ids [B, L] -> float32 [B, d].
      candidate_model: int64 movie ids [N] -> float32 [N, d].
      movie_ids: the vocabulary [V]; the pad id 0, if present, is dropped.
      export_dir: local path or gs:// URI (overwritten if it holds an export).
      vocab_path: the data_dir's vocab.tsv, copied into the export's assets.
      k: number of results per query (capped at V).
      context_length: L; read from query_model.input_shape when None.

    Returns:
      export_dir.
    """
    if not tf.io.gfile.exists(vocab_path):
        raise FileNotFoundError(f"vocab_path {vocab_path} does not exist")
    with tf.io.gfile.GFile(vocab_path) as f:
        schema.parse_vocab(f.read(), vocab_path)  # fail now, not in recommend
    ids = np.asarray(movie_ids, dtype=np.int64).reshape(-1)
    ids = ids[ids != schema.PAD_MOVIE_ID]
    if ids.size == 0:
        raise ValueError("movie_ids holds no movie")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    length = context_length if context_length is not None else _context_length(query_model)
    # Candidate embeddings are computed now, from the final weights.
    embeddings = evaluate.candidate_embeddings(candidate_model, ids).numpy()
    module = Recommender(query_model, embeddings, ids, vocab_path, min(k, ids.size), length)
    signatures = {
        SERVING_DEFAULT: module.serve,
        SERVING_EXCLUDE_CONTEXT: module.serve_exclude_context,
    }
    tf.saved_model.save(module, export_dir, signatures=signatures)
    logging.info("exported %d candidates (k=%d, L=%d) to %s", ids.size, module.k, length, export_dir)
    return export_dir
