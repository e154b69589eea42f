"""The in-batch softmax loss of tfrs.tasks.Retrieval, without its dense labels.

tfrs.tasks.Retrieval builds one-hot labels tf.eye(b, c) and a dense
CategoricalCrossentropy over the [b, c] scores. With b = c = 12800 each such
float matrix is 655 MB; the labels, their gradient path and the dense
cross-entropy kept peak RSS at ~7.2 GB for one loss + gradient on CPU. The
label of query i is always candidate column i, so the same sum is
sparse_softmax_cross_entropy_with_logits(labels=range(b)): measured 1.4 GB
peak (bench/README_train.md), and no slower.
"""
from __future__ import annotations

import tensorflow as tf
import tensorflow_recommenders as tfrs


def in_batch_softmax_loss(
    query: tf.Tensor,
    candidate: tf.Tensor,
    temperature: float | None = None,
    candidate_sampling_probability: tf.Tensor | None = None,
) -> tf.Tensor:
    """SUM over queries of the in-batch softmax cross-entropy, as tfrs.tasks.Retrieval
    computes it (no sample weights, accidental hits, score mask or hard negatives).

    Args:
      query: float [b, d]; query i's positive is candidate row i.
      candidate: float [c, d], c >= b (rows past b are extra negatives).
      temperature: scores are divided by it (None: not).
      candidate_sampling_probability: float [c]; logits are corrected by
        -log(clip(p, 1e-6, 1)) exactly as TFRS does.

    Returns:
      Scalar float32: sum_i -log softmax(scores[i])[i].
    """
    scores = tf.linalg.matmul(query, candidate, transpose_b=True)  # [b, c]
    if temperature is not None:
        scores = scores / temperature
    if candidate_sampling_probability is not None:
        scores = tfrs.layers.loss.SamplingProbablityCorrection()(
            scores, candidate_sampling_probability)
    labels = tf.range(tf.shape(scores)[0])
    return tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, scores))
