"""The TFRS sequential retrieval model: a GRU (or causal self-attention) query tower and an
embedding candidate tower.

Recipe of the TFRS "sequential retrieval" tutorial: the query is the sequence of
movies a user watched (oldest first, right-padded with 0), encoded by
lookup -> Embedding -> GRU; the candidate is the next movie, encoded by
lookup -> Embedding. Training maximises the score of the true next movie
against the other movies of the batch (in-batch softmax, `tfrs.tasks.Retrieval`).
Options beyond the tutorial (see build_towers): a skip connection from the last
K context movies past the GRU, tied embedding tables, L2-normalised outputs,
a popularity prior added to the scores at inference only, and a SASRec-style
transformer in place of the GRU (trainer/transformer.py; same head after it).

Only `tf.keras` is used (tf_keras under TF_USE_LEGACY_KERAS=1): TFRS 0.7.7 is
Keras 2 code, and a Keras 3 layer mixed in fails at fit time.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

from beam_jobs import schema
from trainer import losses, transformer
from trainer.config import LossConfig, ModelConfig
from trainer.content import ContentEmbedding, MovieContent


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


def _float32_output(x: tf.Tensor, dtype: tf.keras.mixed_precision.Policy, name: str) -> tf.Tensor:
    """x as float32: scores, softmax, evaluation and the export stay float32
    under a mixed policy (Keras's advice: a float32 last layer). A float32
    policy adds no layer, so float32 models are unchanged."""
    if dtype.compute_dtype == "float32":
        return x
    return tf.keras.layers.Activation("linear", dtype="float32", name=name)(x)


def build_towers(
    movie_ids: Sequence[int],
    context_length: int,
    cfg: ModelConfig,
    *,
    log_prior: Sequence[float] | None = None,
    content: MovieContent | None = None,
    unroll_gru: bool | None = None,
) -> tuple[tf.keras.Model, tf.keras.Model]:
    """Builds the two towers that `cfg` describes. Call inside `strategy.scope()`
    when distributing.

    Args:
      movie_ids: the vocabulary (raw MovieLens ids, no 0); order fixes the rows.
      context_length: L, the number of context ids per example.
      cfg: the towers' options (trainer/config.py ModelConfig: each option's help
        is its contract). Notes on some of them:
        embedding_dim d is the width of the embeddings and of the query output.
        query_tower: the sequence encoder. "gru": lookup -> Embedding -> GRU,
        its final state. "transformer": Embedding + positions -> causal
        self-attention blocks (trainer/transformer.py), the output at the last
        real movie (zeros [B, d] for a context of padding only), d wide. Both
        continue into the same head (last_movies skip, projection, normalize,
        prior).
        mask_padding masks the pad id (row 0) so the GRU skips padded steps;
        False embeds the pad like a movie, as the TFRS tutorial does.
        share_embeddings: one [V+2, d] table ("movie_embedding") embeds both the
        context movies and the candidates (weight tying, as SASRec does): the
        two lookups have the same vocabulary in the same order, so row r is the
        same movie in both towers.
        last_movies K > 0: the query output is a linear map of [GRU state,
        embeddings of the last K context movies] (zeros where a context is
        shorter): a skip connection past the GRU, so "what follows these
        movies" is a direct bilinear score however narrow the GRU is
        (STAMP-style last-click emphasis). Costs (u + K e) d MACs per query,
        against the GRU's ~3 L u (e + u).
        dtype_policy: the towers' outputs are float32 whatever the policy.
        popularity_prior is the weight already folded into `log_prior`.
      log_prior: [V] per movie (vocabulary order), added to every score at
        inference only (see popularity_log_prior): both towers get one more
        output column, the candidate's prior and, for the query, 1 at
        inference and 0 in training, so training is unchanged and evaluation,
        export and serving (plain dot products) all include the prior.
      unroll_gru: unroll the GRU over its L steps. None: unroll exactly when
        no GPU is visible. Unrolled, Keras cannot swap in the cuDNN kernel, so
        GPUs keep the loop; on CPU, where there is no cuDNN, the unrolled cell
        trains faster and traces ~4x faster (bench/README_train.md): Keras's
        loop registers a CPU and a cuDNN function with their gradients even for
        inference. Same variables either way.

    Returns:
      (query_model, candidate_model):
        query_model: int64 context ids [B, L] (raw ids, 0 = pad) -> float32 [B, d]
          ([B, d + 1] with log_prior).
        candidate_model: int64 movie ids [B] -> float32 [B, d] ([B, d + 1]).
      Ids not in `movie_ids` share one out-of-vocabulary row.
    """
    if unroll_gru is None:
        unroll_gru = not tf.config.list_logical_devices("GPU")
    dtype = tf.keras.mixed_precision.Policy(cfg.dtype_policy)
    contents = _content_layers(content, cfg, dtype, len(movie_ids))
    query_model, shared_table = _query_tower(movie_ids, context_length, cfg, dtype, unroll_gru,
                                             with_prior=log_prior is not None,
                                             content=contents[0])
    candidate_model = _candidate_tower(movie_ids, cfg, dtype, shared_table, log_prior,
                                       content=contents[1])
    return query_model, candidate_model


def _content_layers(content: MovieContent | None, cfg: ModelConfig, dtype, vocab_size: int):
    """(query tower's, candidate tower's) ContentEmbedding, one layer for both with
    share_embeddings; (None, None) without movie_features."""
    if not cfg.movie_features:
        return None, None
    if content is None or content.year_buckets.size != vocab_size + 2:
        raise ValueError("movie_features needs the vocabulary's MovieContent (content=)")
    if cfg.share_embeddings:
        shared = ContentEmbedding(content, cfg.embedding_dim, name="movie_content", dtype=dtype)
        return shared, shared
    return (ContentEmbedding(content, cfg.embedding_dim, name="query_content", dtype=dtype),
            ContentEmbedding(content, cfg.embedding_dim, name="candidate_content", dtype=dtype))


def _query_tower(movie_ids, context_length: int, cfg: ModelConfig, dtype, unroll_gru: bool,
                 with_prior: bool, content=None):
    """(query_model, the shared embedding table or None); see build_towers.

    context ids -> lookup rows -> embeddings -> the sequence encoder
    (cfg.query_tower) -> _query_head (skip, projection, float32, norm, prior)."""
    context = tf.keras.Input(shape=(context_length,), dtype=tf.int64, name=schema.CONTEXT_MOVIE_ID)
    lookup = _lookup(movie_ids, "query_lookup")
    rows = lookup(context)
    if cfg.query_tower == "transformer":
        table, embedded, _ = _context_embedding(lookup, rows, cfg, dtype, keras_mask=False,
                                                content=content)
        # Its own positions and attention masks (trainer/transformer.py); the
        # query is the output at the last real movie (zeros for a context of
        # padding only, like a GRU that saw no step).
        sequence = transformer.causal_encoder(embedded, rows, context_length, cfg, dtype)
        x = LastMovies(1, name="query_last_position", dtype=dtype)(sequence, rows)
        width = cfg.embedding_dim
    else:
        table, embedded, mask = _context_embedding(lookup, rows, cfg, dtype,
                                                   keras_mask=cfg.mask_padding, content=content)
        x = _gru_encoder(embedded, mask, cfg, dtype, unroll_gru)
        width = cfg.query_units
    x = _query_head(x, width, embedded, rows, cfg, dtype, with_prior)
    return tf.keras.Model(context, x, name="query_model"), table


def _context_embedding(lookup, rows, cfg: ModelConfig, dtype, keras_mask: bool, content=None):
    """(shared table or None, embeddings [B, L, e], explicit pad mask [B, L] or None).

    keras_mask: the GRU skips padded steps (mask_padding). The transformer
    builds its own attention masks from `rows`, so it asks for none.
    content: a ContentEmbedding added to each movie's embedding (movie_features).
    """
    table, embedded, mask = _id_embedding(lookup, rows, cfg, dtype, keras_mask)
    if content is not None:
        # Add keeps the Embedding's mask_zero mask (a merge of one mask and none).
        embedded = tf.keras.layers.Add(name="query_embedding_and_content", dtype=dtype)(
            [embedded, content(rows)])
    return table, embedded, mask


def _id_embedding(lookup, rows, cfg: ModelConfig, dtype, keras_mask: bool):
    """_context_embedding without content."""
    if cfg.share_embeddings:
        # No mask_zero on a shared table: the candidate tower's output would
        # carry a Keras mask. The GRU gets the same mask explicitly instead.
        table = tf.keras.layers.Embedding(
            lookup.vocabulary_size(), cfg.embedding_dim, name="movie_embedding", dtype=dtype)
        mask = (tf.keras.layers.Lambda(lambda r: tf.not_equal(r, 0), name="pad_mask")(rows)
                if keras_mask else None)
        return table, table(rows), mask
    # Row 0 is the pad id: mask_zero makes the GRU skip padded steps, so its
    # final state is the state after the last real movie (contexts are
    # right-padded, oldest first). Unmasked, a short context's state is the
    # state after several "pad movie" steps, which blurs what came last.
    embedded = tf.keras.layers.Embedding(
        lookup.vocabulary_size(), cfg.embedding_dim, mask_zero=keras_mask, name="query_embedding",
        dtype=dtype)(rows)
    return None, embedded, None  # mask_zero carries the mask


def _gru_encoder(x, mask, cfg: ModelConfig, dtype, unroll_gru: bool):
    """embeddings [B, L, e] -> the last GRU layer's final state [B, query_units]."""
    if cfg.dropout:
        x = tf.keras.layers.Dropout(cfg.dropout, name="query_embedding_dropout", dtype=dtype)(x)
    for i in range(cfg.gru_layers):
        last = i == cfg.gru_layers - 1
        # Layer names stay "query_gru" for one layer so older checkpoints and
        # tests that look the layer up keep working.
        name = "query_gru" if cfg.gru_layers == 1 else f"query_gru_{i}"
        gru = tf.keras.layers.GRU(cfg.query_units, return_sequences=not last, name=name,
                                  unroll=unroll_gru, dtype=dtype)
        # An explicit mask (shared table) is given to the first layer; Keras
        # propagates it to the next ones like an Embedding's mask_zero mask.
        x = gru(x, mask=mask) if (i == 0 and mask is not None) else gru(x)
        if cfg.dropout and not last:
            x = tf.keras.layers.Dropout(cfg.dropout, name=f"{name}_dropout", dtype=dtype)(x)
    return x


