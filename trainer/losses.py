"""The in-batch softmax loss of tfrs.tasks.Retrieval: no dense labels, no [b, c] matrix.

tfrs.tasks.Retrieval builds one-hot labels tf.eye(b, c) and a dense
CategoricalCrossentropy over the [b, c] scores. With b = c = 12800 each such
float matrix is 655 MB; the labels, their gradient path and the dense
cross-entropy kept peak RSS at ~7.2 GB for one loss + gradient on CPU. The
label of query i is always candidate column i, so the same sum needs no labels
at all, and, because the loss is only ever differentiated once:

  loss   = sum_i logsumexp(s_i) - s_ii,      s = (q c^T) / t + bias
  dL/dq  = (P - Y) c / t,   dL/dc = (P - Y)^T q / t,   P = softmax(s) by row

can be computed a block of rows at a time, in the forward pass, keeping only
the two [., d] gradients. Each block's scores stay in cache, so the [b, c]
matrix is never written to memory (nor kept for the backward pass), and each
block's [r, c] scores are passed over as few times as possible (1/z and the
one-hot labels act on the [r, d] side of the products). Working memory is O(b d)
instead of O(b c); bench/README_train.md has its speed against the plain loss.
`reference_in_batch_softmax_loss` is the plain version the tests compare with.
"""
from __future__ import annotations

import tensorflow as tf
import tensorflow_recommenders as tfrs

# Rows per block = this many score elements / c. 1.5M floats (6 MB) keeps a
# block of scores in the last-level cache on CPU (the block sizes measured are in
# bench/README_train.md). On a GPU the cost is kernel launches per block, not
# cache, so blocks are far larger there (not measured yet: no GPU was lent).
CPU_BLOCK_ELEMENTS = 1_500_000
GPU_BLOCK_ELEMENTS = 64_000_000
# An extra score at or below this is an absent negative (padding): exp(score - max)
# is 0 in float32 for any real max, at any temperature >= 1e-20.
NO_NEGATIVE = -1e18


def log_correction(probability: tf.Tensor | None) -> tf.Tensor | None:
    """TFRS's SamplingProbablityCorrection as a per-column bias: -log(clip(p, 1e-6, 1))."""
    if probability is None:
        return None
    return -tf.math.log(tf.clip_by_value(tf.cast(probability, tf.float32), 1e-6, 1.0))


