"""THE TUTORIAL'S CODE, for side-by-side benchmarks only (not used by the trainer).

Reproduces the input pipeline and model of the TFRS "Recommending movies:
retrieval using a sequential model" tutorial
(tensorflow/recommenders docs/examples/sequential_retrieval.ipynb) as faithfully
as runs offline:

* input: one uncompressed TFRecord file -> parse_single_example per record
  (all five features, with the tutorial's defaults) -> ids converted to
  strings -> shuffle(10_000) -> batch(12800) -> cache(); test: batch(2560).cache().
* model: StringLookup(mask_token=None) -> Embedding(V + 1, 32) -> GRU(32) query
  tower; StringLookup -> Embedding candidate tower; tfrs.tasks.Retrieval with
  FactorizedTopK over movies.batch(128).map(candidate_model); Adagrad(0.1);
  model.fit.

Deviations, all forced by running offline and none affecting speed: the
vocabulary is the data_dir's vocab.tsv (all movies of movies.dat, as the
tutorial's tfds "movielens/1m-movies"), as strings like the tfds ids, and the
file names are arguments. The tutorial parses the label with shape [1], so its
candidate embeddings are [B, 1, d]; that is kept (see docs/design.md: it changes
the score matrix's shape, not the work per step).
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs


def feature_description():
    return {
        'context_movie_id': tf.io.FixedLenFeature([10], tf.int64, default_value=np.repeat(0, 10)),
        'context_movie_rating': tf.io.FixedLenFeature([10], tf.float32, default_value=np.repeat(0, 10)),
        'context_movie_year': tf.io.FixedLenFeature([10], tf.int64, default_value=np.repeat(1980, 10)),
        'context_movie_genre': tf.io.FixedLenFeature([10], tf.string, default_value=np.repeat("Drama", 10)),
        'label_movie_id': tf.io.FixedLenFeature([1], tf.int64, default_value=0),
    }


def dataset(filename: str) -> tf.data.Dataset:
    """train_ds / test_ds of the tutorial: string features, one record at a time."""
    spec = feature_description()

    def _parse_function(example_proto):
        return tf.io.parse_single_example(example_proto, spec)

    return tf.data.TFRecordDataset(filename).map(_parse_function).map(lambda x: {
        "context_movie_id": tf.strings.as_string(x["context_movie_id"]),
        "label_movie_id": tf.strings.as_string(x["label_movie_id"]),
    })


BATCH_SIZE = 12800


def cached_train(filename: str) -> tf.data.Dataset:
    return dataset(filename).shuffle(10_000).batch(BATCH_SIZE).cache()


def cached_test(filename: str) -> tf.data.Dataset:
    return dataset(filename).batch(2560).cache()


class Model(tfrs.Model):

    def __init__(self, query_model, candidate_model, task):
        super().__init__()
        self._query_model = query_model
        self._candidate_model = candidate_model

        self._task = task

    def compute_loss(self, features, training=False):
        watch_history = features["context_movie_id"]
        watch_next_label = features["label_movie_id"]

        query_embedding = self._query_model(watch_history)
        candidate_embedding = self._candidate_model(watch_next_label)

        return self._task(query_embedding, candidate_embedding, compute_metrics=not training)


def build(unique_movie_ids: np.ndarray, embedding_dimension: int = 32):
    """The tutorial's towers, task and compiled model.

    Args:
      unique_movie_ids: the vocabulary as byte strings [V].

    Returns:
      (model, query_model, candidate_model).
    """
    query_model = tf.keras.Sequential([
        tf.keras.layers.StringLookup(
            vocabulary=unique_movie_ids, mask_token=None),
        tf.keras.layers.Embedding(len(unique_movie_ids) + 1, embedding_dimension),
        tf.keras.layers.GRU(embedding_dimension),
    ])

    candidate_model = tf.keras.Sequential([
        tf.keras.layers.StringLookup(
            vocabulary=unique_movie_ids, mask_token=None),
        tf.keras.layers.Embedding(len(unique_movie_ids) + 1, embedding_dimension)
    ])
    movies = tf.data.Dataset.from_tensor_slices(unique_movie_ids)
    metrics = tfrs.metrics.FactorizedTopK(
        candidates=movies.batch(128).map(candidate_model)
    )

    task = tfrs.tasks.Retrieval(
        metrics=metrics
    )
    model = Model(query_model, candidate_model, task)
    model.compile(optimizer=tf.keras.optimizers.Adagrad(learning_rate=0.1))
    return model, query_model, candidate_model