def _query_head(x, width: int, embedded, rows, cfg: ModelConfig, dtype, with_prior: bool):
    """What both encoders share: encoder output [B, width] -> the query [B, d] ([B, d + 1]
    with the prior): the last_movies skip, a projection to d where needed, float32,
    normalize, the prior's column."""
    if cfg.last_movies:
        x = tf.keras.layers.Concatenate(name="query_state_and_last_movies", dtype=dtype)(
            [x, LastMovies(cfg.last_movies, name="last_movies", dtype=dtype)(embedded, rows)])
    if width != cfg.embedding_dim or cfg.last_movies:
        x = tf.keras.layers.Dense(cfg.embedding_dim, name="query_projection", dtype=dtype)(x)
    # Normalisation and the prior column run in float32 (after this cast).
    x = _float32_output(x, dtype, "query_output")
    if cfg.normalize:
        x = tf.keras.layers.UnitNormalization(name="query_normalize")(x)
    if with_prior:
        x = InferenceOnes(name="query_prior_weight")(x)
    return x


def _candidate_tower(movie_ids, cfg: ModelConfig, dtype, table, log_prior, content=None):
    """The candidate model, embedding with `table` when the towers share one, plus
    `content` (a ContentEmbedding) with movie_features."""
    movie = tf.keras.Input(shape=(), dtype=tf.int64, name=schema.LABEL_MOVIE_ID)
    lookup = _lookup(movie_ids, "candidate_lookup")
    rows = lookup(movie)
    if table is None:
        table = tf.keras.layers.Embedding(
            lookup.vocabulary_size(), cfg.embedding_dim, name="candidate_embedding", dtype=dtype)
    candidate = table(rows)
    if content is not None:
        candidate = tf.keras.layers.Add(name="candidate_embedding_and_content", dtype=dtype)(
            [candidate, content(rows)])
    candidate = _float32_output(candidate, dtype, "candidate_output")
    if cfg.normalize:
        candidate = tf.keras.layers.UnitNormalization(name="candidate_normalize")(candidate)
    if log_prior is not None:
        prior = np.asarray(log_prior, np.float32).reshape(-1)
        if prior.size != len(movie_ids):
            raise ValueError(f"log_prior has {prior.size} values for {len(movie_ids)} movies")
        # Rows 0 (pad) and 1 (unknown id) get the lowest prior.
        rows_prior = np.concatenate([[prior.min()] * 2, prior]).astype(np.float32)
        candidate = RowPrior(rows_prior, name="candidate_prior")(candidate, rows)
    return tf.keras.Model(movie, candidate, name="candidate_model")