def in_batch_softmax_loss(
    query: tf.Tensor,
    candidate: tf.Tensor,
    temperature: float | None = None,
    candidate_sampling_probability: tf.Tensor | None = None,
    block_elements: int | None = None,
    extra_scores: tf.Tensor | None = None,
) -> tf.Tensor:
    """SUM over queries of the in-batch softmax cross-entropy, as tfrs.tasks.Retrieval
    computes it (no sample weights, accidental hits or score mask), plus optional
    negatives of each query's own (extra_scores).

    Args:
      query: float [b, d]; query i's positive is candidate row i.
      candidate: float [c, d], c >= b (rows past b are extra negatives).
      temperature: scores are divided by it (None: not).
      candidate_sampling_probability: float [c]; logits are corrected by
        -log(clip(p, 1e-6, 1)) exactly as TFRS does.
      block_elements: score elements per block of rows (None: by device, see
        CPU_BLOCK_ELEMENTS); the result does not depend on it beyond float
        rounding.
      extra_scores: float [b, k] or None: row i's scores q_i . n_ij against k
        negatives of its own (before temperature; no sampling correction, as
        they are not drawn from the batch). An entry of NO_NEGATIVE or less
        counts as absent (exp underflows to 0): padding.

    Returns:
      Scalar float32: sum_i -log softmax([scores[i], extra[i]])[i].
      Differentiable once with respect to query, candidate and extra_scores
      (the gradients are computed with the loss, so call it only where they
      are wanted: training).
    """
    bias = log_correction(candidate_sampling_probability)
    scale = 1.0 if temperature is None else 1.0 / float(temperature)
    if block_elements is None:
        on_gpu = bool(tf.config.list_logical_devices("GPU"))
        block_elements = GPU_BLOCK_ELEMENTS if on_gpu else CPU_BLOCK_ELEMENTS

    @tf.custom_gradient
    def loss(q, c, h):
        b, cols = tf.shape(q)[0], tf.shape(c)[0]
        rows_per_block = tf.maximum(1, tf.minimum(b, block_elements // tf.maximum(cols, 1)))
        # At least one block, so that an empty batch still yields [0, d] gradients.
        blocks = tf.maximum(1, (b + rows_per_block - 1) // rows_per_block)

        def block(i, total, grad_q, grad_c, grad_h):
            start = i * rows_per_block
            end = tf.minimum(start + rows_per_block, b)
            q_i = q[start:end]  # [r, d]
            s = tf.linalg.matmul(q_i, c, transpose_b=True)  # [r, c]
            h_i = h[start:end] * scale  # [r, k]
            if scale != 1.0:
                s = s * scale
            if bias is not None:
                s = s + bias
            # Stable softmax with one exp: P = e / z, logsumexp = m + log z.
            m = tf.maximum(tf.reduce_max(s, axis=1, keepdims=True),
                           tf.reduce_max(h_i, axis=1, keepdims=True))
            e = tf.exp(s - m)
            e_h = tf.exp(h_i - m)  # [r, k]
            z = tf.reduce_sum(e, axis=1, keepdims=True) + tf.reduce_sum(e_h, axis=1,
                                                                       keepdims=True)  # [r, 1]
            rows = tf.range(end - start)
            diagonal = tf.stack([rows, rows + start], axis=1)  # [r, 2]: (row, its label column)
            positive = tf.gather_nd(s, diagonal)
            total += tf.reduce_sum(m[:, 0] + tf.math.log(z[:, 0]) - positive)
            # (P - Y) c and (P - Y)^T q_i without touching [r, c] again: 1/z
            # scales the [r, d] side of each product, and Y (ones at (row,
            # start + row)) only selects rows: Y c = c[start:end] here, and
            # Y^T q_i adds q_i to grad_c's rows start:end (all of them once
            # the loop is done, subtracted after it).
            inv_z = 1.0 / z
            grad_q = grad_q.write(i, tf.linalg.matmul(e, c) * inv_z - c[start:end])
            grad_c += tf.linalg.matmul(e, q_i * inv_z, transpose_a=True)
            # dL/dh = P over the extra columns (never a label); the chain to
            # q and the negatives' embeddings is the caller's autodiff.
            grad_h = grad_h.write(i, e_h * inv_z)
            return i + 1, total, grad_q, grad_c, grad_h

        _, total, grad_q, grad_c, grad_h = tf.while_loop(
            lambda i, *_: i < blocks, block,
            (tf.constant(0), tf.constant(0.0),
             tf.TensorArray(tf.float32, size=blocks, infer_shape=False,
                            element_shape=tf.TensorShape([None, q.shape[-1]])),
             tf.zeros_like(c),
             tf.TensorArray(tf.float32, size=blocks, infer_shape=False,
                            element_shape=tf.TensorShape([None, h.shape[-1]]))))
        grad_q = tf.reshape(grad_q.concat(), tf.shape(q))
        grad_h = tf.reshape(grad_h.concat(), tf.shape(h))
        # The -Y^T q part: label column of query row i is candidate row i.
        grad_c -= tf.pad(q, [[0, cols - b], [0, 0]])

        def grad(upstream):  # the 1/t of ds/dq, ds/dc and ds/dh folded in once, here
            return upstream * scale * grad_q, upstream * scale * grad_c, upstream * scale * grad_h

        return total, grad

    query = tf.cast(query, tf.float32)
    if extra_scores is None:  # k = 0 columns: the plain in-batch softmax
        extra_scores = tf.zeros([tf.shape(query)[0], 0], tf.float32)
    return loss(query, tf.cast(candidate, tf.float32), tf.cast(extra_scores, tf.float32))


def reference_in_batch_softmax_loss(
    query: tf.Tensor,
    candidate: tf.Tensor,
    temperature: float | None = None,
    candidate_sampling_probability: tf.Tensor | None = None,
    extra_scores: tf.Tensor | None = None,
) -> tf.Tensor:
    """The same sum as in_batch_softmax_loss, the plain way: the whole [b, c]
    score matrix (then the [b, k] extra scores) and
    sparse_softmax_cross_entropy_with_logits (labels range(b))."""
    scores = tf.linalg.matmul(query, candidate, transpose_b=True)  # [b, c]
    if temperature is not None:
        scores = scores / temperature
    if candidate_sampling_probability is not None:
        scores = tfrs.layers.loss.SamplingProbablityCorrection()(
            scores, candidate_sampling_probability)
    if extra_scores is not None:
        extra = extra_scores if temperature is None else extra_scores / temperature
        scores = tf.concat([scores, extra], axis=1)
    labels = tf.range(tf.shape(scores)[0])
    return tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, scores))


def own_negative_scores(query: tf.Tensor, negatives: tf.Tensor, valid: tf.Tensor,
                        bias: tf.Tensor | None = None) -> tf.Tensor:
    """Each query's scores against negatives of its own: in_batch_softmax_loss's extra_scores.

    Args:
      query: float [b, d].
      negatives: float [b, k, d]: row i's k negatives' embeddings.
      valid: bool [b, k]: False marks padding (or a negative that is row i's label).
      bias: float [b, k] added to the scores (in their units, before temperature).

    Returns:
      float32 [b, k]: q_i . n_ij (+ bias) where valid, NO_NEGATIVE elsewhere (no
      gradient there).
    """
    scores = tf.einsum("bd,bkd->bk", tf.cast(query, tf.float32), tf.cast(negatives, tf.float32))
    if bias is not None:
        scores += tf.cast(bias, tf.float32)
    return tf.where(valid, scores, tf.fill(tf.shape(scores), NO_NEGATIVE))


def own_negative_bias(log_share: tf.Tensor, in_batch: tf.Tensor,
                      sampling_correction: tf.Tensor | None = None) -> tf.Tensor:
    """The logit offset that puts negatives of a row's own on the in-batch columns' scale.

    In-batch negatives are other examples' labels, drawn in proportion to the
    label share q: a movie is expected in B q columns, so the trained score of
    in-batch column j is its full-softmax logit minus log(B q_j) (minus the
    sampling correction c_j where --logq_correction adds it). A negative that
    is present for certain (a row's own context movie) is not sampled, so its
    logit is score + log(B q) + c, in the same units as the columns.

    Args:
      log_share: float [...]: log q of each negative.
      in_batch: scalar: B, the in-batch candidate columns of the softmax.
      sampling_correction: float [...] or None: log_correction(probability) of each.

    Returns:
      float32 [...], in logits (multiply by the temperature for scores).
    """
    bias = tf.cast(log_share, tf.float32) + tf.math.log(tf.cast(in_batch, tf.float32))
    if sampling_correction is not None:
        bias += sampling_correction
    return bias
