"""SASRec-style causal self-attention over the context movies (--query_tower=transformer).

The encoder of Kang & McAuley 2018 (SASRec): movie embeddings plus learned
position embeddings, then blocks of causal multi-head self-attention and a
position-wise feed-forward network (as wide as the embeddings, as in SASRec),
each with a residual, layer norm and dropout. The norms come before each
sublayer, with one at the end (pre-norm: trains without a warmup-sensitive
start, unlike post-norm).

Contexts are oldest first and right-padded with 0 (the data contract), so the
last real movie sits at a different column in every row. Positions are
therefore counted back from it: the last real movie is position 0, the one
before it 1, and so on. SASRec left-pads, so its last movie is always in the
last slot; counting from the end gives right-padded contexts that same
alignment, and a short context the positions of the end of a long one.
Attention is masked both ways: a position sees no later position (causal) and
no padding. trainer/model.py reads the output at the last real position.

Only tf.keras layers and batched ops (einsum, gather): no loop over time, no
ragged tensors, so XLA compiles it and GPUs run it as a few matmuls.
"""
from __future__ import annotations

import tensorflow as tf

from trainer.config import ModelConfig


def real_lengths(rows: tf.Tensor) -> tf.Tensor:
    """rows [B, L] lookup rows of right-padded contexts (0 = pad) -> int32 [B]:
    how many real movies each context holds (the last one is at length - 1)."""
    return tf.reduce_sum(tf.cast(tf.not_equal(rows, 0), tf.int32), axis=1)


class RecencyPositions(tf.keras.layers.Layer):
    """call(rows [B, L]) -> int32 [B, L]: column i's position counted back from the
    last real movie (length - 1 - i); padded columns get 0 (they are masked)."""

    def call(self, rows):
        length = real_lengths(rows)[:, None]  # [B, 1]
        column = tf.range(tf.shape(rows)[1])[None, :]  # [1, L]
        return tf.maximum(length - 1 - column, 0)

    def compute_mask(self, inputs, mask=None):
        return None


class AttentionMask(tf.keras.layers.Layer):
    """call(rows [B, L]) -> bool [B, L, L]: query column i may attend to key column j
    iff j <= i (causal) and column j is a real movie.

    A context of padding only (every id unknown, in serving) masks every key:
    Keras's masked softmax adds a large negative number rather than -inf, so
    such a row is a uniform average, never NaN; its output is not read anyway.
    """

    def call(self, rows):
        length = tf.shape(rows)[1]
        causal = tf.linalg.band_part(tf.ones([length, length], tf.bool), -1, 0)  # j <= i
        real = tf.not_equal(rows, 0)  # [B, L]
        return tf.logical_and(causal[None, :, :], real[:, None, :])

    def compute_mask(self, inputs, mask=None):
        return None


def causal_encoder(embedded: tf.Tensor, rows: tf.Tensor, context_length: int,
                   cfg: ModelConfig, dtype: tf.keras.mixed_precision.Policy) -> tf.Tensor:
    """The encoder as Keras functional layers.

    Args:
      embedded: [B, L, d] movie embeddings of the context (no Keras mask).
      rows: [B, L] their lookup rows (0 = pad).
      context_length: L (the number of learned positions).
      cfg: transformer_blocks, transformer_heads, transformer_dropout and
        embedding_dim d are read.
      dtype: the towers' dtype policy.

    Returns:
      [B, L, d]: column i encodes the context up to and including column i
      (values at padded columns are meaningless).
    """
    d, rate = cfg.embedding_dim, cfg.transformer_dropout
    positions = tf.keras.layers.Embedding(context_length, d, name="query_position_embedding",
                                          dtype=dtype)(RecencyPositions(name="query_positions")(rows))
    x = tf.keras.layers.Add(name="query_embedding_and_position", dtype=dtype)([embedded, positions])
    x = tf.keras.layers.Dropout(rate, name="query_embedding_dropout", dtype=dtype)(x)
    mask = AttentionMask(name="query_attention_mask")(rows)
    key_dim = -(-d // cfg.transformer_heads)  # ceil: any d works with any head count
    for i in range(cfg.transformer_blocks):
        name = f"query_block_{i}"
        h = tf.keras.layers.LayerNormalization(name=f"{name}_attention_norm", dtype=dtype)(x)
        h = tf.keras.layers.MultiHeadAttention(
            cfg.transformer_heads, key_dim, dropout=rate, name=f"{name}_attention",
            dtype=dtype)(h, h, attention_mask=mask)
        h = tf.keras.layers.Dropout(rate, name=f"{name}_attention_dropout", dtype=dtype)(h)
        x = tf.keras.layers.Add(name=f"{name}_attention_residual", dtype=dtype)([x, h])
        h = tf.keras.layers.LayerNormalization(name=f"{name}_feed_forward_norm", dtype=dtype)(x)
        h = tf.keras.layers.Dense(d, activation="relu", name=f"{name}_feed_forward_1",
                                  dtype=dtype)(h)
        h = tf.keras.layers.Dropout(rate, name=f"{name}_feed_forward_dropout_1", dtype=dtype)(h)
        h = tf.keras.layers.Dense(d, name=f"{name}_feed_forward_2", dtype=dtype)(h)
        h = tf.keras.layers.Dropout(rate, name=f"{name}_feed_forward_dropout_2", dtype=dtype)(h)
        x = tf.keras.layers.Add(name=f"{name}_feed_forward_residual", dtype=dtype)([x, h])
    return tf.keras.layers.LayerNormalization(name="query_final_norm", dtype=dtype)(x)