class LastMovies(tf.keras.layers.Layer):
    """The embeddings of the last K real movies of right-padded contexts.

    call(embedded [B, L, e], rows [B, L] lookup rows, 0 = pad) -> [B, K e]:
    the last movie's embedding first, then the one before it, ...; zeros
    where a context holds fewer than K movies.
    """

    def __init__(self, k: int, **kwargs):
        super().__init__(**kwargs)
        self.k = int(k)

    def call(self, embedded, rows):
        length = transformer.real_lengths(rows)  # [B]
        out = []
        for back in range(self.k):
            index = length - 1 - back  # [B]
            picked = tf.gather(embedded, tf.maximum(index, 0), batch_dims=1)  # [B, e]
            out.append(picked * tf.cast(index >= 0, embedded.dtype)[:, None])
        return tf.concat(out, axis=1)

    def compute_mask(self, inputs, mask=None):
        return None

    def get_config(self):
        return {**super().get_config(), "k": self.k}


class InferenceOnes(tf.keras.layers.Layer):
    """[B, d] -> [B, d + 1]: appends 1 at inference, 0 in training."""

    def call(self, x, training=None):
        if training is None:
            training = tf.keras.backend.learning_phase()
        weight = 1.0 - tf.cast(training, x.dtype)
        return tf.concat([x, tf.ones_like(x[:, :1]) * weight], axis=1)


