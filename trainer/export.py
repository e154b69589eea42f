"""Exports the trained towers as a self-contained, deployable recommender SavedModel.

Layout written by `export_version(base)` (base: MODEL_DIR/export, a local path or gs://):

    base/1/, base/2/, ...   one SavedModel per export, numbered upwards (TF Serving's and
                            Vertex AI's version layout; a resumed or re-exported run adds one)
    base/LATEST             the newest version's number (written last: a stable pointer)

Each version (what `export_model(export_dir)` writes):

    saved_model.pb, variables/    the query tower, candidate embeddings [V, D], ids [V], titles [V]
    assets/vocab.tsv              copy of the data_dir's vocab.tsv (titles, years, genres)

D is the embedding width d, plus one column when the popularity prior is on (the query's
column is 1 at inference, the candidate's is b log q): dot products are the model's scores.
With --markov_weight > 0 the export also holds the counted successors (trainer/markov.py,
[V, 100] indices and weights) and the serving signatures rank by their blend with those
scores (markov.mix); query_embedding and candidates remain the towers' own.

Signatures (`saved_model_cli show --all` output: docs/serving.md):

    serving_default          context_movie_id int64 [B, n], n <= L or more (the last L are
                             used): raw ids, oldest first, right-padded with 0 ->
                             movie_ids int64 [B, k], scores float32 [B, k], titles string
                             [B, k], unknown_ids int32 [B] (ids not in the vocabulary:
                             ignored, the history is read without them, and counted here)
    serving_exclude_context  the same, without any movie of the given history: all n ids,
                             not only the last L the query reads, so sending a user's
                             whole history excludes everything seen (those come back with
                             score -inf only when fewer than k others exist)
    serving_examples         examples string [B]: serialized tf.Example in the data
                             contract's format (context_movie_id [L]) -> the same outputs
    query_embedding          context_movie_id int64 [B, n] -> embedding float32 [B, D],
                             unknown_ids int32 [B]: for an external (ANN) index
    candidates               no input -> movie_ids int64 [V], embeddings float32 [V, D],
                             titles string [V]: the index's contents

The loaded object's `recommend(ids)` function takes int32 or int64 ids (the signatures are
int64; JSON clients of TF Serving or Vertex AI send plain numbers either way).

The index is brute force: candidate embeddings are computed once at export time and
stored as a variable; serving is query [B, D] @ cand^T -> [B, V] -> tf.math.top_k. A
plain tf.Module of core ops, not tfrs.layers.factorized_top_k.BruteForce: the SavedModel
needs nothing but TensorFlow to serve. Candidates are the vocabulary ids only, so the pad
id 0 and the query tower's OOV row can never be returned. Ties keep vocabulary order.
"""
from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from beam_jobs import schema
from trainer import evaluate, markov

SERVING_DEFAULT = "serving_default"
SERVING_EXCLUDE_CONTEXT = "serving_exclude_context"
SERVING_EXAMPLES = "serving_examples"
QUERY_EMBEDDING = "query_embedding"
CANDIDATES = "candidates"
LATEST_FILE = "LATEST"
_VERSION = re.compile(r"^[0-9]+$")