class RowPrior(tf.keras.layers.Layer):
    """call(embedding [B, d], rows [B]) -> [B, d + 1]: appends prior[rows]."""

    def __init__(self, prior, **kwargs):
        super().__init__(**kwargs)
        # A constant, not a variable: it comes from the data's counts and is
        # not trained, so checkpoints do not depend on it.
        self.prior = np.asarray(prior, np.float32)

    def call(self, embedding, rows):
        value = tf.gather(tf.constant(self.prior), rows)
        return tf.concat([embedding, tf.cast(value, embedding.dtype)[:, None]], axis=1)


def popularity_log_prior(counts: Sequence[int], weight: float = 1.0) -> np.ndarray:
    """weight * log q per movie, q = (count + 1) / (total + V) (add-one smoothed).

    Why: the in-batch softmax draws negatives in proportion to q (they are
    other examples' labels), so its optimum scores are log p(y | x) - log q(y)
    + c(x) (Yi et al. 2019): popular movies come out demoted. Adding log q at
    inference ranks by log p(y | x), which top-k recall rewards. It is the
    logQ correction applied when serving instead of to the training logits
    (which changes how the model trains; see sampling_probabilities).

    Args:
      counts: [V] train-split label counts (vocabulary order).
      weight: the prior's weight in logits (1: the full correction).

    Returns:
      float32 [V].
    """
    counts = np.asarray(counts, np.float64)
    if counts.ndim != 1 or counts.size == 0 or (counts < 0).any():
        raise ValueError("counts must be a non-empty [V] vector of counts >= 0")
    return (weight * np.log((counts + 1) / (counts.sum() + counts.size))).astype(np.float32)