class Recommender(tf.Module):
    """Query tower + brute-force index over precomputed candidate embeddings."""

    def __init__(self, query_model: tf.keras.Model, candidate_embeddings: np.ndarray,
                 movie_ids: np.ndarray, titles: Sequence[str], vocab_path: str, k: int,
                 context_length: int, successors: markov.Successors | None = None,
                 markov_weight: float = 0.0):
        super().__init__(name="recommender")
        self.query_model = query_model
        self.markov_weight = float(markov_weight)  # > 0: export_model checked successors
        if self.markov_weight:  # variables, like the embeddings: not baked into the graph
            self.successor_index = tf.Variable(successors.index, trainable=False,
                                               name="successor_index")
            self.successor_weight = tf.Variable(successors.weight, trainable=False,
                                                name="successor_weight")
            self._markov = (successors.last, successors.decay)
        # Variables, not constants: a [V, D] constant would bloat the graph proto.
        self.candidate_embeddings = tf.Variable(
            candidate_embeddings, trainable=False, name="candidate_embeddings")
        self.candidate_ids = tf.Variable(movie_ids, trainable=False, name="candidate_ids")
        self.candidate_titles = tf.Variable(list(titles), trainable=False, dtype=tf.string,
                                            name="candidate_titles")
        self.index = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant(movie_ids, tf.int64), tf.range(len(movie_ids), dtype=tf.int64)),
            default_value=-1)
        # Copied into export_dir/assets/ by tf.saved_model.save; after loading,
        # .asset_path points into wherever the export now lives.
        self.vocab = tf.saved_model.Asset(vocab_path)
        self.k = int(k)
        self.context_length = tf.Variable(context_length, trainable=False, name="context_length")
        self._length = int(context_length)
        ids = tf.TensorSpec([None, None], tf.int64, name=schema.CONTEXT_MOVIE_ID)
        self.serve = tf.function(lambda context_movie_id: self._recommend(context_movie_id),
                                 input_signature=[ids])
        self.serve_exclude_context = tf.function(
            lambda context_movie_id: self._recommend(context_movie_id, exclude_context=True),
            input_signature=[ids])
        self.serve_examples = tf.function(
            self._recommend_examples, input_signature=[tf.TensorSpec([None], tf.string,
                                                                     name="examples")])
        self.query_embedding = tf.function(self._query_embedding, input_signature=[ids])
        self.candidates = tf.function(self._candidates, input_signature=[])
        self.recommend = tf.function(self._recommend)
        for dtype in (tf.int32, tf.int64):  # traced now, so the loaded object has both
            self.recommend.get_concrete_function(tf.TensorSpec([None, None], dtype))

    def _history(self, ids: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """ids [B, n] (any int dtype, 0 = pad) -> (context [B, L] int64 of the last L known
        ids, right-padded; unknown_ids int32 [B], how many ids were not in the vocabulary)."""
        ids = tf.cast(ids, tf.int64)
        real = tf.not_equal(ids, schema.PAD_MOVIE_ID)
        known = tf.greater_equal(self.index.lookup(ids), 0)
        unknown = tf.reduce_sum(tf.cast(real & ~known, tf.int32), axis=1)
        kept = tf.ragged.boolean_mask(ids, real & known)  # [B, (m)], oldest first
        context = kept[:, -self._length:].to_tensor(default_value=schema.PAD_MOVIE_ID,
                                                    shape=[None, self._length])
        return context, unknown

    def _query(self, context: tf.Tensor) -> tf.Tensor:
        return tf.cast(self.query_model(context, training=False), tf.float32)

    def _recommend(self, context_movie_id: tf.Tensor, exclude_context: bool = False) -> dict:
        context, unknown = self._history(context_movie_id)
        scores = tf.matmul(self._query(context), self.candidate_embeddings, transpose_b=True)
        if self.markov_weight:
            counted = markov.successor_scores(self.successor_index, self.successor_weight,
                                              context, self.index.lookup(context), *self._markov)
            scores = markov.mix(scores, counted, self.markov_weight)
        if exclude_context:
            scores = tf.where(self._in_history(context_movie_id), -np.inf, scores)
        values, indices = tf.math.top_k(scores, k=self.k)
        return {"movie_ids": tf.gather(self.candidate_ids, indices), "scores": values,
                "titles": tf.gather(self.candidate_titles, indices), "unknown_ids": unknown}

    def _in_history(self, ids: tf.Tensor) -> tf.Tensor:
        """bool [B, V]: candidate v is among row b's ids [B, n] -- ALL n of them, not
        only the last L the query reads, so a client that sends a user's whole history
        excludes everything the user has seen. Scattered rather than compared
        ([B, n, V] would be large for long histories); pads and unknown ids mark
        nothing."""
        index = self.index.lookup(tf.cast(ids, tf.int64))  # [B, n], -1: pad or unknown
        where = tf.where(index >= 0)  # [m, 2] (row, position)
        rows_cols = tf.stack([where[:, 0], tf.gather_nd(index, where)], axis=1)
        shape = tf.stack([tf.shape(ids, out_type=tf.int64)[0],
                          tf.shape(self.candidate_ids, out_type=tf.int64)[0]])
        return tf.tensor_scatter_nd_update(tf.zeros(shape, tf.bool), rows_cols,
                                           tf.ones(tf.shape(rows_cols)[:1], tf.bool))

    def _recommend_examples(self, examples: tf.Tensor) -> dict:
        spec = {schema.CONTEXT_MOVIE_ID: tf.io.FixedLenFeature([self._length], tf.int64)}
        return self._recommend(tf.io.parse_example(examples, spec)[schema.CONTEXT_MOVIE_ID])

    def _query_embedding(self, context_movie_id: tf.Tensor) -> dict:
        context, unknown = self._history(context_movie_id)
        return {"embedding": self._query(context), "unknown_ids": unknown}

    def _candidates(self) -> dict:
        return {"movie_ids": tf.identity(self.candidate_ids),
                "embeddings": tf.identity(self.candidate_embeddings),
                "titles": tf.identity(self.candidate_titles)}


def _context_length(query_model: tf.keras.Model) -> int:
    shape = getattr(query_model, "input_shape", None)
    if isinstance(shape, tuple) and len(shape) == 2 and isinstance(shape[1], int):
        return shape[1]
    raise ValueError(
        f"cannot read the context length from query_model.input_shape ({shape!r}); "
        "pass context_length=")


def export_model(query_model: tf.keras.Model, candidate_model: tf.keras.Model,
                 movie_ids: Sequence[int], export_dir: str, vocab_path: str, k: int = 100,
                 *, context_length: int | None = None,
                 successors: markov.Successors | None = None,
                 markov_weight: float = 0.0) -> str:
    """Writes the recommender SavedModel (see module doc) into export_dir itself.

    Args:
      query_model: int64 context ids [B, L] -> float32 [B, D].
      candidate_model: int64 movie ids [N] -> float32 [N, D].
      movie_ids: the vocabulary [V]; the pad id 0, if present, is dropped.
      export_dir: local path or gs:// URI (overwritten if it holds an export).
      vocab_path: the data_dir's vocab.tsv, copied into the export's assets; titles come
        from it (movies it lacks get an empty title).
      k: number of results per query (capped at V).
      context_length: L; read from query_model.input_shape when None.
      successors, markov_weight: with a weight > 0, the serving signatures rank by
        markov.mix of the towers' scores and these successors' (counted over
        movie_ids without the pad), as the evaluation does; `scores` are then that
        log-probability. query_embedding and candidates stay the towers' alone.

    Returns:
      export_dir.
    """
    if not tf.io.gfile.exists(vocab_path):
        raise FileNotFoundError(f"vocab_path {vocab_path} does not exist")
    with tf.io.gfile.GFile(vocab_path) as f:
        rows = schema.parse_vocab(f.read(), vocab_path)  # fail now, not in recommend
    ids = np.asarray(movie_ids, dtype=np.int64).reshape(-1)
    ids = ids[ids != schema.PAD_MOVIE_ID]
    if ids.size == 0:
        raise ValueError("movie_ids holds no movie")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    length = context_length if context_length is not None else _context_length(query_model)
    title_of = {row["movie_id"]: row["title"] for row in rows}
    # Candidate embeddings are computed now, from the final weights.
    embeddings = evaluate.candidate_embeddings(candidate_model, ids).numpy()
    if markov_weight and (successors is None or successors.index.shape[0] != ids.size):
        raise ValueError("markov_weight > 0 needs successors counted over movie_ids")
    module = Recommender(query_model, embeddings, ids, [title_of.get(int(m), "") for m in ids],
                         vocab_path, min(k, ids.size), length, successors, markov_weight)
    signatures = {
        SERVING_DEFAULT: module.serve,
        SERVING_EXCLUDE_CONTEXT: module.serve_exclude_context,
        SERVING_EXAMPLES: module.serve_examples,
        QUERY_EMBEDDING: module.query_embedding,
        CANDIDATES: module.candidates,
    }
    tf.saved_model.save(module, export_dir, signatures=signatures)
    logging.debug("exported %d candidates (k=%d, L=%d) to %s", ids.size, module.k, length,
                  export_dir)
    return export_dir


def versions(base: str) -> list[int]:
    """The version numbers exported under `base`, ascending."""
    if not tf.io.gfile.isdir(base):
        return []
    names = (name.rstrip("/") for name in tf.io.gfile.listdir(base))
    return sorted(int(n) for n in names if _VERSION.match(n))


def latest(base: str) -> str | None:
    """The SavedModel directory to serve from `base`: `base` itself when it holds one,
    else its newest version (LATEST, or the highest number), else None."""
    if tf.io.gfile.exists(schema.join(base, "saved_model.pb")):
        return base
    pointer = schema.join(base, LATEST_FILE)
    if tf.io.gfile.exists(pointer):
        with tf.io.gfile.GFile(pointer) as f:
            return schema.join(base, f.read().strip())
    found = versions(base)
    return schema.join(base, str(found[-1])) if found else None


def export_version(base: str, query_model: tf.keras.Model, candidate_model: tf.keras.Model,
                   movie_ids: Sequence[int], vocab_path: str, k: int = 100, *,
                   context_length: int | None = None,
                   successors: markov.Successors | None = None,
                   markov_weight: float = 0.0) -> str:
    """export_model into base/<next version>/, then points base/LATEST at it; returns
    the version's directory. The SavedModel is written under a temporary name and
    moved, so a server watching `base` never sees a half-written version."""
    version = str((versions(base) or [0])[-1] + 1)
    tmp = schema.join(base, f".tmp-{version}-{uuid.uuid4().hex}")
    export_model(query_model, candidate_model, movie_ids, tmp, vocab_path, k,
                 context_length=context_length, successors=successors,
                 markov_weight=markov_weight)
    target = schema.join(base, version)
    _move_tree(tmp, target)
    with tf.io.gfile.GFile(schema.join(base, LATEST_FILE), "w") as f:
        f.write(version + "\n")
    return target


def _move_tree(src: str, dst: str) -> None:
    """Moves directory `src` to `dst`: one rename on a local disk; on object storage
    (no directories to rename) object by object, saved_model.pb last, so `dst` holds a
    loadable SavedModel from the moment its saved_model.pb appears."""
    if "://" not in src:
        tf.io.gfile.rename(src, dst)
        return
    files = [schema.join(d, name) for d, _, names in tf.io.gfile.walk(src) for name in names]
    files.sort(key=lambda path: path.endswith("/saved_model.pb"))
    for path in files:
        target = schema.join(dst, path[len(src):].lstrip("/"))
        tf.io.gfile.makedirs(target.rsplit("/", 1)[0])
        tf.io.gfile.rename(path, target)
    if tf.io.gfile.exists(src):
        tf.io.gfile.rmtree(src)