def sampling_probabilities(counts: Sequence[int], power: float = 1.0) -> np.ndarray:
    """q^power per movie, q = the movie's share of the train labels.

    In-batch negatives are the batch's labels, so a movie is drawn as a
    negative with probability ~q: popular movies are over-sampled as
    negatives. TFRS subtracts log(candidate_sampling_probability) from each
    logit; passing q^power subtracts power * log(q) (power 1: the full logQ
    correction of Yi et al. 2019; between 0 and 1: a partial one).

    Args:
      counts: [V] train-split label counts (vocabulary order).
      power: the correction weight.

    Returns:
      float32 [V]. A movie never seen in train gets q = 0 (TFRS clips the
      probability to 1e-6; such a movie is never an in-batch candidate anyway).
    """
    counts = np.asarray(counts, np.float64)
    if counts.ndim != 1 or counts.size == 0 or counts.sum() <= 0:
        raise ValueError("counts must be a non-empty [V] vector with a positive sum")
    return ((counts / counts.sum()) ** power).astype(np.float32)


class SequentialRetrievalModel(tfrs.Model):
    """Two towers + in-batch softmax retrieval loss.

    Inputs are feature dicts: "context_movie_id" int64 [B, L] and
    "label_movie_id" int64 [B] (a scalar per example: a [B, 1] label would make
    the candidate tower output [B, 1, d] and silently transpose TFRS's score
    matrix).

    Negatives: with negatives="per_replica" they are the other labels of the
    same replica's batch, as TFRS does; with "global" (the default) every
    replica scores its queries against the candidates of ALL replicas (see
    compute_losses), which is exactly the single-device loss on the global
    batch.
    """

    def __init__(
        self,
        query_model: tf.keras.Model,
        candidate_model: tf.keras.Model,
        global_batch_size: int,
        loss: LossConfig | None = None,
        *,
        movie_ids: Sequence[int] | None = None,
        sampling_probability: Sequence[float] | None = None,
        label_counts: Sequence[int] | None = None,
        sparse_loss: bool = True,
        **kwargs,
    ):
        """Args:
          query_model, candidate_model: from build_towers.
          global_batch_size: examples per step over all replicas (loss scale).
          loss: the in-batch softmax's options (trainer/config.py LossConfig;
            default: plain in-batch softmax with global negatives). Notes:
            negatives is "global" or "per_replica"; temperature divides the
            scores (1: TFRS's default, none); remove_accidental_hits: another
            example of the batch with the same label movie is not a negative;
            uniform_negatives N > 0: each step also scores every query against
            N movies drawn uniformly from movie_ids (mixed negative sampling,
            Yang et al. 2020): in-batch negatives are drawn by popularity, so
            rare movies are almost never pushed down and leak into top-k.
          movie_ids, sampling_probability: [V] each, aligned; when given, each
            in-batch candidate's logit is corrected by -log(probability)
            (see sampling_probabilities; loss.logq_correction is its weight).
          label_counts: [V] train label counts aligned with movie_ids; needed by
            loss.history_negatives, whose logits are offset by
            losses.own_negative_bias (the counts give the label share q).
          sparse_loss: compute the same loss without labels or the [b, c]
            score matrix (trainer/losses.py, blocked) instead of TFRS's dense
            [b, c] one-hot labels (bench/README_train.md has the memory
            measured); False (or remove_accidental_hits) uses
            tfrs.tasks.Retrieval itself.
        """
        loss = loss or LossConfig()
        negatives, temperature = loss.negatives, loss.temperature
        remove_accidental_hits, uniform_negatives = (loss.remove_accidental_hits,
                                                     loss.uniform_negatives)
        super().__init__(**kwargs)
        if negatives not in ("global", "per_replica"):
            raise ValueError(f"negatives must be 'global' or 'per_replica', got {negatives!r}")
        self.query_model = query_model
        self.candidate_model = candidate_model
        self.global_batch_size = int(global_batch_size)
        self.negatives = negatives
        self.remove_accidental_hits = bool(remove_accidental_hits)
        self.sparse_loss = bool(sparse_loss) and not self.remove_accidental_hits
        self._temperature = None if temperature == 1.0 else float(temperature)
        # No FactorizedTopK metrics: top-k over the whole vocabulary is
        # trainer/evaluate.py's job (a brute-force index is ~6x faster), and
        # training should not pay for it every step.
        self.task = tfrs.tasks.Retrieval(
            temperature=None if temperature == 1.0 else float(temperature),
            remove_accidental_hits=self.remove_accidental_hits,
        )
        self.history_negatives = bool(loss.history_negatives)
        self.candidate_softmax_weight = float(loss.candidate_softmax_weight)
        if (self.history_negatives or self.candidate_softmax_weight) and not self.sparse_loss:
            raise ValueError("history_negatives and candidate_softmax_weight extend the "
                             "blocked loss: they need sparse_loss and no accidental-hit removal")
        if movie_ids is not None and (self.history_negatives or sampling_probability is not None):
            # Raw id -> row r (0: pad, 1: unknown id, 2..: movie_ids) of the per-movie
            # constants below (no variables: checkpoints do not depend on it).
            self._rows = _lookup(movie_ids, "row_lookup")
        if self.history_negatives:
            if movie_ids is None or label_counts is None:
                raise ValueError("history_negatives needs movie_ids and label_counts")
            # Row r -> log q (rows 0 and 1, pad and unknown: the lowest).
            log_share = popularity_log_prior(label_counts)
            self._log_share = tf.constant(np.concatenate([[log_share.min()] * 2, log_share]))
        self.uniform_negatives = int(uniform_negatives)
        if self.uniform_negatives:
            if movie_ids is None:
                raise ValueError("uniform_negatives needs movie_ids")
            if sampling_probability is not None or self.remove_accidental_hits:
                raise ValueError("uniform_negatives cannot be combined with the sampling "
                                 "correction or accidental-hit removal")
            self._all_ids = tf.constant(np.asarray(movie_ids, np.int64))
        self._probability = None
        if sampling_probability is not None:
            if movie_ids is None or len(movie_ids) != len(sampling_probability):
                raise ValueError("sampling_probability needs movie_ids of the same length")
            # Row r -> probability; pad and unknown ids get 0 (clipped to 1e-6 by TFRS).
            self._probability = tf.constant(
                np.concatenate([[0.0, 0.0], np.asarray(sampling_probability, np.float32)]),
                tf.float32)
        # tfrs.Model reports the raw per-batch SUM of the loss; this Mean of the
        # per-example loss is comparable across batch sizes and replica counts.
        self.loss_tracker = tf.keras.metrics.Mean(name="loss_per_example")

    def call(self, features, training=False):
        """features -> (query [B, d], candidate [B, d]) embeddings."""
        return (
            self.query_model(features[schema.CONTEXT_MOVIE_ID], training=training),
            self.candidate_model(features[schema.LABEL_MOVIE_ID], training=training),
        )

    def _candidates(self, candidate: tf.Tensor, ids: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """This replica's candidates [b, d] and ids [b] -> the ones its softmax sees.

        per_replica (or one replica): unchanged. global: the candidates of all
        R replicas [R*b, d], rotated so that this replica's own b come first.
        TFRS's labels are the diagonal of the [b, R*b] score matrix (query i's
        positive is column i); after the rotation that is still true, and
        rotating columns is the same as offsetting the labels by
        replica_id * b (a softmax does not depend on column order). The
        gradient of all_gather sums every replica's upstream gradient and
        hands each its slice, so after MirroredStrategy's SUM of the variable
        gradients the update is exactly the single-device one.
        """
        return self._all_replicas(candidate), self._all_replicas(ids)

    def _all_replicas(self, x: tf.Tensor) -> tf.Tensor:
        """This replica's rows [b, ...] -> every replica's [R*b, ...] with its own first
        (global negatives over several replicas; see _candidates), else x itself."""
        ctx = tf.distribute.get_replica_context()
        if self.negatives != "global" or ctx is None or ctx.num_replicas_in_sync == 1:
            return x
        gathered = ctx.all_gather(x, axis=0)  # replica order
        shift = -tf.cast(ctx.replica_id_in_sync_group, tf.int32) * tf.shape(x)[0]
        return tf.roll(gathered, shift, axis=0)

    def _history_scores(self, query: tf.Tensor, features, in_batch: tf.Tensor,
                        training: bool) -> tf.Tensor:
        """history_negatives: each query's scores [b, L] against its own context movies
        (candidate-tower embeddings, offset by losses.own_negative_bias for `in_batch`
        columns); padding and the example's own label are absent."""
        context = tf.cast(features[schema.CONTEXT_MOVIE_ID], tf.int64)  # [b, L]
        label = tf.reshape(tf.cast(features[schema.LABEL_MOVIE_ID], tf.int64), [-1, 1])
        embedded = self.candidate_model(tf.reshape(context, [-1]), training=training)
        embedded = tf.reshape(embedded, tf.concat([tf.shape(context), [-1]], axis=0))
        valid = tf.logical_and(tf.not_equal(context, schema.PAD_MOVIE_ID),
                               tf.not_equal(context, label))
        rows = self._rows(context)
        correction = None
        if self._probability is not None:
            correction = losses.log_correction(tf.gather(self._probability, rows))
        bias = losses.own_negative_bias(tf.gather(self._log_share, rows), in_batch, correction)
        # Scores are divided by the temperature in the loss; the bias is in logits.
        temperature = self._temperature or 1.0
        return losses.own_negative_scores(query, embedded, valid, bias * temperature)

    def compute_losses(self, features, training: bool = False) -> tuple[tf.Tensor, tf.Tensor]:
        """Losses of one replica's batch.

        Returns:
          (scaled, mean): scaled = summed in-batch loss / global batch size, the
          value to differentiate; mean = summed loss / local batch size, the
          per-example loss of this replica's batch (for reporting).
        """
        query, own_candidate = self(features, training=training)
        ids = tf.reshape(tf.cast(features[schema.LABEL_MOVIE_ID], tf.int64), [-1])
        candidate, ids = self._candidates(own_candidate, ids)
        in_batch = tf.shape(candidate)[0]  # before any uniform negatives
        if self.uniform_negatives and training:
            # Extra columns past the batch's own: only negatives (the labels
            # stay the diagonal). Each replica draws its own N.
            drawn = tf.random.uniform([self.uniform_negatives], 0, tf.shape(self._all_ids)[0],
                                      tf.int32)
            extra = self.candidate_model(tf.gather(self._all_ids, drawn), training=training)
            candidate = tf.concat([candidate, tf.cast(extra, candidate.dtype)], axis=0)
        probability = None
        if self._probability is not None:
            probability = tf.gather(self._probability, self._rows(ids))
        if self.sparse_loss:  # the same sum as self.task's, far less memory
            history = (self._history_scores(query, features, in_batch, training)
                       if self.history_negatives else None)
            summed = losses.in_batch_softmax_loss(query, candidate, self._temperature, probability,
                                                  extra_scores=history)
            if self.candidate_softmax_weight:
                # Rows are this replica's labels, columns every replica's queries
                # (own first, so label i's query is column i): summed over
                # replicas, the single-device loss of the global batch. No
                # sampling correction: it is constant along a label's row.
                summed += self.candidate_softmax_weight * losses.in_batch_softmax_loss(
                    own_candidate, self._all_replicas(query), self._temperature)
        else:
            summed = self.task(
                query, candidate, compute_metrics=False,
                candidate_sampling_probability=probability,
                candidate_ids=ids if self.remove_accidental_hits else None,
            )
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
